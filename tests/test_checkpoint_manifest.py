"""Checkpoint integrity: a SHA-256 manifest per step, checked on restore, is also the commit marker."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sener_jax import checkpointing, manifest

FINGERPRINT = {"model": "tiny"}


def _state(value: float):
    return {"w": jnp.full((64, 64), value, jnp.float32), "step": jnp.asarray(int(value), jnp.int32)}


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _saved(tmp_path):
    checkpoints = checkpointing.RunCheckpoints(tmp_path / "ckpt", max_to_keep=3)
    for step in (1, 2):
        checkpoints.save(step, _state(step), {"fingerprint": FINGERPRINT, "step": step})
    checkpoints.wait()  # saves are asynchronous: the last one's manifest is written when it is waited for
    return checkpoints


def test_async_save_keeps_the_previous_step_until_the_new_one_is_committed(tmp_path):
    checkpoints = checkpointing.RunCheckpoints(tmp_path / "ckpt", max_to_keep=1)
    checkpoints.save(1, _state(1), {"fingerprint": FINGERPRINT, "step": 1})
    checkpoints.save(2, _state(2), {"fingerprint": FINGERPRINT, "step": 2})  # waits for 1, then starts 2
    # Step 2 is in flight (or done, but not waited for): step 1 is committed and still on disk, so a
    # kill now resumes from it.
    assert manifest.verify_manifest(checkpoints.directory / "1", kind="checkpoint")
    assert manifest.read_manifest(checkpoints.directory / "2") is None
    assert checkpoints.latest_step() == 2  # a read waits: manifest written, step 1 removed (max_to_keep=1)
    assert manifest.verify_manifest(checkpoints.directory / "2", kind="checkpoint")
    assert not (checkpoints.directory / "1").exists()
    checkpoints.close()


def test_every_step_has_a_manifest_and_restores(tmp_path):
    checkpoints = _saved(tmp_path)
    for step in (1, 2):
        assert manifest.verify_manifest(checkpoints.directory / str(step), kind="checkpoint")["kind"] == "checkpoint"
    state, record = checkpoints.restore(2, _abstract(_state(0)), FINGERPRINT)
    assert record["step"] == 2 and np.all(np.asarray(state["w"]) == 2.0)
    checkpoints.close()


def test_flipped_bytes_in_an_array_file_are_an_error_naming_the_file(tmp_path):
    checkpoints = _saved(tmp_path)
    step_dir = checkpoints.directory / "2"
    # The largest file of the state holds the array bytes.
    target = max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    target.write_bytes(bytes(data))
    fresh = checkpointing.RunCheckpoints(checkpoints.directory, max_to_keep=3)
    assert fresh.latest_step() == 2
    with pytest.raises(checkpointing.CorruptCheckpointError, match=str(target)):
        fresh.restore(2, _abstract(_state(0)), FINGERPRINT)
    with pytest.raises(checkpointing.CorruptCheckpointError, match=str(target)):
        fresh.read_record(2)
    # The other step is intact.
    state, _ = fresh.restore(1, _abstract(_state(0)), FINGERPRINT)
    assert np.all(np.asarray(state["w"]) == 1.0)
    checkpoints.close()
    fresh.close()


def test_a_step_without_manifest_is_incomplete_and_the_previous_one_is_used(tmp_path, caplog):
    checkpoints = _saved(tmp_path)
    checkpoints.close()
    (checkpoints.directory / "2" / manifest.MANIFEST_NAME).unlink()
    resumed = checkpointing.RunCheckpoints(checkpoints.directory, max_to_keep=3)
    with caplog.at_level(logging.WARNING):
        step = resumed.latest_step()
    assert step == 1 and "no manifest" in caplog.text and str(checkpoints.directory / "2") in caplog.text
    state, record = resumed.restore(step, _abstract(_state(0)), FINGERPRINT)
    assert record["step"] == 1 and np.all(np.asarray(state["w"]) == 1.0)
    with pytest.raises(checkpointing.CorruptCheckpointError, match="manifest"):
        resumed.restore(2, _abstract(_state(0)), FINGERPRINT)
    # The resumed run saves step 2 again: the incomplete one is replaced and committed this time.
    resumed.save(2, _state(5), {"fingerprint": FINGERPRINT, "step": 2})
    assert resumed.latest_step() == 2
    state, _ = resumed.restore(2, _abstract(_state(0)), FINGERPRINT)
    assert np.all(np.asarray(state["w"]) == 5.0)
    resumed.close()
