"""The JSON-lines files of `--mode=predict`: inputs in, predictions out, and resuming a killed run.

    inputs       one {"text", optional "id"} object per line; "id" defaults to the line number
                 (1-based, blank lines counted), ids must be unique
    predictions  a header line {"sener_jax_predictions": 1, "input": {...}, "export": {...}}, then
                 one {"id", "entities": [...]} object per input line, in input order, appended as
                 they are made; a document that cannot be processed gets {"id", "entities": [],
                 "error": "..."} instead of stopping the run

The header says which input (path, size, sha256 of its first MiB) and which export (sha256 of its
MANIFEST.json) produced the file. It is how a file is recognised as ours (nothing else is ever
truncated or appended to) and how a rerun knows it continues the same work: resuming needs the
same export and an input that starts with the same bytes (appending lines to it is fine).

Both files are read as streams (memory grows with the number of ids, not with the texts).
`sener_jax.predict` writes with these rules and `sener_jax.render` reads with the same ones.
No jax here (render and notebooks import this without it).
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import IO, Iterator, Mapping, Sequence

from sener_jax.manifest import file_sha256

HEADER_KEY = "sener_jax_predictions"
HEADER_VERSION = 1
HEAD_BYTES = 1 << 20  # the input's identity hashes its first MiB (cheap for huge inputs)


class PredictionFileError(ValueError):
    """An output that cannot be continued (another input or export, not ours, corrupted)."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def iter_inputs(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """(line number, id, text) per input line, one line in memory at a time.

    Invalid UTF-8 bytes do not stop the file: they reach the text as lone surrogates
    ("surrogateescape"), and the writer turns such a document into an error record.
    """
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({error})") from error
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{line_no}: expected an object with a string field 'text'")
            yield line_no, str(record.get("id", line_no)), record["text"]


def scan_inputs(path: str | os.PathLike) -> int:
    """Validates every line and id uniqueness before any prediction is made; returns the count."""
    seen: dict[str, int] = {}
    for line_no, item_id, _ in iter_inputs(path):
        if item_id in seen:
            raise ValueError(f"{path}:{line_no}: id {item_id!r} occurs more than once (first on line {seen[item_id]})")
        seen[item_id] = line_no
    return len(seen)


def read_inputs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """[(id, text)] of a whole inputs file (for small files and notebooks; predict streams)."""
    scan_inputs(path)
    return [(item_id, text) for _, item_id, text in iter_inputs(path)]


def input_identity(path: str | os.PathLike) -> dict:
    """What the header records about an input: path, size and sha256 of the first HEAD_BYTES."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    return {"path": str(path.resolve()), "size": size, "head_bytes": min(size, HEAD_BYTES),
            "head_sha256": file_sha256(path, min(size, HEAD_BYTES))}


def input_mismatch(recorded: Mapping, path: str | os.PathLike) -> str | None:
    """Why `path` is not (a grown version of) the recorded input, or None when it is."""
    path = pathlib.Path(path)
    size = path.stat().st_size
    if size < recorded.get("size", 0):
        return f"the input has {size} bytes, fewer than the {recorded.get('size')} recorded"
    if file_sha256(path, recorded.get("head_bytes", 0)) != recorded.get("head_sha256"):
        return f"the first {recorded.get('head_bytes')} bytes of the input differ from those recorded"
    return None


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def make_header(input_path: str | os.PathLike, export_dir: str | os.PathLike, export_sha256: str) -> dict:
    return {HEADER_KEY: HEADER_VERSION, "input": input_identity(input_path),
            "export": {"path": str(pathlib.Path(export_dir).resolve()), "manifest_sha256": export_sha256}}


def read_header(path: str | os.PathLike) -> dict | None:
    """The header of a predictions file of ours, or None (missing file, empty, or not ours)."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 16)
        header = json.loads(first)
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get(HEADER_KEY) == HEADER_VERSION else None


def _write_header(output: pathlib.Path, header: Mapping) -> None:
    """A fresh file holding only `header`, swapped in atomically (an old file stays until then)."""
    fd, staging = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(dict(header), ensure_ascii=True) + "\n")
        os.replace(staging, output)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


def prepare_output(output: str | os.PathLike, header: Mapping, *, overwrite: bool) -> int:
    """Makes `output` ready for appending; returns how many records it already holds.

    Missing or empty: created with `header`. Ours with the same export and input: resumed (a
    line torn by a kill is cut). Ours otherwise: PredictionFileError unless `overwrite`, which
    starts it over. Not ours: FileExistsError, whatever `overwrite` says.
    """
    output = pathlib.Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.exists() and not output.is_file():
        raise FileExistsError(f"{output}: exists and is not a file; choose another predict.output")
    if not output.exists() or output.stat().st_size == 0:
        _write_header(output, header)
        return 0
    found = read_header(output)
    if found is None:
        raise FileExistsError(
            f"{output}: exists and is not a sener_jax predictions file (no {HEADER_KEY!r} header line); refusing to "
            "append to or replace it: choose another predict.output or move the file away"
        )
    if overwrite:
        _write_header(output, header)
        return 0
    recorded_export = found.get("export", {}).get("manifest_sha256")
    if recorded_export != header["export"]["manifest_sha256"]:
        raise PredictionFileError(
            f"{output}: was written with another export ({found.get('export', {}).get('path')}, manifest sha256 "
            f"{str(recorded_export)[:12]}...) than {header['export']['path']}; set predict.overwrite=True to start "
            "it over, or choose another predict.output"
        )
    reason = input_mismatch(found.get("input", {}), header["input"]["path"])
    if reason:
        raise PredictionFileError(
            f"{output}: was written for input {found.get('input', {}).get('path')}, and {header['input']['path']} is "
            f"not that input ({reason}); set predict.overwrite=True to start it over, or choose another predict.output"
        )
    return cut_torn_tail(output)


def cut_torn_tail(output: pathlib.Path) -> int:
    """Cuts a last line without its newline (a kill mid-write: that document is redone) and
    returns the number of records after the header. A complete line that is not a record is
    corruption, reported with its line number."""
    count, good_end, line_no = 0, 0, 0
    with open(output, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.endswith(b"\n"):
                break
            if line_no > 1:
                try:
                    record = json.loads(line)
                    record["id"], record["entities"]  # noqa: B018 (the fields a record has)
                except (ValueError, KeyError, TypeError) as error:
                    raise PredictionFileError(
                        f"{output}:{line_no}: not a prediction record ({error}); the file is corrupted: set "
                        "predict.overwrite=True to start it over"
                    ) from error
                count += 1
            good_end = handle.tell()
    if good_end != output.stat().st_size:
        os.truncate(output, good_end)
    return count


def text_error(text: str) -> str | None:
    """Why `text` cannot be processed (a lone surrogate: not encodable as UTF-8), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"text is not valid Unicode: {error.reason} at character {error.start} ({text[error.start]!r})"
    return None


def write_predictions(handle: IO[str], ids: Sequence[str], entities: Sequence[Sequence[Mapping]],
                      errors: Sequence[str | None] | None = None) -> None:
    """Appends one record per document and flushes (a kill loses at most this call).

    A record that cannot be written as UTF-8 (an id with a lone surrogate) is written with
    \\u escapes instead, so one odd document never stops the file.
    """
    errors = [None] * len(ids) if errors is None else errors
    for item_id, ents, error in zip(ids, entities, errors, strict=True):
        record = {"id": item_id, "entities": ents}
        if error is not None:
            record["error"] = error
        line = json.dumps(record, ensure_ascii=False)
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(record, ensure_ascii=True)
        handle.write(line + "\n")
    handle.flush()


def iter_predictions(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, record) per prediction record, the header skipped; a malformed line fails
    naming file and line."""
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if line_no == 1 and isinstance(record, dict) and HEADER_KEY in record:
                    continue
                record["id"], record["entities"]  # noqa: B018
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{line_no}: expected {{'id', 'entities'}} JSON ({error})") from error
            yield line_no, record


def read_predictions(path: str | os.PathLike) -> dict[str, list]:
    """{id: entities} of a whole predictions file."""
    return {str(record["id"]): record["entities"] for _, record in iter_predictions(path)}
