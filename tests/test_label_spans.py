"""Sparse span labels built into dense band targets on the device == the host reference band_labels."""
import jax
import numpy as np
import pytest

from sener_jax.band_layout import band_targets
from sener_jax.data import SYNTHETIC_LABELS, BatchIterator, generate_documents, label_set, load_tokenizer, read_documents, segment_documents
from sener_jax.data.batching import collate
from sener_jax.data.label_spans import pack_spans
from sener_jax.data.labels import band_labels


def _device_targets(batch, window, num_types):
    n_words = batch.arrays["word_mask"].shape[1]
    return np.asarray(jax.jit(band_targets, static_argnums=(1, 2, 3))(
        batch.arrays["label_spans"], n_words, window, num_types))


def _check_batches(segments, window, label_to_id, batch_size=4, max_tokens=512):
    """Every batch: device targets from spans == host dense labels of the same rows."""
    num_types = len(label_to_id)
    buckets = dict(token_buckets=(max_tokens // 2, max_tokens), word_buckets=(max_tokens // 4, max_tokens - 2))
    dense = BatchIterator(segments, batch_size, 0, window=window, label_to_id=label_to_id, **buckets)
    spans = BatchIterator(segments, batch_size, 0, window=window, label_to_id=label_to_id, label_format="spans",
                          **buckets)
    checked = 0
    for reference, sparse in zip(dense, spans, strict=True):
        assert "labels" not in sparse.arrays and sparse.arrays["label_spans"].dtype == np.int32
        capacity = sparse.arrays["label_spans"].shape[1]
        assert capacity == spans.label_capacity[(reference.arrays["input_ids"].shape[1],
                                                 reference.arrays["word_mask"].shape[1])]
        built = _device_targets(sparse, window, num_types)
        np.testing.assert_array_equal(built, reference.arrays["labels"])
        checked += int(reference.arrays["labels"].sum())
    assert checked > 0  # the comparison saw set cells


def _real_segments(path, n_docs, tokenizer, max_tokens=512):
    docs = list(read_documents(path))[:n_docs]
    labels = label_set(docs)
    return segment_documents(docs, tokenizer, max_tokens, 32), {l: i for i, l in enumerate(labels)}


@pytest.mark.parametrize("name,n_docs", [("scirex/docs.jsonl.gz", 3), ("scholar-xl/dev.json", 12)])
def test_device_targets_equal_host_labels_on_real_data(shared_data, name, n_docs):
    tokenizer = load_tokenizer(shared_data / "deberta-v3-tokenizer")
    segments, label_to_id = _real_segments(shared_data / name, n_docs, tokenizer)
    assert sum(len(s.entities) for s in segments) > 20
    _check_batches(segments, window=24, label_to_id=label_to_id)


@pytest.mark.parametrize("seed", range(4))
def test_device_targets_equal_host_labels_on_random_spans(seed):
    rng = np.random.default_rng(seed)
    rows, n_words, window, num_types = 5, 40, 6, 3
    spans, dense = [], np.zeros((rows, n_words, 2 * window + 1, num_types), np.uint8)
    for b in range(rows - 1):  # the last row stays empty (a padding row)
        n = int(rng.integers(0, 30))
        starts = rng.integers(0, n_words, n)
        lengths = rng.integers(1, window + 2, n)  # up to window + 1 words: all representable
        ends = np.minimum(starts + lengths, n_words)
        entities = [(int(s), int(e), int(t)) for s, e, t in zip(starts, ends, rng.integers(0, num_types, n))]
        band_labels(entities, n_words, window, {}, num_types=num_types, out=dense[b])
        spans.append([(s, e - 1, t) for s, e, t in entities])
    spans.append(None)
    packed = pack_spans(spans, 32, [f"doc{b}" for b in range(rows)])
    built = np.asarray(band_targets(packed, n_words, window, num_types))
    np.testing.assert_array_equal(built, dense)
    assert dense.sum() > 0


def test_capacity_overflow_names_the_document():
    with pytest.raises(ValueError, match="document 'paper-7'.*3 gold spans.*capacity 2"):
        pack_spans([[(0, 0, 0), (1, 2, 0), (3, 3, 1)]], 2, ["paper-7"])


def test_collate_spans_are_kilobytes_and_capacity_is_fixed_per_bucket():
    tokenizer = load_tokenizer("synthetic")
    segments = segment_documents(generate_documents(6, seed=1, preset="tiny"), tokenizer, 96, 12)
    label_to_id = {label: i for i, label in enumerate(SYNTHETIC_LABELS)}
    it = BatchIterator(segments, 4, tokenizer.pad_id, (48, 96), (47, 94), window=16, label_to_id=label_to_id,
                       label_format="spans", shuffle=True, num_epochs=2)
    shapes = {}
    for batch in it:
        key = (batch.arrays["input_ids"].shape[1], batch.arrays["word_mask"].shape[1])
        shapes.setdefault(key, set()).add(batch.arrays["label_spans"].shape)
    assert all(len(s) == 1 for s in shapes.values())  # one shape per bucket across epochs: no recompiles
    big = collate(segments[:4], 96, 94, 0, 16, label_to_id, label_capacity=64)
    assert big.arrays["label_spans"].nbytes == 4 * 64 * 3 * 4
    _check_batches(segments, 16, label_to_id, max_tokens=96)
