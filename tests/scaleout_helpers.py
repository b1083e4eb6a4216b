"""Scale-out test helpers: in-process workers driven like the reducer device drives them, and
comparisons of summaries and results files (exact for integers, 1e-12 relative for floats)."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping

import h5py
import numpy as np

from tango_dqm.engine import Engine, EngineState

ANALYSES = ["roi", "profile", "pixels", "histogram", "gain"]
PARAMS = {"roi_signal": [30, 15, 10, 10], "roi_background": [0, 20, 40, 20]}


class EngineControl:
    """The WorkerControl of in-process worker engines (the device uses DeviceProxy calls)."""

    def __init__(self) -> None:
        self.engines: dict[str, Engine] = {}

    def start(self, worker: str, live: bool) -> str:
        return self.engines[worker].start(live)

    def stop(self, worker: str) -> None:
        self.engines[worker].stop()

    def reset(self, worker: str) -> None:
        if self.engines[worker].state in (EngineState.CLOSE, EngineState.FAULT):  # as the device's control
            self.engines[worker].reset()

    def mark(self, worker: str, mark: str, reason: str) -> None:
        self.engines[worker].mark(mark, reason)

    def running(self, worker: str) -> str:
        e = self.engines.get(worker)
        if e is None:
            raise RuntimeError(f"{worker} is not running (no such engine)")
        return "" if e.state is EngineState.RUNNING else f"in {e.state.value}: {e.status()}"


def wait_state(engine: Engine, *states: EngineState, timeout: float = 60.0) -> EngineState:
    deadline = time.monotonic() + timeout
    while engine.state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {engine.state} after {timeout} s: {engine.status()}")
        time.sleep(0.01)
    return engine.state


def _float_equal(g: float, w: float) -> bool:
    if math.isnan(w):
        return math.isnan(g)
    return g == w or abs(g - w) <= 1e-12 * max(abs(w), abs(g))


def assert_same_values(got: Mapping, want: Mapping, where: str = "summary") -> None:
    """Integers (and integer arrays) bit for bit, floats within 1e-12 relative, same keys and types."""
    assert sorted(got) == sorted(want), f"{where}: keys differ"
    for key, w in want.items():
        g = got[key]
        if isinstance(w, np.ndarray):
            g = np.asarray(g)
            assert g.dtype == w.dtype and g.shape == w.shape, f"{where} {key}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
            if w.dtype.kind in "biuSU":
                assert np.array_equal(g, w), f"{where} {key}: integer array differs"
            else:
                ok = np.vectorize(_float_equal, otypes=[bool])(g, w) if w.size else np.array([True])
                assert ok.all(), f"{where} {key}: {np.count_nonzero(~ok)} floats beyond 1e-12 relative"
        elif isinstance(w, (float, np.floating)):
            assert _float_equal(float(g), float(w)), f"{where} {key}: {g!r} != {w!r}"
        else:
            assert type(g) is type(w) and g == w, f"{where} {key}: {g!r} != {w!r}"


def per_frame(path: str) -> dict[str, np.ndarray]:
    """Every per-frame dataset of a results file (frame_id first)."""
    with h5py.File(path, "r") as f:
        res = f["entry/results"]
        return {k: res[k][()] for k in res if isinstance(res[k], h5py.Dataset) and res[k].ndim >= 1
                and res[k].shape[0] == res["frame_id"].shape[0] and k != "timestamp"}


def assert_same_files(got: str, want: str) -> None:
    g, w = per_frame(got), per_frame(want)
    assert_same_values(g, w, where="per-frame datasets")


def kill_worker_mid_scan(cs, key: str, worker: str, red, sim, frames: int = 20, timeout: float = 120.0) -> None:
    """SIGKILL the worker server ``key`` (device ``worker``) in the middle of the running scan, with
    frames in flight to it, so that some are lost however the timing falls.

    It waits until the reducer has reports of ``frames`` of that worker's frames (so the loss is placed
    after them) while the detector still sends. A kill right then could still lose nothing: the worker
    may just have reported everything it had (the trigger fires on a report), and under load the
    reducer's own in-order count lagged until the stream had ended. So the worker is first frozen
    (SIGSTOP: it reports nothing more while the detector's PUSH socket still hands it frames), and
    killed once the other workers have reported more frames, i.e. the stream went on past it."""
    import json
    import signal

    import tango

    def reported() -> dict[str, int]:
        return {s["name"]: int(s["frames"]) for s in json.loads(red.workerStates)}

    deadline = time.monotonic() + timeout
    while reported().get(worker, 0) < frames:
        assert time.monotonic() < deadline, red.status()
        time.sleep(0.01)
    assert sim.state() == tango.DevState.RUNNING, f"the detector ended before the kill: {sim.status()}"
    proc = cs.servers.pop(key)
    proc.send_signal(signal.SIGSTOP)
    others = sum(n for w, n in reported().items() if w != worker)
    while sum(n for w, n in reported().items() if w != worker) < others + 20:
        assert time.monotonic() < deadline, red.status()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
