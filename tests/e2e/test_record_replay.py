"""Determinism: a live device scan and an offline replay of the recorded frames give identical results."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tango

from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(300)
SIM = "sim://?frames=60&shape=64x80&spot_x=30&spot_y=20&sigma=6&amplitude=2500&drift_x=0.2&seed=4"
PARAMS = {"roi_signal": [20, 24, 10, 24], "roi_background": [60, 16, 40, 16], "saturation_level": 2000}


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "tango_dqm.cli", *args], capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_live_scan_recorded_and_replayed_gives_identical_per_frame_results(tmp_path):
    with context([SIM], ["roi", "profile"], OutputDirectory=str(tmp_path / "live")) as p:
        for name, value in PARAMS.items():
            p.write_attribute(name, value)
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        live_file = p.outputFile
    recorded = tmp_path / "frames.h5"
    uri = cli("record", SIM, "-o", str(recorded)).stdout.strip()
    assert uri.startswith("hdf5://")
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    replayed = tmp_path / "replayed.h5"
    out = cli("replay", str(recorded), "-a", "roi", "-a", "profile", "--params", str(tmp_path / "params.json"),
              "-o", str(replayed)).stdout
    assert "60/60 events completed" in out
    with h5py.File(live_file, "r") as live, h5py.File(replayed, "r") as again:
        a, b = live["entry/results"], again["entry/results"]
        assert a["frame_id"][...].tolist() == b["frame_id"][...].tolist() == list(range(60))
        compared = 0
        for name in a:
            if isinstance(a[name], h5py.Dataset) and a[name].ndim >= 1 and name not in ("timestamp",) \
                    and a[name].dtype.kind in "fiu":
                assert np.array_equal(a[name][...], b[name][...], equal_nan=True), name
                compared += 1
        assert compared > 20  # every scalar and spectrum result, frame by frame
        assert live["entry/summary/summary_json"][()] == again["entry/summary/summary_json"][()]


def test_once_and_bad_inputs_are_clear(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tango_dqm.cli", "once", str(tmp_path / "missing.h5")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "does not exist" in result.stderr
    (tmp_path / "p.json").write_text(json.dumps({"roi_signal": [0, 999, 0, 5]}))
    cli("record", "sim://?frames=3&shape=16x16", "-o", str(tmp_path / "f.h5"))
    result = subprocess.run([sys.executable, "-m", "tango_dqm.cli", "once", str(tmp_path / "f.h5"),
                             "--params", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "offset_x + size_x must be <= image width" in result.stderr
