"""Document-level entity metrics, as the paper computes them (SPEC section 9).

An entity is the tuple (document, start word, end word exclusive, type); a prediction counts as
correct only on an exact match of span and type. Gold is the whole document's entity set,
including entities the model cannot represent (longer than the span window): those are counted
as misses and also reported separately, so a low recall can be traced to them.
"""
from __future__ import annotations

import collections
from typing import Hashable, Iterable, Mapping

EntityKey = tuple[Hashable, int, int, str]  # (doc_id, start, end_exclusive, label)


def precision_recall_f1(true_positives: int, n_predicted: int, n_gold: int) -> dict:
    """P/R/F1 from counts; an empty denominator gives 0 (never NaN)."""
    precision = true_positives / n_predicted if n_predicted else 0.0
    recall = true_positives / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": int(true_positives),
        "predicted": int(n_predicted),
        "gold": int(n_gold),
    }


def _entity_set(entities_by_doc: Mapping[Hashable, Iterable]) -> set[EntityKey]:
    """Flattens {doc_id: [(start, end, label), ...]} into a set; duplicates count once."""
    keys = set()
    for doc_id, entities in entities_by_doc.items():
        for entity in entities:
            start, end, label = entity[0], entity[1], entity[2]
            keys.add((doc_id, int(start), int(end), str(label)))
    return keys


def evaluate_entities(
    gold: Mapping[Hashable, Iterable],
    predicted: Mapping[Hashable, Iterable],
    *,
    max_span_words: int | None = None,
) -> dict:
    """Micro and per-type P/R/F1 over documents.

    Args:
      gold, predicted: {doc_id: iterable of (start, end_exclusive, label, ...)}; extra tuple
        fields (such as a score) are ignored. A document missing from `predicted` has no
        predictions. Predictions for documents absent from `gold` are an error (they would
        silently count as false positives of a document nobody evaluates).
      max_span_words: the longest span the model can represent (window + 1 words). Gold
        entities longer than that stay in the gold set (the paper's convention) and are also
        counted under "unrepresentable".
    Returns:
      {"micro": {...}, "per_type": {label: {...}}, "unrepresentable": {"gold": n, "by_type": {...}},
       "documents": n}
    """
    unknown = set(predicted) - set(gold)
    if unknown:
        raise ValueError(
            f"predictions for {len(unknown)} document(s) with no gold entry, e.g. {sorted(map(str, unknown))[:3]}"
        )
    gold_keys = _entity_set(gold)
    pred_keys = _entity_set(predicted)
    correct = gold_keys & pred_keys

    labels = sorted({k[3] for k in gold_keys} | {k[3] for k in pred_keys})
    by_label = lambda keys: collections.Counter(k[3] for k in keys)  # noqa: E731
    gold_by, pred_by, tp_by = by_label(gold_keys), by_label(pred_keys), by_label(correct)
    per_type = {label: precision_recall_f1(tp_by[label], pred_by[label], gold_by[label]) for label in labels}

    unrepresentable = []
    if max_span_words is not None:
        unrepresentable = [k for k in gold_keys if k[2] - k[1] > max_span_words]
    return {
        "micro": precision_recall_f1(len(correct), len(pred_keys), len(gold_keys)),
        "per_type": per_type,
        "unrepresentable": {
            "gold": len(unrepresentable),
            "by_type": dict(sorted(by_label(unrepresentable).items())),
            "max_span_words": max_span_words,
        },
        "documents": len(gold),
    }


def format_table(results: dict, title: str = "") -> str:
    """A fixed-width per-type table with the micro average last."""
    rows = [(label, m) for label, m in results["per_type"].items()] + [("micro", results["micro"])]
    width = max([len("type")] + [len(label) for label, _ in rows])
    header = f"{'type':<{width}}  {'P':>6}  {'R':>6}  {'F1':>6}  {'tp':>6}  {'pred':>6}  {'gold':>6}"
    lines = [title] if title else []
    lines += [header, "-" * len(header)]
    for label, m in rows:
        if label == "micro":
            lines.append("-" * len(header))
        lines.append(
            f"{label:<{width}}  {100 * m['precision']:6.2f}  {100 * m['recall']:6.2f}  {100 * m['f1']:6.2f}"
            f"  {m['tp']:>6}  {m['predicted']:>6}  {m['gold']:>6}"
        )
    unrep = results.get("unrepresentable", {})
    if unrep.get("gold"):
        lines.append(
            f"{unrep['gold']} gold entities are longer than {unrep['max_span_words']} words and cannot be"
            f" predicted (counted as misses): {unrep['by_type']}"
        )
    return "\n".join(lines)
