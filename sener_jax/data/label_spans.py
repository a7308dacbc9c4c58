"""Sparse span labels: what the host sends instead of the dense band (SPEC §5).

A batch's labels travel as `label_spans` int32 (B, C, 3): per row up to C gold spans
(start_word, last_word inclusive, type_id), padded with -1. C (the capacity) is fixed per
(tokens, words) bucket, so the compiled step sees one shape per bucket; the dense band targets
(B, L, 2w'+1, R) are built from them on the device (`band_layout.band_targets`). For a
(16, 4096, 257, 4) batch that is a few KB instead of 67 MB of uint8.

`data.labels.band_labels` stays the host reference the device-built targets are tested against.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from sener_jax.data.labels import is_representable, label_type_id

SPAN_FIELDS = 3  # (start_word, last_word, type_id)
CAPACITY_MULTIPLE = 8  # capacities are rounded up so similar buckets share a shape


def row_spans(entities: Iterable, n_words: int, window: int, label_to_id: Mapping[str, int],
              num_types: int) -> list[tuple[int, int, int]]:
    """(start, last_inclusive, type_id) of the representable entities of one segment.

    Same checks as `band_labels` (inside the segment, known type); entities longer than
    window + 1 words are left out, as `band_labels(skip_unrepresentable=True)` does.
    """
    spans = []
    for entity in entities:
        start, end, label = entity[0], entity[1], entity[2]
        if not 0 <= start < end <= n_words:
            raise ValueError(f"entity {tuple(entity)!r} is not inside the segment's {n_words} words")
        if not is_representable(start, end, window):
            continue
        r = label_type_id(label, label_to_id)
        if not 0 <= r < num_types:
            raise ValueError(f"type id {r} of entity {tuple(entity)!r} is outside [0, {num_types})")
        spans.append((int(start), int(end) - 1, r))
    return spans


def round_capacity(count: int) -> int:
    """The capacity holding `count` spans: a multiple of CAPACITY_MULTIPLE, at least one multiple."""
    return max(CAPACITY_MULTIPLE, -(-count // CAPACITY_MULTIPLE) * CAPACITY_MULTIPLE)


def representable_count(segment, window: int) -> int:
    return sum(is_representable(e.start, e.end, window) for e in segment.entities)


def pack_spans(rows: Sequence[list[tuple[int, int, int]] | None], capacity: int,
               doc_ids: Sequence[str | None]) -> np.ndarray:
    """int32 (len(rows), capacity, 3) of each row's spans, padded with -1.

    A row with more spans than `capacity` is an error naming its document (capacities are chosen
    per bucket from the data, so this means the segments changed after the capacity was chosen).
    """
    out = np.full((len(rows), capacity, SPAN_FIELDS), -1, dtype=np.int32)
    for b, spans in enumerate(rows):
        if not spans:
            continue
        if len(spans) > capacity:
            raise ValueError(
                f"document {doc_ids[b]!r}: a segment has {len(spans)} gold spans, more than the label "
                f"capacity {capacity} of its batch bucket (data.label_format='dense' avoids the limit)"
            )
        out[b, : len(spans)] = spans
    return out
