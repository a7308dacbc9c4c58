"""Cutting documents into overlapping segments at word boundaries (SPEC §7).

A segment is `[CLS] + the subwords of words [word_start, word_start + n_words) + [SEP]`, at most
`max_tokens` tokens. Consecutive segments share `overlap_words` words, so every entity of at most
`overlap_words` words (whose tokens fit in a segment) lies wholly inside at least one segment.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from sener_jax.data.documents import Document, Entity

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Segment:
    """One model input. `token_word[t]` is the local word index of token t (-1 for [CLS]/[SEP]).

    Tokens are the subwords of words `[word_start, word_end)`, all of them, except under the
    authors' subword cut, where the first and last word may be cut (some subwords elsewhere).

    `entities` are the document's gold entities lying wholly inside the segment, in local word
    indices (empty for unlabelled input).
    """

    doc_id: str
    word_start: int
    n_words: int
    input_ids: np.ndarray
    token_word: np.ndarray
    entities: tuple[Entity, ...] = ()
    # Subword count of every word of the whole document (the authors' document-level masking).
    document_token_counts: np.ndarray | None = None

    @property
    def word_end(self) -> int:
        return self.word_start + self.n_words

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def word_windows(token_counts: Sequence[int], budget: int, overlap_words: int) -> list[tuple[int, int]]:
    """Greedy word windows `[start, end)` whose token counts sum to at most `budget`.

    Each window is as long as fits; the next starts `overlap_words` words before the previous
    end (but always at least one word later, so the cut always advances). Every count must be
    <= budget. A document of no words gives one empty window.
    """
    if overlap_words < 0:
        raise ValueError(f"overlap_words must be >= 0, got {overlap_words}")
    n = len(token_counts)
    if n == 0:
        return [(0, 0)]
    cumulative = np.concatenate([[0], np.cumsum(np.asarray(token_counts, dtype=np.int64))])
    windows = []
    start = 0
    while True:
        # Largest end with cumulative[end] - cumulative[start] <= budget.
        end = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        end = max(end, start + 1)
        windows.append((start, end))
        if end >= n:
            return windows
        start = max(end - overlap_words, start + 1)


CUTS = ("words", "subwords")


def subword_pieces(token_counts: Sequence[int], budget: int) -> list[tuple[int, int, int, int]]:
    """The authors' cut (SPEC §7): every `budget` subwords, no overlap, possibly inside a word.

    Returns `(word_start, word_end, first_token, end_token)` per piece, tokens counted over the
    document's flat subword list. A word cut in two belongs to both pieces (each holds some of its
    subwords); words with no subword go with the piece before the next word that has some.
    """
    n = len(token_counts)
    total = int(sum(token_counts))
    if total == 0:
        return [(0, n, 0, 0)]
    token_word = np.repeat(np.arange(n), np.asarray(token_counts, dtype=np.int64))
    cuts = list(range(0, total, budget))
    pieces = []
    for p, lo in enumerate(cuts):
        hi = min(lo + budget, total)
        start = 0 if p == 0 else int(token_word[lo])
        end = n if p == len(cuts) - 1 else max(int(token_word[hi - 1]) + 1, int(token_word[hi]))
        pieces.append((start, end, lo, hi))
    return pieces


def segment_document(
    doc: Document, tokenizer, max_tokens: int, overlap_words: int, cut: str = "words"
) -> list[Segment]:
    """Segments of at most `max_tokens` tokens (with [CLS] and [SEP]).

    cut="words" (ours): cut between words, consecutive segments sharing `overlap_words` words.
    cut="subwords" (the authors'): every `max_tokens - 2` subwords, no overlap, inside words too;
    `overlap_words` is ignored. Gold entities are those wholly inside a segment's words.
    A single word with more than `max_tokens - 2` subwords is truncated to that many, with a
    warning naming it.
    """
    if cut not in CUTS:
        raise ValueError(f"segmentation cut must be one of {CUTS}, got {cut!r}")
    budget = max_tokens - 2
    if budget < 1:
        raise ValueError(f"max_tokens must be >= 3 ([CLS], one token, [SEP]), got {max_tokens}")
    word_ids = tokenizer.encode_words(doc.words)
    for i, ids in enumerate(word_ids):
        if len(ids) > budget:
            logger.warning(
                "document %r: word %d %r has %d subword tokens, more than a segment holds (%d): truncated",
                doc.doc_id, i, doc.words[i][:80], len(ids), budget,
            )
            word_ids[i] = ids[:budget]
    counts = [len(ids) for ids in word_ids]
    document_counts = np.asarray(counts, dtype=np.int32)  # shared by the document's segments
    by_start: dict[int, list[Entity]] = {}
    for entity in doc.entities:
        by_start.setdefault(entity.start, []).append(entity)

    flat = np.asarray([t for ids in word_ids for t in ids], dtype=np.int32)
    flat_word = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    if cut == "words":
        pieces = [(s, e, offsets[s], offsets[e]) for s, e in word_windows(counts, budget, overlap_words)]
    else:
        pieces = subword_pieces(counts, budget)
    segments = []
    for start, end, lo, hi in pieces:
        n_tokens = int(hi - lo) + 2
        input_ids = np.empty(n_tokens, dtype=np.int32)
        token_word = np.empty(n_tokens, dtype=np.int32)
        input_ids[0], token_word[0] = tokenizer.cls_id, -1
        input_ids[-1], token_word[-1] = tokenizer.sep_id, -1
        input_ids[1:-1] = flat[lo:hi]
        token_word[1:-1] = flat_word[lo:hi] - start
        local = tuple(
            Entity(e.start - start, e.end - start, e.label)
            for s in range(start, end)
            for e in by_start.get(s, ())
            if e.end <= end
        )
        segments.append(Segment(doc.doc_id, start, end - start, input_ids, token_word, local, document_counts))
    return segments


def segment_documents(
    documents: Sequence[Document], tokenizer, max_tokens: int, overlap_words: int, cut: str = "words"
) -> list[Segment]:
    return [s for d in documents for s in segment_document(d, tokenizer, max_tokens, overlap_words, cut)]
