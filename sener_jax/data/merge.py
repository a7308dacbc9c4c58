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

`rule="union"` is the authors' merge for their non-overlapping subword pieces (a word cut in two
belongs to both): same-type spans of *different* segments that share a word are replaced by their
union (transitively), score the maximum; everything else is kept as predicted.
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


MERGE_RULES = ("margin", "union")


def merge_union(segments: Sequence[Segment], spans_per_segment: Sequence[Sequence[tuple]]) -> list[tuple]:
    """The authors' merge (module docstring): spans `(start, end, type_id, score)` of one document."""
    items = []  # (start, end, type, score, segment index) in document word indices
    for index, (seg, spans) in enumerate(zip(segments, spans_per_segment, strict=True)):
        for span in spans:
            start, end = int(span[0]) + seg.word_start, int(span[1]) + seg.word_start
            items.append([start, end, int(span[2]), float(span[3]) if len(span) == 4 else None, {index}])
    changed = True
    while changed:  # join until no two same-type spans of different segments share a word
        changed = False
        for a in range(len(items)):
            for b in range(a + 1, len(items)):
                x, y = items[a], items[b]
                if x[2] == y[2] and not (x[4] & y[4]) and x[0] < y[1] and y[0] < x[1]:
                    scores = [s for s in (x[3], y[3]) if s is not None]
                    items[a] = [min(x[0], y[0]), max(x[1], y[1]), x[2], max(scores) if scores else None, x[4] | y[4]]
                    del items[b]
                    changed = True
                    break
            if changed:
                break
    best: dict[tuple, float | None] = {}
    for start, end, type_id, score, _ in items:
        key = (start, end, type_id)
        if key not in best or (score is not None and (best[key] is None or score > best[key])):
            best[key] = score
    return sorted(k if s is None else k + (s,) for k, s in best.items())


def merge_documents(
    segments: Sequence[Segment], spans_per_segment: Sequence[Sequence[tuple]], rule: str = "margin"
) -> dict[str, list[tuple]]:
    """`merge_segments` (rule "margin", ours) or `merge_union` (rule "union", the authors') for
    segments of many documents: {doc_id: merged spans} (input order of docs)."""
    if rule not in MERGE_RULES:
        raise ValueError(f"merge rule must be one of {MERGE_RULES}, got {rule!r}")
    merge = merge_segments if rule == "margin" else merge_union
    grouped: dict[str, tuple[list, list]] = {}
    for seg, spans in zip(segments, spans_per_segment, strict=True):
        segs, lists = grouped.setdefault(seg.doc_id, ([], []))
        segs.append(seg)
        lists.append(spans)
    return {doc_id: merge(segs, lists) for doc_id, (segs, lists) in grouped.items()}
