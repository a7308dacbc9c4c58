"""Training-loop timing that measures finished device work, not dispatch.

JAX dispatches a step and returns at once, so a progress bar updated after each call runs ahead of
the device. `EpochTimer.completed` blocks on the result of the step `lag` calls back (which keeps
at most `lag` steps queued, enough to hide the host's work) and only then counts it; the time of
an epoch is split into training, evaluation and checkpointing.
"""
from __future__ import annotations

import collections
import logging
import time

import jax

logger = logging.getLogger(__name__)


class EpochTimer:
    def __init__(self, lag: int = 2):
        self.lag = lag
        self.pending: collections.deque = collections.deque()
        self.seconds: dict[str, float] = {}
        self._phase, self._since = "train", time.perf_counter()

    def completed(self, result, bar) -> None:
        """`result` of the step just dispatched; counts (bar.update) the steps that have finished."""
        self.pending.append(result)
        while len(self.pending) > self.lag:
            jax.block_until_ready(self.pending.popleft())
            bar.update(1)

    def drain(self, bar) -> None:
        """Waits for every dispatched step (the end of the epoch's training)."""
        jax.block_until_ready(list(self.pending))
        bar.update(len(self.pending))
        self.pending.clear()

    def phase(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[self._phase] = self.seconds.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = name, now

    def report(self, epoch: int, writer, step: int) -> None:
        """Logs (and writes to TensorBoard) this epoch's seconds per phase; the next epoch starts training."""
        self.phase("train")
        self.seconds.setdefault("eval", 0.0)
        for name, seconds in self.seconds.items():
            writer.add_scalar(f"time/{name}_s", seconds, step)
        logger.info("epoch %d: train %.1fs, eval %.1fs, checkpoint %.1fs", epoch + 1,
                    self.seconds.get("train", 0.0), self.seconds["eval"], self.seconds.get("checkpoint", 0.0))
        self.seconds = {}
