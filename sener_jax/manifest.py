"""Checksum manifests for directories we write (exports, converted encoders, checkpoint steps).

    write_manifest(directory, files)   # LAST, after every data file is written and closed
    verify_manifest(directory)         # raises ManifestError naming the first bad file

`MANIFEST.json` lists {relative path: {"size", "sha256"}} of every data file. It is written last,
atomically (temp file + rename), so it doubles as the commit marker: a directory without it was
never finished (a killed writer) and is refused as incomplete. Flipped bytes, a truncated file or
a missing file are caught by the sizes and hashes and reported with the file's path. The module
needs only the standard library (prediction_io and render use it without jax).

    python -m sener_jax.manifest DIR            # verify
    python -m sener_jax.manifest --write DIR    # (re)write: trusts the files as they are now
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
from typing import Iterable

MANIFEST_NAME = "MANIFEST.json"
FORMAT = "sener_jax-manifest"
VERSION = 1
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A directory whose contents do not match its manifest (or that has none)."""


def file_sha256(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex sha256 of a file (of its first `limit` bytes when given), read in 1 MiB chunks."""
    digest, left = hashlib.sha256(), limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            chunk = handle.read(_CHUNK if left is None else min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def all_files(directory: str | os.PathLike) -> list[str]:
    """Every regular file under `directory` (relative, '/'-separated, sorted), the manifest excluded."""
    root = pathlib.Path(directory)
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != MANIFEST_NAME
    )


def write_manifest(directory: str | os.PathLike, files: Iterable[str] | None = None, *, kind: str = "") -> str:
    """Hashes `files` (relative paths; default: every file in `directory`) into MANIFEST.json.

    Returns the manifest's own sha256, an identity of the whole directory's contents.
    """
    root = pathlib.Path(directory)
    names = all_files(root) if files is None else sorted({pathlib.PurePath(f).as_posix() for f in files})
    entries = {}
    for name in names:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed for the manifest but not a file")
        entries[name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    body = json.dumps({"format": FORMAT, "version": VERSION, "kind": kind, "files": entries}, indent=1, sort_keys=True)
    staging = root / (MANIFEST_NAME + ".partial")
    with open(staging, "w", encoding="utf-8") as handle:
        handle.write(body + "\n")
        handle.flush()
        os.fsync(handle.fileno())  # the data files are on disk before the marker that says so
    os.replace(staging, root / MANIFEST_NAME)
    descriptor = os.open(root, os.O_RDONLY)
    try:
        os.fsync(descriptor)  # the rename itself must survive a power loss (checkpoints rely on it)
    finally:
        os.close(descriptor)
    return manifest_digest(root)


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of `directory`, or None when it has none or it is not one of ours."""
    path = pathlib.Path(directory) / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def manifest_digest(directory: str | os.PathLike) -> str:
    return file_sha256(pathlib.Path(directory) / MANIFEST_NAME)


def verify_manifest(directory: str | os.PathLike, *, kind: str | None = None) -> dict:
    """Checks every file listed in the manifest (size, then sha256); returns the manifest.

    Raises ManifestError naming the directory when the manifest is missing (an incomplete write)
    and naming the file when one is missing, has another size or other bytes.
    """
    root = pathlib.Path(directory)
    manifest = read_manifest(root)
    if manifest is None:
        state = "is not a sener_jax manifest" if (root / MANIFEST_NAME).exists() else "is missing"
        raise ManifestError(
            f"{root}: incomplete or foreign directory: {MANIFEST_NAME} {state} (it is written last, so a killed "
            f"write leaves none); write it again, or after checking the files by hand run "
            f"`python -m sener_jax.manifest --write {root}`"
        )
    if kind is not None and manifest.get("kind") != kind:
        raise ManifestError(f"{root / MANIFEST_NAME}: kind {manifest.get('kind')!r}, expected {kind!r}")
    for name, entry in sorted(manifest["files"].items()):
        path = root / name
        if not path.is_file():
            raise ManifestError(f"{path}: listed in {MANIFEST_NAME} but missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ManifestError(f"{path}: {size} bytes, {MANIFEST_NAME} says {entry.get('size')} (truncated or replaced)")
        if file_sha256(path) != entry.get("sha256"):
            raise ManifestError(f"{path}: sha256 differs from {MANIFEST_NAME} (the file is corrupted or was edited)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sener_jax.manifest", description="Verify or write MANIFEST.json.")
    parser.add_argument("directory")
    parser.add_argument("--write", action="store_true", help="hash the files as they are now into MANIFEST.json")
    parser.add_argument("--kind", default=None, help="with --write: what the directory is (export, encoder, ...)")
    args = parser.parse_args(argv)
    if args.write and not args.kind:
        parser.error("--write needs --kind (export for an export directory, encoder for a converted encoder)")
    if args.write:
        print(f"wrote {pathlib.Path(args.directory) / MANIFEST_NAME} (sha256 {write_manifest(args.directory, kind=args.kind)})")
        return 0
    try:
        manifest = verify_manifest(args.directory)
    except ManifestError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.directory}: {len(manifest['files'])} files match {MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
