"""Scan products through a real device: live HDF5 results, report, Flag and Archive."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tango

from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(180)

READER = """
import sys, time, h5py
path, want = sys.argv[1], int(sys.argv[2])
seen = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with h5py.File(path, "r", swmr=True, locking=False) as f:
            n = f["entry/results/frame_id"].shape[0]
    except (OSError, KeyError):
        n = -1
    if n >= 0 and (not seen or n != seen[-1]):
        seen.append(n)
    if n >= want:
        break
    time.sleep(0.1)
print(",".join(map(str, seen)))
"""


def test_results_file_read_live_and_complete_with_provenance(tmp_path):
    out = tmp_path / "out"
    with context(["sim://?frames=150&shape=64x64&rate=50"], OutputDirectory=str(out)) as p:
        p.roi_signal = [10, 20, 10, 20]
        p.Start()
        path = p.outputFile
        assert path.endswith(".h5") and Path(path).parent == out.resolve()
        reader = tmp_path / "reader.py"
        reader.write_text(READER)
        seen = subprocess.run([sys.executable, str(reader), path, "150"], capture_output=True, text=True,
                              timeout=90).stdout.strip().split(",")
        counts = [int(n) for n in seen if n]
        wait_for(p, tango.DevState.CLOSE)
        assert len([n for n in counts if 0 < n < 150]) >= 2, counts  # grew while the scan ran
        assert counts == sorted(counts)
        signal_sum = p.signal_sum
    with h5py.File(path, "r") as f:
        ids = f["entry/results/frame_id"][...]
        assert ids.tolist() == list(range(150))
        assert f["entry/results/signal_sum"][-1] == signal_sum
        assert f["entry/summary/frames"][()] == 150
        prov = f["entry/provenance"]
        assert json.loads(prov["parameters_json"][()])["roi_signal"] == [10, 20, 10, 20]
        assert "sim://" in prov["sources"][0].decode()
        assert json.loads(prov["versions_json"][()])["analyses"]["roi"]["version"] == "1"
        assert f["entry"].attrs["dqm_complete"]


def wait_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} not there after {timeout} s"
        time.sleep(0.1)


def test_flag_archive_states_moves_log_and_auto_archive(tmp_path):
    out = tmp_path / "out"
    with context(["sim://?frames=5&shape=16x16"], OutputDirectory=str(out)) as p:
        with pytest.raises(tango.DevFailed, match="allowed in CLOSE"):
            p.Archive()
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        first = Path(p.outputFile)
        with pytest.raises(tango.DevFailed, match="needs a reason"):
            p.Flag("")
        flagged = Path(p.Flag("beam dump during the scan"))
        assert flagged.parent == out.resolve() / "flagged" and p.outputFile == str(flagged)
        wait_file(flagged)  # moved by the report worker, in order with the reports
        assert not first.exists()
        with h5py.File(flagged, "r") as f:
            assert f["entry"].attrs["dqm_mark"] == "flagged"
            assert f["entry"].attrs["dqm_mark_reason"] == "beam dump during the scan"
        with pytest.raises(tango.DevFailed, match="already flagged"):
            p.Archive()
        # an unmarked scan is archived automatically at the next Start
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        second = Path(p.outputFile)
        p.Start()
        wait_for(p, tango.DevState.CLOSE)
        archived = out.resolve() / "archive" / second.name
        wait_file(archived)
        assert not second.exists()
        deadline = time.monotonic() + 10
        while len((out / "marks.log").read_text().splitlines()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the log line follows the move
        log = [json.loads(line) for line in (out / "marks.log").read_text().splitlines()]
        assert [entry["mark"] for entry in log] == ["flagged", "archived"]
        assert "automatically" in log[1]["reason"]
        deadline = time.monotonic() + 30
        while not (out / "index.html").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "index.html").exists()


def test_killed_server_leaves_readable_file(tmp_path):
    from tango_dqm.devices.controlsystem import ControlSystem

    out = tmp_path / "out"
    config = {"servers": {"DataQualityMonitor": {"kill": {"DataQualityMonitor": {"test/dqm/kill": {"properties": {
        "Sources": ["sim://?frames=0&shape=64x64&rate=200"], "Analyses": ["roi"],
        "OutputDirectory": [str(out)]}}}}}}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(tmp_path / "c.json")
        proc = cs.start_server("DataQualityMonitor", "kill", ["test/dqm/kill"])
        dev = cs.proxy("test/dqm/kill")
        dev.Live()
        time.sleep(2.5)  # > flush interval: at least one flush happened
        done = dev.completedEvents
        path = dev.outputFile
        proc.kill()
        proc.wait(10)
    with h5py.File(path, "r", swmr=True) as f:
        ids = f["entry/results/frame_id"][...]
        assert ids.size > 0 and ids.size <= done + 500
        # Live on a loaded machine drops frames at the full queue: ids rise, gaps allowed
        assert ids[0] >= 0 and np.all(np.diff(ids) > 0)
        assert np.isfinite(f["entry/results/frame_max"][: ids.size]).all()


def test_output_stream_received_by_bsread_source():
    from bsread import PULL, Source

    from tests.helpers import free_port

    port = free_port()
    with context(["sim://?frames=40&shape=32x32&rate=100"], Output=f"bsread://127.0.0.1:{port}?mode=push") as p:
        p.roi_signal = [4, 8, 4, 8]
        with Source(host="127.0.0.1", port=port, mode=PULL, receive_timeout=200) as src:
            p.Start()
            got = {}
            deadline = time.monotonic() + 30
            while len(got) < 40 and time.monotonic() < deadline:
                message = src.receive()
                if message is not None:
                    data = message.data
                    got[data.pulse_id] = {k: v.value for k, v in data.data.items()}
        wait_for(p, tango.DevState.CLOSE)
        assert sorted(got) == list(range(40))  # pulse id = frame id, every frame
        last = got[39]
        for name in ("signal_sum", "signal_std", "frame_max", "saturated_pixels"):
            assert last[name] == p.read_attribute(name).value, name


LIVE_FRAMES = re.compile(r"LIVE: scan running, (\d+) frames so far")
REFRESH_TAG = '<meta http-equiv="refresh"'


def read_page(page: Path) -> str:
    try:
        return page.read_text(encoding="utf-8")  # replaced atomically: never half a page
    except FileNotFoundError:
        return ""


def wait_page(page: Path, predicate, what: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = read_page(page)
        if predicate(text):
            return text
        assert time.monotonic() < deadline, f"{what}: not after {timeout} s; page: {text[:300]!r}"
        time.sleep(0.05)


def test_report_is_rewritten_live_while_the_scan_runs(tmp_path):
    """ReportInterval 0.5 s on an endless scan: the report shows a live banner with a growing frame
    count and a reload tag before the scan ends; after Stop the final report has neither."""
    out = tmp_path / "out"
    with context(["sim://?frames=0&shape=64x64&rate=40"], OutputDirectory=str(out), ReportInterval=0.5) as p:
        p.roi_signal = [10, 20, 10, 20]
        p.Start()
        page = Path(p.outputFile).with_suffix(".html")
        first = wait_page(page, LIVE_FRAMES.search, "a live report")
        n1 = int(LIVE_FRAMES.search(first).group(1))
        later = wait_page(page, lambda t: (m := LIVE_FRAMES.search(t)) is not None and int(m.group(1)) > n1,
                          "the live report rewritten with more frames")
        assert p.state() == tango.DevState.RUNNING  # rewritten before the scan ended
        assert REFRESH_TAG in first and REFRESH_TAG in later and later != first
        index = read_page(out / "index.html")
        assert "LIVE: 1 scan running" in index and REFRESH_TAG in index
        p.Stop()
        wait_for(p, tango.DevState.CLOSE)
        final = wait_page(page, lambda t: "LIVE" not in t and "stopped" in t, "the final report")
        completed = p.completedEvents
    assert REFRESH_TAG not in final and f"<tr><th>frames stored</th><td>{completed}</td></tr>" in final
    assert completed >= int(LIVE_FRAMES.search(later).group(1))  # the live page showed frames flushed so far
    index = wait_page(out / "index.html", lambda t: "LIVE" not in t, "the final run list")
    assert REFRESH_TAG not in index


@pytest.mark.parametrize("value", ["-1", "nan", "1e9"])
def test_bad_report_interval_is_a_clear_fault(tmp_path, value):
    with context(["sim://?frames=5"], OutputDirectory=str(tmp_path), ReportInterval=value) as p:
        assert p.state() == tango.DevState.FAULT
        assert "ReportInterval must be between 0 and 86400 s" in p.status()
