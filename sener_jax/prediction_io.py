"""The JSON-lines files of `--mode=predict`: inputs in, predictions out, and resuming a killed run.

    inputs       one {"text", optional "id"} object per line; "id" defaults to the line number
                 (1-based, blank lines counted), ids must be unique
    predictions  one {"id", "entities": [...]} object per line, appended as they are made

`sener_jax.predict` writes predictions with these rules and `sener_jax.render` reads both files
back with the same ones, so an id means the same document in both.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import IO, Mapping, Sequence


def read_inputs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """[(id, text)] of a JSON-lines inputs file."""
    items = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({error})") from error
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise ValueError(f"{path}:{line_no}: expected an object with a string field 'text'")
            items.append((str(record.get("id", line_no)), record["text"]))
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: id {duplicate!r} occurs more than once")
    return items


def done_ids(output: pathlib.Path) -> set[str]:
    """Ids already written to `output` by an earlier (possibly killed) run.

    A line torn by a kill (and everything after it) is cut from the file, and a missing final
    newline is added, so that appending continues a valid JSON-lines file.
    """
    if not output.is_file():
        return set()
    done, lines = set(), output.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: rewrite from here
        done.add(str(record["id"]))
        keep.append(line)
    if len(keep) != len(lines) or (keep and not keep[-1].endswith("\n")):
        output.write_text("".join(line if line.endswith("\n") else line + "\n" for line in keep), encoding="utf-8")
    return done


def write_predictions(handle: IO[str], ids: Sequence[str], entities: Sequence[Sequence[Mapping]]) -> None:
    """Appends one {"id", "entities"} line per document and flushes (a kill loses at most this call)."""
    for item_id, ents in zip(ids, entities, strict=True):
        handle.write(json.dumps({"id": item_id, "entities": ents}, ensure_ascii=False) + "\n")
    handle.flush()


def read_predictions(path: str | os.PathLike) -> dict[str, list]:
    """{id: entities} of a predictions file; a malformed line fails naming file and line."""
    entities_by_id = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    record = json.loads(line)
                    entities_by_id[str(record["id"])] = record["entities"]
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(f"{path}:{line_no}: expected {{'id', 'entities'}} JSON ({error})") from error
    return entities_by_id
