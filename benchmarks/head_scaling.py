"""Span head scaling: band vs dense reference, compiled memory and wall time of forward+backward.

Memory is XLA's compiled memory analysis (temp bytes of jit(grad(loss))): compile only, so sizes
far beyond this machine's RAM can be reported. Timing runs only up to --time-max-band /
--time-max-dense words (the CPU is shared; each timed size runs once to warm up, then --repeats times).
The dense reference is compiled only while its single (L, L, c) score tensor stays below
--dense-cap-gib (it materialises many such tensors plus O(L^3) attention residuals).

    python benchmarks/head_scaling.py --sizes 256,512,1024,2048,4096,8192,16384 --markdown
    python benchmarks/head_scaling.py --sizes 1024,4096 --dense-cap-gib 0 --time-max-band 0 --head-dtype bfloat16
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.band_layout import band_cell_mask
from sener_jax.models.span_head import SpanHead, SpanHeadConfig


def _loss_fn(cfg):
    def loss(params, x, mask):
        out = SpanHead(cfg).apply({"params": params}, x, mask)
        return jnp.sum(jnp.where(band_cell_mask(mask, cfg.band_half_width)[..., None], out, 0.0))

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _params(cfg, d):
    init = lambda k: SpanHead(cfg).init(k, jnp.zeros((1, 2, d)), jnp.ones((1, 2), bool))["params"]  # noqa: E731
    return jax.jit(init)(jax.random.PRNGKey(0))


def measure(cfg, length, d, timed: bool, repeats: int):
    params = _params(cfg, d)
    x_spec = jax.ShapeDtypeStruct((1, length, d), jnp.float32)
    m_spec = jax.ShapeDtypeStruct((1, length), jnp.bool_)
    t0 = time.perf_counter()
    compiled = _loss_fn(cfg).lower(params, x_spec, m_spec).compile()
    compile_s = time.perf_counter() - t0
    temp = compiled.memory_analysis().temp_size_in_bytes
    seconds = None
    if timed:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(1, length, d)), jnp.float32)
        mask = jnp.ones((1, length), bool)
        jax.block_until_ready(compiled(params, x, mask))
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, x, mask))
            runs.append(time.perf_counter() - t0)
        seconds = statistics.median(runs)
    return temp, compile_s, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024,2048,4096,8192,16384")
    ap.add_argument("--input-dim", type=int, default=1024, help="word vector width d (DeBERTa-large: 1024)")
    ap.add_argument("--num-types", type=int, default=4)
    ap.add_argument("--dense-cap-gib", type=float, default=4.0, help="skip dense when one (L,L,c) fp32 tensor exceeds this")
    ap.add_argument("--time-max-band", type=int, default=1024)
    ap.add_argument("--time-max-dense", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--head-dtype", default="float32", help="SpanHeadConfig.dtype: float32 | bfloat16")
    ap.add_argument("--no-remat", action="store_true", help="SpanHeadConfig.remat_blocks=False (the plain twin)")
    args = ap.parse_args()
    # published head: w' = 128, c = 32, two blocks
    cfg = SpanHeadConfig(num_types=args.num_types, dtype=args.head_dtype, remat_blocks=not args.no_remat)
    rows = []
    for length in (int(s) for s in args.sizes.split(",")):
        band = measure(cfg, length, args.input_dim, length <= args.time_max_band, args.repeats)
        dense_tensor_gib = length * length * cfg.channels * 4 / 2**30
        dense = None
        if dense_tensor_gib <= args.dense_cap_gib:
            dense = measure(
                dataclasses.replace(cfg, impl="reference"), length, args.input_dim, length <= args.time_max_dense, args.repeats
            )
        rows.append((length, band, dense))
        print(length, band, dense, flush=True)

    def fmt_s(v):
        return "-" if v is None else f"{v:.2f}"

    print()
    print(f"device: {jax.devices()[0].device_kind}; B=1, d={args.input_dim}, w'={cfg.band_half_width}, c={cfg.channels}, "
          f"R={cfg.num_types}, blocks={cfg.num_blocks}, row_chunk={cfg.row_chunk}, head dtype {cfg.dtype}, "
          f"remat {cfg.remat_blocks}, forward+backward")
    print()
    print("| words L | band temp MiB | band MiB / L | dense temp MiB | band / dense | band fwd+bwd s | dense fwd+bwd s |")
    print("|---|---|---|---|---|---|---|")
    for length, (b_temp, _, b_s), dense in rows:
        d_temp = dense[0] if dense else None
        ratio = "-" if d_temp is None else f"{b_temp / d_temp:.4f}"
        d_mib = "- (over cap)" if d_temp is None else f"{d_temp / 2**20:,.0f}"
        print(
            f"| {length} | {b_temp / 2**20:,.0f} | {b_temp / 2**20 / length:.3f} | {d_mib} | {ratio} | "
            f"{fmt_s(b_s)} | {fmt_s(dense[2] if dense else None)} |"
        )


if __name__ == "__main__":
    main()
