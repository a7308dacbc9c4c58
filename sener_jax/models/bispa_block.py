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
from sener_jax.models.bispa_dropout import apply_keep, band_cell_keep, cell_dropout
from sener_jax.models.bispa_ops import (
    band_row_attention, dense_band_conv, dense_row_attention, map_row_chunks, transpose_band_rows,
)

# LayerNorm epsilon inside BiSPA blocks (PyTorch default).
BISPA_LN_EPS = 1e-5


def layer_norm(x, scale, bias, dtype):
    """Two-pass LayerNorm over the last axis with float32 statistics (as nn.LayerNorm(use_fast_variance=False))."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    mul = jax.lax.rsqrt(var + BISPA_LN_EPS) * scale
    return ((xf - mean) * mul + bias).astype(dtype)


def _band_conv(x, kernel, rows_padding="SAME"):
    # padding: "SAME" on the whole band; on a row chunk with its halo, "VALID" in rows (the halo is
    # the zero padding or the neighbouring rows) and "SAME" (zero padding) in k.
    padding = "SAME" if rows_padding == "SAME" else ((0, 0), (1, 1))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _masked(t, valid):
    return jnp.where(valid[..., None], t, jnp.zeros((), t.dtype))


def _merge(p, x, z_h, z_v, drop, dtype):
    """Merge of the two attention directions, dropout, residual to the embedded input x, LayerNorm."""
    out = jnp.concatenate([z_h, z_v], axis=-1) @ jnp.asarray(p["dense"]["kernel"], dtype) + jnp.asarray(
        p["dense"]["bias"], dtype)
    return layer_norm(x + drop(out), p["LayerNorm"]["scale"], p["LayerNorm"]["bias"], dtype)


def _cnn(p, z, valid, conv, drop, dtype, halo=0):
    """Local CNN (conv, GELU, conv; zero padding), dropout, residual, LayerNorm. With `halo` = 2, z and
    valid carry 2 extra rows each side (`map_row_chunks`) and the convs are row-VALID."""
    hidden = jax.nn.gelu(conv(_masked(z, valid), jnp.asarray(p["conv1"]["kernel"], dtype)), approximate=False)
    inner = slice(halo // 2, valid.shape[1] - halo // 2)  # the rows of hidden
    local = conv(_masked(hidden, valid[:, inner]), jnp.asarray(p["conv2"]["kernel"], dtype))
    z = z[:, halo:z.shape[1] - halo]
    return layer_norm(z + drop(local), p["LayerNorm2"]["scale"], p["LayerNorm2"]["bias"], dtype)


def _embed(p, x, valid, upper, dtype):
    """Masked input + triangle embedding: row 0 of pos_embed for the lower triangle (k < w'), row 1
    for diagonal-or-upper (`upper`: (K,) band or (L, L) dense). Cheap: recomputed where needed."""
    return _masked(jnp.asarray(x, dtype), valid) + jnp.asarray(p["pos_embed"]["embedding"], dtype)[upper]


def _band_upper(window: int):
    return jnp.asarray(np.arange(2 * window + 1) >= window, jnp.int32)


def _keep_mask(key, like, cfg):
    return band_cell_keep(key, like.shape[:3] + (cfg.channels,), cfg.bispa_dropout)


def _chunk_drop(keep, cfg, dtype):
    return lambda t: apply_keep(t, keep, cfg.bispa_dropout).astype(dtype)


def _rows_column_half(p, x, valid, z_h, keys, cfg, dtype, att_rate):
    """Band, remat: column attention on the transposed band made one row chunk at a time from the
    chunk's rows with a w'-row halo; with "original" alignment the merge + LayerNorm run on the
    same chunk, so neither the transposed band nor z_v ever exists whole."""
    w, upper = cfg.band_half_width, _band_upper(cfg.band_half_width)
    kernel, bias = (jnp.asarray(p["v_qkv"][n], dtype) for n in ("kernel", "bias"))

    def prep(xc, vc):  # cells past the ends get pos_embed, not 0 as in transpose_band: invalid, masked either way
        return transpose_band_rows(_embed(p, xc, vc, upper, dtype), w), vc[:, w:vc.shape[1] - w]

    keep = _keep_mask(keys[2], x, cfg)
    kept = () if keep is None else (keep,)
    if cfg.bispa_alignment == "original":
        def merge_rows(z_v, xc, vc, z_h, *kc):
            rows = slice(w, xc.shape[1] - w)
            drop = _chunk_drop(kc[0] if kc else None, cfg, dtype)
            return _merge(p, _embed(p, xc[:, rows], vc[:, rows], upper, dtype), z_h, z_v, drop, dtype)

        return band_row_attention(x, valid, kernel, bias, cfg.row_chunk, keys[1], att_rate, prep=prep, halo=w,
                                  post=merge_rows, extra=(z_h,) + kept)
    z_v = band_row_attention(x, valid, kernel, bias, cfg.row_chunk, keys[1], att_rate, prep=prep, halo=w)
    z_v = transpose_band(z_v, w)  # "plus": cell (i, j) gets column j's attention at (i, j)

    def merge(s, xc, vc, zh, zv, *kc):
        drop = _chunk_drop(kc[0] if kc else None, cfg, dtype)
        return _merge(p, _embed(p, xc, vc, upper, dtype), zh, zv, drop, dtype)

    return map_row_chunks(merge, cfg.row_chunk, x, valid, z_h, z_v, *kept)


def _rows_cnn_half(p, z, valid, key, cfg, dtype):
    """Band, remat: the local CNN + LayerNorm one row chunk at a time, with a 2-row halo."""
    conv = lambda t, k: _band_conv(t, k, "VALID")  # noqa: E731
    keep = _keep_mask(key, z, cfg)

    def cnn(s, zc, vc, *kc):  # kc comes with the halo rows too; the dropout is on the chunk's rows
        return _cnn(p, zc, vc, conv, _chunk_drop(kc[0][:, 2:-2] if kc else None, cfg, dtype), dtype, halo=2)

    return map_row_chunks(cnn, cfg.row_chunk, z, valid, *(() if keep is None else (keep,)), halo=2)


def bispa_block(p, x, valid, keys, cfg, *, band: bool, remat: bool, dtype):
    """x (B, L, K, c) band or (B, L, L, c) dense, valid the matching cell mask; p the block's params
    (float32, cast to `dtype` at use); keys: 4 dropout keys or Nones (h attention, v attention,
    merge, CNN). Returns the block output in `dtype`.

    Band with `remat`: the embedding, the band transpose, the per-cell merge and the local CNN also
    run `row_chunk` rows at a time (`map_row_chunks`; `_rows_column_half`, `_rows_cnn_half`), so
    their (L, K, c) intermediates only ever exist one chunk at a time; their dropout masks are
    drawn whole (bool) and applied per chunk. Without `remat` (the plain twin) they run whole."""
    w = cfg.band_half_width
    att_rate = cfg.bispa_dropout if cfg.bispa_attention_dropout else 0.0
    cast = lambda t: jnp.asarray(t, dtype)  # noqa: E731
    maybe_remat = jax.checkpoint if remat else (lambda f: f)
    rows = band and remat

    def drop(t, key):
        return cell_dropout(t, key, cfg.bispa_dropout, w, band).astype(dtype)

    def qkv(name):
        return cast(p[name]["kernel"]), cast(p[name]["bias"])

    if band:
        upper = _band_upper(w)
    else:
        idx = jnp.arange(x.shape[1])
        upper = jnp.asarray(idx[None, :] >= idx[:, None], jnp.int32)  # (L, L): j >= i

    def embed(p, x):
        return _embed(p, x, valid, upper, dtype)

    @maybe_remat
    def row_half(p, x):  # row attention
        if rows:  # the embedding is made one row chunk at a time
            return band_row_attention(x, valid, *qkv("h_qkv"), cfg.row_chunk, keys[0], att_rate,
                                      prep=lambda xc, vc: (_embed(p, xc, vc, upper, dtype), vc))
        x = embed(p, x)
        if band:
            return band_row_attention(x, valid, *qkv("h_qkv"), cfg.row_chunk, keys[0], att_rate)
        return dense_row_attention(x, valid, *qkv("h_qkv"), w, keys[0], att_rate)

    @maybe_remat
    def column_half(p, x, z_h):  # column attention, merge of the directions, residual, LayerNorm
        if rows:
            return _rows_column_half(p, x, valid, z_h, keys, cfg, dtype, att_rate)
        x = embed(p, x)
        if band:
            y = transpose_band(x, w)  # row i holds the spans that end at word i; mask is transpose-invariant
            z_v = band_row_attention(y, valid, *qkv("v_qkv"), cfg.row_chunk, keys[1], att_rate)
            if cfg.bispa_alignment == "plus":
                z_v = transpose_band(z_v, w)  # cell (i, j) gets column j's attention at (i, j)
            return _merge(p, x, z_h, z_v, lambda t: drop(t, keys[2]), dtype)
        # column attention: for fixed j over i. z_col[i, j] is cell (i, j) in column j.
        z_col = dense_row_attention(
            x.swapaxes(1, 2), valid.swapaxes(1, 2), *qkv("v_qkv"), w, keys[1], att_rate
        ).swapaxes(1, 2)
        # "original": cell (i, j) takes the column attention computed at (j, i) (same band index).
        z_v = z_col if cfg.bispa_alignment == "plus" else z_col.swapaxes(1, 2)
        return _merge(p, x, z_h, z_v, lambda t: drop(t, keys[2]), dtype)

    @maybe_remat
    def cnn_half(p, z):  # local CNN on the band grid (zero padding), residual, LayerNorm
        if rows:
            return _rows_cnn_half(p, z, valid, keys[3], cfg, dtype)
        conv = _band_conv if band else (lambda t, k: dense_band_conv(t, k, w))
        return _cnn(p, z, valid, conv, lambda t: drop(t, keys[3]), dtype)

    return cnn_half(p, column_half(p, x, row_half(p, x)))
