"""BiSPA dropout masks drawn in one canonical layout (the band) and mapped to the dense reference.

The band and the dense (i, j) reference of the span head must compute the same function in
training mode too (with a fixed rng), so every random mask is drawn in band coordinates and the
reference reads it through the band -> (i, j) map:

- cell dropout (after the direction merge and after the local CNN): one (B, L, K, c) mask;
  the reference reads cell (i, j) from band cell (i, j - i + w').
- attention-probability dropout (the authors drop the softmax probabilities of both the
  horizontal and the vertical attention with p = the BiSPA dropout): for row i (a band row for
  the horizontal direction, a row of the transposed band, i.e. column i of S, for the vertical
  one) a (B, K, K) mask drawn from `fold_in(rng, i)`, so the band impl can draw it one row chunk
  at a time and never holds an (L, K, K) mask. The reference row i reads query j / key j' from
  band positions (j - i + w', j' - i + w'); off-band positions are masked keys / zeroed queries
  anyway, so their (clipped) reads never matter.

Masks are the scale factors `dropout_probs(ones, rate, key)` (0 or 1 / (1 - rate)), so both impls
multiply by identical numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sener_jax.ops.attention_probs import dropout_probs


def _scale(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    return dropout_probs(jnp.ones(shape, jnp.float32), rate, key)


def band_cell_scale(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """(B, L, K, c) dropout scale factors for a band tensor of that shape."""
    return _scale(key, shape, rate)


def band_cell_keep(key: jax.Array | None, shape: tuple[int, ...], rate: float) -> jax.Array | None:
    """The kept cells of `band_cell_scale` as a bool mask (a quarter of its bytes), None when no dropout.
    The band impl draws it once per block and applies it one row chunk at a time (`apply_keep`)."""
    if key is None or rate <= 0.0:
        return None
    return jax.random.bernoulli(key, 1.0 - rate, shape)  # the draw `dropout_probs` makes


def apply_keep(x: jax.Array, keep: jax.Array | None, rate: float) -> jax.Array:
    """x * `band_cell_scale` given its bool mask (the same float32 factors: 0 or 1 / (1 - rate))."""
    if keep is None:
        return x
    return x * jnp.where(keep, jnp.float32(1.0) / jnp.float32(1.0 - rate), jnp.float32(0.0))


def dense_from_band(x: jax.Array, window: int) -> jax.Array:
    """(B, L, K, ...) -> (B, L, L, ...): S[i, j] = X[i, j - i + w'] inside the band, 0 outside."""
    length = x.shape[1]
    idx = jnp.arange(length)
    k = idx[None, :] - idx[:, None] + window  # (L, L)
    in_band = (k >= 0) & (k <= 2 * window)
    out = x[:, idx[:, None], jnp.clip(k, 0, 2 * window)]
    return jnp.where(in_band.reshape((1,) + in_band.shape + (1,) * (x.ndim - 3)), out, 0.0)


def cell_dropout(x: jax.Array, key: jax.Array | None, rate: float, window: int, band: bool) -> jax.Array:
    """Dropout of a block activation, band (B, L, K, c) or dense (B, L, L, c), with the band's mask."""
    if key is None or rate <= 0.0:
        return x
    b, length, c = x.shape[0], x.shape[1], x.shape[-1]
    scale = band_cell_scale(key, (b, length, 2 * window + 1, c), rate)
    return x * (scale if band else dense_from_band(scale, window))


def row_prob_scale(key: jax.Array, row: jax.Array, batch: int, width: int, rate: float) -> jax.Array:
    """(B, K, K) attention-prob dropout scale of row `row` (query band index, key band index)."""
    return _scale(jax.random.fold_in(key, row), (batch, width, width), rate)


def band_chunk_prob_scale(key: jax.Array, start: jax.Array, batch: int, rows: int, width: int,
                          rate: float) -> jax.Array:
    """(B, rows, K, K): the scales of band rows start .. start + rows - 1."""
    scales = jax.vmap(lambda r: row_prob_scale(key, r, batch, width, rate))(start + jnp.arange(rows))
    return scales.swapaxes(0, 1)


def dense_row_prob_scale(key: jax.Array, row: jax.Array, batch: int, length: int, window: int,
                         rate: float) -> jax.Array:
    """(B, L, L): row `row`'s band scale read at (query j, key j') = band (j - row + w', j' - row + w')."""
    band = row_prob_scale(key, row, batch, 2 * window + 1, rate)
    pos = jnp.clip(jnp.arange(length) - row + window, 0, 2 * window)
    return band[:, pos[:, None], pos[None, :]]
