"""The prefetching iterator: same batches as the plain one, state = the next batch to train on."""
import pytest

from sener_jax.data import BatchIterator, SYNTHETIC_LABELS, generate_documents, load_tokenizer, segment_documents
from sener_jax.prefetch import Prefetcher


@pytest.fixture(scope="module")
def segments():
    tokenizer = load_tokenizer("synthetic")
    return segment_documents(generate_documents(6, seed=1, preset="tiny"), tokenizer, 96, 12)


def _iterator(segments, num_epochs=2):
    return BatchIterator(segments, 4, 0, (48, 96), (47, 94), window=16,
                         label_to_id={l: i for i, l in enumerate(SYNTHETIC_LABELS)}, label_format="spans",
                         shuffle=True, seed=3, num_epochs=num_epochs)


def _ids(batch):
    return [None if s is None else (s.doc_id, s.word_start) for s in batch.segments]


def test_prefetched_batches_and_states_equal_the_plain_iterator(segments):
    plain, placed = _iterator(segments), []
    prefetched = Prefetcher(_iterator(segments), lambda b: placed.append(1) or {"n": b.arrays["input_ids"].sum()})
    count = 0
    for batch, arrays in prefetched:
        expected = next(plain)
        assert _ids(batch) == _ids(expected) and arrays["n"] == expected.arrays["input_ids"].sum()
        # the thread runs ahead, but the recorded state is the plain iterator's after this batch
        assert prefetched.state() == plain.state()
        count += 1
    assert count == 2 * len(plain) and len(placed) == count


def test_restore_mid_epoch_resumes_exactly(segments):
    reference = [_ids(b) for b in _iterator(segments)]
    first = Prefetcher(_iterator(segments), lambda b: None)
    for _ in range(3):
        next(first)
    saved = first.state()  # what a checkpoint records, while the thread holds later batches
    first.close()
    resumed = Prefetcher(_iterator(segments), lambda b: None)
    resumed.restore(saved)
    assert [_ids(b) for b, _ in resumed] == reference[3:]


def test_errors_in_the_thread_reach_the_caller(segments):
    def place(batch):
        raise RuntimeError("transfer failed")

    with pytest.raises(RuntimeError, match="transfer failed"):
        next(Prefetcher(_iterator(segments), place))
