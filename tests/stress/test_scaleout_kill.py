"""Scale-out under load: on a machine whose cores are busy, a worker is SIGKILLed in the middle of
each of two scans (a different one each time) and restarted; every scan's loss is exact
(lost == total - frames reported, the results file holding exactly the frames reported), the
killed worker is named, and the scan after the last restart is complete."""
from __future__ import annotations

import json

import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem
from tests.e2e.test_scaleout import N, REDUCER, SIM, WORKERS, wait_state, write_config
from tests.scaleout_helpers import kill_worker_mid_scan, per_frame

pytestmark = pytest.mark.timeout(900)


def test_workers_killed_mid_scan_under_load_are_accounted_exactly(tmp_path, cpu_burners):
    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(write_config(tmp_path))
        cs.start_server("DetectorSimulator", "e2e", [SIM])
        cs.start_server("DataQualityReducer", "e2e", [REDUCER])
        for k, w in enumerate(WORKERS, 1):
            cs.start_server("DataQualityMonitor", f"worker{k}", [w])
        red, sim = cs.proxy(REDUCER), cs.proxy(SIM)
        red.set_timeout_millis(15000)
        for k in (1, 3):
            name, key = WORKERS[k - 1], f"DataQualityMonitor/worker{k}"
            sim.rate = 150.0
            red.Start()
            sim.Start()
            kill_worker_mid_scan(cs, key, name, red, sim, frames=15 * k)
            wait_state(red, tango.DevState.CLOSE, timeout=300)
            total, completed, dropped = red.totalEvents, red.completedEvents, red.droppedEvents
            ids = per_frame(red.outputFile)["frame_id"].tolist()
            assert total == N and completed == len(ids) == len(set(ids)) and dropped == total - completed > 0, \
                red.status()
            assert ids == sorted(ids)
            assert f"worker {name} lost after frame" in red.status()
            assert completed == sum(s["frames"] for s in json.loads(red.workerStates))
            cs.start_server("DataQualityMonitor", f"worker{k}", [name])
            red.Reset()
        sim.rate = 0.0
        red.Start()
        sim.Start()
        wait_state(red, tango.DevState.CLOSE, timeout=300)
        assert (red.totalEvents, red.completedEvents, red.droppedEvents) == (N, N, 0), red.status()
