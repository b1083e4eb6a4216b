"""Helpers shared by the tests: free ports, an independent STINS sender, test frames."""
from __future__ import annotations

import json
import socket

import numpy as np
import zmq


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StinsSender:
    """An independent STINS sender: builds the messages itself with plain pyzmq."""

    def __init__(self, port: int, bind: bool = True):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 2000)
        addr = f"tcp://127.0.0.1:{port}"
        self.sock.bind(addr) if bind else self.sock.connect(addr)

    def header(self, series: str = "1", **extra) -> None:
        self.sock.send_json({"htype": "header", "series": series, **extra})

    def image(self, frame_id: int, data: np.ndarray, **override) -> None:
        msg = {"htype": "image", "frame": frame_id, "shape": list(data.shape),
               "type": data.dtype.name, "compression": "none", **override}
        self.sock.send_multipart([json.dumps(msg).encode(), np.ascontiguousarray(data)])

    def raw(self, *parts: bytes) -> None:
        self.sock.send_multipart(list(parts))

    def series_end(self) -> None:
        self.sock.send_json({"htype": "series_end"})

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def frames_for_test(n: int, shape=(64, 80), seed: int = 1, dtype=np.uint16) -> list[np.ndarray]:
    """Random frames with a bright block, independent of the project's simulator."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        f = rng.integers(90, 110, size=shape).astype(dtype)
        f[10:20, 30:45] += np.asarray(1000 + 10 * i, dtype=dtype)
        out.append(f)
    return out


def run_scan(engine, params: dict | None = None, timeout: float = 60.0):
    """Set ``params``, start a scan, wait until it leaves RUNNING, close the engine; the final snapshot."""
    import time

    from tango_dqm.engine import EngineState

    try:
        for name, value in (params or {}).items():
            engine.set_parameter(name, value)
        engine.start()
        deadline = time.monotonic() + timeout
        while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.02)
        return engine.snapshot()
    finally:
        engine.close()


def assert_counters_exact(snap, **expected) -> None:
    """The counter invariant at the end of a scan (README "Counters"), then each ``expected`` counter.

    ``total == completed + dropped + bad``; partial events are part of completed, orphaned ones of
    dropped; duplicates and out-of-order frames count frames, outside the sum.
    """
    c = snap.counters
    assert c.total == c.completed + c.dropped + c.bad, f"total != completed + dropped + bad: {c}"
    assert 0 <= c.partial <= c.completed and 0 <= c.orphaned <= c.dropped, c
    assert min(c.duplicate, c.out_of_order, c.bad) >= 0, c
    for name, value in expected.items():
        assert getattr(c, name) == value, f"{name} = {getattr(c, name)}, expected {value}: {c}"


class PeersConnected:
    """``with PeersConnected(det, mon): engine.start()`` returns once every sender has a peer
    that completed the ZeroMQ handshake, so frames sent next are not held back by a slow connect
    (timing-sensitive tests, e.g. event timeouts, then test the engine, not the machine's load)."""

    def __init__(self, *senders: StinsSender, timeout: float = 20.0):
        self.senders, self.timeout = senders, timeout
        self._monitors: list = []

    def __enter__(self) -> "PeersConnected":
        self._monitors = [s.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED) for s in self.senders]
        return self

    def __exit__(self, exc_type, *exc) -> None:
        from zmq.utils.monitor import recv_monitor_message

        try:
            if exc_type is None:
                for mon in self._monitors:
                    assert mon.poll(int(self.timeout * 1000)), "no peer connected to a test sender"
                    recv_monitor_message(mon)
        finally:
            for s, mon in zip(self.senders, self._monitors):
                s.sock.disable_monitor()
                mon.close(0)


def add_device(db, server: str, cls: str, name: str, props: dict | None = None) -> None:
    """Register ``name`` of class ``cls`` in server ``server`` (``Executable/instance``), as Jive does."""
    import tango  # only the tests that run servers need it

    info = tango.DbDevInfo()
    info.server, info._class, info.name = server, cls, name
    db.add_device(info)
    if props:
        db.put_device_property(name, props)
