"""Scale-out end to end: an embedded Tango database, a simulator, three DataQualityMonitor workers
and a DataQualityReducer, all started by executable name, on loopback. The reducer's results
equal one monitor's on the same 600 frames; a worker killed mid-scan is accounted exactly
(lost == total - frames reported, checked against the frame ids of the results file) and a
restarted one rejoins at the next scan."""
from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem, free_port
from tango_dqm.quality import Verdict
from tests.scaleout_helpers import assert_same_files, assert_same_values, kill_worker_mid_scan, per_frame

pytestmark = pytest.mark.timeout(600)
N = 600
SIM, REDUCER, SINGLE = "e2e/sim/1", "e2e/reducer/1", "e2e/monitor/single"
WORKERS = [f"e2e/worker/{k}" for k in (1, 2, 3)]
ANALYSES = ["roi", "profile", "pixels", "histogram"]
ROIS = {"roi_signal": ["[40, 30, 40, 30]"], "roi_background": ["[0, 20, 0, 20]"], "roi_profile": ["[20, 80, 20, 80]"]}


def write_config(folder: Path) -> Path:
    sim_port, endpoint = free_port(), f"tcp://127.0.0.1:{free_port()}"
    source = [f"det=zmq://127.0.0.1:{sim_port}"]
    monitor = {"Sources": source, "Analyses": ANALYSES, "AnalysisThreads": ["1"], **ROIS}
    sim = {"properties": {"Port": [str(sim_port)], "BindHost": ["127.0.0.1"]},
           "attribute_properties": {k: {"__value": [v]} for k, v in {
               "frame_width": "128", "frame_height": "128", "nframes": str(N), "rate": "0", "spot_x": "64",
               "spot_y": "64", "spot_sigma": "8", "amplitude": "3000", "hot_pixels": "3", "dead_pixels": "2"}.items()}}
    servers = {
        "DetectorSimulator": {"e2e": {"DetectorSimulator": {SIM: sim}}},
        "DataQualityMonitor": {
            **{f"worker{k}": {"DataQualityMonitor": {w: {"properties": {**monitor, "Reducer": [endpoint]}}}}
               for k, w in enumerate(WORKERS, 1)},
            "single": {"DataQualityMonitor": {SINGLE: {"properties": {
                **monitor, "OutputDirectory": [str(folder / "single")]}}}}},
        "DataQualityReducer": {"e2e": {"DataQualityReducer": {REDUCER: {"properties": {
            "Workers": WORKERS, "Endpoint": [endpoint], "Analyses": ANALYSES, "WorkerTimeout": ["2"],
            "EndTimeout": ["2"], "OutputDirectory": [str(folder / "reducer")], **ROIS}}}}},
    }
    path = folder / "scaleout.json"
    path.write_text(json.dumps({"servers": servers}))
    return path


def wait_state(dev, state, timeout=180.0):
    deadline = time.monotonic() + timeout
    while dev.state() != state:
        assert time.monotonic() < deadline, f"{dev.dev_name()}: {dev.state()} {dev.status()}"
        time.sleep(0.05)


def scan(dev, sim) -> None:
    dev.Start()
    sim.Start()
    wait_state(dev, tango.DevState.CLOSE)


def summary_of(path: str, keys) -> dict:
    with h5py.File(path, "r") as f:
        s = f["entry/summary"]
        return {k: (s[k][()] if s[k].ndim else s[k][()].item()) if isinstance(s[k][()], np.ndarray)
                else s[k][()] for k in keys}


@pytest.fixture
def control_system(tmp_path):
    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(write_config(tmp_path))
        cs.start_server("DetectorSimulator", "e2e", [SIM])
        cs.start_server("DataQualityReducer", "e2e", [REDUCER])
        for k, w in enumerate(WORKERS, 1):
            cs.start_server("DataQualityMonitor", f"worker{k}", [w])
        cs.start_server("DataQualityMonitor", "single", [SINGLE])
        for name in (REDUCER, SINGLE, *WORKERS):
            cs.proxy(name).set_timeout_millis(15000)  # two cores, five servers: calls may take seconds
        yield cs


def test_three_workers_equal_one_monitor_then_a_killed_worker_is_accounted_exactly(control_system):
    cs = control_system
    red, single, sim = cs.proxy(REDUCER), cs.proxy(SINGLE), cs.proxy(SIM)
    assert red.state() == tango.DevState.ON, red.status()

    # 1. the same 600 frames through one monitor, then through three workers and the reducer
    scan(single, sim)
    scan(red, sim)
    assert (red.totalEvents, red.completedEvents, red.droppedEvents, red.badEvents) == (N, N, 0, 0), red.status()
    shares = [cs.proxy(w).completedEvents for w in WORKERS]
    assert sum(shares) == N and min(shares) > 0, shares  # ZeroMQ dealt the frames to all three
    assert (single.totalEvents, single.completedEvents) == (N, N)
    keys = sorted(json.loads(single.runSummary))
    assert sorted(json.loads(red.runSummary)) == keys
    assert_same_values(summary_of(red.outputFile, keys), summary_of(single.outputFile, keys))
    assert_same_files(red.outputFile, single.outputFile)
    assert red.verdict == single.verdict and red.verdictCoverage == single.verdictCoverage

    # 2. a worker killed mid-scan (SIGKILL: no last report)
    red.Reset()
    sim.rate = 150.0  # a scan of 4 s, so the kill lands in the middle of it
    red.Start()
    sim.Start()
    killed = WORKERS[1]
    kill_worker_mid_scan(cs, "DataQualityMonitor/worker2", killed, red, sim)
    wait_state(red, tango.DevState.CLOSE)
    total, completed, dropped, bad = red.totalEvents, red.completedEvents, red.droppedEvents, red.badEvents
    ids = per_frame(red.outputFile)["frame_id"]
    assert total == N and bad == 0
    assert completed == len(ids) and dropped == total - completed > 0, red.status()
    assert len(set(ids.tolist())) == len(ids) and ids.tolist() == sorted(ids.tolist())  # frame-id order
    assert f"worker {killed} lost after frame" in red.status()
    states = {s["name"]: s for s in json.loads(red.workerStates)}
    assert states[killed]["state"] == "lost"
    assert completed == sum(s["frames"] for s in states.values())  # every frame reported is used, once
    assert red.lostFraction == pytest.approx(dropped / total)
    # the loss check sees the killed worker's share
    assert red.verdict in (Verdict.WARNING, Verdict.ERROR)
    assert any(line.split()[:2] in (["WARNING", "lost_frames:"], ["ERROR", "lost_frames:"])
               for line in red.verdictReport.splitlines()), red.verdictReport
    assert red.verdictCoverage == pytest.approx(completed / total)

    # 3. restarted (as Starter would), it rejoins at the next scan
    cs.start_server("DataQualityMonitor", "worker2", [killed])
    red.Reset()
    sim.rate = 0.0
    scan(red, sim)
    assert (red.totalEvents, red.completedEvents, red.droppedEvents) == (N, N, 0), red.status()
    assert all(s["frames"] > 0 and s["state"] == "CLOSE" for s in json.loads(red.workerStates))
