"""PyTorch's parameter initialisers as Flax initialisers, so the span head starts where the authors' starts.

The authors' head (THUDM/scholar-profiling, sener/models/{model,cnn}.py) keeps PyTorch defaults for
every nn.Linear and nn.Conv2d, and calls `xavier_normal_` on U, W and the BiSPA `pos_embed`:

- Linear / Conv2d weight: kaiming_uniform_(a=sqrt(5)) = uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  std 1/sqrt(3 fan_in); fan_in = in_features (Linear) or in_channels * kh * kw (Conv2d).
- Linear bias: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the weight's fan_in.
- xavier_normal_: N(0, gain^2 * 2 / (fan_in + fan_out)), plain (untruncated) normal, with PyTorch's
  fan rule for a tensor of shape (d0, d1, *rest): fan_in = d1 * prod(rest), fan_out = d0 * prod(rest).

Flax stores kernels transposed against PyTorch: a Dense kernel is (in, out) and a Conv kernel HWIO
(kh, kw, in, out), so fan_in is the product of every axis but the last. The xavier initialiser is
for tensors kept in PyTorch's own layout (U (c, p, p), W (c, 2p), an Embed table (n, dim)).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _require_ndim(name: str, shape: tuple[int, ...], ndim: int, layout: str) -> None:
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d {layout} kernel, got shape {tuple(shape)}")


def torch_linear_kernel_init():
    """nn.Linear's default weight init for a Flax Dense kernel (in, out): U(+-1/sqrt(in))."""

    def init(key, shape, dtype=jnp.float32):
        _require_ndim("torch_linear_kernel_init", shape, 2, "(in, out)")
        return _uniform(1.0 / math.sqrt(shape[0]))(key, shape, dtype)

    return init


def torch_linear_bias_init(fan_in: int):
    """nn.Linear's default bias init: U(+-1/sqrt(fan_in)), fan_in = the layer's input features."""
    if fan_in < 1:
        raise ValueError(f"torch_linear_bias_init: fan_in={fan_in}, expected >= 1")
    return _uniform(1.0 / math.sqrt(fan_in))


def torch_conv_kernel_init():
    """nn.Conv2d's default weight init for a Flax HWIO kernel (kh, kw, in, out): U(+-1/sqrt(in*kh*kw))."""

    def init(key, shape, dtype=jnp.float32):
        _require_ndim("torch_conv_kernel_init", shape, 4, "HWIO (kh, kw, in, out)")
        kh, kw, fan_in_channels, _ = shape
        return _uniform(1.0 / math.sqrt(fan_in_channels * kh * kw))(key, shape, dtype)

    return init


def torch_xavier_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) by PyTorch's rule for a tensor in PyTorch layout (out, in, *receptive)."""
    if len(shape) < 2:
        raise ValueError(f"xavier init needs a tensor of >= 2 dimensions, got shape {tuple(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def torch_xavier_normal_init(gain: float = 1.0):
    """torch.nn.init.xavier_normal_: N(0, gain^2 * 2 / (fan_in + fan_out)), fans by PyTorch's rule."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = torch_xavier_fans(shape)
        std = gain * math.sqrt(2.0 / (fan_in + fan_out))
        return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init
