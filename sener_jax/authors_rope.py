"""The authors' BiSPA sinusoid tables (`cross_layers.N.embed_positions.weight`) in a released
checkpoint: checked against the RoPE table our span head computes, and their weight-decay shrink
folded into the q/k projections so the logits stay exactly theirs.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sener_jax.models.bispa_ops import rope_table

# Sinusoid tables are recomputed in float32 on both sides; anything beyond rounding is a different table.
_SINUSOID_ATOL = 1e-5


def check_sinusoid_tables(
    state: Mapping[str, np.ndarray], num_blocks: int, channels: int, band_width: int
) -> dict[str, float]:
    """Check each block's `embed_positions.weight` is a * (the RoPE table our span head uses); {key: a}.

    The authors' table is an nn.Parameter that never gets a gradient (its forward runs under
    torch.no_grad()) but sits in AdamW's weight-decay group, and DeepSpeed ZeRO-2 hands it zero
    gradients: decoupled weight decay shrinks the whole table by one factor over a run (released
    checkpoints hold about 0.99-0.995 times the sinusoid). Their RoPE multiplies q and k by that
    table, so a table a * sinusoid computes RoPE(a q), RoPE(a k): exactly our RoPE on q and k scaled
    by a, which `fold_rope_scales` puts into the q/k columns. Any other table is an error.
    """
    scales: dict[str, float] = {}
    for block in range(num_blocks):
        key = f"cross_layers.{block}.embed_positions.weight"
        if key not in state:
            raise ValueError(f"missing key {key!r} (the fixed RoFormer sinusoid table of BiSPA block {block})")
        table = np.asarray(state[key], np.float64)
        if table.ndim != 2 or table.shape[1] != channels or table.shape[0] < band_width:
            raise ValueError(f"key {key!r} has shape {table.shape}, expected (>= {band_width}, {channels})")
        sin, cos = rope_table(np.arange(table.shape[0]), channels)
        exact = np.concatenate([sin, cos], axis=-1).astype(np.float64)
        if float(np.max(np.abs(table - exact))) <= _SINUSOID_ATOL:
            scales[key] = 1.0  # the untouched table (a = 1 up to float32 rounding): params stay bit-exact
            continue
        # Least-squares scale; the cos half (1 at position 0) keeps the denominator far from 0.
        scale = float(np.sum(table * exact) / np.sum(exact * exact))
        error = float(np.max(np.abs(table - scale * exact)))
        # The tolerance scales with a: the decayed table was rounded to float32 at its own magnitude.
        if not (0.0 < scale <= 1.0 + _SINUSOID_ATOL and error <= _SINUSOID_ATOL * max(scale, 1e-3)):
            raise ValueError(
                f"key {key!r} is not a * the RoFormer sinusoid table (sin | cos, base 10000) for one "
                f"scalar 0 < a <= 1 (best a = {scale:.6g}, max difference from a * table {error:.3g}); "
                "our span head applies that table as RoPE, so loading anything else would change the computation"
            )
        scales[key] = min(scale, 1.0)
    return scales


def fold_rope_scales(state: dict[str, np.ndarray], scales: Mapping[str, float], channels: int) -> None:
    """Fold each block's sinusoid scale a into the q and k outputs of its h_qkv and v_qkv (in place).

    RoPE is linear in its input, so RoPE(a q) = a RoPE(q): scaling the q and k rows (the first 2c of
    the torch (3c, c) weight and of the bias; v untouched) reproduces their attention logits a^2 q.k.
    """
    for key, scale in scales.items():
        if scale == 1.0:
            continue
        block = key[: -len("embed_positions.weight")]
        for projection in ("h_qkv", "v_qkv"):
            for leaf in ("weight", "bias"):
                name = f"{block}{projection}.{leaf}"
                if name in state and np.shape(state[name])[0] == 3 * channels:  # else assign_params names it
                    value = np.array(state[name], np.float32)
                    value[: 2 * channels] *= np.float32(scale)
                    state[name] = value
