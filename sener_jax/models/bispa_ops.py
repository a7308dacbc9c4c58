"""The span head's computations as plain functions: RoPE, BiSPA row attention on the band and its
literal (L, L) reference, the banded biaffine, the band convolution's reference, row chunking.

`models/span_head.py` wires them into Flax modules; keeping the functions here keeps each file
readable and lets tests and benchmarks call one computation at a time.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.extend.core as jex_core
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


def map_row_chunks(fn, row_chunk: int, *arrays, halo: int | tuple[int, ...] = 0):
    """Apply fn(start, *chunks) to `row_chunk` rows (axis 1) at a time, writing each chunk's result in place.

    arrays: (B, L, ...) each, zero-padded to a whole number of chunks; fn gets the chunks
    (B, C + 2*halo, ...): rows start - halo .. start + C + halo - 1, zeros (False) outside [0, L),
    and the first row index `start` of the chunk, and returns (B, C, ...). `halo`: one int, or one
    per array.

    Memory: a loop whose forward `dynamic_update_slice`s each chunk's result into one (B, L, ...)
    buffer, and whose backward (`_chunk_loop`'s custom VJP) recomputes one chunk at a time and adds
    its input gradients in place into (B, L, ...) buffers. Only the arrays are saved, only one
    chunk's intermediates ever exist, and no (n_chunks, B, C, ...) stack is built (`lax.map` built
    several; autodiff of a plain loop made zero-filled gradient accumulators that XLA:CPU
    allocated up front, all live at once).
    """
    length = arrays[0].shape[1]
    chunk, n_chunks = _row_chunking(length, row_chunk)
    pad = n_chunks * chunk - length
    halos = (halo,) * len(arrays) if isinstance(halo, int) else tuple(halo)
    arrays = tuple(x if not (pad or h) else jnp.pad(x, ((0, 0), (h, pad + h)) + ((0, 0),) * (x.ndim - 2))
                   for x, h in zip(arrays, halos))

    def one_chunk(start, *full):
        return fn(start, *(jax.lax.dynamic_slice_in_dim(x, start, chunk + 2 * h, axis=1) for x, h in zip(full, halos)))

    # Every closed-over value (parameters, tables, dropout keys) becomes an explicit input, so the
    # custom VJP differentiates the float ones and no tracer leaks into its backward trace.
    closed = jax.make_jaxpr(one_chunk)(jnp.int32(0), *arrays)
    n = len(arrays)

    def converted(start, *args):
        # jax.extend.core: jax.core's jaxpr helpers are deprecated from jax 0.10 on.
        return jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(closed.jaxpr, args[n:]))(start, *args[:n])[0]

    out = _chunk_loop(converted, chunk, n_chunks, halos, tuple(closed.consts), arrays)
    return out[:, :length] if pad else out


def _zeros_after(shape, dtype, dependency):
    """Zeros of `shape` computed from `dependency` (0 * its first element): a fresh loop buffer that
    cannot exist before `dependency` does. Plain zeros are one constant that XLA:CPU copies for
    every loop at the start of the backward pass, all live at once (~9 (L, K, c) buffers per
    block). A non-finite first element would make them NaN, as it makes the gradient anyway."""
    first = jax.lax.stop_gradient(dependency).ravel()[0]
    return jnp.broadcast_to((first * 0).astype(dtype), shape)


def _differentiable(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _chunk_loop(fn, chunk, n_chunks, halo, consts, arrays):
    out_spec = jax.eval_shape(fn, jnp.int32(0), *arrays, *consts)
    first_float = next((a for a in arrays if _differentiable(a)), jnp.zeros((1,), out_spec.dtype))
    out = _zeros_after(out_spec.shape[:1] + (n_chunks * chunk,) + out_spec.shape[2:], out_spec.dtype, first_float)

    def body(i, out):
        return jax.lax.dynamic_update_slice_in_dim(out, fn(i * chunk, *arrays, *consts), i * chunk, axis=1)

    return jax.lax.fori_loop(0, n_chunks, body, out)


def _chunk_loop_fwd(fn, chunk, n_chunks, halo, consts, arrays):
    return _chunk_loop(fn, chunk, n_chunks, halo, consts, arrays), (consts, arrays)


def _chunk_loop_bwd(fn, chunk, n_chunks, halo, residuals, g):
    consts, arrays = residuals
    diff_c = [i for i, c in enumerate(consts) if _differentiable(c)]
    diff_a = [i for i, a in enumerate(arrays) if _differentiable(a)]

    def body(i, carry):
        d_consts, d_arrays = carry
        start = i * chunk
        sliced = [jax.lax.dynamic_slice_in_dim(a, start, chunk + 2 * h, axis=1) for a, h in zip(arrays, halo)]

        def chunk_fn(c_vals, a_vals):  # fn of the differentiable consts and this chunk's rows
            cs, ch = list(consts), list(sliced)
            for j, v in zip(diff_c, c_vals):
                cs[j] = v
            for j, v in zip(diff_a, a_vals):
                ch[j] = v
            return fn(start, *ch, *cs)

        _, vjp = jax.vjp(chunk_fn, [consts[j] for j in diff_c], [sliced[j] for j in diff_a])
        dc, da = vjp(jax.lax.dynamic_slice_in_dim(g, start, chunk, axis=1))
        d_consts = [acc + d for acc, d in zip(d_consts, dc)]
        d_arrays = [
            jax.lax.dynamic_update_slice_in_dim(acc, jax.lax.dynamic_slice_in_dim(acc, start, d.shape[1], axis=1) + d,
                                                start, axis=1)
            for acc, d in zip(d_arrays, da)
        ]
        return d_consts, d_arrays

    init = ([jnp.zeros_like(consts[j]) for j in diff_c],
            [_zeros_after(arrays[j].shape, arrays[j].dtype, g) for j in diff_a])
    d_consts, d_arrays = jax.lax.fori_loop(0, n_chunks, body, init)
    out_c, out_a = [None] * len(consts), [None] * len(arrays)
    for j, d in zip(diff_c, d_consts):
        out_c[j] = d
    for j, d in zip(diff_a, d_arrays):
        out_a[j] = d
    return tuple(out_c), tuple(out_a)


_chunk_loop.defvjp(_chunk_loop_fwd, _chunk_loop_bwd)


def band_row_attention(x, valid, kernel, bias, row_chunk: int, drop_key=None, drop_rate: float = 0.0,
                       prep=None, halo: int = 0, post=None, extra=()):
    """Attention along k within each band row, RoPE position = k. x (B, L, K, c), valid (B, L, K).

    Rows go `row_chunk` at a time through `map_row_chunks`, so only one chunk's (chunk, K, K)
    maps ever exist and the saved residuals are O(L*K*c) in all. `drop_key`: attention-prob
    dropout, its masks drawn per row (`bispa_dropout`), also one chunk at a time.
    `prep(x_chunk, valid_chunk) -> (rows, valid rows)`: builds the attended rows from the chunk's
    rows of x (with `halo` extra rows each side), e.g. the embedding or the band transpose, so
    that its (L, K, c) result never exists whole. `post(out_chunk, x_chunk, valid_chunk, *extra_chunks)`:
    applied to each chunk's attention output (with the chunks of the `extra` (B, L, ...) arrays,
    no halo), so that what follows the attention per cell need not exist whole either.
    """
    kk, c = x.shape[2:]
    sin, cos = (jnp.asarray(t, x.dtype) for t in rope_table(np.arange(kk), c))

    def chunk_fn(start, x_rows, v_rows, *extra_chunks):  # (B, C [+ 2 halo], K, c), (B, C [+ 2 halo], K)
        xc, vc = (x_rows, v_rows) if prep is None else prep(x_rows, v_rows)
        q, k, v = _split_qkv(xc, kernel, bias)
        q, k = apply_rope(q, sin, cos), apply_rope(k, sin, cos)
        scale = None
        if drop_key is not None and drop_rate > 0.0:
            scale = band_chunk_prob_scale(drop_key, start, xc.shape[0], xc.shape[1], kk, drop_rate)
        out = _masked_attention(q, k, v, vc, vc, scale)
        return out if post is None else post(out, x_rows, v_rows, *extra_chunks)

    return map_row_chunks(chunk_fn, row_chunk, x, valid, *extra, halo=(halo, halo) + (0,) * len(extra))


def transpose_band_rows(x_halo, window: int):
    """`transpose_band` of a row chunk from its rows with a `window`-row halo each side (zeros past
    the ends): (B, C + 2w', K, ...) -> (B, C, K, ...), out[r, k] = x_halo[r + k, 2w' - k]."""
    rows = x_halo.shape[1] - 2 * window
    ks = np.arange(2 * window + 1)
    return x_halo[:, np.arange(rows)[:, None] + ks[None, :], 2 * window - ks[None, :]]


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
