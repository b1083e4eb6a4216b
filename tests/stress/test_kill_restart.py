"""Kill the admin device and restart the server 20 times during scans and report writing, on a
loaded machine: every stop is clean (exit code 0, no crash in the log) and the server comes back."""
from __future__ import annotations

import json
import time

import h5py
import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem

pytestmark = pytest.mark.timeout(600)
DEV = "stress/dqm/kill"
KEY = "DataQualityMonitor/stress"


def test_kill_and_restart_20_times_during_scans_and_reports(tmp_path, cpu_burners):
    out = tmp_path / "out"
    config = {"servers": {"DataQualityMonitor": {"stress": {"DataQualityMonitor": {DEV: {"properties": {
        "Sources": ["sim://?frames=400&shape=64x64&rate=800"], "Analyses": ["roi"],
        "OutputDirectory": [str(out)]}}}}}}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    files = []
    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(tmp_path / "c.json")
        for i in range(20):
            proc = cs.start_server("DataQualityMonitor", "stress", [DEV])
            dev = cs.proxy(DEV)
            dev.set_timeout_millis(15000)  # both cores are busy: a call may take seconds
            assert dev.state() == tango.DevState.ON, (i, dev.status())
            dev.Start()
            files.append(dev.outputFile)
            deadline = time.monotonic() + 30
            if i % 2 == 0:  # during the scan
                while dev.completedEvents < 5:
                    assert time.monotonic() < deadline, dev.status()
                    time.sleep(0.01)
            else:  # right after the scan ends: the report worker is writing (importing matplotlib)
                while dev.state() != tango.DevState.CLOSE:
                    assert time.monotonic() < deadline, dev.status()
                    time.sleep(0.01)
            admin = cs.proxy(f"dserver/{KEY}")
            admin.set_timeout_millis(15000)
            admin.command_inout("Kill")
            assert proc.wait(30) == 0, f"kill {i}: exit code {proc.returncode}"
            cs.servers.pop(KEY)
            log = cs.logs[KEY].read_text(errors="replace")
            assert "Segmentation fault" not in log and "Fatal Python error" not in log, log[-3000:]
        # every killed scan left a results file that opens
        for path in files:
            with h5py.File(path, "r") as f:
                assert "entry" in f, path
        cs.start_server("DataQualityMonitor", "stress", [DEV])
        dev = cs.proxy(DEV)
        dev.Start()
        deadline = time.monotonic() + 30
        while dev.state() != tango.DevState.CLOSE:
            assert time.monotonic() < deadline, dev.status()
            time.sleep(0.02)
        assert dev.completedEvents + dev.droppedEvents == 400 and dev.completedEvents > 0
