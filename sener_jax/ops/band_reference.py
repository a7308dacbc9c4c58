"""Banded attention with an optional global key: the plain dense reference.

This module pins down the contract that every banded-attention implementation in `ops/`
(the XLA block-sparse path, the Pallas kernel) must meet. It builds full N x N logits on
purpose: it is the oracle, not something to run on long inputs.

Contract, per batch element b and head h (shapes: q, k, v (B, H, N, D); bias (B, H, N, 2w+1);
key_mask (B, N) bool; global_logit (B, H, N); global_value (B, H, D)):

    logit[i, j] = q[i] . k[j] + bias[i, j - i + w]     for |i - j| <= w and key_mask[j]
    (the caller pre-scales q and bias; nothing is scaled here)

and, when a global key is given, one extra key per query row with logit global_logit[i] and
value global_value (always valid). out[i] = softmax over the valid keys of row i, applied to
their values. A row with no valid key at all outputs zeros (never NaN).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .attention_probs import masked_softmax


def band_offsets_to_dense(bias: jax.Array, window: int, n_keys: int) -> jax.Array:
    """Scatter a (..., N, 2w+1) band into (..., N, n_keys); cells outside the band are 0."""
    n = bias.shape[-2]
    i = jnp.arange(n)[:, None]
    j = jnp.arange(n_keys)[None, :]
    offset = j - i + window
    in_band = (offset >= 0) & (offset <= 2 * window)
    gathered = jnp.take_along_axis(
        bias, jnp.broadcast_to(jnp.clip(offset, 0, 2 * window), bias.shape[:-2] + (n, n_keys)), axis=-1
    )
    return jnp.where(in_band, gathered, 0.0)


def band_validity(key_mask: jax.Array, window: int) -> jax.Array:
    """(B, N, N) bool: key j is visible from query i (inside the band and not masked)."""
    n = key_mask.shape[-1]
    i = jnp.arange(n)[:, None]
    j = jnp.arange(n)[None, :]
    in_band = jnp.abs(i - j) <= window
    return in_band[None] & key_mask[:, None, :]


def banded_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    key_mask: jax.Array,
    *,
    window: int,
    global_logit: jax.Array | None = None,
    global_value: jax.Array | None = None,
) -> jax.Array:
    """Dense N x N evaluation of the banded-attention contract (see module docstring)."""
    n = q.shape[-2]
    logits = jnp.einsum("bhid,bhjd->bhij", q, k) + band_offsets_to_dense(bias, window, n)
    valid = jnp.broadcast_to(band_validity(key_mask, window)[:, None, :, :], logits.shape)
    values = v
    if global_logit is not None:
        logits = jnp.concatenate([global_logit[..., None], logits], axis=-1)
        valid = jnp.concatenate([jnp.ones(valid.shape[:-1] + (1,), bool), valid], axis=-1)
        values = jnp.concatenate([global_value[:, :, None, :], v], axis=-2)
    # The global key is concatenated here on purpose (the oracle stays literal); rows without any
    # valid key give zeros.
    probs = masked_softmax(logits, valid, fully_masked="zeros")
    return jnp.einsum("bhij,bhjd->bhid", probs, values)
