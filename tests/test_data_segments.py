"""Segmentation, band labels and merging: real-data round trips, properties, hand-made cases."""
import functools
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sener_jax.data import (
    Document,
    Entity,
    Segment,
    Tokenizer,
    band_labels,
    merge_documents,
    merge_segments,
    read_documents,
    segment_document,
    spans_from_band,
)

WINDOW = 128


@functools.lru_cache(maxsize=1)
def _deberta(path: str) -> Tokenizer:
    return Tokenizer.from_pretrained(path)


@functools.lru_cache(maxsize=None)
def _documents(path: str):
    return read_documents(path)


def _check_segment_invariants(doc, segments, tokenizer, max_tokens, overlap):
    encodings = tokenizer.encode_words(doc.words)
    assert segments[0].word_start == 0 and segments[-1].word_end == doc.n_words
    for prev, seg in zip(segments, segments[1:]):
        assert seg.word_start == max(prev.word_end - overlap, prev.word_start + 1)
    for seg in segments:
        assert seg.doc_id == doc.doc_id and seg.n_tokens <= max_tokens
        assert seg.input_ids.dtype == np.int32 and seg.token_word.dtype == np.int32
        assert seg.input_ids[0] == tokenizer.cls_id and seg.input_ids[-1] == tokenizer.sep_id
        assert seg.token_word[0] == -1 and seg.token_word[-1] == -1
        expected_ids = [t for ids in encodings[seg.word_start:seg.word_end] for t in ids]
        assert seg.input_ids[1:-1].tolist() == expected_ids
        expected_words = [i for i, ids in enumerate(encodings[seg.word_start:seg.word_end]) for _ in ids]
        assert seg.token_word[1:-1].tolist() == expected_words
        inside = sorted(
            (e.start - seg.word_start, e.end - seg.word_start, e.label)
            for e in doc.entities if seg.word_start <= e.start and e.end <= seg.word_end
        )
        assert sorted(seg.entities) == inside


def _round_trip(documents, tokenizer, max_tokens, overlap, check_invariants_every=1):
    """document -> segments -> band labels -> spans_from_band -> merge == representable gold."""
    labels = sorted({e.label for d in documents for e in d.entities})
    label_to_id = {label: i for i, label in enumerate(labels)}
    n_segments = 0
    for n, doc in enumerate(documents):
        segments = segment_document(doc, tokenizer, max_tokens, overlap)
        n_segments += len(segments)
        if n % check_invariants_every == 0:
            _check_segment_invariants(doc, segments, tokenizer, max_tokens, overlap)
        predicted = [
            spans_from_band(band_labels(s.entities, s.n_words, WINDOW, label_to_id, skip_unrepresentable=True), WINDOW)
            for s in segments
        ]
        merged = merge_segments(segments, predicted)
        gold = sorted({(e.start, e.end, label_to_id[e.label]) for e in doc.entities if e.end - e.start <= WINDOW + 1})
        assert merged == gold, doc.doc_id
    return n_segments


@pytest.mark.parametrize("max_tokens", [512, 5120])
def test_scirex_round_trip_keeps_every_entity(shared_data, max_tokens):
    tokenizer = _deberta(str(shared_data / "deberta-v3-tokenizer"))
    documents = _documents(str(shared_data / "scirex/docs.jsonl.gz"))
    longest = max(e.length for d in documents for e in d.entities)
    n_segments = _round_trip(documents, tokenizer, max_tokens, overlap=longest + 3, check_invariants_every=10)
    assert n_segments > len(documents)  # long documents really were cut


@pytest.mark.parametrize("name", ["scholar-xl/dev.json", "profiling-07/dev.json"])
def test_homepage_round_trip_keeps_every_representable_entity(shared_data, name):
    tokenizer = _deberta(str(shared_data / "deberta-v3-tokenizer"))
    documents = _documents(str(shared_data / name))
    # Overlap >= the longest representable entity (window + 1 words).
    n_segments = _round_trip(documents, tokenizer, max_tokens=512, overlap=WINDOW + 1)
    assert n_segments > len(documents)


# -- properties on random documents ---------------------------------------------------------------
class CharTokenizer:
    """One token per character: word lengths control token counts exactly."""

    pad_id, cls_id, sep_id, unk_id, mask_id, vocab_size = 0, 1, 2, 3, 4, 40

    def encode_words(self, words):
        return [tuple(5 + ord(c) % 30 for c in w) or (self.unk_id,) for w in words]


@st.composite
def random_documents(draw):
    n = draw(st.integers(0, 60))
    words = [draw(st.text(alphabet="abcdefg", min_size=1, max_size=6)) for _ in range(n)]
    entities = []
    for _ in range(draw(st.integers(0, 12)) if n else 0):
        start = draw(st.integers(0, n - 1))
        end = draw(st.integers(start + 1, min(n, start + 8)))
        entities.append(Entity(start, end, draw(st.sampled_from("xyz"))))
    return Document("doc", words, entities)


@settings(max_examples=80, deadline=None)
@given(random_documents(), st.integers(8, 40), st.integers(0, 10))
def test_segmentation_properties(doc, max_tokens, overlap):
    tokenizer = CharTokenizer()
    segments = segment_document(doc, tokenizer, max_tokens, overlap)
    _check_segment_invariants(doc, segments, tokenizer, max_tokens, overlap)
    # Every entity no longer than the overlap (whose tokens fit a segment) is wholly inside a segment.
    counts = [len(ids) for ids in tokenizer.encode_words(doc.words)]
    for e in doc.entities:
        if e.length <= overlap and sum(counts[e.start:e.end]) <= max_tokens - 2:
            assert any(s.word_start <= e.start and e.end <= s.word_end for s in segments), e


@settings(max_examples=80, deadline=None)
@given(random_documents(), st.integers(8, 40), st.integers(0, 10), st.data())
def test_merge_of_agreeing_segments_returns_every_contained_span(doc, max_tokens, overlap, data):
    segments = segment_document(doc, CharTokenizer(), max_tokens, overlap)
    spans = {(e.start, e.end, "xyz".index(e.label)): data.draw(st.floats(0.5, 1.0)) for e in doc.entities}
    per_segment = [
        [(s - seg.word_start, e - seg.word_start, t, spans[(s, e, t)]) for (s, e, t) in spans
         if seg.word_start <= s and e <= seg.word_end]
        for seg in segments
    ]
    expected = sorted(
        (s, e, t, score) for (s, e, t), score in spans.items()
        if any(seg.word_start <= s and e <= seg.word_end for seg in segments)
    )
    assert merge_segments(segments, per_segment) == expected
    assert merge_documents(segments, per_segment) == {"doc": expected} if segments else True


def _seg(start, n_words, doc_id="d"):
    return Segment(doc_id, start, n_words, np.zeros(n_words + 2, np.int32), np.zeros(n_words + 2, np.int32))


def test_merge_rules_by_hand():
    a, b = _seg(0, 10), _seg(6, 10)  # words [0, 10) and [6, 16): overlap [6, 10)
    a_spans = [(6, 7, 0, 0.9), (7, 9, 1, 0.6), (0, 5, 2, 0.7), (1, 3, 2, 0.8), (8, 9, 0, 0.9)]
    b_spans = [(0, 1, 0, 0.9), (2, 3, 1, 0.8), (7, 9, 2, 0.55), (2, 4, 1, 0.75)]  # local to b
    # In document words: (6,7,0) both agree -> kept.  (7,9,1) only a, margin 1 in both -> tie -> kept.
    # (8,9,0) only a, margin 1 in a < 2 in b -> b decides -> dropped.  (8,9,1) and (8,10,1) only b,
    # b the farther witness -> kept.  (13,15,2) only b can see it -> kept.  (0,5)/(1,3) nested -> both kept.
    merged = merge_segments([a, b], [a_spans, b_spans])
    assert merged == [
        (0, 5, 2, 0.7), (1, 3, 2, 0.8), (6, 7, 0, 0.9), (7, 9, 1, 0.6), (8, 9, 1, 0.8), (8, 10, 1, 0.75),
        (13, 15, 2, 0.55),
    ]
    # (6,7,0) predicted by b only; a is the farther witness (margin 3 vs 0) and did not -> dropped.
    assert merge_segments([a, b], [[], [(0, 1, 0)]]) == []
    # Tie (7,9): either segment alone keeps it; duplicates collapse to the highest score.
    assert merge_segments([a, b], [[], [(1, 3, 0)]]) == [(7, 9, 0)]
    assert merge_segments([a, b], [[(7, 9, 0, 0.3)], [(1, 3, 0, 0.8)]]) == [(7, 9, 0, 0.8)]
    # Spans outside the overlap are never disputed.
    assert merge_segments([a, b], [[(0, 2, 1)], [(8, 10, 1)]]) == [(0, 2, 1), (14, 16, 1)]


def test_merge_rejects_bad_input():
    a, b = _seg(0, 10), _seg(6, 10, doc_id="other")
    with pytest.raises(ValueError, match="several documents"):
        merge_segments([a, b], [[], []])
    with pytest.raises(ValueError, match="2 segments but 1"):
        merge_segments([a, _seg(6, 10)], [[]])
    with pytest.raises(ValueError, match="outside segment 0"):
        merge_segments([a], [[(5, 11, 0)]])
    with pytest.raises(ValueError, match="mix"):
        merge_segments([a], [[(1, 2, 0), (1, 3, 0, 0.5)]])


def test_band_labels_layout_and_errors():
    labels = band_labels([Entity(1, 4, "a"), (2, 3, "b"), (0, 1, 1)], 5, 3, {"a": 0, "b": 1})
    assert labels.shape == (5, 7, 2) and labels.dtype == bool
    # [1, 3] inclusive: (1, w + 2) and (3, w - 2), type 0; [2, 2]: (2, w); [0, 0] type 1: (0, w).
    assert {tuple(x) for x in np.argwhere(labels)} == {(1, 5, 0), (3, 1, 0), (2, 3, 1), (0, 3, 1)}
    assert spans_from_band(labels, 3) == [(0, 1, 1), (1, 4, 0), (2, 3, 1)]
    with pytest.raises(ValueError, match="more than window"):
        band_labels([(0, 5, "a")], 5, 3, {"a": 0})
    assert not band_labels([(0, 5, "a")], 5, 3, {"a": 0}, skip_unrepresentable=True).any()
    with pytest.raises(ValueError, match="not inside"):
        band_labels([(3, 6, "a")], 5, 3, {"a": 0})
    filled = np.zeros((5, 7, 2), np.uint8)
    band_labels([Entity(1, 4, "a"), (2, 3, "b"), (0, 1, 1)], 5, 3, {"a": 0, "b": 1}, out=filled)
    assert (filled == labels).all() and filled.dtype == np.uint8
    with pytest.raises(ValueError, match="out has shape"):
        band_labels([], 5, 3, {"a": 0}, out=np.zeros((5, 7, 2), bool))
    with pytest.raises(ValueError, match="not in the label set"):
        band_labels([(0, 1, "c")], 5, 3, {"a": 0})


def test_empty_document_and_overlong_word(caplog):
    tokenizer = CharTokenizer()
    (empty,) = segment_document(Document("e", [], []), tokenizer, 8, 2)
    assert (empty.n_words, empty.input_ids.tolist(), empty.token_word.tolist()) == (0, [1, 2], [-1, -1])
    with caplog.at_level(logging.WARNING):
        segments = segment_document(Document("long", ["ab", "abcdefghij", "c"], []), tokenizer, 6, 0)
    assert "word 1 'abcdefghij' has 10 subword tokens" in caplog.text and "'long'" in caplog.text
    assert [s.n_tokens for s in segments] == [4, 6, 3]
    with pytest.raises(ValueError, match="max_tokens must be >= 3"):
        segment_document(Document("x", ["a"], []), tokenizer, 2, 0)
