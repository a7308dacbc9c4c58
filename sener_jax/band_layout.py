"""The band layout of span matrices (SPEC §3): one home for its index maps, masks and gathers.

A span matrix S (L x L, entry (i, j) = the span from word i to word j, inclusive) is stored as a
band X (L, K), K = 2w'+1, with X[i, k] = S[i, j] for j = i + k - w' (`band_end`), i.e.
k = j - i + w' (`band_column`). k < w' is the lower triangle (start > end), k >= w' the diagonal
and the upper triangle. A cell is valid when j lies in [0, L) and both words are real.

Fast path (jax, on device): `gather_band`, `transpose_band`, `band_cell_mask`.
Host twins (numpy, for labels built on the host): `band_cell_mask_np`, `span_cells`; the index
maps `band_column` / `band_end` are plain arithmetic and work on ints, numpy and jax arrays.
Dense references (the (i, j) formulation tests compare the band against): `dense_cell_mask`,
`band_from_dense`.

Imports only jax and numpy, so data, model, decoding and loss code can all share it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def band_column(row, end, window: int):
    """Band column k of span (row, end) in row `row`: k = end - row + w'."""
    return end - row + window


def band_end(row, column, window: int):
    """Word j that band cell (row, column) ends at: j = row + column - w' (the inverse of `band_column`)."""
    return row + column - window


def span_cells(start, last, window: int):
    """The two band cells of the span [start, last] (inclusive): ((start, k), (last, 2w' - k)).

    The first is the span in its start's row; the second the same span seen from its end's row
    (the transposed cell, see `transpose_band`), where labels are mirrored (SPEC §5).
    """
    return (start, band_column(start, last, window)), (last, band_column(last, start, window))


# --------------------------------------------------------------------------------------------
# Device (jax) fast path.
# --------------------------------------------------------------------------------------------


def gather_band(per_word: jax.Array, window: int) -> jax.Array:
    """(B, L, F) -> (B, L, K, F) with out[b, i, k] = per_word[b, i + k - w'] (zero outside [0, L))."""
    b, length, f = per_word.shape
    k = 2 * window + 1
    return _gather_rows(per_word, jnp.arange(length)[:, None] + jnp.arange(k)[None, :] - window)


def _gather_rows(x: jax.Array, rows: jax.Array, *index) -> jax.Array:
    """x[:, rows, *index] with zeros where rows is outside [0, L). A filling gather rather than a
    gather from a zero-padded copy: no (L + 2w', K, ...) copy of a band tensor is ever made."""
    rows = jnp.where(rows < 0, x.shape[1], rows)  # negative -> past the end, so "fill" applies
    return x.at[(slice(None), rows) + index].get(mode="fill", fill_value=0)


def band_cell_mask(word_mask: jax.Array, window: int) -> jax.Array:
    """(B, L) bool -> (B, L, 2w'+1) bool: cell (i, k) is valid iff words i and j = i+k-w' exist and are real."""
    word_mask = jnp.asarray(word_mask, bool)
    return word_mask[:, :, None] & gather_band(word_mask[..., None], window)[..., 0]


def transpose_band(x: jax.Array, window: int) -> jax.Array:
    """Band layout of the transposed span matrix: out[b, i, k] = x[b, i+k-w', 2w'-k] (zero off the grid).

    Row i of the result holds column i of S (the spans that END at word i, starts i-w'..i+w'), so a
    row-wise op on the result is the column-wise op of SPEC §4.3. The map is an involution.
    """
    b, length, k = x.shape[:3]
    ks = jnp.arange(k)
    rows = jnp.arange(length)[:, None] + ks[None, :] - window  # i + k - w'
    cols = jnp.broadcast_to((2 * window - ks)[None, :], rows.shape)
    return _gather_rows(x, rows, cols)


# --------------------------------------------------------------------------------------------
# Host (numpy) twin.
# --------------------------------------------------------------------------------------------


def band_cell_mask_np(word_mask: np.ndarray, window: int) -> np.ndarray:
    """numpy twin of `band_cell_mask` (same rule, written from `band_end` instead of a gather)."""
    word_mask = np.asarray(word_mask, bool)
    length = word_mask.shape[1]
    ends = band_end(np.arange(length)[:, None], np.arange(2 * window + 1)[None, :], window)  # (L, K)
    inside = (ends >= 0) & (ends < length)
    end_real = np.take(word_mask, np.clip(ends, 0, max(length - 1, 0)), axis=1)  # (B, L, K)
    return word_mask[:, :, None] & inside[None] & end_real


# --------------------------------------------------------------------------------------------
# Dense (i, j) references.
# --------------------------------------------------------------------------------------------


def dense_cell_mask(word_mask: jax.Array, window: int) -> jax.Array:
    """(B, L) -> (B, L, L): span (i, j) is scored iff both words are real and |j - i| <= w'."""
    word_mask = jnp.asarray(word_mask, bool)
    length = word_mask.shape[1]
    idx = jnp.arange(length)
    in_band = jnp.abs(idx[None, :] - idx[:, None]) <= window
    return word_mask[:, :, None] & word_mask[:, None, :] & in_band


def band_from_dense(s, window: int):
    """(B, L, L, ...) -> (B, L, K, ...): X[i, k] = S[i, i+k-w'] (zero off the grid)."""
    b, length = s.shape[:2]
    padded = jnp.pad(s, ((0, 0), (0, 0), (window, window)) + ((0, 0),) * (s.ndim - 3))
    index = jnp.arange(length)[:, None] + jnp.arange(2 * window + 1)[None, :]
    return padded[:, jnp.arange(length)[:, None], index]


# --------------------------------------------------------------------------------------------
# Labels built on the device.
# --------------------------------------------------------------------------------------------


def band_targets(spans: jax.Array, n_words: int, window: int, num_types: int, dtype=jnp.uint8) -> jax.Array:
    """Sparse spans (B, C, 3) = (start, last, type), -1 padded -> dense band labels (B, L, 2w'+1, R).

    Both cells of each span are set (`span_cells`: the span in its start's row and, mirrored, in
    its last word's row), exactly as the host reference `data.labels.band_labels` does. Padding
    entries (type < 0) are sent off the grid and dropped by the scatter.
    """
    b = spans.shape[0]
    start, last, types = spans[..., 0], spans[..., 1], spans[..., 2]
    valid = types >= 0
    rows = jnp.concatenate([start, last], axis=1)
    cols = jnp.concatenate([band_column(start, last, window), band_column(last, start, window)], axis=1)
    rows = jnp.where(jnp.concatenate([valid, valid], axis=1), rows, n_words)  # n_words: dropped
    types = jnp.concatenate([types, types], axis=1)
    batch_index = jnp.broadcast_to(jnp.arange(b)[:, None], rows.shape)
    out = jnp.zeros((b, n_words, 2 * window + 1, num_types), dtype)
    return out.at[batch_index, rows, cols, types].set(1, mode="drop")
