"""A bluesky RunEngine ``count`` with the ophyd-async DataQualityMonitorPoints device: each event
holds the point's values, equal to numpy over the M frames the simulator sent for that point."""
from __future__ import annotations

import pytest
import tango

from bluesky import RunEngine  # the bluesky extra, installed by make test
from bluesky.plans import count
from ophyd_async.core import init_devices

from tango_dqm.devices.bluesky import DataQualityMonitorPoints
from tango_dqm.devices.controlsystem import ControlSystem, free_port
from tests.e2e.test_sardana_scan import MON, ROI, SHAPE, SIM, add_device, offline, wait_until

pytestmark = pytest.mark.timeout(180)
N_POINTS, M_FRAMES = 4, 3


def test_count_plan_records_per_point_values_equal_to_numpy(tmp_path):
    sim_port = free_port()
    with ControlSystem(tmp_path / "cs") as cs:
        db = tango.Database("127.0.0.1", cs.port)
        add_device(db, "DetectorSimulator/bs", "DetectorSimulator", SIM, {"Port": [str(sim_port)]})
        add_device(db, "DataQualityMonitor/bs", "DataQualityMonitor", MON,
                   {"Sources": [f"zmq://127.0.0.1:{sim_port}"], "Analyses": ["roi"]})
        cs.start_server("DetectorSimulator", "bs", [SIM])
        cs.start_server("DataQualityMonitor", "bs", [MON])
        sim, mon = cs.proxy(SIM), cs.proxy(MON)
        sim.frame_width, sim.frame_height, sim.rate = SHAPE[1], SHAPE[0], 0.0
        sim.nframes, sim.first_frame = M_FRAMES, -1
        mon.roi_signal = ROI
        mon.pointFrames = M_FRAMES
        mon.Live()

        RE = RunEngine({})
        docs = []
        RE.subscribe(lambda kind, doc: docs.append((kind, doc)))
        with init_devices():
            dqm = DataQualityMonitorPoints(f"tango://{cs.tango_host}/{MON}", ["signal_sum", "signal_mean"],
                                           trigger_command=f"tango://{cs.tango_host}/{SIM}/Start", timeout=10.0)
        RE(count([dqm], num=N_POINTS))

        events = [doc for kind, doc in docs if kind == "event"]
        assert len(events) == N_POINTS
        for k, event in enumerate(events):
            want = offline(range(k * M_FRAMES, (k + 1) * M_FRAMES))
            assert event["data"]["dqm-signal_sum"] == pytest.approx(want["signal_sum"], rel=1e-9), k
            assert event["data"]["dqm-signal_mean"] == pytest.approx(want["signal_mean"], rel=1e-9), k
            assert event["data"]["dqm-point_number"] == k + 1
            assert event["data"]["dqm-point_frames"] == M_FRAMES
        descriptor = next(doc for kind, doc in docs if kind == "descriptor")
        assert sorted(descriptor["hints"]["dqm"]["fields"]) == ["dqm-signal_mean", "dqm-signal_sum"]
        assert mon.pointTimeouts == 0
        mon.Stop()
        wait_until("monitor CLOSE", lambda: mon.state() == tango.DevState.CLOSE)
