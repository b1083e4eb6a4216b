"""The run log: runs.csv and runs.json next to index.html, one row per scan, kept up to date."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tango_dqm.cli import main as cli_main
from tango_dqm.engine import Counters
from tango_dqm.plugin import Result
from tango_dqm.report import ReportWorker, write_run_list
from tango_dqm.runlog import CSV_COLUMNS, rows, status_text
from tango_dqm.storage import ScanWriter, mark_scan, scan_file_name

DECL = [Result("net_signal", float, unit="counts"), Result("hot", int)]
REPORT = ("verdict WARNING: 1 of 2 checks failing, 0 insufficient, 1 OK; 10 frames\n"
          "WARNING range net_signal: 12.5 above 10 on frames 3-5")


def make(root: Path, scan_id: str, frames: int, *, metadata=None, mode="scan", counters=None, verdict="OK",
         end_reason="series end", report="verdict OK: 0 of 1 checks failing") -> Path:
    w = ScanWriter(root / scan_file_name(scan_id), scan_id, DECL,
                   {"metadata": metadata or {}, "mode": mode}, main_result="net_signal")
    for i in range(frames):
        w.append(i, 1.7e9 + i, {"net_signal": float(i), "hot": i % 2}, verdict="OK")
    counters = counters or Counters(total=frames, completed=frames, expected=frames)
    return w.finish({}, counters, verdict, end_reason=end_reason, provenance={"quality_report": report})


def test_rows_csv_json_and_status(tmp_path):
    md = {"sample": "Si, wafer \"7\"", "operator": "ann", "proposal": "p17", "pmt_serial": "SN-1"}
    make(tmp_path, "scan_a", 10, metadata=md, verdict="WARNING", report=REPORT,
         counters=Counters(total=12, completed=10, dropped=1, bad=1, expected=12))
    make(tmp_path, "scan_b", 0, mode="live", end_reason="stopped", counters=Counters())
    write_run_list(tmp_path)
    got = list(csv.DictReader((tmp_path / "runs.csv").open(encoding="utf-8")))
    assert [r["scan_id"] for r in got] == ["scan_a", "scan_b"]  # oldest first
    a, b = got
    assert tuple(csv.reader(io.StringIO((tmp_path / "runs.csv").read_text().splitlines()[0])))[0] == list(CSV_COLUMNS)
    assert (a["frames_expected"], a["frames_completed"], a["frames_lost"], a["frames_bad"]) == ("12", "10", "1", "1")
    assert a["sample"] == md["sample"] and a["operator"] == "ann" and a["proposal"] == "p17"
    assert json.loads(a["metadata"]) == {"pmt_serial": "SN-1"}
    assert a["verdict"] == "WARNING" and "above 10 on frames 3-5" in a["reasons"]
    assert a["status"] == "finished: 10/12 completed, 1 lost, 1 bad"  # not "complete"
    assert (a["main_result"], float(a["main_mean"]), float(a["main_max"])) == ("net_signal", 4.5, 9.0)
    assert float(a["duration_s"]) >= 0 and a["report"] == ""
    assert b["mode"] == "live" and b["status"] == "stopped: 0/0 completed, 0 lost" and b["frames_completed"] == "0"

    doc = json.loads((tmp_path / "runs.json").read_text(encoding="utf-8"))
    ra = doc["runs"][0]
    assert ra["metadata"] == md and ra["sample"] == md["sample"] and ra["reasons"] == [REPORT.splitlines()[1]]
    assert ra["frames_lost"] == 1 and ra["main_std"] > 0
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "SN-1" in page and "above 10 on frames 3-5" in page and "runs.csv" in page
    assert "Si, wafer &quot;7&quot;" in page


def test_status_words_match_the_report():
    from tango_dqm.report import _status

    base = {"complete": True, "counters": True, "frames_completed": 5, "frames_lost": 0, "frames_bad": 0,
            "total": 5, "frames_expected": 5, "end_reason": "series end", "frames": 5}
    for change, words in (({}, "complete"), ({"end_reason": "stopped"}, "stopped: 5/5 completed, 0 lost"),
                          ({"frames_completed": 0, "end_reason": "stopped"}, "stopped: 0/5 completed, 0 lost"),
                          ({"frames_lost": 2, "total": 7, "frames_expected": 7}, "finished: 5/7 completed, 2 lost"),
                          ({"complete": False, "running": True}, "running"),
                          ({"complete": False}, "incomplete (writer stopped)"), ({"error": "boom"}, "unreadable")):
        row = {**base, **change}
        assert status_text(row) == words
        info = {"complete": row["complete"], "running": row.get("running"), "error": row.get("error"),
                "end_reason": row["end_reason"], "frames": 5, "completed": row["frames_completed"],
                "lost": row["frames_lost"], "bad": row["frames_bad"], "total": row["total"],
                "expected": row["frames_expected"]}
        assert _status(info) == words


def test_log_follows_marks_and_unreadable_files(tmp_path):
    path = make(tmp_path, "scan_c", 3, metadata={"sample": "x"})
    (tmp_path / "scan_junk.h5").write_bytes(b"not hdf5")
    with ReportWorker(tmp_path) as worker:
        worker.submit(path)
        assert worker.wait_idle(60)
        first = {r["scan_id"]: r for r in json.loads((tmp_path / "runs.json").read_text())["runs"]}
        assert first["scan_c"]["flag"] == "" and first["scan_c"]["report"] == "scan_c.html"
        assert first["scan_junk"]["status"] == "unreadable" and first["scan_junk"]["error"]
        new = mark_scan(tmp_path, path, "flagged", "beam lost")
        worker.submit(new)
        assert worker.wait_idle(60)
    (row,) = [r for r in rows(tmp_path) if r["scan_id"] == "scan_c"]
    assert (row["flag"], row["flag_reason"], row["file"]) == ("flagged", "beam lost", "flagged/scan_c.h5")
    assert row["report"] == "flagged/scan_c.html"
    logged = list(csv.DictReader((tmp_path / "runs.csv").open(encoding="utf-8")))
    assert [(r["scan_id"], r["flag"], r["flag_reason"]) for r in logged if r["scan_id"] == "scan_c"] == [
        ("scan_c", "flagged", "beam lost")]


def test_cli_runs_prints_text_csv_json(tmp_path, capsys):
    make(tmp_path, "scan_d", 4, metadata={"sample": "Au foil", "operator": "bo"}, verdict="WARNING", report=REPORT)
    assert cli_main(["runs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "scan_d" in text and "Au foil" in text and "    - WARNING range net_signal" in text
    assert cli_main(["runs", str(tmp_path), "--csv"]) == 0
    assert list(csv.DictReader(io.StringIO(capsys.readouterr().out)))[0]["sample"] == "Au foil"
    assert cli_main(["runs", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["operator"] == "bo"
    assert cli_main(["runs", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["runs", str(empty)]) == 0 and "no scans" in capsys.readouterr().out


def test_nan_main_result_is_empty_not_nan(tmp_path):
    w = ScanWriter(tmp_path / "scan_e.h5", "scan_e", DECL, {}, main_result="net_signal")
    for i in range(3):
        w.append(i, 1.7e9 + i, {"net_signal": float("nan"), "hot": 1}, verdict="OK")
    w.finish({}, Counters(total=3, completed=3), "INSUFFICIENT", end_reason="series end",
             provenance={"quality_report": "verdict INSUFFICIENT: no quality checks configured"})
    write_run_list(tmp_path)
    row = json.loads((tmp_path / "runs.json").read_text())["runs"][0]  # strict JSON: no NaN
    assert row["main_mean"] is None and row["mode"] == ""
    assert row["reasons"] == ["verdict INSUFFICIENT: no quality checks configured"]
    assert "NaN" not in (tmp_path / "runs.json").read_text()


def test_a_new_scan_is_listed_as_running_at_once(tmp_path):
    from tango_dqm.products import ScanProducts

    products = ScanProducts(tmp_path, main_result="net_signal")
    try:
        path = products.begin("scan_live", {r.name: ("t", r) for r in DECL}, {"mode": "live", "metadata": {}})
        assert products.worker.wait_idle(60)
        (row,) = json.loads((tmp_path / "runs.json").read_text())["runs"]
        assert (row["scan_id"], row["status"], row["mode"], row["file"]) == ("scan_live", "running", "live",
                                                                           path.name)
        assert "running" in (tmp_path / "index.html").read_text()
    finally:
        products.close()
