"""Dataset statistics (the paper's Table 1) and how many gold entities the model can represent.

An entity is representable under (window w', max_tokens, overlap) when it spans at most w' + 1
words (the band holds spans with end - start <= w', SPEC §5) and lies wholly inside at least one
segment. The others are counted by reason: `longer_than_window` first, else `crosses_cut`.

`cut="words"` is our segmentation (`segment.word_windows`: word boundaries, `overlap` shared
words). `cut="subwords"` is the original's: non-overlapping pieces of `max_tokens - 2` subword
tokens cut anywhere, an entity survives only if all its subwords are in one piece.

Command line (prints Markdown):
    python -m sener_jax.data.coverage --tokenizer ../shared/data/deberta-v3-tokenizer \\
        --window 128 --max-tokens 5120 --overlap 128 --original ../shared/data/scirex/docs.jsonl.gz
"""
from __future__ import annotations

import argparse
import collections
import os
from typing import Sequence

import numpy as np

from sener_jax.data.documents import Document
from sener_jax.data.labels import is_representable
from sener_jax.data.readers import read_documents
from sener_jax.data.segment import word_windows
from sener_jax.data.tokenizer import load_tokenizer

CUTS = ("words", "subwords")


def corpus_statistics(documents: Sequence[Document]) -> dict:
    """Table-1 statistics: documents, words per document (mean/max), entities, entity length
    (mean/max, in words), overall and per type (`per_type[label]` has entities/len_mean/len_max)."""
    words = [d.n_words for d in documents]
    lengths = collections.defaultdict(list)
    for d in documents:
        for e in d.entities:
            lengths[e.label].append(e.end - e.start)
    every = [x for v in lengths.values() for x in v]

    def summary(values):
        return {
            "entities": len(values),
            "len_mean": float(np.mean(values)) if values else 0.0,
            "len_max": int(max(values)) if values else 0,
        }

    return {
        "documents": len(documents),
        "words_mean": float(np.mean(words)) if words else 0.0,
        "words_max": int(max(words)) if words else 0,
        **summary(every),
        "per_type": {label: summary(lengths[label]) for label in sorted(lengths)},
    }


def coverage(
    documents: Sequence[Document],
    tokenizer,
    window: int,
    max_tokens: int,
    overlap_words: int,
    cut: str = "words",
) -> dict[str, dict[str, int]]:
    """{label and "ALL": {"entities", "representable", "longer_than_window", "crosses_cut"}}."""
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    budget = max_tokens - 2
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for doc in documents:
        token_counts = [min(len(ids), budget) for ids in tokenizer.encode_words(doc.words)]
        inside = _inside_one_segment(doc, token_counts, budget, overlap_words, cut)
        for entity, ok in zip(doc.entities, inside):
            if not is_representable(entity.start, entity.end, window):
                reason = "longer_than_window"
            elif not ok:
                reason = "crosses_cut"
            else:
                reason = "representable"
            for key in (entity.label, "ALL"):
                counts[key]["entities"] += 1
                counts[key][reason] += 1
    fields = ("entities", "representable", "longer_than_window", "crosses_cut")
    return {label: {f: int(c[f]) for f in fields} for label, c in sorted(counts.items())}


def _inside_one_segment(doc: Document, token_counts: list[int], budget: int, overlap: int, cut: str) -> list[bool]:
    if not doc.entities:
        return []
    starts = np.array([e.start for e in doc.entities])
    ends = np.array([e.end for e in doc.entities])
    if cut == "subwords":
        first_token = np.concatenate([[0], np.cumsum(token_counts)])
        return list(first_token[starts] // budget == (first_token[ends] - 1) // budget)
    windows = np.array(word_windows(token_counts, budget, overlap))
    # Entity [s, e) is inside window [a, b) iff a <= s and e <= b (a few windows per document).
    inside = np.zeros(len(starts), dtype=bool)
    for a, b in windows:
        inside |= (a <= starts) & (ends <= b)
    return list(inside)


def _format_table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{part} ({100.0 * part / whole:.2f}%)" if whole else "0"


def report(
    datasets: dict[str, Sequence[Document]],
    tokenizer,
    window: int,
    max_tokens: int,
    overlap_words: int,
    original: bool = True,
) -> str:
    """Markdown: Table-1 statistics and coverage per dataset and type."""
    out = ["### Table-1 statistics", ""]
    rows = []
    for name, documents in datasets.items():
        s = corpus_statistics(documents)
        rows.append([name, s["documents"], f"{s['words_mean']:.0f}", s["words_max"], s["entities"],
                     f"{s['len_mean']:.2f}", s["len_max"], len(s["per_type"])])
    out.append(_format_table(rows, ["dataset", "docs", "words/doc mean", "words/doc max", "entities",
                                    "entity len mean", "entity len max", "types"]))
    for name, documents in datasets.items():
        stats = corpus_statistics(documents)
        ours = coverage(documents, tokenizer, window, max_tokens, overlap_words, "words")
        orig = coverage(documents, tokenizer, window, max_tokens, 0, "subwords") if original else None
        plain = coverage(documents, tokenizer, window, max_tokens, 0, "words")
        header = ["type", "entities", "len mean", "len max", "longer than window",
                  f"representable (overlap {overlap_words})", "crosses cut (overlap)",
                  "representable (overlap 0, word cuts)"]
        if original:
            header += ["representable (original: subword cuts, no overlap)", "crosses cut (original)"]
        rows = []
        for label, c in ours.items():
            t = stats["per_type"].get(label, stats) if label != "ALL" else stats
            row = [label, c["entities"], f"{t['len_mean']:.2f}", t["len_max"], c["longer_than_window"],
                   _share(c["representable"], c["entities"]), c["crosses_cut"],
                   _share(plain[label]["representable"], c["entities"])]
            if original:
                row += [_share(orig[label]["representable"], c["entities"]), orig[label]["crosses_cut"]]
            rows.append(row)
        out += ["", f"### {name}: window {window} words, max {max_tokens} tokens, overlap {overlap_words} words", ""]
        out.append(_format_table(rows, header))
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Table-1 statistics and entity coverage of NER datasets.")
    parser.add_argument("paths", nargs="+", help="dataset files (any format read_documents reads; .gz ok)")
    parser.add_argument("--tokenizer", required=True, help='HF tokenizer name/dir, a saved tokenizer dir, or "synthetic"')
    parser.add_argument("--window", type=int, default=128, help="span window w' in words")
    parser.add_argument("--max-tokens", type=int, default=5120)
    parser.add_argument("--overlap", type=int, default=128, help="words shared by consecutive segments")
    parser.add_argument("--original", action="store_true", help="also show the original non-overlapping subword cuts")
    args = parser.parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    datasets = {}
    for path in args.paths:
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        datasets[f"{parent}/{os.path.basename(path)}"] = read_documents(path)
    print(report(datasets, tokenizer, args.window, args.max_tokens, args.overlap, original=args.original), end="")


if __name__ == "__main__":
    main()
