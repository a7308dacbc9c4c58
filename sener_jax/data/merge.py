"""Merging overlapping segments' predictions into document spans (SPEC §7).

Rule, per distinct `(start, end, type)` in document word indices:
- the *witnesses* of a span are the segments that wholly contain it (only they could predict it);
- if every witness predicted it, it is kept (exact duplicates collapse to one, with the highest
  score);
- otherwise the witnesses *disagree*: a span predicted by some and not by others (this happens
  only for spans wholly inside an overlap). The witness in which the span lies farthest from the
  segment's edge — margin `min(start - segment start, segment end - end)` — decides: the span is
  kept iff that witness predicted it. On a tie of margins the span is kept if any of the tied
  witnesses predicted it.
Spans are judged independently, so nested (and crossing) spans survive as predicted; two types
on the same words are two spans.
"""
from __future__ import annotations

from typing import Sequence

from sener_jax.data.segment import Segment


def merge_segments(segments: Sequence[Segment], spans_per_segment: Sequence[Sequence[tuple]]) -> list[tuple]:
    """Document spans `(start, end, type_id[, score])`, sorted, from per-segment local spans.

    All segments must belong to one document. The output has scores iff the input has.
    """
    if len(segments) != len(spans_per_segment):
        raise ValueError(f"{len(segments)} segments but {len(spans_per_segment)} span lists")
    if len({s.doc_id for s in segments}) > 1:
        raise ValueError(f"segments of several documents: {sorted({s.doc_id for s in segments})}")
    predicted: dict[tuple[int, int, int], dict[int, float | None]] = {}
    with_scores = None
    for index, (seg, spans) in enumerate(zip(segments, spans_per_segment)):
        for span in spans:
            if len(span) not in (3, 4):
                raise ValueError(f"span {span!r} must be (start, end, type_id) or (start, end, type_id, score)")
            has_score = len(span) == 4
            if with_scores is None:
                with_scores = has_score
            elif with_scores != has_score:
                raise ValueError("spans mix (start, end, type) and (start, end, type, score) forms")
            start, end, type_id = int(span[0]), int(span[1]), int(span[2])
            if not 0 <= start < end <= seg.n_words:
                raise ValueError(f"span {span!r} is outside segment {index} ({seg.n_words} words)")
            key = (start + seg.word_start, end + seg.word_start, type_id)
            score = float(span[3]) if has_score else None
            previous = predicted.setdefault(key, {}).get(index)
            if previous is None or (score is not None and score > previous):
                predicted[key][index] = score

    merged = []
    for key, by_segment in predicted.items():
        if _kept(key, by_segment, segments):
            if with_scores:
                merged.append(key + (max(by_segment.values()),))
            else:
                merged.append(key)
    return sorted(merged)


def _kept(key: tuple[int, int, int], by_segment: dict[int, float | None], segments: Sequence[Segment]) -> bool:
    start, end, _ = key
    best_margin, best_predicted = -1, False
    for index, seg in enumerate(segments):
        if not (seg.word_start <= start and end <= seg.word_end):
            continue
        margin = min(start - seg.word_start, seg.word_end - end)
        did = index in by_segment
        if margin > best_margin:
            best_margin, best_predicted = margin, did
        elif margin == best_margin:
            best_predicted = best_predicted or did
    return best_predicted


def merge_documents(
    segments: Sequence[Segment], spans_per_segment: Sequence[Sequence[tuple]]
) -> dict[str, list[tuple]]:
    """`merge_segments` for segments of many documents: {doc_id: merged spans} (input order of docs)."""
    grouped: dict[str, tuple[list, list]] = {}
    for seg, spans in zip(segments, spans_per_segment, strict=True):
        segs, lists = grouped.setdefault(seg.doc_id, ([], []))
        segs.append(seg)
        lists.append(spans)
    return {doc_id: merge_segments(segs, lists) for doc_id, (segs, lists) in grouped.items()}
