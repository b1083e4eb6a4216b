"""Delivers engine notifications to a listener from one thread, never blocking the engine.

State changes are delivered in order, each one; results are coalesced (only the
latest is kept while the listener is busy), and spectra/images are passed on at
most every ``array_interval`` seconds. The listener runs inside ``thread_context``
(the Tango layer passes ``tango.EnsureOmniThread``).
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
                 thread_context: Callable[[], Any] = contextlib.nullcontext, tick_interval: float = 0.5):
        self.listener = listener
        self.array_names = set(array_names)
        self.array_interval = array_interval
        self._thread_context = thread_context
        self._cond = threading.Condition()
        # ("state", (state, status)) or ("results", (results, frame_id)), in order;
        # adjacent results are coalesced so a slow listener never slows the engine.
        self._queue: deque[tuple[str, tuple[Any, Any]]] = deque()
        self._busy = False
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
            idle = not (self._queue or self._busy)  # else it looks at the queue again before it waits
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
                    while not (self._queue or self._closed):
                        if time.monotonic() >= self._next_tick:
                            break
                        self._cond.wait(max(0.0, self._next_tick - time.monotonic()))
                    if self._closed:
                        return
                    payload: tuple[Any, ...]
                    if time.monotonic() >= self._next_tick:
                        self._next_tick = time.monotonic() + self.tick_interval
                        kind, payload = "tick", ()
                    else:
                        kind, payload = self._queue.popleft()
                    self._busy = True
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
