"""Band logits -> entity spans (SPEC §6).

On device (jitted, vectorised): sigmoid, symmetric averaging P̄[i, k] = (P[i, k] + P[j, 2w'-k]) / 2
with j = i+k-w', upper half (k >= w', i.e. start <= end), valid cells, max_r P̄ >= threshold; type =
argmax, score = max. Only the fixed-size candidate list goes to the host, where spans that cross
a better one are removed greedily.

Crossing: two spans cross when they share at least one word and neither contains the other
(nested and disjoint spans are both kept). The original implementation does not count two spans
that share exactly one boundary word (e.g. words 0-2 and 2-4) as crossing; pass
`boundary_word_crosses=False` to reproduce that. Candidates are visited by their own score,
descending; ties by (start, end, type) so the result is deterministic.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sener_jax.band_layout import band_cell_mask, band_end, transpose_band

Span = tuple[int, int, int, float]  # (start, end_exclusive, type_id, score)


@functools.partial(jax.jit, static_argnames=("window", "max_candidates"))
def _device_candidates(logits, word_lengths, threshold, *, window: int, max_candidates: int):
    b, length, k, _ = logits.shape
    word_mask = jnp.arange(length)[None, :] < word_lengths[:, None]
    valid = band_cell_mask(word_mask, window)
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    sym = (probs + transpose_band(probs, window)) / 2.0  # cell (i, j) averaged with (j, i)
    score = sym.max(axis=-1)
    type_id = sym.argmax(axis=-1)
    upper = jnp.arange(k) >= window
    chosen = valid & upper & (score >= threshold)
    count = chosen.sum(axis=(1, 2))
    flat_index = jax.vmap(lambda c: jnp.nonzero(c, size=max_candidates, fill_value=0)[0])(chosen.reshape(b, -1))
    start = flat_index // k
    end_exclusive = band_end(start, flat_index % k, window) + 1
    pick = lambda a: jnp.take_along_axis(a.reshape(b, -1), flat_index, axis=1)  # noqa: E731
    return count, start, end_exclusive, pick(type_id), pick(score)


def candidate_bound(n_words: int, window: int) -> int:
    """Candidate-list size for rows of `n_words` words: 4 per word (far more spans than any gold
    data has above the threshold), capped by the L * (w' + 1) upper-half cells. Fixed per shape."""
    return min(n_words * (window + 1), max(64, 4 * n_words))


def _candidates(logits, lengths, threshold, window: int, size: int):
    return jax.device_get(_device_candidates(logits, lengths, jnp.float32(threshold), window=window, max_candidates=size))


def remove_crossing(candidates: list[Span], boundary_word_crosses: bool = True) -> list[Span]:
    """Greedy: visit by score (desc), keep a span unless it crosses an already kept one.

    Kept spans never cross each other, so a candidate [s, e] (inclusive) crosses a kept [a, b] iff
    a < s <= b < e or s < a <= e < b. Two per-word tables answer that by range queries:
    min start of the kept spans ending at each word, max end of those starting at each word.
    """
    order = sorted(candidates, key=lambda c: (-c[3], c[0], c[1], c[2]))
    if not order:
        return []
    n_words = max(c[1] for c in order)
    min_start_by_end = np.full(n_words + 1, np.iinfo(np.int64).max)
    max_end_by_start = np.full(n_words + 1, -1)
    shift = 0 if boundary_word_crosses else 1  # the original ignores sharing a single boundary word
    kept = []
    for cand in order:
        s, e = cand[0], cand[1] - 1
        # kept [a, b] with a < s and b in [s, e-1] (b in [s+1, e-1] for the original's rule)
        left = min_start_by_end[s + shift : e].min(initial=np.iinfo(np.int64).max) < s
        # kept [a, b] with a in [s+1, e] (a in [s+1, e-1]) and b > e
        right = max_end_by_start[s + 1 : e + 1 - shift].max(initial=-1) > e
        if left or right:
            continue
        kept.append(cand)
        min_start_by_end[e] = min(min_start_by_end[e], s)
        max_end_by_start[s] = max(max_end_by_start[s], e)
    return sorted(kept, key=lambda c: (c[0], c[1], c[2]))


def decode_spans(
    logits,
    word_lengths,
    window: int,
    threshold: float = 0.5,
    *,
    boundary_word_crosses: bool = True,
    max_candidates: int | None = None,
) -> list[list[Span]]:
    """logits (B, L, 2w'+1, R) band layout; word_lengths (B,) real words per row (a prefix).

    Returns, per batch row, spans (start, end_exclusive, type_id, score) in segment-local word
    indices, sorted by (start, end, type). `max_candidates` (default `candidate_bound`, fixed per
    shape) is the size of the on-device candidate list; when a row has more, it is recomputed once
    with room for every upper-half cell.
    """
    logits = jnp.asarray(logits)
    if logits.ndim != 4 or logits.shape[2] != 2 * window + 1:
        raise ValueError(f"decode_spans: expected logits (B, L, {2 * window + 1}, R) for window={window}, got {logits.shape}")
    lengths = jnp.asarray(word_lengths, jnp.int32).reshape(-1)
    if lengths.shape[0] != logits.shape[0]:
        raise ValueError(f"decode_spans: word_lengths has {lengths.shape[0]} rows, logits {logits.shape[0]}")
    n_words = logits.shape[1]
    size = max_candidates or candidate_bound(n_words, window)
    count, start, end, type_id, score = _candidates(logits, lengths, threshold, window, size)
    if count.max(initial=0) > size:
        # Overflow: more candidates than the bound. Redo with room for every upper-half cell, so a
        # shape compiles at most two programs (the bound, the full size), never a growing series.
        count, start, end, type_id, score = _candidates(logits, lengths, threshold, window,
                                                        n_words * (window + 1))
    results = []
    for row in range(logits.shape[0]):
        n = int(count[row])
        candidates = [
            (int(start[row, m]), int(end[row, m]), int(type_id[row, m]), float(score[row, m])) for m in range(n)
        ]
        results.append(remove_crossing(candidates, boundary_word_crosses))
    return results
