"""MonitorClient against a real DataQualityMonitor server process (DeviceTestContext, process=True)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tango

from tango_dqm.client import (CommandNotAllowed, InvalidValue, MonitorClient, MonitorError, MonitorTimeout,
                              ScanFault)
from tests.tango.test_monitor import context

pytestmark = pytest.mark.timeout(120)

SCAN = "sim://?frames=50&shape=64x64&rate=200"
ENDLESS = "sim://?frames=0&shape=64x64&rate=200"
ROI = [10, 20, 12, 16]
HIST = "tests.unit.plugins:IntensityHistogram"


def test_core_import_does_not_load_tango():
    # tango_dqm.client is a lazy alias: the core stays free of tango until a name is used
    code = ("import sys, tango_dqm, tango_dqm.client; assert 'tango' not in sys.modules, 'tango imported'; "
            "from tango_dqm.client import MonitorClient; assert 'tango' in sys.modules; "
            "import tango_dqm.devices.client as impl; assert MonitorClient is impl.MonitorClient")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_start_waits_until_the_scan_has_finished_with_progress():
    ctx = context([SCAN])
    with ctx as p:
        client = MonitorClient(p)
        client.set_roi("roi_signal", ROI)
        seen = []
        t0 = time.monotonic()
        scan_id = client.start(progress=seen.append)
        assert time.monotonic() - t0 < 15
        assert p.state() == tango.DevState.CLOSE  # returned only after the scan finished
        assert scan_id == p.scanId
        assert (p.totalEvents, p.completedEvents) == (50, 50)
        assert seen and seen[-1]["state"] == "CLOSE" and seen[-1]["counters"]["completedEvents"] == 50
        done = [s["counters"]["completedEvents"] for s in seen]
        assert done == sorted(done)
        # a second scan from CLOSE, the device addressed by name this time
        by_name = MonitorClient(ctx.get_device_access(), timeout=5)
        assert by_name.start() != scan_id
        assert by_name.state() == tango.DevState.CLOSE


def test_snapshot_and_results_equal_direct_attribute_reads():
    with context([SCAN], ["roi", HIST]) as p:
        client = MonitorClient(p)
        client.set_roi("roi_signal", ROI)
        client.start()
        snap = client.snapshot()
        assert snap["state"] == p.state().name == "CLOSE"
        assert snap["status"] == p.status()
        assert snap["scan_id"] == p.scanId
        for name in ("totalEvents", "completedEvents", "droppedEvents", "badEvents", "eventRate"):
            assert snap["counters"][name] == p.read_attribute(name).value, name
        assert snap["verdict"] == p.verdict.name
        results = snap["results"]
        # every result attribute, and nothing else (no parameters, no static attributes)
        assert {"signal_sum", "net_signal", "saturated_pixels", "test_hist_counts"} <= set(results)
        assert not {"roi_signal", "saturation_level", "totalEvents", "State", "verdict"} & set(results)
        for name, value in results.items():
            direct = p.read_attribute(name).value
            if isinstance(direct, np.ndarray):
                np.testing.assert_array_equal(value, direct, err_msg=name)
            else:
                assert value == direct, name
        assert results["signal_sum"] > 0 and results["background_sum"] is None  # background ROI disabled
        assert client.results().keys() == results.keys()
        assert client.results()["signal_sum"] == results["signal_sum"]


def test_invalid_roi_and_parameter_raise_invalid_value_and_keep_the_old_value():
    with context([SCAN]) as p:
        client = MonitorClient(p)
        assert client.set_roi("roi_signal", ROI) == ROI
        with pytest.raises(InvalidValue, match="sizes must be > 0") as info:
            client.set_roi("roi_signal", [1, 0, 2, 20])
        assert str(info.value).startswith("roi_signal: sizes must be > 0")
        assert "previous value is kept" in str(info.value)
        assert info.value.reason == "DQM_InvalidValue" and isinstance(info.value, (MonitorError, ValueError))
        with pytest.raises(InvalidValue, match="offset_x \\+ size_x must be <= image width"):
            client.set_roi("roi_signal", [60, 10, 0, 5])
        with pytest.raises(InvalidValue, match="4 integers"):
            client.set_roi("roi_signal", [1.5, 10, 2, 20])  # refused before it reaches the device
        assert p.roi_signal.tolist() == ROI
        assert client.set_roi("roi_background", None) == []

        assert client.set_parameter("saturation_level", 1000) == 1000
        with pytest.raises(InvalidValue):
            client.set_parameter("saturation_level", -5)  # below the attribute's min_value
        assert p.saturation_level == 1000
        with pytest.raises(MonitorError, match="nonexistent"):
            client.set_parameter("nonexistent", 1)


def test_plugin_crash_makes_start_raise_with_the_status():
    with context([SCAN], ["roi", "tests.unit.plugins:FailOnFrame3"]) as p:
        client = MonitorClient(p)
        with pytest.raises(ScanFault, match="fail_on_3") as info:
            client.start(timeout=30)
        assert isinstance(info.value, MonitorError)
        assert "RuntimeError: boom on purpose" in str(info.value) and "Reset" in str(info.value)
        assert info.value.desc == p.status()
        assert client.state() == tango.DevState.FAULT
        with pytest.raises(CommandNotAllowed, match="Reset"):
            client.start()
        assert client.reset() == tango.DevState.ON


def test_live_stop_wait_state_and_timeouts():
    with context([ENDLESS]) as p:
        client = MonitorClient(p)
        run_id = client.live()
        assert run_id and client.state() == tango.DevState.RUNNING
        with pytest.raises(MonitorTimeout, match="not one of \\['CLOSE'\\]"):
            client.wait_state("CLOSE", timeout=0.3)
        assert client.wait_state(tango.DevState.RUNNING, "CLOSE", timeout=1) == tango.DevState.RUNNING
        with pytest.raises(CommandNotAllowed):
            client.reset()  # not while RUNNING
        assert client.stop() == tango.DevState.CLOSE
        assert p.completedEvents > 0 and "stopped" in p.status()
        # a bounded wait on an endless scan times out and leaves the scan running
        with pytest.raises(MonitorTimeout, match="still running"):
            client.start(timeout=0.3)
        assert client.state() == tango.DevState.RUNNING
        client.stop()
        # start() waits at most the client's scan_timeout by default (an hour unless set)
        assert MonitorClient(p).scan_timeout == 3600.0
        with pytest.raises(MonitorTimeout, match="not finished after 0.3 s"):
            MonitorClient(p, scan_timeout=0.3).start()
        assert client.state() == tango.DevState.RUNNING
        assert client.stop(wait=False) in (tango.DevState.RUNNING, tango.DevState.CLOSE)
        assert client.wait_state("CLOSE", timeout=10) == tango.DevState.CLOSE
        # start(wait=False) returns at once
        client.start(wait=False)
        assert client.state() == tango.DevState.RUNNING
        assert client.stop() == tango.DevState.CLOSE
        assert client.reset() == tango.DevState.ON


def test_flag_and_archive(tmp_path):
    out = tmp_path / "out"
    with context(["sim://?frames=10&shape=32x32"], OutputDirectory=str(out)) as p:
        client = MonitorClient(p)
        with pytest.raises(CommandNotAllowed, match="allowed in CLOSE"):
            client.archive()
        client.start()
        with pytest.raises(InvalidValue, match="needs a reason"):
            client.flag("  ")
        archived = Path(client.archive())
        assert archived.parent == out.resolve() / "archive" and p.outputFile == str(archived)
        with pytest.raises(CommandNotAllowed, match="already archived"):
            client.flag("beam dump")


def test_take_reference(tmp_path):
    with context([SCAN], ["roi", HIST], ReferenceDirectory=str(tmp_path / "refs")) as p:
        client = MonitorClient(p)
        with pytest.raises(CommandNotAllowed):
            client.take_reference()  # no finished scan yet
        client.start()
        assert client.take_reference() == 1
        assert client.take_reference() == 2
        assert p.referenceVersion == 2
