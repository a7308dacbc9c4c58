"""Orbax checkpoints of a training run: the train state pytree plus a JSON record of the loop.

The JSON record holds what is needed to resume exactly: the data-iterator position (epoch, batch
within the epoch), the early-stopping state and a fingerprint of the model/optimizer setup.
Orbax writes each step into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoint intact. Once the save is final, the primary process
writes a SHA-256 manifest of the step's files (`checkpoint_manifest`): it is the commit marker (a
step without one is skipped with a warning, the previous step is used) and restoring checks every
file against it (`CorruptCheckpointError` names the file). Restoring checks the fingerprint first
(`IncompatibleCheckpointError` names the differing fields) and turns any failure to read the
arrays into `CorruptCheckpointError` naming the directory and the cause.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from sener_jax import checkpoint_manifest

logger = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


class CorruptCheckpointError(CheckpointError):
    pass


class IncompatibleCheckpointError(CheckpointError):
    pass


def _fingerprint_differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            if key not in saved or key not in current:
                out.append(f"{prefix}{key}: {'missing in checkpoint' if key not in saved else 'new in this run'}")
            else:
                out += _fingerprint_differences(saved[key], current[key], f"{prefix}{key}.")
        return out
    if saved != current:
        return [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run has {current!r}"]
    return []


class RunCheckpoints:
    """One CheckpointManager (`directory`, keeping `max_to_keep` steps) of (state, record) pairs."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 1):
        self.directory = pathlib.Path(directory).resolve()
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )
        self._verified: set[int] = set()  # steps whose files matched their manifest (hashing is not free)

    def latest_step(self) -> int | None:
        """The newest step whose manifest was written (a newer step without one is skipped, with a warning)."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            if checkpoint_manifest.has_manifest(self.directory / str(step)):
                return step
            logger.warning(
                "checkpoint %s has no manifest (%s): its save did not finish; using an earlier step",
                self.directory / str(step), checkpoint_manifest.MANIFEST_NAME,
            )
        return None

    def save(self, step: int, state, record: dict) -> None:
        # A resumed run redoing steps it had saved (or begun to save) before the kill: replace them.
        # Later steps must go too, or Orbax would refuse to save a step below its latest one.
        for existing in self.manager.all_steps():
            if existing >= step:
                self.manager.delete(existing)
                self._verified.discard(existing)
        json.dumps(record)  # fail here, not inside Orbax, on a record that is not JSON
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))
        )
        # The manifest must describe the final files: only after Orbax's (asynchronous) save has
        # finished and committed, which `wait_until_finished` waits for on every process.
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            checkpoint_manifest.write_manifest(self.directory / str(step))
        if jax.process_count() > 1:
            # No process may look for the manifest (e.g. restore right away) before it exists.
            ocp.multihost.sync_global_processes(f"sener_checkpoint_manifest_{step}")

    def verify(self, step: int) -> None:
        """Check every file of `step` against its manifest; CorruptCheckpointError names the bad files."""
        if step in self._verified:
            return
        step_dir = self.directory / str(step)
        problems = checkpoint_manifest.manifest_problems(step_dir)
        if problems:
            raise CorruptCheckpointError(
                f"checkpoint {step_dir} (step {step}) is corrupt or incomplete: {'; '.join(problems)}. "
                f"Delete {step_dir} to fall back to an earlier checkpoint."
            )
        self._verified.add(step)

    def read_record(self, step: int) -> dict:
        self.verify(step)
        path = self.directory / str(step) / "record"
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
            return dict(restored["record"])
        except Exception as error:  # noqa: BLE001 - any failure to read is reported the same way
            raise CorruptCheckpointError(
                f"checkpoint {path} (step {step}) cannot be read: {type(error).__name__}: {error}. "
                f"Delete {self.directory / str(step)} to start from the previous checkpoint or from scratch."
            ) from error

    def restore(self, step: int, abstract_state, fingerprint: dict) -> tuple[Any, dict]:
        """(state, record) of `step`; `abstract_state` gives the structure, shapes and shardings."""
        record = self.read_record(step)
        differences = _fingerprint_differences(record.get("fingerprint"), fingerprint)
        if differences:
            shown = "; ".join(differences[:5]) + (f"; ... ({len(differences)} in all)" if len(differences) > 5 else "")
            raise IncompatibleCheckpointError(
                f"checkpoint {self.directory / str(step)} was written by a different setup: {shown}. "
                f"Use another --workdir, or delete {self.directory} to start over."
            )
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            )
        except Exception as error:  # noqa: BLE001
            raise CorruptCheckpointError(
                f"checkpoint {self.directory / str(step)} (step {step}) cannot be restored: "
                f"{type(error).__name__}: {error}. Delete that directory to fall back to an earlier checkpoint."
            ) from error
        return restored["state"], record

    def close(self) -> None:
        self.manager.close()
