"""SHA-256 manifests of checkpoint directories: integrity check and commit marker in one file.

Orbax checks no checksums: flipped bytes in an array file restore silently (and training goes on
with NaN). After a save is final, the primary process hashes every file of the step directory and
writes `MANIFEST_NAME` last, atomically (temporary file, fsync, rename), so a step directory
without it was not finished (killed between Orbax's commit and the manifest) and one with it can
be checked file by file before restoring.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

MANIFEST_NAME = "sener_manifest.sha256.json"
_CHUNK = 1 << 20


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(MANIFEST_NAME))


def write_manifest(directory: str | os.PathLike) -> pathlib.Path:
    """Hash every file under `directory` and write the manifest there, atomically; returns its path."""
    directory = pathlib.Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
        for p in _data_files(directory)
    }
    target = directory / MANIFEST_NAME
    partial = directory / (MANIFEST_NAME + ".partial")
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump({"version": 1, "files": files}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, target)
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself must survive a power loss
    finally:
        os.close(descriptor)
    return target


def has_manifest(directory: str | os.PathLike) -> bool:
    return (pathlib.Path(directory) / MANIFEST_NAME).is_file()


def manifest_problems(directory: str | os.PathLike) -> list[str]:
    """Every way the files under `directory` differ from its manifest (empty: intact).

    A missing manifest, a listed file that is missing or whose size or SHA-256 differs, and a
    manifest that cannot be read are problems; each names the file.
    """
    directory = pathlib.Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return [f"{path} is missing: the save did not finish"]
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return [f"{path} cannot be read: {type(error).__name__}: {error}"]
    problems = []
    for name, expected in sorted(files.items()):
        file = directory / name
        if not file.is_file():
            problems.append(f"{file} is missing")
        elif file.stat().st_size != expected["bytes"]:
            problems.append(f"{file} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}")
        elif _sha256(file) != expected["sha256"]:
            problems.append(f"{file} does not match its SHA-256 in the manifest (the file is corrupt)")
    return problems
