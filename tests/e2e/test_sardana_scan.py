"""A real Sardana scan: Pool and MacroServer on the embedded Tango database, a dummy motor, a
measurement group with DQM channels (tango_dqm's controller), ``ascan`` over N points with the
simulator sending M frames per point; the scan file's values equal numpy over each point's frames."""
from __future__ import annotations

import queue
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem, free_port
from tango_dqm.devices.sardana import pool_path
from tango_dqm.sim_streamer import DEFAULTS, scene_of
from tango_dqm.simulation import FrameGenerator
from tests.helpers import add_device

pytestmark = pytest.mark.timeout(240)

MON, SIM = "test/dqm/1", "test/sim/1"
POOL, MS, DOOR = "test/pool/1", "test/ms/1", "test/door/1"
N_POINTS, M_FRAMES = 4, 3
SHAPE = (64, 64)
ROI = [22, 20, 22, 20]  # around the spot at the image centre


def wait_until(what: str, ok, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class DoorMacros:
    """Runs macros on a Door and tells each one's end by the Door's State events: RunMacro returns
    before the Door leaves ON (the executor thread sets RUNNING), so a polled ON may still mean "not
    started". One subscription for the whole test: a Tango event subscription reaches the server's
    ZeroMQ publisher some time after subscribe_event returns, and a quick macro (senv) started
    within that time on a loaded machine ran and ended unseen when each macro subscribed anew."""

    def __init__(self, door: tango.DeviceProxy):
        self.door = door
        self.states: queue.Queue = queue.Queue()
        self.sub = door.subscribe_event("State", tango.EventType.CHANGE_EVENT, self._on_state)
        self.states.get(timeout=30)  # the subscription's first event: the state now

    def _on_state(self, e) -> None:
        if not e.err and e.attr_value is not None:
            self.states.put(e.attr_value.value)

    def run(self, *argv: str, timeout: float = 120.0) -> None:
        while not self.states.empty():  # what came before this macro
            self.states.get_nowait()
        self.door.RunMacro(list(argv))
        deadline, started = time.monotonic() + timeout, False
        while True:
            try:
                state = self.states.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                raise AssertionError(f"macro {argv} still running") from None
            if state in (tango.DevState.RUNNING, tango.DevState.MOVING, tango.DevState.STANDBY):
                started = True
            elif started:
                break
        assert state == tango.DevState.ON, (argv, state, self.door.read_attribute("Error").value,
                                            self.door.read_attribute("Output").value)

    def close(self) -> None:
        self.door.unsubscribe_event(self.sub)


def spec_columns(path: Path) -> dict[str, np.ndarray]:
    """The columns of the last scan of a SPEC file, by label."""
    labels, rows = None, []
    for line in path.read_text().splitlines():
        if line.startswith("#L "):
            labels, rows = line[3:].split("  "), []
        elif labels and line.strip() and not line.startswith("#"):
            rows.append([float(v) for v in line.split()])
    assert labels and rows, path.read_text()[-2000:]
    data = np.array(rows)
    return {label.strip(): data[:, i] for i, label in enumerate(labels)}


def offline(ids: range) -> dict[str, float]:
    """Plain numpy over the point's frames, rendered as the simulator renders them."""
    values = dict(DEFAULTS, frame_width=SHAPE[1], frame_height=SHAPE[0], rate=0.0)
    gen = FrameGenerator(scene_of(values))
    x, sx, y, sy = ROI
    rois = [gen.render(i)[y:y + sy, x:x + sx].astype(np.float64) for i in ids]
    return {"signal_sum": float(np.sum([r.sum() for r in rois])),
            "signal_mean": float(np.mean([r.mean() for r in rois]))}


def knows_elements(ms: tango.DeviceProxy) -> bool:
    """True once the MacroServer lists our elements; while it is still initialising (INIT) it refuses
    to read Elements at all (API_AttrNotAllowed), which only means "not yet"."""
    try:
        elements = bytes(ms.read_attribute("Elements").value[1])
    except tango.DevFailed as exc:
        if any(e.reason == "API_AttrNotAllowed" for e in exc.args):
            return False
        raise
    return all(name.encode() in elements for name in ("mot01", "mg_dqm", "dqm_sum", "dqm_mean"))


def test_ascan_records_per_point_dqm_values_equal_to_numpy(tmp_path):
    sim_port = free_port()
    out = tmp_path / "out"
    with ControlSystem(tmp_path / "cs") as cs:
        db = tango.Database("127.0.0.1", cs.port)
        add_device(db, "DetectorSimulator/e2e", "DetectorSimulator", SIM, {"Port": [str(sim_port)]})
        add_device(db, "DataQualityMonitor/e2e", "DataQualityMonitor", MON,
                   {"Sources": [f"zmq://127.0.0.1:{sim_port}"], "Analyses": ["roi"], "OutputDirectory": [str(out)]})
        add_device(db, "Pool/e2e", "Pool", POOL, {"PoolPath": [pool_path()]})
        add_device(db, "MacroServer/e2e", "MacroServer", MS, {"PoolNames": [POOL]})
        add_device(db, "MacroServer/e2e", "Door", DOOR, {"Id": ["1"]})
        cs.start_server("DetectorSimulator", "e2e", [SIM])
        cs.start_server("DataQualityMonitor", "e2e", [MON])
        cs.start_server("Pool", "e2e", [POOL], timeout=120)

        sim, mon, pool = cs.proxy(SIM), cs.proxy(MON), cs.proxy(POOL)
        sim.frame_width, sim.frame_height, sim.rate = SHAPE[1], SHAPE[0], 0.0
        sim.nframes, sim.first_frame = M_FRAMES, -1  # ids continue: every point has frames of its own
        mon.roi_signal = ROI
        mon.pointFrames = M_FRAMES
        mon.Live()

        pool.CreateController(["Motor", "DummyMotorController.py", "DummyMotorController", "motctrl"])
        pool.CreateElement(["Motor", "motctrl", "1", "mot01"])
        pool.CreateController(["CTExpChannel", "DataQualityMonitorController.py", "DataQualityMonitorController",
                               "dqmctrl", "Monitor", f"tango://{cs.tango_host}/{MON}",
                               "Results", "signal_sum,signal_mean", "Trigger", f"tango://{cs.tango_host}/{SIM}/Start"])
        pool.CreateElement(["CTExpChannel", "dqmctrl", "1", "dqm_sum"])
        pool.CreateElement(["CTExpChannel", "dqmctrl", "2", "dqm_mean"])
        pool.CreateMeasurementGroup(["mg_dqm", "dqm_sum", "dqm_mean"])

        cs.start_server("MacroServer", "e2e", [MS, DOOR], timeout=120)
        door, ms = cs.proxy(DOOR), cs.proxy(MS)
        door.set_timeout_millis(10000)
        macros = DoorMacros(door)  # subscribed now, live long before the first macro below
        # the MacroServer learns the Pool's elements through events after it is exported: a macro
        # started before that fails with "mot01 does not exist in any Pool"
        wait_until("the MacroServer knows the Pool's elements", lambda: knows_elements(ms), timeout=60)
        try:
            macros.run("senv", "ActiveMntGrp", "mg_dqm")
            macros.run("senv", "ScanDir", str(tmp_path))
            macros.run("senv", "ScanFile", "['scan.dat']")
            macros.run("ascan", "mot01", "0", "3", str(N_POINTS - 1), "0.01")
        finally:
            macros.close()

        cols = spec_columns(tmp_path / "scan.dat")
        assert len(cols["mot01"]) == N_POINTS and cols["mot01"] == pytest.approx([0, 1, 2, 3])
        for k in range(N_POINTS):
            want = offline(range(k * M_FRAMES, (k + 1) * M_FRAMES))
            assert cols["dqm_sum"][k] == pytest.approx(want["signal_sum"], rel=1e-9), k
            assert cols["dqm_mean"][k] == pytest.approx(want["signal_mean"], rel=1e-9), k
        assert len(set(cols["dqm_sum"])) == N_POINTS  # the points differ: a shifted frame would show
        assert mon.pointNumber == N_POINTS and mon.pointTimeouts == 0

        mon.Stop()
        wait_until("monitor CLOSE", lambda: mon.state() == tango.DevState.CLOSE)
        with h5py.File(mon.outputFile, "r") as f:
            pts = f["entry/points"]
            assert list(pts["first_frame"][()]) == [k * M_FRAMES for k in range(N_POINTS)]
            assert list(pts["frames"][()]) == [M_FRAMES] * N_POINTS
            assert pts["signal_sum"][()] == pytest.approx(cols["dqm_sum"], rel=1e-12)
