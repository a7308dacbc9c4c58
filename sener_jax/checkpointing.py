"""Orbax checkpoints of a training run: the train state pytree plus a JSON record of the loop.

The JSON record holds what is needed to resume exactly: the data-iterator position (epoch, batch
within the epoch), the early-stopping state and a fingerprint of the model/optimizer setup.
Orbax writes each step into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoint intact. Restoring checks the fingerprint first
(`IncompatibleCheckpointError` names the differing fields) and turns any failure to read the
arrays into `CorruptCheckpointError` naming the directory and the cause.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import orbax.checkpoint as ocp


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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, record: dict) -> None:
        if step in self.manager.all_steps():
            # A resumed run redoing a step it had saved before the kill: replace it.
            self.manager.delete(step)
        json.dumps(record)  # fail here, not inside Orbax, on a record that is not JSON
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record))
        )
        self.manager.wait_until_finished()

    def read_record(self, step: int) -> dict:
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
