"""The run log: one row per scan under an output directory, as ``runs.csv`` and ``runs.json``.

Rows are read from the results files themselves (``root``, ``root/flagged``, ``root/archive``),
so the log can always be rebuilt from what is on disk; ``report.write_run_list`` rewrites both
files next to ``index.html`` whenever a scan ends or is marked. ``tango-dqm runs DIR`` prints it.

Each row: scan id, start, end, duration, mode (scan/live), frames expected/completed/lost/bad,
status, verdict and its reasons, flag status and reason, the scan metadata (sample, operator,
proposal, free keys) and the main result's summary (mean, std, min, max over the frames).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import math
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .marks import scan_files
from .scanfile import INT_MISSING, _decode, open_scan, read_scan_info, safe_name

RUNS_CSV = "runs.csv"
RUNS_JSON = "runs.json"
COMMON_METADATA = ("sample", "operator", "proposal")
#: CSV columns in order; metadata keys beyond the common ones are in ``metadata`` (JSON)
CSV_COLUMNS = ("scan_id", "start", "end", "duration_s", "mode", "status", "frames_expected", "frames_completed",
               "frames_lost", "frames_bad", "verdict", "reasons", "flag", "flag_reason", "flag_time",
               *COMMON_METADATA, "metadata", "main_result", "main_mean", "main_std", "main_min", "main_max",
               "end_reason", "file", "report", "error")

_CACHE: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
_CACHE_LOCK = threading.Lock()


def _duration(start: str, end: str) -> float | None:
    try:
        return round((_dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)).total_seconds(), 3)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, str):
        return None
    try:
        v = int(value)
    except (TypeError, ValueError):
        return None
    return None if v == INT_MISSING else v


def _json_obj(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _finite_stats(values: np.ndarray) -> dict[str, float | None]:
    fin = values[np.isfinite(values)]
    if not fin.size:
        return {"main_mean": None, "main_std": None, "main_min": None, "main_max": None}
    return {"main_mean": float(fin.mean()), "main_std": float(fin.std()), "main_min": float(fin.min()),
            "main_max": float(fin.max())}


def status_text(row: dict[str, Any]) -> str:
    """What happened to the scan, in the report's words (report._status): ``complete`` only for a
    finished scan that analysed every frame and lost none, else e.g. ``stopped: 0/300 completed, 0 lost``."""
    if row.get("error"):
        return "unreadable"
    if row.get("complete"):
        completed = row.get("frames_completed") if row.get("counters") else None
        if completed is None:  # a file without counters: finished, but nothing says all arrived
            return "finished" if row.get("frames") else "finished: no frames"
        lost, bad, total = row.get("frames_lost") or 0, row.get("frames_bad") or 0, row.get("total") or 0
        expected, stopped = row.get("frames_expected"), row.get("end_reason") == "stopped"
        if completed > 0 and not lost and not bad and not stopped and (expected is None or completed >= expected):
            return "complete"
        return (f"{'stopped' if stopped else 'finished'}: {completed}/{total} completed, {lost} lost"
                + (f", {bad} bad" if bad else ""))
    if row.get("running"):
        return "running"
    return "incomplete (writer stopped; recovered)" if row.get("recovered") else "incomplete (writer stopped)"


def read_row(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """One run-log row of a results file (cached while the file is unchanged and finished)."""
    path = Path(path)
    try:
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is not None:
        with _CACHE_LOCK:
            hit = _CACHE.get(str(path))
        if hit and hit[0] == key:
            row = dict(hit[1])
            return _relative(row, path, root)
    row = _read_row(path)
    if key is not None and row.get("complete") and not row.get("error"):
        with _CACHE_LOCK:
            _CACHE[str(path)] = (key, dict(row))
    return _relative(row, path, root)


def _relative(row: dict[str, Any], path: Path, root: str | os.PathLike | None) -> dict[str, Any]:
    base = Path(root).resolve() if root is not None else path.parent.resolve()
    report = path.with_name(safe_name(path.stem) + ".html")
    row["file"] = os.path.relpath(path.resolve(), base)
    row["report"] = os.path.relpath(report.resolve(), base) if report.is_file() else ""
    return row


def _read_row(path: Path) -> dict[str, Any]:
    info = read_scan_info(path)
    row: dict[str, Any] = {
        "scan_id": info.get("scan_id") or path.stem, "start": info.get("start_time") or "",
        "end": info.get("end_time") or "", "duration_s": None, "mode": "", "status": "",
        "frames_expected": None, "frames_completed": None, "frames_lost": None, "frames_bad": None,
        "verdict": info.get("verdict") or "", "reasons": [], "flag": info.get("mark") or "",
        "flag_reason": info.get("mark_reason") or "", "flag_time": info.get("mark_time") or "",
        "metadata": {}, "main_result": "", "main_mean": None, "main_std": None, "main_min": None,
        "main_max": None, "end_reason": info.get("end_reason") or "", "error": info.get("error") or "",
        "complete": bool(info.get("complete")), "running": bool(info.get("running")),
        "recovered": info.get("recovered") or "", "frames": int(info.get("frames") or 0),
    }
    row["duration_s"] = _duration(row["start"], row["end"])
    if not row["error"]:
        try:
            with open_scan(path) as f:
                _fill_from_file(f["entry"], row)
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
    if row["frames_completed"] is None:
        row["frames_completed"] = row["frames"]  # an unfinished file: the frames written so far
    row["status"] = status_text(row)
    return row


def _fill_from_file(entry: h5py.Group, row: dict[str, Any]) -> None:
    def value(name: str, default: Any = None) -> Any:
        obj = entry.get(name)
        return _decode(obj[()]) if isinstance(obj, h5py.Dataset) else default

    row["mode"] = str(value("provenance/mode", "") or "")
    row["metadata"] = _json_obj(value("provenance/metadata_json", ""))
    report = value("provenance/quality_report", "")
    if isinstance(report, str) and report:
        lines = [line.strip() for line in report.splitlines() if line.strip()]
        # the lines after the header name the failing checks; with none, the header says why not OK
        row["reasons"] = lines[1:] or (lines[:1] if row["verdict"] not in ("", "OK") else [])
    counters = entry.get("summary/counters")
    if isinstance(counters, h5py.Group):
        c = {k: _decode(v[()]) for k, v in counters.items() if isinstance(v, h5py.Dataset)}
        row["frames_expected"] = _int(c.get("expected"))
        row["frames_completed"] = _int(c.get("completed"))
        row["frames_lost"] = _int(c.get("dropped"))
        row["frames_bad"] = _int(c.get("bad"))
        row["total"] = _int(c.get("total"))
        row["counters"] = row["frames_completed"] is not None
    main = value("provenance/main_result", None)
    if not main:
        data = entry.get("data")
        main = _decode(data.attrs.get("signal", "")) if isinstance(data, h5py.Group) else ""
    res = entry.get("results")
    if main and isinstance(res, h5py.Group) and isinstance(res.get(str(main)), h5py.Dataset):
        ds, n = res[str(main)], res["frame_id"].shape[0] if "frame_id" in res else 0
        if ds.ndim == 1 and ds.dtype.kind in "iuf":
            raw = ds[:n]
            values = raw.astype(np.float64)
            if raw.dtype.kind in "iu":
                values[raw == INT_MISSING] = np.nan
            row["main_result"] = str(main)
            row.update(_finite_stats(values))


def rows(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every scan under ``root`` (and flagged/, archive/), oldest first."""
    root = Path(root).resolve()
    out = [read_row(p, root) for p in scan_files(root)]
    out.sort(key=lambda r: (str(r.get("start") or ""), str(r.get("scan_id"))))
    return out


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in CSV_COLUMNS}


def _csv_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "reasons":
        return " | ".join(str(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def to_csv(run_rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in run_rows:
        md = r.get("metadata") or {}
        cells = {**r, **{k: md.get(k) for k in COMMON_METADATA}}
        cells["metadata"] = {k: v for k, v in md.items() if k not in COMMON_METADATA}
        w.writerow([_csv_cell(k, cells.get(k)) for k in CSV_COLUMNS])
    return buf.getvalue()


def to_json(run_rows: Sequence[dict[str, Any]], root: str | os.PathLike | None = None) -> str:
    runs = [_public(r) for r in run_rows]
    for r in runs:
        for k in COMMON_METADATA:
            r[k] = (r.get("metadata") or {}).get(k)
    doc = {"root": str(root) if root is not None else "",
           "generated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "runs": runs}
    return json.dumps(doc, indent=1, sort_keys=False, allow_nan=False, default=str) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run_log(root: str | os.PathLike, run_rows: Sequence[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """Write ``root/runs.csv`` and ``root/runs.json`` (each atomically); returns both paths."""
    root = Path(root).resolve()
    run_rows = rows(root) if run_rows is None else run_rows
    csv_path, json_path = root / RUNS_CSV, root / RUNS_JSON
    _write_atomic(csv_path, to_csv(run_rows))
    _write_atomic(json_path, to_json(run_rows, root))
    return csv_path, json_path


def to_text(run_rows: Sequence[dict[str, Any]]) -> str:
    """A terminal table: one line per scan, the reasons indented below."""
    head = ("scan", "start", "mode", "status", "frames", "lost", "bad", "verdict", "flag", "sample", "operator")
    lines = []
    table: list[tuple[Any, ...]] = [head]  # cells are printed with str()
    for r in run_rows:
        md = r.get("metadata") or {}
        frames = f"{r.get('frames_completed') or 0}" + (f"/{r['frames_expected']}" if r.get("frames_expected") else "")
        table.append((str(r.get("scan_id")), str(r.get("start") or "")[:19], r.get("mode") or "", r.get("status"),
                      frames, str(r.get("frames_lost") if r.get("frames_lost") is not None else ""),
                      str(r.get("frames_bad") if r.get("frames_bad") is not None else ""),
                      r.get("verdict") or "", r.get("flag") or "", str(md.get("sample") or ""),
                      str(md.get("operator") or "")))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for i, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i and run_rows[i - 1].get("reasons"):
            lines += [f"    - {reason}" for reason in run_rows[i - 1]["reasons"]]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``tango-dqm runs DIR [--csv|--json]``: print the run log of an output directory."""
    parser = argparse.ArgumentParser(prog="tango-dqm runs",
                                     description="Print the run log (one row per scan) of an output directory, "
                                                 "read from its results files (and flagged/, archive/).")
    parser.add_argument("directory", type=Path, help="an OutputDirectory")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print it as runs.csv has it")
    fmt.add_argument("--json", action="store_true", help="print it as runs.json has it")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        print(f"tango-dqm runs: {args.directory}: not a directory", file=sys.stderr)
        return 2
    run_rows = rows(args.directory)
    if args.csv:
        sys.stdout.write(to_csv(run_rows))
    elif args.json:
        sys.stdout.write(to_json(run_rows, args.directory.resolve()))
    elif not run_rows:
        print(f"no scans in {args.directory}")
    else:
        sys.stdout.write(to_text(run_rows))
    return 0


__all__ = ["COMMON_METADATA", "CSV_COLUMNS", "RUNS_CSV", "RUNS_JSON", "main", "read_row", "rows",
           "status_text", "to_csv", "to_json", "to_text", "write_run_log"]
