"""A real control system on one machine: embedded database, dsconfig, servers by executable name."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parents[2]
DEV = "test/dqm/1"
SCALE = "tests.unit.plugins:Scale"


def write_config(folder: Path, analyses: list[str]) -> Path:
    config = {"servers": {"DataQualityMonitor": {"e2e": {"DataQualityMonitor": {DEV: {"properties": {
        "Sources": ["sim://?frames=20&shape=64x64"], "Analyses": analyses}}}}}}}
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def wait_state(dev, state, timeout=30.0):
    deadline = time.monotonic() + timeout
    while dev.state() != state:
        assert time.monotonic() < deadline, dev.status()
        time.sleep(0.05)


@pytest.fixture
def control_system(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the server imports the test plugin module
    with ControlSystem(tmp_path / "cs") as cs:
        yield cs


def test_dsconfig_init_rebuild_and_persistence_across_restart(control_system, tmp_path):
    cs = control_system
    cs.env["PYTHONPATH"] = str(ROOT)
    cs.apply_config(write_config(tmp_path, ["roi", SCALE]))
    cs.start_server("DataQualityMonitor", "e2e", [DEV])
    dev = cs.proxy(DEV)
    assert dev.state() == tango.DevState.ON
    dev.roi_signal = [1, 10, 2, 20]
    dev.scale = 4.0
    dev.saturation_level = 1234
    dev.Start()
    wait_state(dev, tango.DevState.CLOSE)
    assert dev.completedEvents == 20

    # restart the server: ROI (device property) and memorized scalars come back
    cs.stop_server("DataQualityMonitor/e2e")
    cs.start_server("DataQualityMonitor", "e2e", [DEV])
    dev = cs.proxy(DEV)
    assert dev.roi_signal.tolist() == [1, 10, 2, 20]
    assert dev.scale == 4.0
    assert dev.saturation_level == 1234
    assert json.loads(tango.Database().get_device_property(DEV, ["roi_signal"])["roi_signal"][0]) == [1, 10, 2, 20]

    # change Analyses and run Init: the attribute set is rebuilt without a restart
    tango.Database().put_device_property(DEV, {"Analyses": [SCALE]})
    dev.Init()
    names = set(dev.get_attribute_list())
    assert {"scale", "scale_mode", "scaled_mean"} <= names
    assert "signal_sum" not in names and "roi_signal" not in names
    dev.Start()
    wait_state(dev, tango.DevState.CLOSE)
    assert dev.scale == 4.0  # memorized value restored by Init
    assert dev.scaled_mean > 0

    # and back: the roi attributes return with their persisted values
    tango.Database().put_device_property(DEV, {"Analyses": ["roi"]})
    dev.Init()
    assert dev.roi_signal.tolist() == [1, 10, 2, 20]
    assert "scale" not in set(dev.get_attribute_list())


def test_demo_runs_to_completion_and_leaves_no_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tango_dqm.devices.demo", "--folder", str(tmp_path / "demo")],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "300/300 events" in out and "State CLOSE" in out and "demo finished" in out
    written = list((tmp_path / "demo" / "output").glob("scan_*.json"))
    assert len(written) == 1
    data = json.loads(written[0].read_text())
    assert data["counters"]["completedEvents"] == 300 and data["last_frame"]["signal_sum"] > 0
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", leftovers.stdout
