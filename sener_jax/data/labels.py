"""Band-layout span labels (SPEC §3, §5) and their inverse.

Band layout (`sener_jax.band_layout`): cell `(i, k)` is the span from word i to word
`j = i + k - window` (inclusive), so `k >= window` is the upper triangle (start <= end). A gold
entity `[s, e]` (inclusive) of type r sets both `(s, window + e - s, r)` and
`(e, window - (e - s), r)` (`band_layout.span_cells`).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from sener_jax.band_layout import band_end, span_cells


def is_representable(start: int, end: int, window: int) -> bool:
    """Whether the word span `[start, end)` fits the band: `(end - 1) - start <= window`."""
    return end - 1 - start <= window


def label_type_id(label, label_to_id: Mapping[str, int]) -> int:
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    try:
        return label_to_id[label]
    except KeyError:
        raise ValueError(f"entity label {label!r} is not in the label set {sorted(label_to_id)}") from None


def band_labels(
    entities: Iterable,
    n_words: int,
    window: int,
    label_to_id: Mapping[str, int],
    num_types: int | None = None,
    skip_unrepresentable: bool = False,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Bool labels `(n_words, 2*window+1, num_types)` for `(start, end_exclusive, label)` entities.

    Entities are in segment-local word indices and must lie inside `[0, n_words)`. An entity
    longer than `window + 1` words cannot be represented: a ValueError, unless
    `skip_unrepresentable` (the caller then accounts for it; see `coverage`). Integer labels are
    taken as type ids. `out`: a zeroed array of that shape (any dtype, e.g. a uint8 batch slice)
    to fill in place instead of allocating one.
    """
    if num_types is None:
        num_types = max(label_to_id.values(), default=-1) + 1
    shape = (n_words, 2 * window + 1, num_types)
    if out is None:
        out = np.zeros(shape, dtype=bool)
    elif out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, expected {shape}")
    for entity in entities:
        start, end, label = entity[0], entity[1], entity[2]
        if not 0 <= start < end <= n_words:
            raise ValueError(f"entity {tuple(entity)!r} is not inside the segment's {n_words} words")
        if not is_representable(start, end, window):
            if skip_unrepresentable:
                continue
            raise ValueError(
                f"entity {tuple(entity)!r} spans {end - start} words, more than window + 1 = {window + 1}"
            )
        r = label_type_id(label, label_to_id)
        if not 0 <= r < num_types:
            raise ValueError(f"type id {r} of entity {tuple(entity)!r} is outside [0, {num_types})")
        for row, column in span_cells(start, end - 1, window):  # the span and its mirrored cell
            out[row, column, r] = True
    return out


def spans_from_band(labels: np.ndarray, window: int) -> list[tuple[int, int, int]]:
    """Sorted `(start, end_exclusive, type_id)` of the set cells of the upper half (k >= window)."""
    labels = np.asarray(labels)
    # nonzero over the whole contiguous array is much faster than over the strided upper half.
    rows, ks, types = np.nonzero(labels)
    upper = ks >= window
    rows, ends, types = rows[upper], band_end(rows[upper], ks[upper], window), types[upper]
    return sorted(zip(rows.tolist(), (ends + 1).tolist(), types.tolist()))
