"""Attention probabilities: the masked softmax and the attention-prob dropout, written once.

Shared by the banded-attention implementations in `ops/` and by the models (`ops/` imports
nothing of ours outside `ops/`, so the models import these from here).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

FULLY_MASKED = ("zeros", "uniform")


def masked_softmax(logits: jax.Array, valid: jax.Array, *, extra_logit: jax.Array | None = None,
                   fully_masked: str = "zeros"):
    """Softmax over the entries of the last axis where `valid`.

    `fully_masked` says what a row with no valid entry gives, since callers differ:
      "zeros": zeros, never NaN (the banded-attention contract; arrow / sliding attention).
        Masked cells are replaced (not offset) so no inf/NaN reaches values or gradients.
      "uniform": the masked logits are filled with the dtype's most negative value and passed to
        `jax.nn.softmax`, so such a row is uniform over all entries. This is Hugging Face's
        masking, which "full" attention reproduces exactly; the span head uses it too (its only
        fully masked rows are invalid queries, whose outputs are zeroed afterwards).
    `extra_logit` (shape logits.shape[:-1], "zeros" only): one more always-valid entry per row
    (a global key) kept outside the last axis so the caller never concatenates it; the result is
    then (probs, extra_prob).
    """
    if fully_masked not in FULLY_MASKED:
        raise ValueError(f"masked_softmax: fully_masked must be one of {FULLY_MASKED}, got {fully_masked!r}")
    if fully_masked == "uniform":
        if extra_logit is not None:
            raise ValueError("masked_softmax: extra_logit is only supported with fully_masked='zeros'")
        return jax.nn.softmax(jnp.where(valid, logits, jnp.finfo(logits.dtype).min), axis=-1)
    logits = jnp.where(valid, logits, 0.0)
    row_max = jnp.max(jnp.where(valid, logits, -jnp.inf), axis=-1)
    if extra_logit is not None:
        row_max = jnp.maximum(row_max, extra_logit)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.where(valid, jnp.exp(logits - row_max[..., None]), 0.0)
    denom = jnp.sum(weights, axis=-1)
    if extra_logit is not None:
        extra_weight = jnp.exp(extra_logit - row_max)
        denom = denom + extra_weight
    # One reciprocal per row, then multiplies (XLA rewrites a division by a broadcast row the same way).
    inv_denom = 1.0 / jnp.where(denom > 0, denom, 1.0)
    probs = weights * inv_denom[..., None]
    if extra_logit is None:
        return probs
    return probs, extra_weight * inv_denom


def dropout_probs(probs: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """Attention-prob dropout as torch.nn.Dropout applies it: drop after normalisation, scale the
    kept ones by 1 / (1 - rate). Unchanged when `rate` <= 0 or there is no `rng` (deterministic)."""
    if rate <= 0.0 or rng is None:
        return probs
    keep = 1.0 - rate
    return jnp.where(jax.random.bernoulli(rng, keep, probs.shape), probs / keep, 0.0)
