"""Training loss of the span head (SPEC §5)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def span_bce_loss(logits, labels, cell_mask, row_weight=None, positive_weight: float = 1.0) -> jax.Array:
    """Binary cross-entropy with logits over the valid band cells, summed per segment, averaged over rows.

    logits (B, L, K, R) float; labels (B, L, K, R) {0, 1} (any int/bool/float dtype); cell_mask
    (B, L, K) bool (valid cells, see `band_layout.band_cell_mask`); row_weight (B,) float, default all 1: the
    result is sum_b row_weight[b] * loss_b / sum_b row_weight[b] (0 when every weight is 0), so a
    padding row given weight 0 neither adds to nor dilutes the average.
    Uses the stable form max(x, 0) - x*y + log1p(exp(-|x|)); masked cells contribute exactly 0
    to the value and the gradient whatever their logit.
    `positive_weight` multiplies the loss of positive cells (PyTorch's BCEWithLogits `pos_weight`):
    1.0 is the paper's loss; > 1 counters the ~1e4 negatives per positive cell of long documents
    when a small dataset trains from scratch (`train.positive_weight`).
    """
    if logits.shape != labels.shape or logits.shape[:3] != cell_mask.shape:
        raise ValueError(
            f"span_bce_loss: expected logits and labels (B, L, K, R) and cell_mask (B, L, K); got "
            f"logits {logits.shape}, labels {labels.shape}, cell_mask {cell_mask.shape}"
        )
    x = logits.astype(jnp.float32)
    y = labels.astype(jnp.float32)
    valid = jnp.asarray(cell_mask, bool)[..., None]
    x = jnp.where(valid, x, 0.0)  # keeps masked cells' gradients finite and exactly zero
    softplus = jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))  # -log(1 - sigmoid(x))
    if positive_weight == 1.0:
        per_cell = softplus - x * y
    else:  # y * pw * -log(sigmoid(x)) + (1 - y) * -log(1 - sigmoid(x)), -log(sigmoid(x)) = softplus - x
        per_cell = positive_weight * y * (softplus - x) + (1.0 - y) * softplus
    per_row = jnp.sum(jnp.where(valid, per_cell, 0.0), axis=(1, 2, 3))
    if row_weight is None:
        row_weight = jnp.ones(per_row.shape, jnp.float32)
    row_weight = jnp.asarray(row_weight, jnp.float32)
    if row_weight.shape != per_row.shape:
        raise ValueError(f"span_bce_loss: row_weight must have shape {per_row.shape}, got {row_weight.shape}")
    total = jnp.sum(row_weight)
    return jnp.sum(row_weight * per_row) / jnp.where(total > 0, total, 1.0)
