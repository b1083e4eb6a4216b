"""Scan metadata through a real device: RequiredMetadata refuses Start naming the key; the metadata
lands in the results file, the run log (runs.csv, runs.json), the run list and the report."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import h5py
import pytest
import tango

from devices.client import InvalidValue, MonitorClient
from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(120)


def _wait_file(path: Path, text: str, timeout: float = 30.0) -> str:
    """The report worker writes after the scan ends: wait for ``text`` to appear in ``path``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            body = path.read_text(encoding="utf-8")
            if text in body:
                return body
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s")


def test_required_metadata_refuses_start_then_recorded_everywhere(tmp_path):
    out = tmp_path / "out"
    with context(["sim://?frames=20&shape=32x32&rate=200"], OutputDirectory=str(out),
                 RequiredMetadata=["sample", "pmt_serial"]) as p:
        client = MonitorClient(p)
        with pytest.raises(tango.DevFailed) as refused:
            p.Start()
        desc = refused.value.args[0].desc
        assert "sample" in desc and "pmt_serial" in desc and "RequiredMetadata" in desc
        assert p.state() == tango.DevState.ON  # nothing started, State and Status agree
        assert "ready" in p.status()

        p.sample = "Si wafer 7"
        with pytest.raises(tango.DevFailed) as still:
            p.Start()
        assert "not set: pmt_serial (RequiredMetadata)" in still.value.args[0].desc

        # bad scanMetadata writes are refused naming the rule; the old value stays
        for bad, rule in (("[1, 2]", "JSON object"), ("{not json", "invalid JSON"), ('{"sample": "x"}', "sample")):
            with pytest.raises(tango.DevFailed) as exc:
                p.scanMetadata = bad
            assert rule in exc.value.args[0].desc
        assert json.loads(p.scanMetadata) == {}
        with pytest.raises(InvalidValue, match="JSON object"):
            client._write("scanMetadata", '"text"')

        md = client.set_metadata(operator="ann", proposal="p2026-17", pmt_serial="SN-4711")
        assert md == {"sample": "Si wafer 7", "operator": "ann", "proposal": "p2026-17", "pmt_serial": "SN-4711"}
        assert json.loads(p.scanMetadata) == {"pmt_serial": "SN-4711"}
        scan_id = client.start(timeout=60)
        assert p.state() == tango.DevState.CLOSE
        _wait_file(out / "runs.json", scan_id)
        results = Path(p.Flag("PMT noisy"))  # the run log follows the mark

    with h5py.File(results, "r") as f:
        prov = f["entry/provenance"]
        assert json.loads(prov["metadata_json"][()]) == md
        assert prov["metadata/pmt_serial"][()].decode() == "SN-4711"
        assert prov["mode"][()].decode() == "scan"

    _wait_file(out / "runs.csv", "PMT noisy")
    _wait_file(out / "index.html", "PMT noisy")
    rows = list(csv.DictReader((out / "runs.csv").open(encoding="utf-8")))
    assert len(rows) == 1
    row = rows[0]
    assert (row["scan_id"], row["sample"], row["operator"], row["proposal"]) == (scan_id, "Si wafer 7", "ann",
                                                                               "p2026-17")
    assert json.loads(row["metadata"]) == {"pmt_serial": "SN-4711"}
    assert (row["mode"], row["frames_completed"], row["frames_lost"], row["frames_bad"]) == ("scan", "20", "0", "0")
    runs = json.loads((out / "runs.json").read_text(encoding="utf-8"))["runs"]
    assert runs[0]["metadata"] == md and runs[0]["frames_expected"] == 20
    assert (row["flag"], row["flag_reason"], row["file"]) == ("flagged", "PMT noisy", f"flagged/{results.name}")
    report = _wait_file(results.with_suffix(".html"), "SN-4711")
    assert "Si wafer 7" in report and "p2026-17" in report


def test_live_is_not_refused_and_records_its_mode(tmp_path):
    out = tmp_path / "out"
    with context(["sim://?shape=16x16&rate=200"], OutputDirectory=str(out), RequiredMetadata=["sample"]) as p:
        p.Live()  # alignment runs before the sample is known: only Start requires the keys
        wait_for(p, tango.DevState.RUNNING)
        p.sample = "next sample"  # a write while RUNNING applies from the next Start
        p.Stop()
        wait_for(p, tango.DevState.CLOSE)
        path = Path(p.outputFile)
        assert p.sample == "next sample"
    with h5py.File(path, "r") as f:
        assert f["entry/provenance/mode"][()].decode() == "live"
        assert json.loads(f["entry/provenance/metadata_json"][()]) == {}


def test_metadata_memorized_across_restart_and_init(tmp_path):
    db = str(tmp_path / "tango.db")
    with context(["sim://?frames=5&shape=16x16"], db=db) as p:
        p.sample = "Cu mesh"
        p.scanMetadata = '{"pmt_serial": "SN-1", "hv": 1200}'
        with pytest.raises(tango.DevFailed):
            p.scanMetadata = "[]"  # refused: not memorized either
        p.Init()
        assert p.sample == "Cu mesh" and json.loads(p.scanMetadata) == {"hv": 1200, "pmt_serial": "SN-1"}
    with context(["sim://?frames=5&shape=16x16"], db=db) as p:
        assert p.sample == "Cu mesh"
        assert json.loads(p.scanMetadata) == {"hv": 1200, "pmt_serial": "SN-1"}
        assert p.operator == ""
