"""Length buckets chosen from the data: optimal padding for at most max_buckets shapes."""
import itertools

import numpy as np
import pytest

from sener_jax.data import BatchIterator, load_tokenizer, read_documents, segment_documents
from sener_jax.data.bucket_plan import optimal_cuts, plan_buckets
from sener_jax.export import InferenceSettings


def _waste(lengths, cuts):
    return sum(min(c for c in cuts if c >= t) - t for t in lengths)


@pytest.mark.parametrize("seed", range(6))
def test_cuts_are_optimal_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 60, int(rng.integers(1, 25))).tolist()
    values = sorted(set(lengths))
    for k in (1, 2, 3, 4):
        cuts = optimal_cuts(lengths, k)
        assert len(cuts) <= k and cuts[-1] == max(lengths) and set(cuts) <= set(values)
        best = min(_waste(lengths, list(c) + [max(lengths)])
                   for r in range(0, min(k, len(values)))
                   for c in itertools.combinations(values[:-1], r))
        assert _waste(lengths, cuts) == best


def test_plan_shapes_hold_their_segments_and_report_padding():
    tokens, words = [10, 20, 30, 200, 210], [5, 19, 2, 100, 150]
    plan = plan_buckets(tokens, words, 2)
    assert plan.shapes == ((32, 24), (216, 152))
    assert plan.padding_fraction == pytest.approx(1 - sum(tokens) / (3 * 32 + 2 * 216))
    assert plan.shape_for(200, 150) == (216, 152)
    with pytest.raises(ValueError, match="more than its bucket's 24"):
        plan.shape_for(20, 30)


def test_scirex_first_epoch_compiles_at_most_four_shapes(shared_data):
    """The shared SciREX docs (a subset, for CPU time) at 5,120 tokens: <= 4 shapes instead of the fixed buckets' many."""
    tokenizer = load_tokenizer(shared_data / "deberta-v3-tokenizer")
    docs = list(read_documents(shared_data / "scirex/docs.jsonl.gz"))[:40]
    settings = InferenceSettings(max_tokens=5120, overlap_words=128)
    segments = segment_documents(docs, tokenizer, settings.max_tokens, settings.overlap_words)
    token_buckets, word_buckets = settings.buckets()
    fixed = BatchIterator(segments, 16, 0, token_buckets, word_buckets)
    planned = BatchIterator(segments, 16, 0, token_buckets, word_buckets, bucket_plan=settings.bucket_plan(segments, 4))
    assert len(planned.bucket_shapes()) <= 4 < len(fixed.bucket_shapes())
    every = list(range(len(segments)))
    assert sorted(i for _, m in planned.epoch_plan(0) for i in m) == every == sorted(i for _, m in fixed.epoch_plan(0) for i in m)
    for batch in planned:
        n, l = batch.arrays["input_ids"].shape[1], batch.arrays["word_mask"].shape[1]
        assert n % 128 == 0 and all(s is None or (s.n_tokens <= n and s.n_words <= l) for s in batch.segments)
