"""Batching (buckets, padding, labels, shuffling, sharding, resume) and whole-word masking."""
import json

import numpy as np
import pytest

from sener_jax.data import (
    BatchIterator,
    MaskingConfig,
    SYNTHETIC_LABELS,
    band_labels,
    bucket_for,
    generate_documents,
    length_buckets,
    load_tokenizer,
    make_batches,
    segment_documents,
    select_whole_words,
    whole_word_mask,
)

WINDOW = 16
LABEL_TO_ID = {label: i for i, label in enumerate(SYNTHETIC_LABELS)}


@pytest.fixture(scope="module")
def setup():
    tokenizer = load_tokenizer("synthetic")
    documents = generate_documents(6, seed=1, preset="tiny")
    segments = segment_documents(documents, tokenizer, max_tokens=96, overlap_words=12)
    # The fixed buckets training uses (InferenceSettings.buckets): powers of two up to max_tokens, and
    # up to max_tokens - 2 words ([CLS]/[SEP] hold none).
    token_buckets, word_buckets = length_buckets(96, 16), length_buckets(96 - 2, 8)
    return tokenizer, segments, token_buckets, word_buckets


def _iterator(setup, **kwargs):
    tokenizer, segments, token_buckets, word_buckets = setup
    options = dict(batch_size=4, pad_id=tokenizer.pad_id, token_buckets=token_buckets, word_buckets=word_buckets,
                   window=WINDOW, label_to_id=LABEL_TO_ID)
    options.update(kwargs)
    return BatchIterator(segments, **options)


def test_buckets():
    assert length_buckets(300, 64) == (64, 128, 256, 300)
    assert length_buckets(256, 64) == (64, 128, 256)
    assert bucket_for(65, (64, 128)) == 128 and bucket_for(1, (64, 128)) == 64
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        bucket_for(129, (64, 128))


def test_batches_hold_every_segment_once_with_exact_arrays(setup):
    tokenizer, segments, token_buckets, word_buckets = setup
    iterator = _iterator(setup)
    batches = list(iterator)
    assert len(batches) == len(iterator) > 2
    shapes = {b.arrays["input_ids"].shape[1:] + b.arrays["word_mask"].shape[1:] for b in batches}
    assert shapes == set(iterator.bucket_shapes()) and len(shapes) <= 4
    seen = []
    for batch in batches:
        a = batch.arrays
        n_tokens, n_words = a["input_ids"].shape[1], a["word_mask"].shape[1]
        assert n_tokens in token_buckets and n_words in word_buckets and n_tokens % 16 == 0
        assert a["input_ids"].dtype == np.int32 and a["attention_mask"].dtype == np.int32
        assert a["word_index"].dtype == np.int32 and a["word_mask"].dtype == bool
        assert a["labels"].dtype == np.uint8
        assert a["labels"].shape == (4, n_words, 2 * WINDOW + 1, len(SYNTHETIC_LABELS))
        for b, seg in enumerate(batch.segments):
            if seg is None:  # padding row
                assert not a["word_mask"][b].any() and not a["attention_mask"][b].any()
                assert (a["input_ids"][b] == tokenizer.pad_id).all() and (a["word_index"][b] == -1).all()
                assert not a["labels"][b].any()
                continue
            seen.append(id(seg))
            t, w = seg.n_tokens, seg.n_words
            assert (a["input_ids"][b, :t] == seg.input_ids).all() and (a["input_ids"][b, t:] == 0).all()
            assert a["attention_mask"][b].sum() == t and a["attention_mask"][b, :t].all()
            assert (a["word_index"][b, :t] == seg.token_word).all() and (a["word_index"][b, t:] == -1).all()
            assert a["word_mask"][b].sum() == w and a["word_mask"][b, :w].all()
            expected = band_labels(seg.entities, w, WINDOW, LABEL_TO_ID, skip_unrepresentable=True)
            assert (a["labels"][b, :w] == expected).all() and not a["labels"][b, w:].any()
        assert batch.row_valid.tolist() == [s is not None for s in batch.segments]
    assert sorted(seen) == sorted(id(s) for s in segments)
    # make_batches is the same unshuffled pass.
    again = make_batches(segments, 4, 0, token_buckets, word_buckets, window=WINDOW, label_to_id=LABEL_TO_ID)
    assert [[id(s) for s in b.segments] for b in again] == [[id(s) for s in b.segments] for b in batches]


def _order(iterator, n):
    return [tuple(-1 if s is None else s.word_start * 1000 + hash(s.doc_id) % 997 for s in next(iterator).segments)
            for _ in range(n)]


def test_shuffling_is_seeded_per_epoch(setup):
    n = len(_iterator(setup))
    first = _order(_iterator(setup, shuffle=True, seed=5, num_epochs=2), 2 * n)
    assert first == _order(_iterator(setup, shuffle=True, seed=5, num_epochs=2), 2 * n)
    assert first[:n] != first[n:]  # a new order each epoch
    assert first[:n] != _order(_iterator(setup), n)  # differs from the unshuffled pass
    assert first != _order(_iterator(setup, shuffle=True, seed=6, num_epochs=2), 2 * n)


def test_resume_continues_exactly(setup):
    tokenizer = setup[0]
    masking = MaskingConfig(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    kwargs = dict(shuffle=True, seed=11, num_epochs=3, masking=masking)
    reference = list(_iterator(setup, **kwargs))
    k = len(reference) // 3 + 2  # stop inside the second epoch
    running = _iterator(setup, **kwargs)
    for _ in range(k):
        next(running)
    saved = json.dumps(running.state())
    fresh = _iterator(setup, **kwargs)
    fresh.restore(json.loads(saved))
    rest = list(fresh)
    assert len(rest) == len(reference) - k
    for got, want in zip(rest, reference[k:]):
        assert [id(s) for s in got.segments] == [id(s) for s in want.segments]
        for key in want.arrays:
            np.testing.assert_array_equal(got.arrays[key], want.arrays[key])
    with pytest.raises(ValueError, match="seed"):
        fresh.restore({"epoch": 0, "position": 0, "seed": 12})


def test_host_shards_partition_each_global_batch(setup):
    whole = _iterator(setup, shuffle=True, seed=3)
    shards = [whole.shard(i, 2) for i in range(2)]
    for batch in whole:
        parts = [next(s) for s in shards]
        assert [id(s) for p in parts for s in p.segments] == [id(s) for s in batch.segments]
        for key in batch.arrays:
            np.testing.assert_array_equal(np.concatenate([p.arrays[key] for p in parts]), batch.arrays[key])
    with pytest.raises(ValueError, match="multiple of process_count"):
        _iterator(setup, process_count=3)


# -- whole-word masking ---------------------------------------------------------------------------
def _random_rows(rng, rows=64, n=512, vocab=1000):
    word_index = np.full((rows, n), -1, np.int32)
    input_ids = np.zeros((rows, n), np.int32)
    for b in range(rows):
        lengths = rng.integers(1, 5, size=n)
        owner = np.repeat(np.arange(n), lengths)
        length = int(rng.integers(n // 4, n - 1))
        word_index[b, 1:length] = owner[: length - 1]
        input_ids[b, 0], input_ids[b, length] = 1, 2
        input_ids[b, 1:length] = rng.integers(5, vocab, size=length - 1)
    return input_ids, word_index


def test_whole_word_masking_statistics():
    rng = np.random.default_rng(0)
    input_ids, word_index = _random_rows(rng)
    before = input_ids.copy()
    out = whole_word_mask(input_ids, word_index, np.random.default_rng(7), mask_id=4, vocab_size=1000,
                          special_ids=(0, 1, 2, 3, 4))
    np.testing.assert_array_equal(input_ids, before)  # inputs untouched
    same = whole_word_mask(input_ids, word_index, np.random.default_rng(7), 4, 1000, (0, 1, 2, 3, 4))
    np.testing.assert_array_equal(out, same)  # seeded
    selected = select_whole_words(word_index, np.random.default_rng(7))
    changed = out != input_ids
    assert not changed[word_index < 0].any()  # [CLS], [SEP], padding never touched
    assert not (changed & ~selected).any()
    for b in range(len(out)):
        real = word_index[b] >= 0
        share = selected[b].sum() / real.sum()
        assert 0.15 - 4 / real.sum() - 1e-9 <= share <= 0.15 + 0.5 / real.sum()
        # Whole words: every word is either wholly selected or not at all.
        words = word_index[b][real]
        per_word = np.bincount(words, weights=selected[b][real])
        assert np.all((per_word == 0) | (per_word == np.bincount(words)))
    chosen = out[selected]
    n = chosen.size
    masked = (chosen == 4).mean()
    unchanged = (chosen == input_ids[selected]).mean()
    randomised = 1 - masked - unchanged
    # Binomial standard error at n ~ 3,000 is under 1%: 4 sigma bounds.
    assert n > 2000
    assert abs(masked - 0.8) < 0.03 and abs(unchanged - 0.1) < 0.025 and abs(randomised - 0.1) < 0.025
    replaced = chosen[(chosen != 4) & (chosen != input_ids[selected])]
    assert replaced.min() >= 5 and replaced.max() < 1000


def test_masking_in_the_iterator_is_resampled_every_step(setup):
    tokenizer = setup[0]
    masking = MaskingConfig(tokenizer.mask_id, tokenizer.vocab_size, tokenizer.special_ids)
    plain = list(_iterator(setup, num_epochs=2))
    masked = list(_iterator(setup, num_epochs=2, masking=masking))
    n = len(plain) // 2
    for p, m in zip(plain, masked):
        diff = p.arrays["input_ids"] != m.arrays["input_ids"]
        assert diff.any() and not diff[p.arrays["word_index"] < 0].any()
    # Same segments in both epochs (no shuffle), different masks.
    assert any((masked[i].arrays["input_ids"] != masked[i + n].arrays["input_ids"]).any() for i in range(n))
