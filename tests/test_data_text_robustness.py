"""Text robustness: words never split a grapheme cluster; bad bytes, lone surrogates and corrupt .gz
files are errors naming file and line (skipped per record when not strict)."""
import gzip
import json
import logging
import re

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from sener_jax.data import DataFileError, DocumentError, read_documents, split_words, word_span_to_chars
from sener_jax.data import documents

# The splitting rule before grapheme clusters, frozen here: per code point, so it cut accents,
# vowel signs and emoji modifiers off their base.
LEGACY_WORD_RE = re.compile(r"\w+|[^\w\s]")

SCRIPTS = {
    "nfd accents": ("Jose\u0301 Garci\u0301a", ["Jose\u0301", "Garci\u0301a"]),
    "devanagari": ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),
    "thai": ("ภาษาไทย ดี", ["ภาษาไทย", "ดี"]),
    "emoji": ("hi 👨\u200d👩\u200d👧 👍🏽 🇺🇸 ❤\ufe0f ok",
              ["hi", "👨\u200d👩\u200d👧", "👍🏽", "🇺🇸", "❤\ufe0f", "ok"]),
    "ascii": ("Dr. Ada-Lee, Ph.D.", ["Dr", ".", "Ada", "-", "Lee", ",", "Ph", ".", "D", "."]),
}


def cluster_by_cluster(text):
    """A plain reading of the rule: the legacy rule applied to grapheme clusters, one at a time."""
    spans = []
    for match in regex.finditer(r"\X", text):
        start, end = match.span()
        cluster = match.group()
        head = cluster.lstrip()  # a cluster may begin with a space (a stray mark after it): never in a word
        start += len(cluster) - len(head)
        if not head:
            continue
        is_word = re.match(r"\w", head[0]) is not None
        if is_word and spans and spans[-1][2] and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end, True)
        else:
            spans.append((start, end, is_word))
    return [(s, e) for s, e, _ in spans]


def cluster_boundaries(text):
    return {0} | {m.end() for m in regex.finditer(r"\X", text)}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_words_keep_grapheme_clusters_whole(name):
    text, expected = SCRIPTS[name]
    words, offsets = split_words(text)
    assert words == expected
    assert all(text[a:b] == w for w, (a, b) in zip(words, offsets))
    bounds = cluster_boundaries(text)
    assert all(a in bounds and b in bounds for a, b in offsets)
    assert offsets == cluster_by_cluster(text) == documents._reference_spans(text)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="ab1_ .,-\n\u00a0e\u0301\u093f\u0915\u094d\u200d\U0001f44d\U0001f3fd\ufe0f\U0001f1fa", max_size=30))
def test_fast_path_equals_the_reference_and_the_plain_rule(text):
    offsets = split_words(text)[1]
    assert offsets == documents._reference_spans(text) == cluster_by_cluster(text)
    assert all(text[a:b].strip() == text[a:b] for a, b in offsets)


def test_nfd_entity_keeps_its_accent_and_a_cut_inside_a_cluster_is_an_error(tmp_path):
    text = "Jose\u0301 works"
    path = tmp_path / "nfd.jsonl"
    path.write_text(json.dumps({"id": "a", "text": text, "entities": [{"start": 0, "end": 5, "label": "name"}]})
                    + "\n" + json.dumps({"id": "b", "text": text, "entities": [{"start": 0, "end": 4, "label": "name"}]})
                    + "\n")
    with pytest.raises(DocumentError, match=r"nfd.jsonl:2: field 'entities\[0\]'.*grapheme cluster"):
        read_documents(path)
    docs = read_documents(path, strict=False)
    doc = docs[0]
    assert doc.words[:1] == ["Jose\u0301"] and word_span_to_chars(doc, 0, doc.entities[0].end) == (0, 5)
    assert [d.doc_id for d in docs] == ["a", "b"] and docs[1].entities == [] and len(docs.issues) == 1
    with pytest.raises(ValueError, match="splits the grapheme cluster"):
        split_words(text, cuts=[4])


SHARED = ("scirex/docs.jsonl.gz", "scholar-xl/dev.json", "profiling-07/dev.json")
# Words of the shared data (joined by spaces) that the new rule splits differently: all are runs
# such as "x̂k22" (x + COMBINING CIRCUMFLEX, in SciREX formulas) that the legacy rule cut at the mark.
CHANGED_WORDS = {"scirex/docs.jsonl.gz": 41, "scholar-xl/dev.json": 0, "profiling-07/dev.json": 0}


@pytest.mark.parametrize("name", SHARED)
def test_shared_data_splits_as_before_except_at_grapheme_clusters(shared_data, name):
    # The shared files hold word lists, so the text is their words joined by spaces. The new
    # splitter must give exactly today's words and offsets, except words holding a multi-code-point
    # grapheme cluster, which the legacy rule (frozen above) cut through; each such word must be
    # exactly a run of consecutive legacy words. Their number per file is stored (CHANGED_WORDS),
    # so any other change on real data fails here.
    changed = 0
    for doc in read_documents(shared_data / name):
        text = " ".join(doc.words)
        legacy = [m.span() for m in LEGACY_WORD_RE.finditer(text)]
        new = split_words(text)[1]
        legacy_set = set(legacy)
        legacy_starts, legacy_ends = {s for s, _ in legacy}, {e for _, e in legacy}
        for start, end in new:
            if (start, end) in legacy_set:
                continue
            changed += 1
            assert start in legacy_starts and end in legacy_ends, (doc.doc_id, text[start:end])
            assert any(len(c) > 1 for c in regex.findall(r"\X", text[start:end])), (doc.doc_id, text[start:end])
        # Nothing of the legacy split is lost: every legacy word lies inside one new word.
        covered = iter(new)
        current = next(covered, None)
        for start, end in legacy:
            while current is not None and current[1] < end:
                current = next(covered, None)
            assert current is not None and current[0] <= start and end <= current[1], (doc.doc_id, start)
    assert changed == CHANGED_WORDS[name]


GOOD = '{"doc_id": "ok", "text": ["a"], "entity": []}'


def _check_record_problem(path, caplog, line, field, message, kept):
    with pytest.raises(DocumentError, match=rf"{re.escape(str(path))}:{line}: field '{re.escape(field)}'.*{message}") as err:
        read_documents(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, field)
    with caplog.at_level(logging.WARNING):
        docs = read_documents(path, strict=False)
    assert [d.doc_id for d in docs] == kept
    assert [(i.file, i.line, i.field) for i in docs.issues] == [(str(path), line, field)]
    assert f"{path}:{line}:" in caplog.text


def test_lone_surrogate_is_a_record_error(tmp_path, caplog):
    path = tmp_path / "surrogate.jsonl"
    # A valid pair (an emoji), an escaped backslash before "ud800" (plain text), then a lone one.
    lines = [GOOD, '{"doc_id": "pair", "text": ["\\ud83d\\ude00"], "entity": []}',
             '{"doc_id": "lit", "text": ["\\\\ud800"], "entity": []}',
             '{"doc_id": "bad", "text": ["x", "a\\ud800b"], "entity": []}', GOOD.replace('"ok"', '"ok2"')]
    path.write_text("\n".join(lines) + "\n")
    _check_record_problem(path, caplog, 4, "text[1]", "lone UTF-16 surrogate", ["ok", "pair", "lit", "ok2"])
    docs = read_documents(path, strict=False)
    assert docs[1].words == ["\U0001f600"] and docs[2].words == ["\\ud800"]


def test_non_utf8_byte_names_file_and_line_and_is_skipped(tmp_path, caplog):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + '{"doc_id": "bad", "text": ["café"], "entity": []}'.encode("latin-1")
                     + b"\n" + GOOD.replace('"ok"', '"ok2"').encode() + b"\n")
    _check_record_problem(path, caplog, 2, "<line>", "not valid UTF-8", ["ok", "ok2"])


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "flipped"])
def test_corrupt_gz_names_the_file(tmp_path, damage):
    path = tmp_path / "docs.jsonl.gz"
    payload = gzip.compress(("\n".join(GOOD.replace('"ok"', f'"d{i}"') for i in range(2000)) + "\n").encode())
    if damage == "truncated":
        payload = payload[: len(payload) // 2]
    elif damage == "not gzip":
        payload = b"this is not gzip data at all"
    else:
        middle = len(payload) // 2
        payload = payload[:middle] + bytes(b ^ 0xFF for b in payload[middle:middle + 64]) + payload[middle + 64:]
    path.write_bytes(payload)
    with pytest.raises(DataFileError, match=re.escape(str(path))):
        read_documents(path, strict=False)  # whatever garbage lines decompressed, the end check fails
    # Strict: flipped bytes may first decompress to a garbage line, itself an error naming file and line.
    with pytest.raises(DocumentError if damage == "flipped" else DataFileError, match=re.escape(str(path))):
        read_documents(path, strict=True)
