"""DataQualityMonitor in a real device server process (DeviceTestContext, process=True)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tango
from tango.test_context import DeviceTestContext

from tango_dqm.devices.monitor import DataQualityMonitor
from tests.helpers import StinsSender, free_port, frames_for_test
from tests.unit.test_engine import BKG, SIG, expected_roi

pytestmark = pytest.mark.timeout(120)


def context(sources, analyses=("roi",), db=None, **props):
    properties = {"Sources": list(sources), "Analyses": list(analyses), **props}
    kwargs = {"db": db} if db else {}
    return DeviceTestContext(DataQualityMonitor, properties=properties, process=True, host="127.0.0.1",
                             timeout=60, **kwargs)


def wait_for(proxy, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while proxy.state() != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"state {proxy.state()} after {timeout}s; status: {proxy.status()}")
        time.sleep(0.02)


def test_state_table_and_counters():
    with context(["sim://?frames=100&shape=64x64&rate=400"]) as p:
        assert p.state() == tango.DevState.ON
        assert "ready" in p.status()
        p.Start()
        assert p.state() == tango.DevState.RUNNING
        assert "RUNNING scan" in p.status()
        wait_for(p, tango.DevState.CLOSE)
        assert (p.totalEvents, p.completedEvents, p.droppedEvents, p.badEvents) == (100, 100, 0, 0)
        assert "finished" in p.status()
        p.Reset()
        assert p.state() == tango.DevState.ON
        assert p.completedEvents == 0
        # Stop in RUNNING: drains and closes
        p.Live()
        assert p.state() == tango.DevState.RUNNING
        time.sleep(0.3)
        p.Stop()
        wait_for(p, tango.DevState.CLOSE)
        assert p.completedEvents > 0
        assert "stopped" in p.status()
        # Start again from CLOSE is allowed; Reset in RUNNING is not
        p.Start()
        with pytest.raises(tango.DevFailed, match="Reset is allowed in CLOSE and FAULT"):
            p.Reset()
        p.Stop()
        wait_for(p, tango.DevState.CLOSE)


def test_invalid_roi_writes_rejected_with_rule_and_old_value_kept():
    with context(["sim://?frames=10&shape=64x48"]) as p:
        p.roi_signal = [1, 10, 2, 20]
        cases = {
            "exactly 4 values": [1, 2, 3],
            "offsets must be >= 0": [-1, 10, 2, 20],
            "sizes must be > 0": [1, 0, 2, 20],
            "offset_x \\+ size_x must be <= image width": [40, 10, 0, 5],
            "offset_y \\+ size_y must be <= image height": [0, 5, 60, 10],
        }
        for rule, value in cases.items():
            with pytest.raises(tango.DevFailed, match=rule):
                p.roi_signal = value
            assert list(p.roi_signal) == [1, 10, 2, 20]
        p.roi_background = []
        assert p.roi_background is None or len(p.roi_background) == 0


def test_results_equal_numpy_on_frames_sent_and_events():
    port = free_port()
    frames = frames_for_test(30)
    with context([f"det=zmq://127.0.0.1:{port}"]) as p:
        p.roi_signal = SIG
        p.roi_background = BKG
        states, sums = [], []
        p.subscribe_event("State", tango.EventType.CHANGE_EVENT,
                          lambda ev: states.append(ev.attr_value.value) if not ev.err else None)
        p.subscribe_event("signal_sum", tango.EventType.CHANGE_EVENT,
                          lambda ev: sums.append(ev.attr_value.value) if not ev.err else None)
        archived = []
        p.subscribe_event("net_signal", tango.EventType.ARCHIVE_EVENT,
                          lambda ev: archived.append(ev.attr_value.value) if not ev.err else None)
        p.Start()
        sender = StinsSender(port)
        try:
            sender.header(nimages=len(frames))
            for i, f in enumerate(frames):
                sender.image(i, f)
            sender.series_end()
            wait_for(p, tango.DevState.CLOSE)
        finally:
            sender.close()
        want = expected_roi(frames[-1])
        for name in ("signal_sum", "signal_mean", "signal_std", "signal_min", "signal_max", "background_sum",
                     "background_mean", "background_std", "net_signal", "frame_min", "frame_max"):
            assert p.read_attribute(name).value == pytest.approx(want[name], rel=1e-12), name
        assert p.saturated_pixels == want["saturated_pixels"]
        assert p.completedEvents == 30
        time.sleep(0.5)
        assert tango.DevState.RUNNING in states and states[-1] == tango.DevState.CLOSE
        all_sums = {expected_roi(f)["signal_sum"] for f in frames}
        assert sums and set(v for v in sums if v is not None) <= all_sums
        assert sums[-1] == want["signal_sum"]
        assert archived and archived[-1] == pytest.approx(want["net_signal"])
        summary = json.loads(p.runSummary)
        assert summary["run_signal_sum_mean"] == pytest.approx(np.mean(sorted(all_sums)), rel=1e-12)


def test_attribute_units_and_versions():
    with context(["sim://?frames=5&shape=32x32"]) as p:
        cfg = p.get_attribute_config("saturation_level")
        assert cfg.unit == "counts" and cfg.min_value == "0"
        assert p.get_attribute_config("signal_sum").unit == "counts"
        with pytest.raises(tango.DevFailed):
            p.saturation_level = -5
        assert p.saturation_level == 65535
        versions = json.loads(p.deployedVersions)
        assert versions["analyses"]["roi"]["class"] == "tango_dqm.analysis.roi:RoiStats"
        assert versions["tango-dqm"]


def test_bad_configuration_gives_fault_with_recovery_hint():
    with context(["nope://x"]) as p:
        assert p.state() == tango.DevState.FAULT
        assert "unknown scheme 'nope'" in p.status() and "Init" in p.status()
        with pytest.raises(tango.DevFailed, match="unknown scheme"):
            p.Start()


def test_plugin_crash_faults_and_reset_recovers():
    with context(["sim://?frames=50&shape=16x16"], ["roi", "tests.unit.plugins:FailOnFrame3"]) as p:
        p.Start()
        wait_for(p, tango.DevState.FAULT)
        assert "fail_on_3" in p.status() and "RuntimeError: boom on purpose" in p.status()
        assert "Reset" in p.status()
        p.Reset()
        assert p.state() == tango.DevState.ON


def test_roi_persisted_across_restart(tmp_path):
    db = str(tmp_path / "tango.db")
    with context(["sim://?frames=5&shape=64x64"], db=db) as p:
        p.roi_signal = [3, 4, 5, 6]
        p.saturation_level = 1000
    with context(["sim://?frames=5&shape=64x64"], db=db) as p:
        assert list(p.roi_signal) == [3, 4, 5, 6]
        assert p.saturation_level == 1000  # memorized scalar
