"""Checksum manifests (`sener_jax.manifest`) and never-destroying output directories
(`sener_jax.output_dir`): flipped bytes, truncation, missing files and a missing commit marker are
named; foreign directories and a foreign `.tmp` neighbour are never touched."""
from __future__ import annotations

import json

import pytest

from sener_jax.manifest import MANIFEST_NAME, ManifestError, main, verify_manifest, write_manifest
from sener_jax.output_dir import staged_directory


def _fill(directory):
    (directory / "sub").mkdir(parents=True)
    (directory / "a.bin").write_bytes(bytes(range(256)) * 64)
    (directory / "sub" / "b.json").write_text('{"x": 1}')


def flip_bytes(path, count=16, offset=100):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_truncated_missing_files_and_no_manifest_are_named(tmp_path):
    _fill(tmp_path)
    digest = write_manifest(tmp_path, kind="test")
    manifest = verify_manifest(tmp_path, kind="test")
    assert sorted(manifest["files"]) == ["a.bin", "sub/b.json"] and len(digest) == 64
    flip_bytes(tmp_path / "a.bin")
    with pytest.raises(ManifestError, match=r"a\.bin: sha256 differs"):
        verify_manifest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"short")
    with pytest.raises(ManifestError, match=r"a\.bin: 5 bytes"):
        verify_manifest(tmp_path)
    write_manifest(tmp_path, kind="test")
    (tmp_path / "sub" / "b.json").unlink()
    with pytest.raises(ManifestError, match=r"b\.json: listed in MANIFEST.json but missing"):
        verify_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="incomplete or foreign directory: MANIFEST.json is missing"):
        verify_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"files": {}}))  # not ours
    with pytest.raises(ManifestError, match="is not a sener_jax manifest"):
        verify_manifest(tmp_path)


def test_command_line_verifies_and_rewrites(tmp_path, capsys):
    _fill(tmp_path)
    assert main([str(tmp_path)]) == 1 and "MANIFEST.json is missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--write", str(tmp_path)])  # --kind is required with --write
    assert main(["--write", "--kind", "export", str(tmp_path)]) == 0
    assert main([str(tmp_path)]) == 0 and verify_manifest(tmp_path, kind="export")


def _write(staging, text="new", kind="thing"):
    (staging / "data.txt").write_text(text)
    write_manifest(staging, kind=kind)


def test_staged_directory_refuses_foreign_directories_and_replaces_ours_only_with_overwrite(tmp_path):
    target = tmp_path / "out"
    foreign_tmp = tmp_path / "out.tmp"  # a user's directory that happens to have this name
    foreign_tmp.mkdir()
    (foreign_tmp / "keep.txt").write_text("precious")
    target.mkdir()
    (target / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not a sener_jax thing"):
        with staged_directory(target, kind="thing", overwrite=True) as staging:
            _write(staging)
    assert (target / "notes.txt").read_text() == "precious" and (foreign_tmp / "keep.txt").read_text() == "precious"

    (target / "notes.txt").unlink()  # empty: may be written
    with staged_directory(target, kind="thing", overwrite=False) as staging:
        _write(staging, "v1")
    assert (target / "data.txt").read_text() == "v1"
    with pytest.raises(FileExistsError, match="already exists and holds a sener_jax thing; pass --overwrite"):
        with staged_directory(target, kind="thing", overwrite=False) as staging:
            _write(staging, "v2")
    with pytest.raises(FileExistsError, match="not a sener_jax other"):  # ours, but of another kind
        with staged_directory(target, kind="other", overwrite=True) as staging:
            _write(staging, "v2", kind="other")
    with staged_directory(target, kind="thing", overwrite=True) as staging:
        _write(staging, "v2")
    assert (target / "data.txt").read_text() == "v2" and verify_manifest(target, kind="thing")

    # A writer that dies midway leaves the old directory as it was and no staging behind.
    with pytest.raises(RuntimeError, match="killed"):
        with staged_directory(target, kind="thing", overwrite=True) as staging:
            (staging / "data.txt").write_text("half")
            raise RuntimeError("killed")
    assert (target / "data.txt").read_text() == "v2"
    # Forgetting the manifest (the commit marker) is refused too.
    with pytest.raises(RuntimeError, match="without its MANIFEST.json"):
        with staged_directory(target, kind="thing", overwrite=True) as staging:
            (staging / "data.txt").write_text("unmarked")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.tmp"]
    assert (foreign_tmp / "keep.txt").read_text() == "precious"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with staged_directory(a_file, kind="thing", overwrite=True) as staging:
            _write(staging)
