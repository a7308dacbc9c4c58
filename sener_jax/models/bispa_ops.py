"""The span head's computations as plain functions: RoPE, BiSPA row attention on the band and its
literal (L, L) reference, the banded biaffine, the band convolution's reference, row chunking.

`models/span_head.py` wires them into Flax modules; keeping the functions here keeps each file
readable and lets tests and benchmarks call one computation at a time.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.models.bispa_dropout import band_chunk_prob_scale, dense_row_prob_scale
from sener_jax.ops.attention_probs import masked_softmax


def rope_table(positions: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """RoFormer sinusoid (base 10000) at integer positions: (sin, cos), each positions.shape + (dim/2,).

    Channel pair (2m, 2m+1) turns by angle pos / 10000^(2m/dim), exactly transformers'
    RoFormerSinusoidalPositionalEmbedding + apply_rotary_position_embeddings (computed in float64
    like their numpy table, then rounded to float32).
    """
    inv_freq = 1.0 / np.power(10000.0, 2.0 * np.arange(dim // 2) / dim)
    angle = np.asarray(positions, np.float64)[..., None] * inv_freq
    return np.sin(angle).astype(np.float32), np.cos(angle).astype(np.float32)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """Rotate channel pairs (2m, 2m+1) of x (..., c) by the angles whose sin/cos (..., c/2) are given."""
    even, odd = x[..., 0::2], x[..., 1::2]
    rot_even = even * cos - odd * sin
    rot_odd = odd * cos + even * sin
    return jnp.stack([rot_even, rot_odd], axis=-1).reshape(x.shape)


def _masked_attention(q, k, v, key_valid, query_valid, prob_scale=None):
    """Single-head softmax attention over the second-to-last axis. q,k,v (..., N, c); masks (..., N).

    `prob_scale` (..., N, N): attention-prob dropout factors (0 or 1/(1-p)), None when deterministic."""
    c = q.shape[-1]
    # Logits and softmax in float32 whatever the compute dtype (a bf16 head keeps its maps exact-ish).
    logits = jnp.einsum("...qc,...kc->...qk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
    # Fully masked rows are invalid queries (a valid cell is its own key), zeroed below.
    probs = masked_softmax(logits, key_valid[..., None, :], fully_masked="uniform")
    if prob_scale is not None:
        probs = probs * prob_scale
    out = jnp.einsum("...qk,...kc->...qc", probs.astype(v.dtype), v)
    return jnp.where(query_valid[..., None], out, jnp.zeros((), out.dtype))


def _split_qkv(x, kernel, bias):
    qkv = x @ kernel + bias
    return jnp.split(qkv, 3, axis=-1)  # q / k / v in that order along the output axis


def _row_chunking(length: int, row_chunk: int) -> tuple[int, int]:
    """(rows per chunk, number of chunks) for `map_row_chunks` over `length` rows."""
    chunk = min(row_chunk, max(length, 1))
    return chunk, -(-length // chunk)


def map_row_chunks(fn, row_chunk: int, *arrays):
    """Apply fn(start, *chunks) to `row_chunk` rows (axis 1) at a time with `lax.map`.

    arrays: (B, L, ...) each, zero-padded to a whole number of chunks; fn gets the chunks
    (B, C, ...) and the first row index `start` of the chunk, and returns (B, C, ...). Each chunk
    is rematerialised in the backward pass (`jax.checkpoint`), so only one chunk's intermediates
    ever exist and the saved residuals are the chunk inputs. Returns (B, L, ...).
    """
    b, length = arrays[0].shape[:2]
    chunk, n_chunks = _row_chunking(length, row_chunk)
    pad = n_chunks * chunk - length

    def chunks(x):  # (B, L, ...) -> (n_chunks, B, C, ...)
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
        return x.reshape((b, n_chunks, chunk) + x.shape[2:]).swapaxes(0, 1)

    starts = jnp.arange(n_chunks) * chunk
    out = jax.lax.map(jax.checkpoint(lambda args: fn(*args)), (starts,) + tuple(chunks(x) for x in arrays))
    out = out.swapaxes(0, 1)  # (B, n_chunks, C, ...)
    return out.reshape((b, n_chunks * chunk) + out.shape[3:])[:, :length]


def band_row_attention(x, valid, kernel, bias, row_chunk: int, drop_key=None, drop_rate: float = 0.0):
    """Attention along k within each band row, RoPE position = k. x (B, L, K, c), valid (B, L, K).

    Rows go `row_chunk` at a time through `map_row_chunks`, so only one chunk's (chunk, K, K)
    maps ever exist and the saved residuals are O(L*K*c) in all. `drop_key`: attention-prob
    dropout, its masks drawn per row (`bispa_dropout`), also one chunk at a time.
    """
    kk, c = x.shape[2:]
    sin, cos = (jnp.asarray(t, x.dtype) for t in rope_table(np.arange(kk), c))

    def chunk_fn(start, xc, vc):  # (B, C, K, c), (B, C, K)
        q, k, v = _split_qkv(xc, kernel, bias)
        q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        scale = None
        if drop_key is not None and drop_rate > 0.0:
            scale = band_chunk_prob_scale(drop_key, start, xc.shape[0], xc.shape[1], kk, drop_rate)
        return _masked_attention(q, k, v, vc, vc, scale)

    return map_row_chunks(chunk_fn, row_chunk, x, valid)


def band_biaffine(h_hat, t_hat, u, row_chunk: int, window: int):
    """Bilinear term in band layout: out[b, i, k, o] = h_hat[b, i] U_o t_hat[b, i+k-w'] (0 off the grid).

    The (rows, K, 101) band of end vectors only exists one row chunk at a time (`map_row_chunks`).
    """
    length = h_hat.shape[1]
    kk = 2 * window + 1
    chunk, n_chunks = _row_chunking(length, row_chunk)
    # Zero end vectors beyond both ends, enough for the last (padded) chunk's window.
    t_padded = jnp.pad(t_hat, ((0, 0), (window, window + n_chunks * chunk - length), (0, 0)))
    index = jnp.arange(chunk)[:, None] + jnp.arange(kk)[None, :]

    def chunk_fn(start, hc):
        t_window = jax.lax.dynamic_slice_in_dim(t_padded, start, chunk + 2 * window, axis=1)
        t_band = t_window[:, index]  # (B, C, K, p)
        hu = jnp.einsum("bip,opq->bioq", hc, u)
        return jnp.einsum("bioq,bikq->biko", hu, t_band)

    return map_row_chunks(chunk_fn, row_chunk, h_hat)


# --------------------------------------------------------------------------------------------
# Dense (i, j) reference helpers.
# --------------------------------------------------------------------------------------------


def dense_row_attention(s, valid, kernel, bias, window: int, drop_key=None, drop_rate: float = 0.0):
    """For each fixed first index i, attention over the second index j (keys with valid[i, j]).

    RoPE position of cell (i, j) is its band index k = j - i + w' (clipped off the band, where
    cells are masked anyway). Loops over i with lax.map so only one (L, L) map exists at a time.
    """
    length, c = s.shape[1], s.shape[-1]
    idx = jnp.arange(length)
    pos = jnp.clip(idx[None, :] - idx[:, None] + window, 0, 2 * window)
    # Index the same K-row table the band impl uses (an (L, L) numpy table would be a huge constant).
    sin, cos = (jnp.asarray(t, s.dtype)[pos] for t in rope_table(np.arange(2 * window + 1), c))  # (L, L, c/2)

    def one_row(args):
        row, si, vi, sini, cosi = args  # (), (B, L, c), (B, L), (L, c/2)
        q, k, v = _split_qkv(si, kernel, bias)
        q, k = apply_rope(q, sini, cosi), apply_rope(k, sini, cosi)
        scale = None
        if drop_key is not None and drop_rate > 0.0:  # the band's per-row mask, read in (j, j')
            scale = dense_row_prob_scale(drop_key, row, si.shape[0], length, window, drop_rate)
        return _masked_attention(q, k, v, vi, vi, scale)

    out = jax.lax.map(one_row, (idx, s.swapaxes(0, 1), valid.swapaxes(0, 1), sin, cos))
    return out.swapaxes(0, 1)


def dense_band_conv(s, kernel, window: int):
    """The band grid's 3x3 convolution written in (i, j): band neighbour (i+di, k+dk) is (i+di, j+di+dk).

    s (B, L, L, c) must be zero outside valid cells (which includes outside the band, matching the
    band grid's zero padding in k); kernel (3, 3, c, c) HWIO over (row i, band index k).
    """
    length = s.shape[1]
    padded = jnp.pad(s, ((0, 0), (1, 1), (2, 2), (0, 0)))
    out = 0.0
    for a in range(3):
        for b in range(3):
            di, dj = a - 1, (a - 1) + (b - 1)
            shifted = padded[:, 1 + di : 1 + di + length, 2 + dj : 2 + dj + length]
            out = out + shifted @ kernel[a, b]
    return out


# --------------------------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------------------------
