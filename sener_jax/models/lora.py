"""LoRA: a Dense layer with an optional low-rank update, and merging it back into the kernel.

y = x @ kernel + bias + (x @ lora_a @ lora_b) * (alpha / r). lora_a starts as PyTorch's
kaiming-uniform(a=sqrt(5)) for an (in -> r) Linear, i.e. U(-1/sqrt(in), 1/sqrt(in)); lora_b
starts at zero, so a fresh adapter leaves the layer unchanged. Parameters stay float32; the
matmuls run in `dtype`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

LORA_LEAVES = ("lora_a", "lora_b")


def lora_a_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class LoraDense(nn.Module):
    """nn.Dense (kernel (in, out), bias) plus a rank-`rank` adapter when rank > 0."""

    features: int
    rank: int = 0
    alpha: float = 16.0
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        y = jnp.dot(x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
        if self.rank > 0:
            lora_a = self.param("lora_a", lora_a_init, (in_features, self.rank), jnp.float32)
            lora_b = self.param("lora_b", nn.initializers.zeros, (self.rank, self.features), jnp.float32)
            update = jnp.dot(jnp.dot(x, lora_a.astype(self.dtype)), lora_b.astype(self.dtype))
            y = y + update * jnp.asarray(self.alpha / self.rank, self.dtype)
        return y


def is_lora_path(path: tuple[str, ...]) -> bool:
    """True for a parameter path that ends in a LoRA leaf (for optimiser masks)."""
    return bool(path) and path[-1] in LORA_LEAVES


def merge_lora_tree(params: Mapping, alpha: float, rank: int) -> dict:
    """Fold every {kernel, lora_a, lora_b} group into its kernel and drop the LoRA leaves."""
    merged = {}
    for name, value in params.items():
        if isinstance(value, Mapping):
            merged[name] = merge_lora_tree(value, alpha, rank)
        elif name not in LORA_LEAVES:
            merged[name] = value
    if "lora_a" in params or "lora_b" in params:
        if not ("lora_a" in params and "lora_b" in params and "kernel" in params):
            raise ValueError(f"incomplete LoRA group: has {sorted(params)}, needs kernel, lora_a and lora_b")
        # matmul, not dot: stacked (scanned) layers carry a leading layer axis that must batch.
        delta = jnp.matmul(params["lora_a"], params["lora_b"], precision=jax.lax.Precision.HIGHEST) * (alpha / rank)
        merged["kernel"] = (params["kernel"] + delta).astype(params["kernel"].dtype)
    return merged


def merge_lora(encoder_params: Mapping, config):
    """(params with LoRA folded into the kernels, the same config with lora_rank=0)."""
    if config.lora_rank <= 0:
        return dict(encoder_params), config
    merged = merge_lora_tree(encoder_params, config.lora_alpha, config.lora_rank)
    return merged, dataclasses.replace(config, lora_rank=0)
