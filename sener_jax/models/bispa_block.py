"""One BiSPA block (SPEC §4) as a pure function of its parameter dict, in band or dense layout.

`models/span_head.py` owns the parameters (the authors' names: pos_embed, h_qkv, v_qkv, dense,
LayerNorm, conv1, conv2, LayerNorm2) and calls `bispa_block`. Being a plain function of arrays
lets the block be rematerialised piecewise with `jax.checkpoint` (Flax modules cannot be called
inside a raw JAX transform) and run in a compute dtype other than its float32 parameters.

Memory (`remat=True`): the block is three checkpointed pieces: the row attention, the column
attention + merge + LayerNorm, and the local CNN + LayerNorm (the triangle embedding is
recomputed by the first two). In the backward pass only the
pieces' inputs are saved and one piece's intermediates exist at a time; without it the
backward of a block held ~17 (L, K, c) tensors at once.

Dtype: matmuls and convolutions run in `dtype` (bf16 if asked); LayerNorm statistics, the
attention logits and softmax are float32 whatever the compute dtype.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.band_layout import transpose_band
from sener_jax.models.bispa_dropout import cell_dropout
from sener_jax.models.bispa_ops import band_row_attention, dense_band_conv, dense_row_attention

# LayerNorm epsilon inside BiSPA blocks (PyTorch default).
BISPA_LN_EPS = 1e-5


def layer_norm(x, scale, bias, dtype):
    """Two-pass LayerNorm over the last axis with float32 statistics (as nn.LayerNorm(use_fast_variance=False))."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    mul = jax.lax.rsqrt(var + BISPA_LN_EPS) * scale
    return ((xf - mean) * mul + bias).astype(dtype)


def _band_conv(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def bispa_block(p, x, valid, keys, cfg, *, band: bool, remat: bool, dtype):
    """x (B, L, K, c) band or (B, L, L, c) dense, valid the matching cell mask; p the block's params
    (float32, cast to `dtype` at use); keys: 4 dropout keys or Nones (h attention, v attention,
    merge, CNN). Returns the block output in `dtype`."""
    w = cfg.band_half_width
    att_rate = cfg.bispa_dropout if cfg.bispa_attention_dropout else 0.0
    cast = lambda t: jnp.asarray(t, dtype)  # noqa: E731
    maybe_remat = jax.checkpoint if remat else (lambda f: f)

    def drop(t, key):
        return cell_dropout(t, key, cfg.bispa_dropout, w, band).astype(dtype)

    def mask(t):
        return jnp.where(valid[..., None], t, jnp.zeros((), t.dtype))

    def qkv(name):
        return cast(p[name]["kernel"]), cast(p[name]["bias"])

    def embed(p, x):  # masked input + triangle embedding (cheap: recomputed by both halves)
        x = mask(cast(x))
        # row 0 of pos_embed for the lower triangle (k < w'), row 1 for diagonal-or-upper.
        if band:
            upper = np.arange(2 * w + 1) >= w  # (K,)
        else:
            idx = jnp.arange(x.shape[1])
            upper = idx[None, :] >= idx[:, None]  # (L, L): j >= i
        return x + cast(p["pos_embed"]["embedding"])[jnp.asarray(upper, jnp.int32)]

    @maybe_remat
    def row_half(p, x):  # row attention
        x = embed(p, x)
        if band:
            z_h = band_row_attention(x, valid, *qkv("h_qkv"), cfg.row_chunk, keys[0], att_rate)
        else:
            z_h = dense_row_attention(x, valid, *qkv("h_qkv"), w, keys[0], att_rate)
        return z_h

    @maybe_remat
    def column_half(p, x, z_h):  # column attention, merge of the directions, residual, LayerNorm
        x = embed(p, x)
        if band:
            y = transpose_band(x, w)  # row i holds the spans that end at word i; mask is transpose-invariant
            z_v = band_row_attention(y, valid, *qkv("v_qkv"), cfg.row_chunk, keys[1], att_rate)
            if cfg.bispa_alignment == "plus":
                z_v = transpose_band(z_v, w)  # cell (i, j) gets column j's attention at (i, j)
        else:
            # column attention: for fixed j over i. z_col[i, j] is cell (i, j) in column j.
            z_col = dense_row_attention(
                x.swapaxes(1, 2), valid.swapaxes(1, 2), *qkv("v_qkv"), w, keys[1], att_rate
            ).swapaxes(1, 2)
            # "original": cell (i, j) takes the column attention computed at (j, i) (same band index).
            z_v = z_col if cfg.bispa_alignment == "plus" else z_col.swapaxes(1, 2)
        kernel, bias = qkv("dense")
        out = jnp.concatenate([z_h, z_v], axis=-1) @ kernel + bias
        return layer_norm(x + drop(out, keys[2]), p["LayerNorm"]["scale"], p["LayerNorm"]["bias"], dtype)

    @maybe_remat
    def cnn_half(p, z):  # local CNN on the band grid (zero padding), residual, LayerNorm
        conv = _band_conv if band else (lambda t, k: dense_band_conv(t, k, w))
        hidden = jax.nn.gelu(conv(mask(z), cast(p["conv1"]["kernel"])), approximate=False)
        local = conv(mask(hidden), cast(p["conv2"]["kernel"]))
        return layer_norm(z + drop(local, keys[3]), p["LayerNorm2"]["scale"], p["LayerNorm2"]["bias"], dtype)

    return cnn_half(p, column_half(p, x, row_half(p, x)))
