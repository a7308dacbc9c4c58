"""What stops a training run early and how: non-finite steps, non-finite params, preemption signals.

  - `check_health(health, tconf)`     the step's device-side non-finite counters (train_step's
                                      state["health"], fetched by the loop only where it syncs
                                      anyway) against `train.nonfinite` / `train.max_consecutive_nonfinite`
  - `require_finite(params, what)`    NonFiniteParamsError naming the first non-finite leaf: no
                                      evaluation, best mark or export of a broken model
  - `StopSignals`                     SIGTERM/SIGINT/SIGUSR1 -> a flag the loop checks between steps
                                      (all processes agree, `distributed.any_process`); the loop
                                      then checkpoints and raises `Preempted` (main.py: exit 75)
"""
from __future__ import annotations

import logging
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

logger = logging.getLogger(__name__)

# EX_TEMPFAIL (sysexits.h): "try again later". main.py exits with it after a preemption checkpoint;
# launch/slurm_multinode.sbatch requeues the job on it.
EXIT_PREEMPTED = 75
NONFINITE_POLICIES = ("stop", "skip")
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


class NonFiniteTrainingError(RuntimeError):
    """Training produced a non-finite loss or gradient norm (policy "stop", or too many in a row)."""


class NonFiniteParamsError(ValueError):
    """Params with NaN/inf leaves offered for evaluation, a best checkpoint or an export."""


class Preempted(Exception):
    """A stop signal arrived; the checkpoint of `step` is written and complete."""

    def __init__(self, signal_name: str, step: int, checkpoint):
        super().__init__(f"{signal_name} received: stopped after step {step}, checkpoint {checkpoint} written; "
                         f"rerun the same command to resume")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


def check_health(health: dict, tconf, step: int, checkpoint_hint) -> None:
    """Raises NonFiniteTrainingError when the counters (host values of state["health"] after `step`)
    break the policy; logs the skipped steps under "skip". `checkpoint_hint()` says what is kept."""
    policy = tconf.get("nonfinite", "stop")
    if policy not in NONFINITE_POLICIES:
        raise ValueError(f"train.nonfinite={policy!r}: expected one of {NONFINITE_POLICIES}")
    total, first = int(health["nonfinite_steps"]), int(health["first_step"])
    if total == 0:
        return
    limit = int(tconf.get("max_consecutive_nonfinite", 10))
    longest = int(health["longest_run"])
    if policy == "stop" or longest >= limit:
        why = ("train.nonfinite='stop'" if policy == "stop"
               else f"{longest} in a row >= train.max_consecutive_nonfinite={limit}")
        raise NonFiniteTrainingError(
            f"non-finite loss or gradient norm at step {first} (noticed at step {step}; {total} such steps, "
            f"{why}). Training stopped: no checkpoint of the non-finite run is saved and no export is written; "
            f"{checkpoint_hint()}. Lower the learning rates (train.lr_*) or use --config.train.nonfinite=skip."
        )
    logger.warning("%d non-finite steps skipped so far (first at step %d, longest run %d of %d allowed)",
                   total, first, longest, limit)


def nonfinite_leaves(params) -> list[str]:
    """'/'-joined paths of the leaves of `params` holding NaN or inf (one device->host value per leaf)."""
    flat = traverse_util.flatten_dict(params) if isinstance(params, dict) else {("params",): params}
    finite = jax.device_get({k: jnp.all(jnp.isfinite(v)) for k, v in flat.items()
                             if jnp.issubdtype(jnp.asarray(v).dtype, jnp.inexact)})
    return ["/".join(map(str, k)) for k, ok in sorted(finite.items()) if not bool(np.asarray(ok))]


def require_finite(params, what: str) -> None:
    bad = nonfinite_leaves(params)
    if bad:
        shown = ", ".join(bad[:3]) + (f" ... ({len(bad)} in all)" if len(bad) > 3 else "")
        raise NonFiniteParamsError(f"refusing {what}: the params hold NaN/inf in {shown}")


class StopSignals:
    """Context manager: the first SIGTERM/SIGINT/SIGUSR1 sets `received` (the loop finishes the
    step in flight, checkpoints and stops); a second one restores the previous handlers and is
    delivered to them (e.g. a second Ctrl-C kills at once). Outside the main thread: a no-op."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = name
        logger.warning("%s received: checkpointing after the step in flight, then stopping", name)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
