"""Decoding band logits into spans: symmetric averaging, threshold, greedy crossing removal."""
import itertools

import numpy as np
import pytest

from sener_jax import decode
from sener_jax.decode import decode_spans, remove_crossing

W = 4
K = 2 * W + 1


def _symmetric_logits(length, n_types, spans, batch=1, row=0, base=-12.0, logits=None):
    """Band logits with both cells of each (start, end_inclusive, type[, prob]) set (SPEC §5 layout)."""
    if logits is None:
        logits = np.full((batch, length, K, n_types), base, np.float32)
    for span in spans:
        s, e, r = span[:3]
        prob = span[3] if len(span) > 3 else None
        value = 12.0 if prob is None else np.log(prob / (1 - prob))
        logits[row, s, W + (e - s), r] = value
        logits[row, e, W - (e - s), r] = value
    return logits


def test_perfect_symmetric_logits_give_back_the_gold_spans_nested_included():
    gold_rows = [
        # nested chains, single words, a span of exactly w'+1 words, a span touching the last word
        [(0, 0, 1), (0, 4, 0), (1, 3, 2), (2, 2, 1), (6, 9, 0), (7, 8, 1), (11, 11, 2)],
        [(0, 2, 0), (3, 5, 1), (3, 3, 2), (5, 5, 0)],
    ]
    lengths = [12, 6]
    logits = np.full((2, 12, K, 3), -12.0, np.float32)
    for row, gold in enumerate(gold_rows):
        _symmetric_logits(12, 3, gold, row=row, logits=logits)
    # garbage in padded words must be ignored
    logits[1, 6:] = 12.0
    decoded = decode_spans(logits, lengths, W)
    for row, gold in enumerate(gold_rows):
        assert [(s, e, r) for s, e, r, _ in decoded[row]] == sorted((s, e + 1, r) for s, e, r in gold)
        assert all(score > 0.99 for *_, score in decoded[row])


def test_crossing_spans_are_resolved_by_their_own_score():
    spans = [(2, 5, 0, 0.9), (4, 7, 1, 0.8), (3, 4, 2, 0.7), (8, 9, 0, 0.6)]
    decoded = decode_spans(_symmetric_logits(10, 3, spans), [10], W)[0]
    # (4,7) crosses the better (2,5); (3,4) crosses (4,7) but that one was dropped, and is nested in (2,5).
    assert [(s, e, r) for s, e, r, _ in decoded] == [(2, 6, 0), (3, 5, 2), (8, 10, 0)]
    np.testing.assert_allclose([sc for *_, sc in decoded], [0.9, 0.7, 0.6], rtol=1e-5)
    # the same with the scores swapped keeps the other one
    spans = [(2, 5, 0, 0.8), (4, 7, 1, 0.9)]
    decoded = decode_spans(_symmetric_logits(10, 3, spans), [10], W)[0]
    assert [(s, e, r) for s, e, r, _ in decoded] == [(4, 8, 1)]


def test_sharing_one_boundary_word_counts_as_crossing_unless_asked_otherwise():
    spans = [(0, 2, 0, 0.9), (2, 4, 1, 0.8)]
    logits = _symmetric_logits(6, 2, spans)
    assert [(s, e) for s, e, *_ in decode_spans(logits, [6], W)[0]] == [(0, 3)]
    original = decode_spans(logits, [6], W, boundary_word_crosses=False)[0]
    assert [(s, e) for s, e, *_ in original] == [(0, 3), (2, 5)]


def test_symmetric_average_and_inclusive_threshold():
    logits = np.full((1, 5, K, 1), -30.0, np.float32)
    logits[0, 1, W + 2, 0] = np.log(0.9 / 0.1)  # upper cell of span (1, 3): p = 0.9
    logits[0, 3, W - 2, 0] = np.log(0.2 / 0.8)  # its lower cell: p = 0.2 -> mean 0.55
    logits[0, 0, W, 0] = 0.0  # diagonal: both cells are the same one, p = 0.5 exactly
    logits[0, 4, W - 1, 0] = 3.0  # lower cell only, span (3, 4): mean of 0.95 and ~0 -> below 0.5
    decoded = decode_spans(logits, [5], W)[0]
    assert [(s, e) for s, e, *_ in decoded] == [(0, 1), (1, 4)]
    np.testing.assert_allclose([sc for *_, sc in decoded], [0.5, 0.55], rtol=1e-5)
    assert decode_spans(logits, [5], W, threshold=0.56)[0] == []


def test_argmax_type_and_candidate_list_growth():
    spans = [(i, i + 1, i % 3) for i in range(0, 20, 2)]
    logits = _symmetric_logits(21, 3, spans)
    logits[0, 0, W + 1, 1] = 5.0  # a weaker second type on (0, 1) on both cells
    logits[0, 1, W - 1, 1] = 5.0
    decoded = decode_spans(logits, [21], W, max_candidates=2)[0]
    assert [(s, e, r) for s, e, r, _ in decoded] == [(s, e + 1, r) for s, e, r in spans]


def test_candidate_count_never_grows_the_compiled_programs():
    """Any number of candidates on one shape: at most two programs (the bound, then the overflow size)."""
    rng = np.random.default_rng(0)
    n_words = 40
    assert decode.candidate_bound(n_words, W) == min(n_words * (W + 1), 160)
    decode._device_candidates.clear_cache()
    for density in (0.0, 0.05, 0.3, 0.6, 1.0):  # up to every upper cell over the threshold: overflow
        logits = np.where(rng.random((2, n_words, K, 2)) < density, 5.0, -5.0).astype(np.float32)
        decoded = decode_spans(logits, [n_words, n_words - 3], W)
        if density == 1.0:  # every span scores: the greedy keeps a non-crossing set of them
            assert len(decoded[0]) > 0
    assert decode._device_candidates._cache_size() == 2


def test_bad_shapes_fail_clearly():
    with pytest.raises(ValueError, match="window=4"):
        decode_spans(np.zeros((1, 3, 5, 1)), [3], W)
    with pytest.raises(ValueError, match="word_lengths"):
        decode_spans(np.zeros((1, 3, K, 1)), [3, 3], W)


def _crosses(a, b, boundary_word_crosses):
    (s1, e1), (s2, e2) = (a[0], a[1] - 1), (b[0], b[1] - 1)
    shared = min(e1, e2) - max(s1, s2) + 1
    nested = (s1 <= s2 and e2 <= e1) or (s2 <= s1 and e1 <= e2)
    return shared >= (1 if boundary_word_crosses else 2) and not nested


@pytest.mark.parametrize("boundary_word_crosses", [True, False])
def test_remove_crossing_equals_quadratic_greedy(boundary_word_crosses):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 12))
        spans = {(int(s), int(s + rng.integers(1, 6))) for s in rng.integers(0, 15, size=n)}
        candidates = [(s, e, int(rng.integers(0, 2)), float(rng.integers(1, 6)) / 6) for s, e in spans]
        expected = []
        for cand in sorted(candidates, key=lambda c: (-c[3], c[0], c[1], c[2])):
            if not any(_crosses(cand, kept, boundary_word_crosses) for kept in expected):
                expected.append(cand)
        got = remove_crossing(candidates, boundary_word_crosses)
        assert got == sorted(expected, key=lambda c: (c[0], c[1], c[2]))
        assert not any(_crosses(a, b, boundary_word_crosses) for a, b in itertools.combinations(got, 2))
