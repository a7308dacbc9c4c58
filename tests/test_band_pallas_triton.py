"""The Pallas kernels' Triton IR compiled for A100 (sm_80) and H100 (sm_90) on CPU, with the triton wheel.

Skipped only when `triton` is not importable. Lowers forward + backward at the encoder's shape
(B=1, H=16, D=64, w=128, bf16 q/k/v, f32 bias) for N=4096 and 65,536, compiles each kernel with its
own num_warps / num_stages and checks ptxas's report: no spills, shared memory within the card's
per-block limit, and the library's shared-memory estimate (used to refuse oversized tiles) not
below what Triton allocates.
"""
from __future__ import annotations

import pathlib
import sys

import pytest

pytest.importorskip("triton", reason="pip install triton to compile the kernels for sm_80/sm_90 on CPU")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import pallas_triton_compile as ptc  # noqa: E402

from sener_jax.ops import band_pallas  # noqa: E402

KERNEL_OF = {"banded_attention_forward": "forward", "banded_attention_dq": "dq", "banded_attention_dkv": "dkv"}


@pytest.mark.parametrize("target", ["sm80", "sm90"])
@pytest.mark.parametrize("n", [4096, 65536])
def test_kernels_compile_without_spills_within_shared_memory(n, target):
    reports = ptc.report(n, target)
    assert sorted(r.name for r in reports) == sorted(KERNEL_OF)
    limit = band_pallas.SHARED_MEMORY_LIMIT[target]
    for r in reports:
        tiles = band_pallas.GPU_TILES[target][KERNEL_OF[r.name]]
        assert (r.num_warps, r.num_stages) == (tiles.num_warps, tiles.num_stages), r
        assert r.spill_stores == 0 and r.spill_loads == 0, r
        assert r.shared_bytes <= limit, r
        estimate = band_pallas.shared_memory_estimate(KERNEL_OF[r.name], tiles, head_dim=64)
        assert estimate >= r.shared_bytes, f"estimate {estimate} below Triton's {r.shared_bytes}: {r}"


def test_tiles_too_large_for_an_a100_are_refused():
    import jax.numpy as jnp

    q = jnp.zeros((1, 1, 256, 64), jnp.bfloat16)
    bias = jnp.zeros((1, 1, 256, 257), jnp.float32)
    with pytest.raises(ValueError, match=r"tiles 128x128 .* shared memory, more than a sm80 block"):
        band_pallas.banded_attention_pallas(
            q, q, q, bias, jnp.ones((1, 256), bool), window=128, interpret=False, block_q=128, block_k=128,
            gpu_target="sm80",
        )
