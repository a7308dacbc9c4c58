"""Whole-word masking as input corruption (SPEC §8): per segment, training only, seeded.

For each row: words are drawn in random order and taken whole while the tokens taken stay within
`round(fraction * tokens of the row's words)` (at least one word when the row has any); of the
taken tokens, 80% become [MASK], 10% a random regular id, 10% stay. [CLS], [SEP] and padding
(`word_index == -1`) are never touched. The original drew candidates over the whole document,
which is wrong for every segment after the first; this works on the segment's own words.

`scope="document"` reproduces the authors (`select_document_words`): the budget is 15% of the
whole document's subwords plus [CLS] and [SEP], words are drawn over the whole document, a word
that does not fit the remaining budget is skipped in favour of the next, and only the chosen
words inside the current segment are masked (so later segments get less than 15%).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def whole_word_mask(
    input_ids: np.ndarray,
    word_index: np.ndarray,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    fraction: float = 0.15,
    segments: Sequence | None = None,
) -> np.ndarray:
    """New `input_ids` (B, N) with whole words corrupted; the inputs are not modified.

    `segments` (row b's Segment, None for padding rows): given, words are drawn per document
    (`select_document_words`, the authors' scope); omitted, per row (ours)."""
    input_ids = np.asarray(input_ids)
    word_index = np.asarray(word_index)
    if input_ids.shape != word_index.shape or input_ids.ndim != 2:
        raise ValueError(f"input_ids {input_ids.shape} and word_index {word_index.shape} must be equal (B, N)")
    if segments is None:
        selected = select_whole_words(word_index, rng, fraction)
    else:
        selected = select_document_words(word_index, segments, rng, fraction)
    return corrupt_selected(input_ids, selected, rng, mask_id, vocab_size, special_ids)


def corrupt_selected(
    input_ids: np.ndarray,
    selected: np.ndarray,
    rng: np.random.Generator,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int] = (),
    mask_token: float = 0.8,
    random_token: float = 0.1,
) -> np.ndarray:
    """New `input_ids` with each selected token replaced by [MASK] (probability `mask_token`), by a
    random regular id (`random_token`) or kept (the rest): BERT's 80/10/10 rule by default."""
    if mask_token < 0 or random_token < 0 or mask_token + random_token > 1:
        raise ValueError(f"mask_token={mask_token} and random_token={random_token} must be >= 0 and sum to <= 1")
    out = np.asarray(input_ids).copy()
    decision = rng.random(out.shape)
    to_mask = selected & (decision < mask_token)
    to_random = selected & (decision >= mask_token) & (decision < mask_token + random_token)
    out[to_mask] = mask_id
    n_random = int(to_random.sum())
    if n_random:
        out[to_random] = _random_regular_ids(rng, n_random, vocab_size, special_ids)
    return out


def select_per_row(word_index: np.ndarray, rng: np.random.Generator, fraction: float, choose_words) -> np.ndarray:
    """Bool (B, N): the tokens of the words `choose_words(counts, target, rng)` picks in each row.

    `counts[w]` is word w's token count in the row, `target = max(1, round(fraction * tokens))` its
    budget; `choose_words` returns a bool per word. Rows without real tokens are skipped (no draw)."""
    selected = np.zeros(word_index.shape, dtype=bool)
    for b in range(word_index.shape[0]):
        row = word_index[b]
        real = row >= 0
        if not real.any():
            continue
        counts = np.bincount(row[real])
        target = max(1, int(round(fraction * counts.sum())))
        chosen = choose_words(counts, target, rng)
        selected[b] = real & chosen[np.where(real, row, 0)]
    return selected


def _shuffled_words_to_budget(counts: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Words in random order while their tokens stay within `target` (at least one word)."""
    words = np.nonzero(counts)[0]
    order = words[rng.permutation(len(words))]
    covered = np.cumsum(counts[order])
    n_take = max(1, int(np.searchsorted(covered, target, side="right")))
    chosen = np.zeros(counts.shape[0], dtype=bool)
    chosen[order[:n_take]] = True
    return chosen


def select_whole_words(word_index: np.ndarray, rng: np.random.Generator, fraction: float = 0.15) -> np.ndarray:
    """Bool (B, N): the tokens of the whole words chosen in each row (see the module docstring)."""
    return select_per_row(word_index, rng, fraction, _shuffled_words_to_budget)


def select_document_words(word_index: np.ndarray, segments: Sequence, rng: np.random.Generator,
                          fraction: float = 0.15) -> np.ndarray:
    """Bool (B, N): the authors' document-level choice (module docstring), restricted to each row's segment."""
    selected = np.zeros(word_index.shape, dtype=bool)
    for b, seg in enumerate(segments):
        if seg is None:
            continue
        counts = seg.document_token_counts
        if counts is None:
            raise ValueError(f"segment of {seg.doc_id!r} has no document_token_counts (built by segment_document)")
        budget = int(round(fraction * (int(counts.sum()) + 2)))  # [CLS] and [SEP] count in their budget
        chosen = np.zeros(len(counts), dtype=bool)
        for word in rng.permutation(len(counts)):
            if 0 < counts[word] <= budget:  # a word that does not fit is skipped, the next one tried
                chosen[word] = True
                budget -= int(counts[word])
        local = chosen[seg.word_start : seg.word_end]
        row = word_index[b]
        real = (row >= 0) & (row < len(local))
        selected[b] = real & local[np.where(real, row, 0)]
    return selected


def _random_regular_ids(rng: np.random.Generator, n: int, vocab_size: int, special_ids: Sequence[int]) -> np.ndarray:
    """Uniform ids from [0, vocab_size) without the special ids (drawn by index, then shifted past them)."""
    specials = np.array(sorted({int(s) for s in special_ids if 0 <= s < vocab_size}), dtype=np.int64)
    draws = rng.integers(0, vocab_size - len(specials), size=n)
    # Map the k-th regular id to its value: shift past every special <= it (specials sorted).
    for s in specials:
        draws = draws + (draws >= s)
    return draws.astype(np.int32)
