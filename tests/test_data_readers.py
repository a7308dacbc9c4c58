"""Readers: every shared file, Table-1 statistics checked independently, raw text, bad input."""
import gzip
import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sener_jax.data import (
    Document,
    Entity,
    document_from_text,
    document_to_chars_record,
    read_documents,
    split_words,
    word_span_to_chars,
    write_jsonl,
)
from sener_jax.data.coverage import corpus_statistics

SHARED_FILES = {
    "scirex/docs.jsonl.gz": ("scirex", "words", "ner"),
    "scholar-xl/dev.json": ("paper", "text", "entity"),
    "profiling-07/dev.json": ("paper", "text", "entity"),
}


def _raw_records(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_shared_file_statistics_match_an_independent_count(shared_data, name):
    kind, words_key, ents_key = SHARED_FILES[name]
    path = shared_data / name
    records = _raw_records(path)
    for fmt in ("auto", kind):
        docs = read_documents(path, format=fmt)
        assert [d.doc_id for d in docs] == [str(r["doc_id"]) for r in records]
        assert docs.issues == []
    stats = corpus_statistics(docs)
    n_words = [len(r[words_key]) for r in records]
    lengths = [e[1] - e[0] for r in records for e in r[ents_key]]
    assert stats["documents"] == len(records)
    assert stats["words_max"] == max(n_words)
    assert stats["words_mean"] == pytest.approx(sum(n_words) / len(n_words))
    assert stats["entities"] == len(lengths)
    assert stats["len_max"] == max(lengths)
    assert stats["len_mean"] == pytest.approx(sum(lengths) / len(lengths))
    for label, per_type in stats["per_type"].items():
        typed = [e[1] - e[0] for r in records for e in r[ents_key] if e[-1] == label]
        assert per_type["entities"] == len(typed)
        assert per_type["len_max"] == max(typed)
    # Entities keep their exact words and label, in file order.
    for d, r in zip(docs, records):
        assert d.words == r[words_key]
        assert [(e.start, e.end, e.label) for e in d.entities] == [(e[0], e[1], e[-1]) for e in r[ents_key]]


def test_readme_figures(shared_data):
    scirex = corpus_statistics(read_documents(shared_data / "scirex/docs.jsonl.gz"))
    assert (scirex["documents"], scirex["entities"], scirex["words_max"]) == (250, 88116, 12302)
    assert round(scirex["words_mean"]) == 5555
    scholar = read_documents(shared_data / "scholar-xl/dev.json")
    assert len(scholar) == 349 and sum(len(d.entities) for d in scholar) == 3308
    assert sum(e.length > 129 for d in scholar for e in d.entities) == 46


def test_split_words_separates_punctuation_and_keeps_offsets():
    text = "  Dr. Ada-Lee, Ph.D.\n(MIT) ünïcode x2y  "
    words, offsets = split_words(text)
    assert words == ["Dr", ".", "Ada", "-", "Lee", ",", "Ph", ".", "D", ".", "(", "MIT", ")", "ünïcode", "x2y"]
    assert all(text[a:b] == w for w, (a, b) in zip(words, offsets))
    words, _ = split_words(text, cuts=[text.index("2y")])
    assert words[-2:] == ["x", "2y"]
    assert split_words("") == ([], []) and split_words(" \n\t") == ([], [])


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab 1.,-\n\u00e9", max_size=40), st.data())
def test_char_entities_reproduce_their_exact_text(text, data):
    spans = []
    for _ in range(data.draw(st.integers(0, 3))):
        if len(text) == 0:
            break
        s = data.draw(st.integers(0, len(text) - 1))
        e = data.draw(st.integers(s + 1, len(text)))
        if not text[s].isspace() and not text[e - 1].isspace():
            spans.append((s, e, data.draw(st.sampled_from(["x", "y"]))))
    doc = document_from_text("d", text, spans)
    assert all(text[a:b] == w and w.strip() == w and w for w, (a, b) in zip(doc.words, doc.word_offsets))
    for (s, e, label), entity in zip(spans, doc.entities):
        assert entity.label == label
        assert word_span_to_chars(doc, entity.start, entity.end) == (s, e)
    # Round trip through the file record form.
    record = document_to_chars_record(doc)
    assert [(x["start"], x["end"], x["label"]) for x in record["entities"]] == spans


def test_char_format_file_round_trip(tmp_path):
    text = "Alan Turing (1912-1954) worked at Bletchley.\nCS:AI"
    records = [
        {"id": "a", "text": text, "entities": [
            {"start": 0, "end": 11, "label": "name", "text": "Alan Turing"},
            {"start": 13, "end": 17, "label": "date"},
            {"start": 34, "end": 43, "label": "org"},
            {"start": 46, "end": 47, "label": "sub"},  # inside "CS": the word is split there
        ]},
        {"id": "empty", "text": "", "entities": []},
    ]
    path = tmp_path / "raw.jsonl.gz"
    write_jsonl(path, records)
    docs = read_documents(path)
    assert docs[1].words == [] and docs[1].entities == []
    doc = docs[0]
    assert doc.words[:3] == ["Alan", "Turing", "("]
    for entity, rec in zip(doc.entities, records[0]["entities"]):
        start, end = word_span_to_chars(doc, entity.start, entity.end)
        assert text[start:end] == text[rec["start"]:rec["end"]]
    assert [doc.words[i] for i in range(doc.entities[3].start, doc.entities[3].end)] == ["S"]


BAD_LINES = [
    ("{not json", "<line>", "not valid JSON"),
    ("[1, 2]", "<line>", "expected a JSON object"),
    ('{"doc_id": "p", "text": ["a", "b"], "entity": [[1, 0, [], "x"]]}', "entity[0]", "before start"),
    ('{"doc_id": "p", "text": ["a", "b"], "entity": [[1, 3, ["b"], "x"]]}', "entity[0]", "outside the text"),
    ('{"doc_id": "p", "text": ["a", "b"], "entity": [[0, 1, ["b"], "x"]]}', "entity[0]", "do not match"),
    ('{"doc_id": "p", "text": ["a", "b"], "entity": [[0, 1, "x"]]}', "entity[0]", "expected [start"),
    ('{"doc_id": "s", "words": ["a"], "ner": [[0, 2, "T"]]}', "ner[0]", "outside the text"),
    ('{"doc_id": "s", "words": ["a"], "ner": [[0, 1]]}', "ner[0]", "expected [start"),
    ('{"id": "c", "text": "ab", "entities": [{"start": 0, "end": 5, "label": "x"}]}', "entities[0]", "outside"),
    ('{"id": "c", "text": "ab", "entities": [{"start": 2, "end": 1, "label": "x"}]}', "entities[0]", "before start"),
    ('{"id": "c", "text": "a b", "entities": [{"start": 0, "end": 2, "label": "x"}]}', "entities[0]", "whitespace"),
    ('{"id": "c", "text": "ab", "entities": [{"start": 0, "end": 1, "label": "x", "text": "b"}]}', "entities[0]", "does not match"),
    ('{"id": "c", "text": "ab", "entities": [{"start": 0, "label": "x"}]}', "entities[0]", "expected"),
    ('{"doc_id": "p", "text": ["a", 3], "entity": []}', "text", "list of strings"),
    ('{"doc_id": "q"}', "text", "cannot tell the format"),
]
GOOD_LINE = '{"doc_id": "ok", "text": ["a", "b"], "entity": [[0, 1, ["a"], "x"]]}'


@pytest.mark.parametrize("bad,field,message", BAD_LINES)
def test_bad_input_names_file_line_and_field(tmp_path, caplog, bad, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(GOOD_LINE + "\n\n" + bad + "\n" + GOOD_LINE.replace('"ok"', '"ok2"'))
    with pytest.raises(ValueError) as err:
        read_documents(path)
    assert f"{path}:3:" in str(err.value) and repr(field) in str(err.value) and message in str(err.value)

    with caplog.at_level(logging.WARNING):
        docs = read_documents(path, strict=False)
    assert len(docs.issues) == 1
    issue = docs.issues[0]
    assert (issue.file, issue.line, issue.field) == (str(path), 3, field)
    assert str(issue) in caplog.text
    ids = [d.doc_id for d in docs]
    entity_level = "[" in field
    # An entity-level problem drops only that entity; a record-level one only that record.
    if entity_level:
        bad_id = json.loads(bad).get("doc_id", json.loads(bad).get("id"))
        assert ids == ["ok", bad_id, "ok2"]
        assert docs[1].entities == [] and docs[0].entities == [Entity(0, 1, "x")]
    else:
        assert ids == ["ok", "ok2"]


def test_duplicate_ids_and_unknown_format(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(GOOD_LINE + "\n" + GOOD_LINE + "\n")
    with pytest.raises(ValueError, match=r"dup.jsonl:2: field 'doc_id': duplicate"):
        read_documents(path)
    assert len(read_documents(path, strict=False)) == 1
    with pytest.raises(ValueError, match="format must be one of"):
        read_documents(path, format="conll")


def test_word_span_to_chars_checks_its_input():
    doc = Document("w", ["a"], [])
    with pytest.raises(ValueError, match="no character offsets"):
        word_span_to_chars(doc, 0, 1)
    doc = document_from_text("t", "ab cd", [])
    with pytest.raises(ValueError, match="not inside"):
        word_span_to_chars(doc, 1, 3)
    assert word_span_to_chars(doc, 0, 2) == (0, 5)
    assert np.array_equal(doc.word_offsets, [(0, 2), (3, 5)])
