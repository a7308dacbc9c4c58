"""Length buckets chosen from the data: at most `max_buckets` (tokens, words) shapes per split.

Every distinct batch shape is one compiled training (and evaluation) program. Fixed power-of-two
buckets give up to |token buckets| x |word buckets| shapes (11 on the first SciREX epoch); here
the token lengths are cut into at most `max_buckets` groups by a small dynamic programme over
the sorted lengths that minimises the total padding, and each group's word length is the most
words of its segments, so a split compiles at most `max_buckets` programs.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def optimal_cuts(lengths: Sequence[int], max_buckets: int) -> list[int]:
    """Bucket sizes (ascending, each one of `lengths`, the last the maximum) minimising
    sum(bucket(length) - length) with at most `max_buckets` buckets. O(D^2 * K) over D distinct lengths."""
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be >= 1, got {max_buckets}")
    if not len(lengths):
        return []
    values, counts = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    d = len(values)
    prefix_n = np.concatenate([[0], np.cumsum(counts)])
    prefix_sum = np.concatenate([[0], np.cumsum(counts * values)])

    def waste(i: int, j: int) -> int:  # lengths values[i..j] padded to values[j]
        n = prefix_n[j + 1] - prefix_n[i]
        return int(n * values[j] - (prefix_sum[j + 1] - prefix_sum[i]))

    k_max = min(max_buckets, d)
    inf = np.iinfo(np.int64).max // 4
    best = np.full((k_max + 1, d), inf, dtype=np.int64)  # best[k][j]: values[0..j] in k buckets, j a cut
    back = np.zeros((k_max + 1, d), dtype=np.int64)
    for j in range(d):
        best[1][j] = waste(0, j)
    for k in range(2, k_max + 1):
        for j in range(k - 1, d):
            options = [best[k - 1][i] + waste(i + 1, j) for i in range(k - 2, j)]
            choice = int(np.argmin(options))
            best[k][j], back[k][j] = options[choice], choice + k - 2
    k = int(np.argmin(best[1:, d - 1])) + 1
    cuts, j = [], d - 1
    while k >= 1:
        cuts.append(int(values[j]))
        j, k = int(back[k][j]), k - 1
    return sorted(cuts)


@dataclasses.dataclass(frozen=True)
class BucketPlan:
    """(tokens, words) shapes, ascending; a segment takes the first whose token length holds it."""

    shapes: tuple[tuple[int, int], ...]
    padding_fraction: float  # padded token slots / all token slots, over the planned segments

    def shape_for(self, n_tokens: int, n_words: int) -> tuple[int, int]:
        for tokens, words in self.shapes:
            if n_tokens <= tokens:
                if n_words > words:
                    raise ValueError(f"a segment of {n_tokens} tokens has {n_words} words, more than its "
                                     f"bucket's {words}: plan the buckets from the segments they are used for")
                return tokens, words
        raise ValueError(f"segment of {n_tokens} tokens exceeds the largest planned bucket {self.shapes[-1]}")


def plan_buckets(token_lengths: Sequence[int], word_lengths: Sequence[int], max_buckets: int,
                 token_multiple: int = 8, word_multiple: int = 8) -> BucketPlan:
    """At most `max_buckets` shapes for segments of these (token, word) lengths, minimal token padding
    (lengths are first rounded up to the multiples, which keeps shapes friendly to the hardware)."""
    tokens = [_round_up(max(t, 1), token_multiple) for t in token_lengths]
    cuts = optimal_cuts(tokens, max_buckets)
    words_of = {}
    for t, w in zip(tokens, word_lengths):
        cut = next(c for c in cuts if t <= c)
        # capped at the token length: every word has at least one token
        words_of[cut] = max(words_of.get(cut, 0), min(_round_up(max(w, 1), word_multiple), cut))
    shapes = tuple((c, words_of[c]) for c in cuts if c in words_of)
    slots = sum(next(c for c in cuts if t <= c) for t in tokens)
    padding = 1.0 - sum(token_lengths) / slots if slots else 0.0
    return BucketPlan(shapes, padding)
