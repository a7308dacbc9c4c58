"""Multi-host training: 2 local CPU processes (loopback coordinator, gloo collectives) == 1 process.

Each worker is this file run as a script (`python tests/test_distributed.py OUT WORKDIR`): it joins
the job through `sener_jax.distributed` (environment variables), loads only its rows of every
global batch, trains 3 steps of a tiny config on a 4-device mesh (2 CPU devices per process),
saves and restores the state with Orbax from all processes, and writes its final trainable
params. The single-process reference runs the same script without the environment variables on
4 devices of its own, so both runs see the same global batches and devices.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
TIMEOUT_S = 480  # per process; about 90 s on an idle 2-core machine, far more under load


def tiny_config():
    sys.path.insert(0, str(REPO))
    from configs.demo import get_config

    config = get_config("tiny")
    config.model.encoder.update(dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, window=8))
    config.model.head.update(dict(max_span_words=9, biaffine_dim=8, channels=4, num_blocks=0, row_chunk=64))
    config.data.synthetic = dict(enabled=True, preset="tiny", seed=0, n_train=8, n_dev=2, n_test=2)
    config.data.max_tokens = 64
    config.data.overlap_words = 8
    config.data.token_bucket_base = 64
    config.data.word_bucket_base = 64
    # Whole-word masking draws per process (seeded by the process index), so a 2-process run
    # masks other tokens than a 1-process run: off here, where the two must match exactly.
    config.data.mask_probability = 0.0
    config.train.batch_size = 4
    config.train.num_epochs = 3
    config.train.max_steps = STEPS
    return config


def worker(out: str, workdir: str) -> None:
    import jax
    from flax import traverse_util

    from sener_jax import checkpointing, distributed, run_setup, train_step

    joined = distributed.initialize()
    config = tiny_config()
    run = run_setup.prepare_run(config, workdir)
    assert run.mesh.devices.size == 4, run.mesh
    state, frozen, optimizer = train_step.create_train_state(config, run.model_config, run.total_updates,
                                                        jax.random.PRNGKey(config.seed))
    state, frozen = train_step.replicate(state, run.mesh), train_step.replicate(frozen, run.mesh)
    step = train_step.make_train_step(run.model_config, optimizer, run.mesh)
    initial = traverse_util.flatten_dict(distributed.replicated_to_host(state["trainable"]))
    losses, local_rows = [], []
    for _ in range(STEPS):
        batch = next(run.train_iterator)
        local_rows.append(int(batch.arrays["input_ids"].shape[0]))
        state, metrics = step(state, frozen, train_step.device_batch(batch, run.mesh))
        losses.append(float(metrics["loss"]))
    # Orbax from every process into the shared workdir, then back.
    checkpoints = checkpointing.RunCheckpoints(pathlib.Path(workdir) / "checkpoints" / "test")
    checkpoints.save(STEPS, state, {"fingerprint": {"steps": STEPS}})
    restored, _ = checkpoints.restore(STEPS, train_step.abstract_replicated(state, run.mesh), {"steps": STEPS})
    checkpoints.close()
    trainable = traverse_util.flatten_dict(distributed.replicated_to_host(state["trainable"]))
    restored_trainable = traverse_util.flatten_dict(distributed.replicated_to_host(restored["trainable"]))
    arrays = {"/".join(k): v for k, v in trainable.items()}
    arrays.update({"restored:" + "/".join(k): v for k, v in restored_trainable.items()})
    np.savez(out, **arrays)
    stops = signal_agreement(config)
    pathlib.Path(out + ".json").write_text(json.dumps({
        "stops": stops,
        "joined": joined, "process_index": jax.process_index(), "process_count": jax.process_count(),
        "losses": losses, "local_rows": local_rows, "global_devices": jax.device_count(),
        "step": int(distributed.replicated_to_host(restored["step"])),
        "max_change": max(float(np.abs(trainable[k] - initial[k]).max()) for k in trainable),
    }))


def signal_agreement(config) -> list[int]:
    """The steps among 1..2*sync at which the loop's stop check says "stop", when only the LAST
    process received a signal (one process: it did). Multi-host, the check is a collective run every
    `train.signal_sync_every_steps` steps, so a host that got no signal must stop at the same step."""
    import types

    import jax

    from sener_jax import train

    sync = int(config.train.get("signal_sync_every_steps", 10))
    ctx = types.SimpleNamespace(run=types.SimpleNamespace(config=config))
    signals = types.SimpleNamespace(received="SIGTERM" if jax.process_index() == jax.process_count() - 1 else None)
    return [step for step in range(1, 2 * sync + 1) if train.stop_requested(ctx, signals, step)]


# ----------------------------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENER_") and k != "XLA_FLAGS"}
    # The session's other XLA flags (tests/conftest.py's LLVM level, or the caller's) carry over;
    # only the device count is this process's own.
    inherited = [f for f in os.environ.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
    flags = " ".join([f"--xla_force_host_platform_device_count={devices}", *inherited])
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **extra)
    return env


def _start(out, workdir, env):
    return subprocess.Popen([sys.executable, __file__, str(out), str(workdir)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(processes) -> None:
    failures = []
    for name, proc in processes:
        try:
            _, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            failures.append(f"{name}: timed out after {TIMEOUT_S} s\n{stderr[-4000:]}")
            continue
        if proc.returncode != 0:
            failures.append(f"{name}: exit code {proc.returncode}\n{stderr[-4000:]}")
    if failures:
        for _, proc in processes:
            if proc.poll() is None:
                proc.kill()
        raise AssertionError("\n\n".join(failures))


def _load(out: pathlib.Path):
    with np.load(out) as data:
        arrays = dict(data)
    return arrays, json.loads(pathlib.Path(str(out) + ".json").read_text())


def test_two_processes_train_like_one(tmp_path):
    port = _free_port()
    shared_workdir = tmp_path / "two"
    outs = [tmp_path / f"host{i}.npz" for i in range(2)]
    reference_out = tmp_path / "single.npz"
    processes = [
        (f"host {i}", _start(outs[i], shared_workdir, _env(2, SENER_COORDINATOR=f"127.0.0.1:{port}",
                                                         SENER_NUM_PROCESSES="2", SENER_PROCESS_ID=str(i))))
        for i in range(2)
    ]
    processes.append(("single process", _start(reference_out, tmp_path / "one", _env(4))))
    _finish(processes)

    (host0, info0), (host1, info1) = _load(outs[0]), _load(outs[1])
    reference, info_ref = _load(reference_out)
    assert (info0["joined"], info0["process_index"], info0["process_count"]) == (True, 0, 2)
    assert (info1["joined"], info1["process_index"], info1["process_count"]) == (True, 1, 2)
    assert (info_ref["joined"], info_ref["process_count"]) == (False, 1)
    assert info0["global_devices"] == info1["global_devices"] == info_ref["global_devices"] == 4
    # Each host loaded only its half of every global batch of 4 rows.
    assert info0["local_rows"] == info1["local_rows"] == [2] * STEPS
    assert info_ref["local_rows"] == [4] * STEPS
    assert info0["step"] == info1["step"] == STEPS
    # Host 0 got no signal, host 1 did: both stop at the same synchronised steps; alone, at once.
    sync = int(tiny_config().train.get("signal_sync_every_steps", 10))
    assert info0["stops"] == info1["stops"] == [sync, 2 * sync]
    assert info_ref["stops"] == list(range(1, 2 * sync + 1))
    np.testing.assert_allclose(info0["losses"], info_ref["losses"], rtol=1e-5)
    assert info0["losses"] == info1["losses"]

    assert host0.keys() == host1.keys() == reference.keys() and len(host0) > 2
    for name in sorted(k for k in host0 if not k.startswith("restored:")):
        np.testing.assert_array_equal(host0[name], host1[name], err_msg=f"hosts differ: {name}")
        np.testing.assert_allclose(host0[name], reference[name], atol=1e-5, rtol=1e-5,
                                   err_msg=f"2 processes != 1 process: {name}")
        # The Orbax checkpoint written and read by both hosts holds exactly the trained params.
        np.testing.assert_array_equal(host0["restored:" + name], host0[name], err_msg=name)
        np.testing.assert_array_equal(host1["restored:" + name], host1[name], err_msg=name)
    # The three steps moved the params (the comparison above is not between untouched inits).
    assert info0["max_change"] > 1e-4 and info_ref["max_change"] > 1e-4


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
