"""Delivers engine notifications to a listener from one thread, never blocking the engine.

State changes are delivered in order, each one; results are coalesced (only the
latest is kept while the listener is busy, and for ``results_interval`` seconds after
each delivery, or as long as the delivery took if longer), and spectra/images are passed
on at most every ``array_interval`` seconds. So at most 1 / results_interval deliveries a
second (200 by default), and a listener busy at most half the time: below
that rate every frame's results are delivered at once, above it the latest frame's
results go out every interval (the frames between are in the results file, not in
events). Waking this thread for every frame cost the engine thread ~15% of its time
at 1000 frames/s (a GIL hand-over each time). The listener runs inside
``thread_context`` (the Tango layer passes ``tango.EnsureOmniThread``).
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Listener(Protocol):
    """What the device (or any client) implements to follow an engine."""

    def on_state(self, state: str, status: str) -> None: ...

    def on_results(self, results: dict[str, Any], frame_id: int) -> None: ...

    def on_tick(self) -> None:
        """Called about every ``tick_interval`` seconds (e.g. to re-evaluate time-based verdicts)."""


class Publisher:
    """One daemon thread that calls the listener with state changes and latest results."""

    def __init__(self, listener: Listener | None, array_names: set[str], array_interval: float = 0.5,
                 thread_context: Callable[[], Any] = contextlib.nullcontext, tick_interval: float = 0.5,
                 results_interval: float = 0.005):
        self.listener = listener
        self.array_names = set(array_names)
        self.array_interval = array_interval
        self._thread_context = thread_context
        self._cond = threading.Condition()
        # ("state", (state, status)) or ("results", (results, frame_id)), in order;
        # adjacent results are coalesced so a slow listener never slows the engine.
        self._queue: deque[tuple[str, tuple[Any, Any]]] = deque()
        self._busy = False
        self.results_interval = results_interval
        self._pause_until = 0.0  # after a delivery, results wait (coalesced) until then
        self._last_array_push = 0.0
        self._closed = False
        self.tick_interval = tick_interval
        self._next_tick = time.monotonic() + tick_interval
        self._thread = threading.Thread(target=self._run, name="dqm-publisher", daemon=True)
        self._thread.start()

    def state(self, state: str, status: str) -> None:
        with self._cond:
            self._queue.append(("state", (state, status)))
            self._cond.notify_all()

    def results(self, results: dict[str, Any], frame_id: int) -> None:
        with self._cond:
            if self._queue and self._queue[-1][0] == "results":
                self._queue[-1] = ("results", (results, frame_id))
                return  # the publisher was woken for the item replaced
            # else it looks at the queue again before it waits (or when its pause ends)
            idle = not (self._queue or self._busy)
            self._queue.append(("results", (results, frame_id)))
            if idle:  # notify_all per frame cost the engine thread ~5% of its time
                self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far was delivered (not from the listener's thread)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while (self._queue or self._busy) and time.monotonic() < deadline:
                self._cond.wait(0.02)
            return not (self._queue or self._busy)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        with self._thread_context():
            while True:
                with self._cond:
                    while not self._closed:
                        now = time.monotonic()
                        if now >= self._next_tick:
                            break
                        # a state change never waits for a results pause (nor the results before it)
                        if self._queue and (now >= self._pause_until or any(k == "state" for k, _ in self._queue)):
                            break
                        # results pausing: wait out the pause (the engine does not wake us for them)
                        until = min(self._next_tick, self._pause_until) if self._queue else self._next_tick
                        self._busy = bool(self._queue)  # pausing counts as busy: no wake-up per frame
                        self._cond.wait(max(0.0, until - now))
                    if self._closed:
                        return
                    payload: tuple[Any, ...]
                    if time.monotonic() >= self._next_tick:
                        self._next_tick = time.monotonic() + self.tick_interval
                        kind, payload = "tick", ()
                    else:
                        kind, payload = self._queue.popleft()
                    self._busy = True
                t0 = time.monotonic()
                try:
                    if self.listener is not None:
                        if kind == "state":
                            self.listener.on_state(*payload)
                        elif kind == "tick":
                            on_tick = getattr(self.listener, "on_tick", None)
                            if on_tick is not None:
                                on_tick()
                        else:
                            self._deliver_results(*payload)
                except Exception:  # a listener bug must not stop notifications
                    log.exception("listener failed on %s", kind)
                finally:
                    with self._cond:
                        if kind == "results":  # a slow listener (Tango pushes) gets at most half the time
                            end = time.monotonic()
                            self._pause_until = end + max(self.results_interval, end - t0)
                        self._busy = False
                        self._cond.notify_all()

    def _deliver_results(self, results: dict[str, Any], frame_id: int) -> None:
        now = time.monotonic()
        if self.array_names:
            if now - self._last_array_push < self.array_interval:
                results = {k: v for k, v in results.items() if k not in self.array_names}
            else:
                self._last_array_push = now
        self.listener.on_results(results, frame_id)  # type: ignore[union-attr]
