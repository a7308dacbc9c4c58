"""Compiled memory of the band bias options (issue 13, item 2): one encoder layer and the scanned encoder.

    python benchmarks/band_bias_memory.py [--tokens=8192,16384] [--dtypes=float32,bfloat16]
        [--options=float32,compute,recompute,compute+recompute] [--parts=layer,encoder]

SciREX geometry (DeBERTa-v3-large: 24 x 1024, 16 heads, LoRA r=8, arrow attention w=128, xla impl,
remat "layer"), batch 1. Each figure is XLA's compiled memory analysis (CPU) of the gradient of
sum(output) with respect to the layer's (or encoder's) trainable params (LoRA + everything the
trainable mask leaves in: here, all of them, as the worst case) and its input hidden states;
nothing is allocated. `--options` are `EncoderConfig.band_bias` values.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sener_jax import train_step  # noqa: E402
from sener_jax.models import deberta  # noqa: E402

GIB = 1024**3


def encoder_config(dtype: str, band_bias: str, layers: int) -> deberta.EncoderConfig:
    return deberta.EncoderConfig(attention="arrow", attention_impl="xla", window=128, lora_rank=8, remat="layer",
                                 dtype=dtype, band_bias=band_bias, num_hidden_layers=layers)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def compiled_peak(config: deberta.EncoderConfig, tokens: int, part: str) -> tuple[dict, float]:
    """(XLA's memory fields, compile seconds) of d sum(out) / d (params, hidden)."""
    hidden = jax.ShapeDtypeStruct((1, tokens, config.hidden_size), jnp.float32)
    mask = jax.ShapeDtypeStruct((1, tokens), jnp.bool_)
    rel = jax.ShapeDtypeStruct((2 * config.relative_span, config.hidden_size), jnp.float32)
    if part == "layer":
        module = deberta._layer_class(config, scanned=False)(config)
        params = jax.eval_shape(module.init, jax.random.key(0), hidden, mask, rel)["params"]

        def loss(p, h, m, r):
            return jnp.sum(module.apply({"params": p}, h, m, r))

        args = (params, hidden, mask, rel)
    else:
        module = deberta.Encoder(config)
        params = jax.eval_shape(module.init, jax.random.key(0), hidden, mask)["params"]

        def loss(p, h, m):
            return jnp.sum(module.apply({"params": p}, h, m))

        args = (params, hidden, mask)
    start = time.perf_counter()
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*_abstract(args)).compile()
    return train_step.memory_analysis(compiled), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", default="8192,16384")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--options", default="float32,compute,recompute,compute+recompute")
    parser.add_argument("--parts", default="layer,encoder")
    args = parser.parse_args()
    for part in args.parts.split(","):
        for dtype in args.dtypes.split(","):
            for tokens in map(int, args.tokens.split(",")):
                for option in args.options.split(","):
                    config = encoder_config(dtype, option, 24 if part == "encoder" else 1)
                    parts, seconds = compiled_peak(config, tokens, part)
                    print(f"{part} {dtype} N={tokens} band_bias={option}: peak {parts['peak'] / GIB:.3f} GiB, "
                          f"temp {parts['temporaries'] / GIB:.3f} GiB (compile {seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
