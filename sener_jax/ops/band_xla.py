"""Banded attention with an optional global key, block-sparse in plain JAX/XLA.

Same contract as `band_reference.banded_attention_reference` (read its docstring). Instead of
N x N logits, queries are cut into blocks of `block` rows; each query block meets only the key
blocks that can fall inside its band (its own block and `ceil(window / block)` blocks on each
side), so every tensor here is O(N * (window + block)) and memory is linear in N.

The band bias (B, H, N, 2w+1) is moved from "offset" layout into "key slot of the block window"
layout with pads and reshapes only (a skew), not a gather, so that its gradient is a plain
reshape too (no scatter-add in the backward pass).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .attention_probs import dropout_probs, masked_softmax


def _resolve_block(n: int, window: int, block: int | None) -> tuple[int, int, int]:
    """(block size, number of query blocks, neighbour key blocks on each side)."""
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    size = max(window, 1) if block is None else int(block)
    if size < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    size = max(1, min(size, n))
    n_blocks = -(-n // size)
    neighbours = min(-(-window // size), n_blocks - 1)
    return size, n_blocks, neighbours


def _pad_axis(x: jax.Array, axis: int, before: int, after: int) -> jax.Array:
    """Zero-pad one axis; negative widths crop (lax.pad semantics)."""
    widths = [(0, 0, 0)] * x.ndim
    widths[axis] = (before, after, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), widths)


def _key_windows(x: jax.Array, size: int, n_blocks: int, neighbours: int) -> jax.Array:
    """(..., n_blocks * size, F) -> (..., n_blocks, (2 * neighbours + 1) * size, F).

    Window of query block c = key blocks c - neighbours .. c + neighbours (zeros outside).
    """
    halo = neighbours * size
    padded = _pad_axis(x, x.ndim - 2, halo, halo)
    blocks = padded.reshape(x.shape[:-2] + (n_blocks + 2 * neighbours, size, x.shape[-1]))
    shifted = [blocks[..., s : s + n_blocks, :, :] for s in range(2 * neighbours + 1)]
    return jnp.concatenate(shifted, axis=-2)


def _band_to_slots(bias_blocks: jax.Array, window: int, size: int, neighbours: int) -> jax.Array:
    """Skew (..., size, 2w+1) band rows into (..., size, K) key slots, K = (2 * neighbours + 1) * size.

    Query row r of a block sits at key slot t = r + neighbours * size; band offset d (key i + d - w)
    therefore lands in slot t = d + r + neighbours * size - w. Cells outside the band are 0.
    """
    width = 2 * window + 1
    lead = bias_blocks.shape[:-2]
    # Shift row r right by r: pad each row with `size` zeros, flatten, drop the tail, re-split.
    padded = _pad_axis(bias_blocks, bias_blocks.ndim - 1, 0, size)
    flat = padded.reshape(lead + (size * (width + size),))[..., : size * (width + size - 1)]
    skewed = flat.reshape(lead + (size, width + size - 1))
    # Negative when the band reaches past every key block (window > N): then crop instead.
    margin = neighbours * size - window
    return _pad_axis(skewed, skewed.ndim - 1, margin, margin)


def _static_band_mask(window: int, size: int, neighbours: int) -> np.ndarray:
    """(size, K) bool: key slot t is inside the +-window band of query row r."""
    rows = np.arange(size)[:, None]
    slots = np.arange((2 * neighbours + 1) * size)[None, :]
    offset = slots - neighbours * size - rows + window
    return (offset >= 0) & (offset <= 2 * window)


def banded_attention_xla(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    key_mask: jax.Array,
    *,
    window: int,
    global_logit: jax.Array | None = None,
    global_value: jax.Array | None = None,
    block: int | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Block-sparse banded attention; see the module docstring and `band_reference`.

    `block` is the query block size (default: the window, at least 1). Optional attention-prob
    dropout (`dropout_rate` > 0 with `dropout_rng`) drops probabilities after normalisation
    and rescales by 1 / (1 - rate), as torch.nn.Dropout does on attention probs.
    """
    batch, heads, n, dim = q.shape
    if bias.shape != (batch, heads, n, 2 * window + 1):
        raise ValueError(f"bias must have shape {(batch, heads, n, 2 * window + 1)}, got {bias.shape}")
    if key_mask.shape != (batch, n):
        raise ValueError(f"key_mask must have shape {(batch, n)}, got {key_mask.shape}")
    if (global_logit is None) != (global_value is None):
        raise ValueError("global_logit and global_value must be given together")
    size, n_blocks, neighbours = _resolve_block(n, window, block)
    n_padded = n_blocks * size
    extra = n_padded - n

    q_blocks = _pad_axis(q, 2, 0, extra).reshape(batch, heads, n_blocks, size, dim)
    k_windows = _key_windows(_pad_axis(k, 2, 0, extra), size, n_blocks, neighbours)
    v_windows = _key_windows(_pad_axis(v, 2, 0, extra), size, n_blocks, neighbours)
    mask_windows = _key_windows(
        _pad_axis(key_mask.astype(jnp.float32), 1, 0, extra)[..., None], size, n_blocks, neighbours
    )[..., 0] > 0.5  # (B, n_blocks, K)
    # The bias keeps its own dtype (a bfloat16 bias stays half the size) through the padding and
    # the skew; it joins the float32 logits only in the fused add.
    bias_blocks = _pad_axis(bias, 2, 0, extra).reshape(batch, heads, n_blocks, size, 2 * window + 1)

    logits = jnp.einsum("bhcrd,bhctd->bhcrt", q_blocks, k_windows, preferred_element_type=jnp.float32)
    logits = logits + _band_to_slots(bias_blocks, window, size, neighbours).astype(jnp.float32)
    valid = jnp.asarray(_static_band_mask(window, size, neighbours))[None, None, None] & mask_windows[:, None, :, None, :]
    if global_logit is None:
        probs = masked_softmax(logits, valid, fully_masked="zeros")
    else:  # the global key stays outside the slot axis (no concatenation of the key windows)
        global_blocks = _pad_axis(global_logit.astype(jnp.float32), 2, 0, extra).reshape(batch, heads, n_blocks, size)
        probs, global_prob = masked_softmax(logits, valid, extra_logit=global_blocks, fully_masked="zeros")
    if dropout_rate > 0.0:
        if dropout_rng is None:
            raise ValueError("dropout_rate > 0 needs dropout_rng")
        band_rng, global_rng = jax.random.split(dropout_rng)
        probs = dropout_probs(probs, dropout_rate, band_rng)
        if global_logit is not None:
            global_prob = dropout_probs(global_prob, dropout_rate, global_rng)
    out = jnp.einsum("bhcrt,bhctd->bhcrd", probs.astype(v.dtype), v_windows, preferred_element_type=jnp.float32)
    if global_logit is not None:
        out = out + global_prob[..., None] * global_value[:, :, None, None, :].astype(jnp.float32)
    out = out.reshape(batch, heads, n_padded, dim)[:, :, :n]
    return out.astype(q.dtype)
