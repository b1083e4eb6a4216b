"""Ordered parallel work: jobs run on a small pool of threads, outputs come back in submission order.

The engine submits every item it takes from the source queue, in order; frames carry their
(pure) ``process`` call, other items carry nothing. The engine thread then takes the outputs
one by one in that same order and does everything order-dependent itself (quality, products,
publishing) and hands the outputs, in that order, to the run's ``Accumulation`` thread, so
results are identical with any number of workers. The
analysis kernels are numba ``nogil`` functions, so the workers really run at once.

A job's exception is its output (returned in its place, never raised in the worker), so a
failure on item k is seen after items 0..k-1 and names item k.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

_STOP = object()
log = logging.getLogger(__name__)


def default_threads() -> int:
    """Analysis threads by default: the cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


class PipelineClosed(RuntimeError):
    """submit() after close()."""


class _Slot:
    """One submitted item: its tag, and once done, its value or exception."""

    __slots__ = ("args", "cancelled", "done", "error", "fn", "tag", "value")

    def __init__(self, tag: Any, fn: Callable[..., Any] | None, args: tuple):
        self.tag, self.fn, self.args = tag, fn, args
        self.value: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        # a slot without a job is done at once and needs no event
        self.done: threading.Event | None = threading.Event() if fn is not None else None


class OrderedPool:
    """``workers`` threads running submitted jobs; ``next()`` returns outputs in submission order.

    At most ``max_in_flight`` items are held (submitted and not yet taken by ``next()``), which
    bounds the memory of frames in flight; ``has_room()`` tells the caller whether it may submit.
    Only one thread (the engine thread) submits and takes outputs; ``close()`` may come from it.
    """

    def __init__(self, workers: int, max_in_flight: int | None = None, name: str = "dqm-analysis",
                 thread_context: Callable[[], Any] | None = None):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        # two per worker: one running, one waiting, while the caller consumes the oldest output
        self.max_in_flight = max(1, max_in_flight if max_in_flight is not None else 2 * workers)
        self._slots: deque[_Slot] = deque()  # in submission order, not yet taken
        self._jobs: deque[_Slot | object] = deque()  # waiting for a worker
        self._cond = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(thread_context,), name=f"{name}-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    def __len__(self) -> int:
        return len(self._slots)

    def has_room(self) -> bool:
        return len(self._slots) < self.max_in_flight

    def submit(self, tag: Any, fn: Callable[..., Any] | None = None, *args: Any) -> None:
        """Queue ``fn(*args)`` (or nothing: the output is just ``tag``); never blocks.

        The caller keeps the bound with ``has_room()``; submitting beyond it is a bug."""
        if self._closed:
            raise PipelineClosed("the pipeline is closed")
        if len(self._slots) >= self.max_in_flight:
            raise RuntimeError(f"more than {self.max_in_flight} items in flight; check has_room() first")
        slot = _Slot(tag, fn, args)
        self._slots.append(slot)
        if fn is not None:
            with self._cond:
                self._jobs.append(slot)
                self._cond.notify()

    def next(self, timeout: float | None = None) -> tuple[Any, Any, BaseException | None]:
        """(tag, value, exception) of the oldest item, waiting for its job to finish.

        Raises IndexError when nothing is in flight and TimeoutError when the job is still
        running after ``timeout`` seconds (the item stays the oldest)."""
        slot = self._slots[0]
        if slot.done is not None and not slot.done.wait(timeout):
            raise TimeoutError("the oldest job is still running")
        self._slots.popleft()
        return slot.tag, slot.value, slot.error

    def close(self, timeout: float | None = 5.0) -> bool:
        """Drop the items in flight (jobs not started never run) and end the workers.

        True when every worker ended within ``timeout``. A worker in a running job finishes it
        first; jobs are pure, so nothing else is waited for."""
        with self._cond:
            self._closed = True
            for slot in self._slots:
                slot.cancelled = True
            self._jobs.clear()
            self._jobs.extend([_STOP] * len(self._threads))
            self._cond.notify_all()
        self._slots.clear()
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(timeout)
        return not any(t.is_alive() for t in self._threads if t is not me)

    @property
    def closed(self) -> bool:
        return self._closed

    def _work(self, thread_context: Callable[[], Any] | None) -> None:
        if thread_context is not None:
            with thread_context():
                self._loop()
        else:
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                slot = self._jobs.popleft()
            if slot is _STOP:
                return
            assert isinstance(slot, _Slot)
            if not slot.cancelled:
                try:
                    slot.value = slot.fn(*slot.args)  # type: ignore[misc]
                except BaseException as exc:  # noqa: BLE001 - returned in order to the caller
                    slot.error = exc
            slot.args = ()  # let the frame go as soon as its job is done
            slot.done.set()  # type: ignore[union-attr]


_DRAIN = object()


class Accumulation:
    """A run's accumulators, updated in frame order on a thread of their own (``dqm-accumulate``).

    The engine thread hands each frame's outputs over (:meth:`add`) once the frame's results are
    out, and goes on with the next frame: accumulating (the pixel maps take a batch of frames at a
    time, ~1.5 ms a frame, and their first frame allocates ~40 MB) never delays a later frame's
    results, and runs beside the next frame's analysis (the kernels release the GIL). Items are
    applied strictly in the order given, with the parameters given, so the accumulators are
    bit-for-bit those of a loop on the engine thread.

    :meth:`drain` waits for every item given so far and returns the accumulators (the run's end,
    a scale-out heartbeat): the caller then reads them until it adds again. :meth:`call` runs a
    function on them in order without waiting (interim copies for the accumulated checks). The
    first exception stops accumulating and is kept in ``error``; the engine thread, which owns
    the products and the state, enters FAULT itself when it sees it. At most ``max_queued`` items
    wait (``add`` blocks beyond: the source queue takes the backpressure, loss stays at the source).
    """

    def __init__(self, analyses: list[Any], accs: list[Any], max_queued: int = 16, name: str = "dqm-accumulate"):
        self.analyses = analyses
        self.accs = accs
        self.error: str | None = None
        self.frames = 0  # frames accumulated
        self._q: queue.Queue = queue.Queue(maxsize=max(1, max_queued))
        self._discard = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def add(self, frame_id: int, outputs: list[Any], params: Any) -> None:
        """Accumulate one frame's outputs after everything given before (blocks while the queue is full)."""
        self._put((frame_id, outputs, params))

    def call(self, fn: Callable[[list[Any]], Any]) -> None:
        """Run ``fn(accs)`` on the accumulation thread after the items given so far; its exceptions are logged."""
        self._put(fn)

    def drain(self, timeout: float | None = None) -> list[Any]:
        """The accumulators once every item given so far is applied (at once after close; TimeoutError
        after ``timeout``)."""
        done = threading.Event()
        if self._put((_DRAIN, done)):
            deadline = None if timeout is None else time.monotonic() + timeout
            while not done.wait(0.1) and self._thread.is_alive():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"accumulation still busy after {timeout} s")
        return self.accs

    def close(self, timeout: float | None = 5.0) -> bool:
        """Stop: items not yet applied are dropped (the run is over or abandoned); later calls do
        nothing. True when the thread ended (it never waits on anything but its own work)."""
        if not self._discard:
            self._discard = True
            self._put(_STOP, force=True)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _put(self, item: Any, force: bool = False) -> bool:
        while force or not self._discard:
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if not self._thread.is_alive():
                    return False
        return False

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            if isinstance(item, tuple) and item[0] is _DRAIN:
                item[1].set()
                continue
            if self._discard or self.error is not None:
                continue
            if callable(item):
                try:
                    item(self.accs)
                except Exception:  # noqa: BLE001 - a side job (interim copies) must not stop the run
                    log.exception("accumulation side job failed")
                continue
            frame_id, outputs, params = item
            try:
                self.accs = [a.accumulate(acc, o, params) for a, acc, o in zip(self.analyses, self.accs, outputs)]
                self.frames += 1
            except Exception as exc:  # noqa: BLE001 - reported by the engine thread
                self.error = (f"analysis accumulate failed on frame {frame_id}: {type(exc).__name__}: {exc}. "
                              "Fix the plugin, then run Reset")


__all__ = ["Accumulation", "OrderedPool", "PipelineClosed", "default_threads"]
