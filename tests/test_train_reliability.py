"""Reliability of a training run: NaN/inf steps, stop signals (preemption), extending a run,
empty dev files, what `--mode=eval` says it loads, non-finite params refused by evaluate/export."""
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import demo
from sener_jax import modes, train, train_guard
from sener_jax.data import load_data
from sener_jax.export import export_model
from sener_jax.manifest import MANIFEST_NAME
from sener_jax.models.sener import init_params
from sener_jax.run_setup import inference_settings, prepare_run

REPO = pathlib.Path(__file__).resolve().parents[1]
# configs/demo.py:tiny has 4 steps per epoch; max_steps=0 lets num_epochs decide.
TINY_FLAGS = {"max_steps": 0, "log_every_steps": 1}


def tiny_config(**train_fields):
    config = demo.get_config("tiny")
    config.train.update({**TINY_FLAGS, **train_fields})
    config.eval.threshold = 0.2
    return config


def saved_state(directory: pathlib.Path):
    manager = ocp.CheckpointManager(directory)
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, jax.device_get(restored["state"])


def all_finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# Non-finite training
# ----------------------------------------------------------------------------------------------


def test_nonfinite_loss_stops_naming_the_step_keeps_the_good_checkpoint_and_exports_nothing(tmp_path):
    config = tiny_config(lr_head=1e6, lr_encoder=1e6, checkpoint_every_steps=1)
    with pytest.raises(train_guard.NonFiniteTrainingError, match=r"non-finite loss or gradient norm at step \d+"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / "export").exists()
    assert not (tmp_path / "checkpoints" / "best").is_dir() or not any((tmp_path / "checkpoints" / "best").iterdir())
    step, state = saved_state(tmp_path / "checkpoints" / "latest")
    # Only states before the first non-finite step were saved, and they are finite.
    assert int(state["health"]["nonfinite_steps"]) == 0 and all_finite(state["trainable"])
    assert step < 4


def test_skip_policy_skips_nonfinite_updates_on_the_device_and_counts_them(tmp_path):
    config = tiny_config(lr_head=1e6, lr_encoder=1e6, nonfinite="skip", max_consecutive_nonfinite=100)
    config.train.export = False
    train.train_and_evaluate(config, tmp_path)
    step, state = saved_state(tmp_path / "checkpoints" / "latest")
    health = state["health"]
    assert step == 4 and int(health["nonfinite_steps"]) >= 1 and int(health["first_step"]) >= 2
    assert all_finite(state["trainable"]) and all_finite(state["opt_state"])
    # Too many in a row: stopped, naming the limit.
    config = tiny_config(lr_head=1e6, lr_encoder=1e6, nonfinite="skip", max_consecutive_nonfinite=1)
    with pytest.raises(train_guard.NonFiniteTrainingError, match="max_consecutive_nonfinite=1"):
        train.train_and_evaluate(config, tmp_path / "strict")


def test_evaluate_and_export_refuse_nonfinite_params(tmp_path):
    config = tiny_config()
    run = prepare_run(config, tmp_path)
    params = init_params(run.model_config, jax.random.PRNGKey(0))
    flat = traverse_util.flatten_dict(params)
    path = sorted(flat)[0]
    flat[path] = flat[path].at[...].set(np.nan)
    broken = traverse_util.unflatten_dict(flat)
    with pytest.raises(train_guard.NonFiniteParamsError, match="/".join(path)):
        export_model(tmp_path / "export", run.model_config, broken, run.data.tokenizer, run.data.labels,
                     inference_settings(config))
    assert not (tmp_path / "export").exists()
    with pytest.raises(train_guard.NonFiniteParamsError, match="dev"):
        train.evaluate_split(None, broken, run.data.splits["dev"], run.data.tokenizer, run.data.labels,
                             run.settings, run.model_config, batch_size=8, split="dev")


# ----------------------------------------------------------------------------------------------
# Stop signals
# ----------------------------------------------------------------------------------------------


def test_sigterm_checkpoints_the_current_step_exits_75_and_the_rerun_resumes_exactly(tmp_path):
    flags = ["--config.train.max_steps=0", "--config.train.num_epochs=2", "--config.train.log_every_steps=1",
             "--config.train.checkpoint_every_steps=0", "--config.eval.threshold=0.2"]
    workdir = tmp_path / "signalled"
    command = [sys.executable, "-m", "sener_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}", *flags]
    # The session's compilation cache (JAX_COMPILATION_CACHE_DIR, tests/conftest.py) is inherited.
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path / "first.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + 600
        while time.time() < deadline and process.poll() is None and "step 2: loss" not in log.read_text():
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
    text = log.read_text()
    assert process.returncode == train_guard.EXIT_PREEMPTED, text[-3000:]
    assert "SIGTERM received" in text
    latest = workdir / "checkpoints" / "latest"
    stopped_at, _ = saved_state(latest)
    assert 2 <= stopped_at < 8 and (latest / str(stopped_at) / MANIFEST_NAME).is_file()
    assert not (workdir / "export").exists()
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {stopped_at}" in rerun.stderr and "resumed from" in rerun.stderr
    config = tiny_config(num_epochs=2, checkpoint_every_steps=0)
    train.train_and_evaluate(config, tmp_path / "reference")
    step, resumed = saved_state(latest)
    _, reference = saved_state(tmp_path / "reference" / "checkpoints" / "latest")
    assert step == 8
    resumed, reference = (traverse_util.flatten_dict(s["trainable"]) for s in (resumed, reference))
    for path in reference:
        np.testing.assert_allclose(resumed[path], reference[path], atol=1e-6, err_msg="/".join(path))


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def test_a_run_can_be_extended_by_more_epochs_and_eval_mode_says_what_it_loads(tmp_path, caplog):
    train.train_and_evaluate(tiny_config(num_epochs=1), tmp_path)
    assert saved_state(tmp_path / "checkpoints" / "latest")[0] == 4
    with caplog.at_level(logging.INFO, logger="sener_jax"):
        train.train_and_evaluate(tiny_config(num_epochs=2), tmp_path)
    assert "resumed from" in caplog.text and "schedule length changed from 4 to 8 updates" in caplog.text
    assert saved_state(tmp_path / "checkpoints" / "latest")[0] == 8
    history = json.loads(json.dumps(train.LoopState.from_dict(
        modes.checkpointing.RunCheckpoints(tmp_path / "checkpoints" / "latest").read_record(8)["loop"]).history))
    assert [h["epoch"] for h in history] == [1, 2]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sener_jax"):
        modes.evaluate_checkpoint(tiny_config(num_epochs=2), tmp_path)
    assert "RANDOM" not in caplog.text
    assert "best checkpoint: step" in caplog.text and str(tmp_path / "checkpoints" / "best") in caplog.text


def test_an_empty_dev_file_is_an_error_naming_it_or_a_warning_when_not_evaluated(tmp_path, caplog):
    config = tiny_config()
    load_data(config, tmp_path)  # generates the synthetic files
    data_dir = tmp_path / "data"
    (data_dir / "dev.jsonl").write_text("")
    config.data.synthetic = dict(enabled=False)
    config.data.update(train_path=str(data_dir / "train.jsonl"), dev_path=str(data_dir / "dev.jsonl"),
                       test_path=str(data_dir / "test.jsonl"))
    with pytest.raises(ValueError, match=str(data_dir / "dev.jsonl")):
        load_data(config, tmp_path)
    config.eval.splits = ("test",)
    with caplog.at_level(logging.WARNING):
        bundle = load_data(config, tmp_path)
    assert "dev" not in bundle.splits and "no best checkpoint" in caplog.text and "dev.jsonl" in caplog.text
