"""A background thread that keeps the next batches of a `BatchIterator` on the device.

Reading, collating and the host-to-device copy of batch n+1 (and n+2) overlap the step on batch
n. Resume stays exact: `state()` is the position after the last batch handed out (the next one to
train on), not the thread's, which runs ahead; `restore` drops what was prefetched.
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_END = object()


class Prefetcher:
    """`next()` -> (batch, device arrays); `place(batch)` puts a batch on the device (e.g. sharded
    over the mesh). Delegates `len`, `segments`, `state`/`restore`, `epoch`/`position`."""

    def __init__(self, iterator, place: Callable[[Any], Any], depth: int = 2):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.iterator, self.place, self.depth = iterator, place, depth
        self._state = iterator.state()
        self._queue: queue.Queue | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- delegation ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.iterator)

    @property
    def segments(self):
        return self.iterator.segments

    @property
    def epoch(self) -> int:
        return int(self._state["epoch"])

    @property
    def position(self) -> int:
        return int(self._state["position"])

    def state(self) -> dict:
        return dict(self._state)

    def restore(self, state) -> None:
        self.close()
        self.iterator.restore(state)
        self._state = self.iterator.state()

    # -- the thread ------------------------------------------------------------------------------
    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = next(self.iterator)
                item = (batch, self.place(batch), self.iterator.state())
            except StopIteration:
                item = _END
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
                item = error
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is _END or isinstance(item, BaseException):
                return

    def __iter__(self):
        return self

    def __next__(self):
        if self._thread is None:
            self.iterator.restore(self._state)  # the thread of a previous `close` may have run ahead
            self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
            self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                            name="sener-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item is _END:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        batch, arrays, self._state = item
        return batch, arrays

    def close(self) -> None:
        """Stops the thread (the next `next()` starts a new one from `state()`)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = self._queue = self._stop = None
