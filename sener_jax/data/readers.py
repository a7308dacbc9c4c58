"""Readers for the three input formats (JSON lines, `.gz` transparently).

- "paper": the SeNER release, `{"doc_id", "text": [words], "entity": [[start, end, [words], label], ...]}`.
- "scirex": the SciREX release, `{"doc_id", "words": [...], "ner": [[start, end, type], ...]}`.
- "chars": raw text with character offsets, `{"id", "text": "...", "entities": [{"start", "end",
  "label"}]}` (an entity may also carry `"text"`, checked against the document text).
  The text is split with `split_words`, cut further at every entity boundary, so every entity
  covers whole words and `text[start:end]` is exactly the entity's surface text. An entity whose
  first or last character is whitespace cannot be reproduced that way and is an error.

All ends are exclusive. A problem is a `DocumentError` (a ValueError) naming file, line (1-based)
and field; with `strict=False` the bad record (or only the bad entity) is skipped, the problem is
logged as a warning and recorded in the returned list's `issues`; nothing else is dropped. Lines
that are not UTF-8 and strings holding a lone UTF-16 surrogate (`"\\ud800"` in the JSON, which no
UTF-8 writer can write back) are such record problems. A `.gz` file that is corrupt or truncated is
a `DataFileError` naming the file, in either mode.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import zlib
from typing import Any, Callable, Iterable, NamedTuple

from sener_jax.data.documents import Document, Entity, cut_inside_cluster, split_words, word_span_to_chars

logger = logging.getLogger(__name__)

FORMATS = ("auto", "paper", "scirex", "chars")


class DataIssue(NamedTuple):
    """One problem found while reading: where it is and what was expected."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field {self.field!r}: {self.message}"


class DocumentError(ValueError):
    """A record that cannot be read (strict mode): `file`, `line` (1-based) and `field` say where."""

    def __init__(self, issue: DataIssue):
        super().__init__(str(issue))
        self.file, self.line, self.field = issue.file, issue.line, issue.field


class DataFileError(ValueError):
    """The file itself cannot be read to the end (e.g. a corrupt `.gz`); no record can be skipped."""


class DocumentList(list):
    """A list of Documents that also carries the problems skipped while reading (`issues`)."""

    def __init__(self, documents: Iterable[Document] = (), issues: Iterable[DataIssue] = ()):
        super().__init__(documents)
        self.issues: list[DataIssue] = list(issues)


class _RecordError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _numbered_lines(path: str):
    """(line number, bytes) of every line; a corrupt or truncated `.gz` is a DataFileError naming the file.

    Lines are read as bytes and decoded one by one (in `read_documents`) so that a byte that is not
    UTF-8 is a problem of that line, with its number, instead of a bare UnicodeDecodeError that
    aborts the whole file.
    """
    handle = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")
    line_no = 0
    with handle:
        try:
            for line_no, line in enumerate(handle, start=1):
                yield line_no, line
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise DataFileError(
                f"{path}: the compressed file is corrupt or truncated after line {line_no} "
                f"({type(error).__name__}: {error}); re-create or re-download it"
            ) from error


# A JSON escape of a UTF-16 surrogate: json.loads turns an unpaired one into a lone surrogate code
# point, which Python strings allow but UTF-8 cannot encode, so the writer of any output derived
# from the document (predictions, chars records) would crash on it, at the same document on every
# rerun. Only lines with such an escape are searched for one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _lone_surrogate(value: Any, field: str) -> tuple[str, str] | None:
    """(field, string) of the first string in `value` holding a lone surrogate, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field, value
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _lone_surrogate(key, field) if isinstance(key, str) else None
        found = found or _lone_surrogate(item, f"{field}[{key!r}]" if field else str(key))
        if found:
            return found
    return None


def _parse_line(raw: bytes) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _RecordError("<line>", f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at byte {err.start + 1})") from None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise _RecordError("<line>", f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise _RecordError("<line>", f"expected a JSON object, got {type(record).__name__}")
    if _SURROGATE_ESCAPE.search(line):
        found = _lone_surrogate(record, "")
        if found:
            field, text = found
            bad = next(c for c in text if 0xD800 <= ord(c) <= 0xDFFF)
            raise _RecordError(field or "<line>", f"holds a lone UTF-16 surrogate \\u{ord(bad):04x}, "
                               "which is not a character and cannot be written as UTF-8")
    return record


def detect_format(record: dict) -> str:
    if "ner" in record and "words" in record:
        return "scirex"
    text = record.get("text")
    if isinstance(text, list):
        return "paper"
    if isinstance(text, str):
        return "chars"
    raise _RecordError("text", "cannot tell the format: expected 'words'+'ner' (SciREX), "
                       "'text' as a list of words (paper) or 'text' as a string (character offsets)")


def read_documents(path: str | os.PathLike, format: str = "auto", strict: bool = True) -> DocumentList:
    """Read every document of a JSON-lines file (see the module docstring for the formats)."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    name = os.fspath(path)
    out = DocumentList()
    seen_ids: dict[str, int] = {}
    for line_no, raw in _numbered_lines(name):
        if not raw.strip():
            continue

        def report(field: str, message: str, _line=line_no) -> None:
            issue = DataIssue(name, _line, field, message)
            if strict:
                raise DocumentError(issue)
            logger.warning("skipped: %s", issue)
            out.issues.append(issue)

        try:
            record = _parse_line(raw)
            kind = detect_format(record) if format == "auto" else format
            doc = _PARSERS[kind](record, line_no, report)
        except _RecordError as err:
            report(err.field, err.message)
            continue
        if doc.doc_id in seen_ids:
            report("doc_id", f"duplicate document id {doc.doc_id!r} (first on line {seen_ids[doc.doc_id]})")
            continue
        seen_ids[doc.doc_id] = line_no
        out.append(doc)
    return out


def _doc_id(record: dict, keys: tuple[str, ...], line_no: int) -> str:
    for key in keys:
        if key in record:
            value = record[key]
            if not isinstance(value, (str, int)):
                raise _RecordError(key, f"expected a string id, got {type(value).__name__}")
            return str(value)
    return f"line{line_no}"


def _word_list(record: dict, key: str) -> list[str]:
    if key not in record:
        raise _RecordError(key, "missing")
    words = record[key]
    if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
        raise _RecordError(key, "expected a list of strings (the words)")
    return words


def _entity_list(record: dict, key: str) -> list:
    value = record.get(key, [])
    if not isinstance(value, list):
        raise _RecordError(key, f"expected a list of entities, got {type(value).__name__}")
    return value


def _check_span(start: Any, end: Any, limit: int, unit: str) -> str | None:
    """Why (start, end) is not a valid non-empty span inside `limit` units, or None."""
    if not isinstance(start, int) or not isinstance(end, int) or isinstance(start, bool) or isinstance(end, bool):
        return f"start/end must be integers, got {start!r}, {end!r}"
    if end < start:
        return f"end {end} is before start {start}"
    if end == start:
        return f"empty span [{start}, {end})"
    if start < 0 or end > limit:
        return f"span [{start}, {end}) is outside the text ({limit} {unit})"
    return None


def _parse_word_format(
    record: dict, line_no: int, report: Callable[[str, str], None], words_key: str, entities_key: str
) -> Document:
    """Paper (`text`/`entity`: [start, end, [words], label]) or SciREX (`words`/`ner`: [start, end, type])."""
    words = _word_list(record, words_key)
    doc_id = _doc_id(record, ("doc_id", "id"), line_no)
    with_words = entities_key == "entity"
    expected = "[start, end, [words], label]" if with_words else "[start, end_exclusive, type]"
    entities = []
    for n, item in enumerate(_entity_list(record, entities_key)):
        field = f"{entities_key}[{n}]"
        if not isinstance(item, list) or len(item) != (4 if with_words else 3):
            report(field, f"expected {expected}")
            continue
        start, end, label = item[0], item[1], item[-1]
        problem = _check_span(start, end, len(words), "words")
        if problem is None and not isinstance(label, str):
            problem = f"label must be a string, got {label!r}"
        if problem is None and with_words and item[2] != words[start:end]:
            problem = f"stated words {item[2]!r} do not match the text's words {words[start:end]!r}"
        if problem:
            report(field, problem)
            continue
        entities.append(Entity(start, end, label))
    return Document(doc_id, words, entities)


def _parse_paper(record: dict, line_no: int, report: Callable[[str, str], None]) -> Document:
    return _parse_word_format(record, line_no, report, "text", "entity")


def _parse_scirex(record: dict, line_no: int, report: Callable[[str, str], None]) -> Document:
    return _parse_word_format(record, line_no, report, "words", "ner")


def _parse_chars(record: dict, line_no: int, report: Callable[[str, str], None]) -> Document:
    text = record.get("text")
    if not isinstance(text, str):
        raise _RecordError("text", "expected the raw text as a string")
    doc_id = _doc_id(record, ("id", "doc_id"), line_no)
    spans = []
    entities = _entity_list(record, "entities")
    plain_offsets = split_words(text)[1] if entities else []
    for n, item in enumerate(entities):
        field = f"entities[{n}]"
        if not isinstance(item, dict) or not {"start", "end", "label"} <= item.keys():
            report(field, 'expected {"start": int, "end": int, "label": str}')
            continue
        start, end, label = item["start"], item["end"], item["label"]
        problem = _check_span(start, end, len(text), "characters")
        if problem is None and not isinstance(label, str):
            problem = f"label must be a string, got {label!r}"
        if problem is None and (text[start].isspace() or text[end - 1].isspace()):
            problem = f"span [{start}, {end}) = {text[start:end]!r} begins or ends with whitespace"
        if problem is None and "text" in item and item["text"] != text[start:end]:
            problem = f"stated text {item['text']!r} does not match the text {text[start:end]!r}"
        for edge in (start, end) if problem is None else ():
            cluster = cut_inside_cluster(text, plain_offsets, edge)
            if cluster is not None:
                problem = (f"span [{start}, {end}) cuts the character {cluster!r} (one grapheme cluster) "
                           f"at {edge}: an accent, vowel sign or emoji modifier would be cut off its base")
                break
        if problem:
            report(field, problem)
            continue
        spans.append((start, end, label))
    return document_from_text(doc_id, text, spans)


def document_from_text(doc_id: str, text: str, char_entities: Iterable[tuple[int, int, str]]) -> Document:
    """A Document from raw text and valid character-offset entities `(start, end_exclusive, label)`."""
    char_entities = list(char_entities)
    cuts = [c for s, e, _ in char_entities for c in (s, e)]
    words, offsets = split_words(text, cuts)
    start_word = {s: i for i, (s, _) in enumerate(offsets)}
    end_word = {e: i + 1 for i, (_, e) in enumerate(offsets)}
    entities = [Entity(start_word[s], end_word[e], label) for s, e, label in char_entities]
    return Document(doc_id, words, entities, text=text, word_offsets=offsets)


_PARSERS = {"paper": _parse_paper, "scirex": _parse_scirex, "chars": _parse_chars}


def document_to_chars_record(doc: Document) -> dict:
    """The character-offset JSON record of a raw-text document (inverse of the "chars" reader)."""
    entities = []
    for e in doc.entities:
        start, end = word_span_to_chars(doc, e.start, e.end)
        entities.append({"start": start, "end": end, "label": e.label})
    return {"id": doc.doc_id, "text": doc.text, "entities": entities}


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
