"""The worker side of scale-out: an engine hook that reports to a reducer over ZeroMQ PUSH.

The engine calls :class:`WorkerLink` from its own thread only: ``begin`` at Start, ``frame``
for every analysed frame, ``tick`` often (after a frame, and every 0.1 s when idle), and
``end`` at the end of the scan. At a heartbeat (``heartbeat`` s) the link sends the per-frame
results since the last message; every ``acc_interval`` s, and always in the last message, the
message also carries the cumulative accumulators, which then *cover* every frame sent so far
(the reducer uses a frame only once covered, so its summary and its per-frame data always
agree, whatever happens to the worker). No per-frame round trip: one message per heartbeat.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from .message import COUNTER_FIELDS, WorkerMessage, pack
from .wire import Registry

log = logging.getLogger(__name__)

HEARTBEAT = 0.2
ACC_INTERVAL = 1.0
#: how long a running scan tolerates losing the connection to the reducer (s)
CONNECT_TIMEOUT = 3.0
#: how long Start waits for it (the link connects from Init on, so it is normally up long before;
#: short, because Start must return at once)
START_TIMEOUT = 0.5
SEND_HWM = 1000


class ReducerUnreachable(RuntimeError):
    """The reducer cannot be reached: the worker goes to FAULT with this message."""


def check_endpoint(endpoint: str) -> str:
    """``tcp://host:port`` (the reducer's receive socket), else ValueError naming the rule."""
    head, sep, port = endpoint.strip().rpartition(":")
    if not (endpoint.startswith("tcp://") and sep and head[len("tcp://"):] and port.isdigit()
            and 0 < int(port) < 65536) or "*" in head:
        raise ValueError(f"Reducer must be the reducer's endpoint tcp://host:port (its Endpoint property, "
                         f"with a host name or address), got {endpoint!r}")
    return endpoint.strip()


class WorkerLink:
    """One worker's connection to its reducer (PUSH, connected from Init on)."""

    def __init__(self, endpoint: str, worker: str, analyses: Sequence[str], registry: Registry,
                 heartbeat: float = HEARTBEAT, acc_interval: float = ACC_INTERVAL,
                 connect_timeout: float = CONNECT_TIMEOUT, clock: Callable[[], float] = time.monotonic):
        self.endpoint = check_endpoint(endpoint)
        self.worker = worker
        self.analyses = list(analyses)
        self.registry = registry
        self.heartbeat, self.acc_interval, self.connect_timeout = heartbeat, acc_interval, connect_timeout
        self._clock = clock
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to a live connection: unreachable is seen
        self._sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._sock.setsockopt(zmq.LINGER, int(connect_timeout * 1000))
        self._sock.connect(self.endpoint)
        # close() comes from the device's thread (delete_device), sends from the engine thread: a
        # ZeroMQ socket is used by one thread at a time, and never after it was closed
        self._use = threading.Lock()
        self._closed = False
        self.scan = ""
        self.live = False
        self._seq = 0
        self._batch: list[tuple[int, float, dict[str, Any]]] = []
        self._next_send = 0.0
        self._next_acc = 0.0
        self._failing_since: float | None = None
        self.messages_sent = 0
        self.bytes_sent = 0

    def begin(self, scan: str, live: bool) -> None:
        """A new scan; ReducerUnreachable when no connection comes within ``connect_timeout``."""
        with self._use:
            connected = not self._closed and self._sock.poll(int(START_TIMEOUT * 1000), zmq.POLLOUT)
        if not connected:
            raise ReducerUnreachable(self.unreachable("no connection", START_TIMEOUT))
        self.scan, self.live = scan, live
        self._seq = 0
        self._batch = []
        now = self._clock()
        self._next_send = now + self.heartbeat
        self._next_acc = now + self.acc_interval
        self._failing_since = None

    def unreachable(self, what: str, within: float | None = None) -> str:
        return (f"cannot reach the reducer at {self.endpoint} (Reducer property): {what} within "
                f"{within or self.connect_timeout:g} s. Start the DataQualityReducer server (Astor) or fix the Reducer "
                "property, then Reset and Start from the reducer")

    def frame(self, frame_id: int, timestamp: float, results: dict[str, Any]) -> None:
        self._batch.append((frame_id, timestamp, results))

    def due(self) -> bool:
        return self._clock() >= self._next_send

    def tick(self, accs: Callable[[], list[Any]], state: dict[str, Any]) -> None:
        """Send a heartbeat message when one is due; ReducerUnreachable when sends fail for too long."""
        now = self._clock()
        if now < self._next_send:
            return
        with_accs = now >= self._next_acc
        if self._send(accs() if with_accs else None, state, final=False):
            self._next_send = now + self.heartbeat
            if with_accs:
                self._next_acc = now + self.acc_interval

    def end(self, accs: list[Any], state: dict[str, Any]) -> None:
        """The scan's last message (accumulators always); waits up to ``connect_timeout`` for the
        connection, then ReducerUnreachable."""
        deadline = self._clock() + self.connect_timeout
        while not self._send(accs, state, final=True):
            if self._clock() >= deadline:
                raise ReducerUnreachable(self.unreachable("the last message of the scan was not accepted"))
            with self._use:
                if not self._closed:
                    self._sock.poll(100, zmq.POLLOUT)

    def _send(self, accs: list[Any] | None, state: dict[str, Any], final: bool) -> bool:
        msg = WorkerMessage(self.worker, self.scan, self._seq + 1, state["state"],
                            {k: int(state["counters"].get(k, 0)) for k in COUNTER_FIELDS}, state.get("announced"),
                            bool(state.get("series_ended")), self.live, self.analyses, state.get("status", ""),
                            self._batch, accs)
        parts = pack(msg, self.registry)
        try:
            with self._use:
                if self._closed:  # shutting down: nobody waits for this scan's reports any more
                    return True
                self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # nothing was sent: the batch is kept and goes with the next message
            now = self._clock()
            self._failing_since = self._failing_since or now
            if not final and now - self._failing_since > self.connect_timeout:
                raise ReducerUnreachable(self.unreachable("the connection was lost and did not come back")) from None
            return False
        self._failing_since = None
        self._seq += 1
        self._batch = []
        self.messages_sent += 1
        self.bytes_sent += sum(len(p) if isinstance(p, bytes) else memoryview(p).nbytes for p in parts)
        return True

    def close(self) -> None:
        with self._use:
            self._closed = True
            self._sock.close(linger=0)


__all__ = ["ACC_INTERVAL", "HEARTBEAT", "ReducerUnreachable", "WorkerLink", "check_endpoint"]
