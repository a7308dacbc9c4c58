"""Writing a whole output directory (an export, a converted encoder) without ever destroying data.

    with staged_directory(out_dir, kind="export", overwrite=False) as staging:
        ...write files into `staging`...
        write_manifest(staging, kind="export")        # the commit marker, last

Rules (why: a mistyped OUT_DIR used to delete whatever was there, and a neighbouring OUT_DIR.tmp):
  * OUT_DIR missing or empty: written.
  * OUT_DIR one of ours (a MANIFEST.json of this `kind`): replaced only with overwrite=True.
  * anything else at OUT_DIR (a file, a non-empty foreign directory): refused, always.
  * files are written into a FRESH temp directory beside OUT_DIR (mkdtemp: never an existing
    path), which is renamed into place at the end; a kill leaves OUT_DIR as it was plus a
    `.OUT_DIR.staging-*` directory to delete. An old OUT_DIR is first renamed aside, then deleted.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from sener_jax.manifest import MANIFEST_NAME, read_manifest


def is_ours(directory: str | os.PathLike, kind: str) -> bool:
    manifest = read_manifest(directory)
    return manifest is not None and manifest.get("kind") == kind


def check_target(target: str | os.PathLike, *, kind: str, overwrite: bool) -> pathlib.Path:
    """Raises FileExistsError (naming the path and the way out) unless `target` may be written."""
    target = pathlib.Path(target)
    if not target.exists() and not target.is_symlink():
        return target
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(f"{target}: exists and is not a directory; choose another output path")
    if not any(target.iterdir()):
        return target
    if not is_ours(target, kind):
        raise FileExistsError(
            f"{target}: a non-empty directory that is not a sener_jax {kind} (no {MANIFEST_NAME} of kind {kind!r}); "
            "refusing to replace it: choose another output directory or move it away"
        )
    if not overwrite:
        raise FileExistsError(
            f"{target}: already exists and holds a sener_jax {kind}; pass --overwrite (overwrite=True) to replace it"
        )
    return target


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, *, kind: str, overwrite: bool) -> Iterator[pathlib.Path]:
    target = check_target(pathlib.Path(target).absolute(), kind=kind, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        yield staging
        if not is_ours(staging, kind):
            raise RuntimeError(f"{staging}: written without its {MANIFEST_NAME}; not moved into place")
        # Checked again: another process may have filled the target meanwhile.
        check_target(target, kind=kind, overwrite=overwrite)
        if target.exists():
            aside = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, aside / target.name)
            os.rename(staging, target)
            shutil.rmtree(aside)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # ours: made by mkdtemp above
