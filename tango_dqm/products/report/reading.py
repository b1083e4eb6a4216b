"""Reading a scan results file for its report (series, spectra, summary, provenance)."""
from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import numpy as np

from ..columns import Envelope, IdRanges, Stats, aligned_block, bin_width, block_bounds, read_float
from ..scanfile import INT_MISSING, VERDICTS, StorageError, _decode, open_scan, read_lost_frames, read_scan_info

log = logging.getLogger(__name__)

MAX_POINTS = 2000        # longer series are drawn as per-bin min/max envelopes plus the mean
SPECTRUM_BLOCK = 4096    # rows read at a time when averaging spectra
VERDICT_COLOURS = {"OK": "#1b7f3b", "INSUFFICIENT": "#6b6b6b", "WARNING": "#c77700", "ERROR": "#c0171d",
                   "STALE": "#7b2d8e"}
_SKIP_COLUMNS = {"frame_id", "timestamp", "verdict"}


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _href(rel: str) -> str:
    """A relative link, percent-encoded then escaped for an attribute value."""
    return _esc(quote(rel, safe="/._-~"))


def _fmt(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return "missing" if value == INT_MISSING else str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.6g}"
        return f"{v:.4e}"
    return str(value)



# ---- reading a results file ---------------------------------------------------------------


@dataclass
class _Series:
    name: str
    #: per plotted point: the frame's value, or the mean of the bin when ``lo``/``hi`` are set
    values: np.ndarray
    unit: str = ""
    label: str = ""
    lo: np.ndarray | None = None  # per-bin min and max of a decimated series
    hi: np.ndarray | None = None
    stats: Stats = field(default_factory=Stats)  # of every frame's value, not of the points
    hist: tuple[np.ndarray, np.ndarray] | None = None  # (counts, edges) of every finite value


@dataclass
class _ScanData:
    path: Path
    info: dict[str, Any]
    #: frame id of each plotted point (the first frame of its bin); ``n`` rows in the file
    frame_id: np.ndarray
    #: per plotted point: the frame's verdict code, or the worst of its bin
    verdict: np.ndarray | None
    n: int = 0
    width: int = 1  # frames per plotted point
    id_span: tuple[int, int] | None = None  # lowest and highest frame id
    verdict_counts: np.ndarray | None = None  # frames per verdict code
    verdict_frames: dict[int, IdRanges] = field(default_factory=dict)  # ids per WARNING/ERROR/STALE code
    range_frames: dict[str, IdRanges] = field(default_factory=dict)  # per range check: ids outside it
    scalars: list[_Series] = field(default_factory=list)
    spectra: list[tuple[_Series, np.ndarray]] = field(default_factory=list)  # (mean, last) per spectrum
    images: list[tuple[str, np.ndarray, str]] = field(default_factory=list)  # (name, image, caption)
    summary: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    main: str | None = None
    #: declared results {name: {"kind", "unit", "label", ...}} (provenance/results_declared_json)
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: lost frames, inclusive (first, last) id ranges (see storage.LOST_FRAMES)
    lost: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    #: the reference in use during the scan: its arrays by summary name, and what it is
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    reference_info: dict[str, Any] = field(default_factory=dict)


def _attr(obj: h5py.HLObject, key: str, default: str = "") -> str:
    return str(_decode(obj.attrs.get(key, default)))


def _spectrum_mean_last(ds: h5py.Dataset, n: int) -> tuple[np.ndarray, np.ndarray]:
    width = ds.shape[1]
    total = np.zeros(width)
    count = np.zeros(width)
    for start in range(0, n, SPECTRUM_BLOCK):
        block = ds[start:min(n, start + SPECTRUM_BLOCK)]
        ok = ~np.isnan(block)
        total += np.where(ok, block, 0.0).sum(axis=0)
        count += ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    last = ds[n - 1] if n else np.full(width, np.nan)
    return mean, last


def _range_checks(provenance: dict[str, Any]) -> list[tuple[str, str, float | None, float | None]]:
    """(name, result, low, high) of each range check: frames at or beyond its warning limits are reported."""
    try:
        # a list of check configs is stored as one JSON dataset ("thresholds"), a dict also as "*_json"
        checks = json.loads(provenance.get("thresholds_json") or provenance.get("thresholds") or "[]")
    except (TypeError, ValueError):
        return []
    out = []
    for c in checks if isinstance(checks, list) else []:
        if isinstance(c, dict) and c.get("type") == "range" and isinstance(c.get("result"), str):
            lo, hi = ((c.get("warning") or c.get("error") or [None, None]) + [None, None])[:2]
            out.append((str(c.get("name")), c["result"], lo, hi))
    return out


def _read_columns(res: h5py.Group, data: _ScanData, max_points: int) -> None:
    """The per-frame scalar columns and verdicts, block by block (see products.columns): stats of
    every frame, at most ``max_points`` plotted points per column, id ranges of flagged frames."""
    n = data.n
    width = bin_width(n, max_points)
    step = aligned_block(width)
    data.width = width
    columns = []
    for name, ds in res.items():
        if not isinstance(ds, h5py.Dataset) or name in _SKIP_COLUMNS or name.endswith("_length"):
            continue
        kind = _attr(ds, "kind") or _attr(ds, "interpretation")
        if ds.ndim == 1 and ds.dtype.kind in "iuf" and ds.shape[0] >= n and kind in ("", "scalar"):
            columns.append((_Series(name, np.zeros(0), _attr(ds, "units"), _attr(ds, "long_name", name)),
                            ds, Envelope(n, width)))
    checks = [(c, next((s for s, *_ in columns if s.name == c[1]), None)) for c in _range_checks(data.provenance)]
    data.range_frames = {c[0]: IdRanges() for c, s in checks if s is not None}
    fid_ds, verdict_ds = res["frame_id"], res.get("verdict")
    xs, worst = [], []
    counts = np.zeros(len(VERDICTS), np.int64)
    span: tuple[int, int] | None = None  # lowest and highest frame id
    for start, stop in block_bounds(n, step):
        fid = fid_ds[start:stop].astype(np.int64)
        xs.append(fid[::width])
        lo, hi = int(fid.min()), int(fid.max())
        span = (lo, hi) if span is None else (min(span[0], lo), max(span[1], hi))
        if isinstance(verdict_ds, h5py.Dataset):
            codes = verdict_ds[start:stop].astype(np.int64)
            counts += np.bincount(np.clip(codes, 0, len(VERDICTS) - 1), minlength=len(VERDICTS))
            pad = (-len(codes)) % width
            worst.append(np.pad(codes, (0, pad), constant_values=-1).reshape(-1, width).max(axis=1))
            for code in range(2, len(VERDICTS)):  # WARNING, ERROR, STALE
                hit = fid[codes == code]
                if hit.size:
                    data.verdict_frames.setdefault(code, IdRanges()).add(hit)
        for s, ds, env in columns:
            values = read_float(ds, start, stop)
            s.stats.update(values)
            env.update(start, values)
            for (name, _result, low, high), series in checks:
                if series is s:
                    with np.errstate(invalid="ignore"):
                        bad = np.zeros(len(values), bool)
                        if low is not None:
                            bad |= values <= low
                        if high is not None:
                            bad |= values >= high
                    data.range_frames[name].add(fid[bad & np.isfinite(values)])
    data.frame_id = np.concatenate(xs) if xs else np.zeros(0, np.int64)
    if isinstance(verdict_ds, h5py.Dataset):
        data.verdict = np.concatenate(worst) if worst else np.zeros(0, np.int64)
        data.verdict_counts = counts
    data.id_span = span
    for s, _, env in columns:
        s.values = env.mean if width > 1 else env.lo
        if width > 1:
            s.lo, s.hi = env.lo, env.hi
        data.scalars.append(s)
    _value_histograms(columns, n, step)


def _value_histograms(columns: list, n: int, step: int) -> None:
    """Each column's histogram of every finite value: a second pass, with bins from the first's range."""
    todo = []
    for s, ds, _ in columns:
        if not s.stats.count:
            continue
        bins = min(50, max(5, int(np.sqrt(s.stats.count))))
        lo, hi = s.stats.min, s.stats.max
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        todo.append((s, ds, np.linspace(lo, hi, bins + 1), np.zeros(bins, np.int64)))
    for start, stop in block_bounds(n, step):
        for _, ds, edges, counts in todo:
            values = read_float(ds, start, stop)
            counts += np.histogram(values[np.isfinite(values)], bins=edges)[0]
    for s, _, edges, counts in todo:
        s.hist = (counts, edges)


def _read(path: Path, max_points: int = MAX_POINTS) -> _ScanData:
    info = read_scan_info(path)
    if info["error"]:
        raise StorageError(f"cannot read {path}: {info['error']}")
    with open_scan(path) as f:
        entry = f["entry"]
        res = entry["results"]
        n = res["frame_id"].shape[0]
        if not info["complete"]:  # being written: columns flushed so far may differ by a block
            n = min([n, *(ds.shape[0] for ds in res.values()
                          if isinstance(ds, h5py.Dataset) and ds.ndim == 1 and ds.dtype.kind in "iuf")])
        elif "verdict" in res:
            n = min(n, res["verdict"].shape[0])
        data = _ScanData(path, info, np.zeros(0, np.int64), None, n=n)
        data.lost = read_lost_frames(f)
        main = entry.get("provenance/main_result")
        data.main = _decode(main[()]) if isinstance(main, h5py.Dataset) else _attr(entry.get("data", entry), "signal")
        prov = entry.get("provenance")
        if isinstance(prov, h5py.Group):
            for name, obj in prov.items():
                if isinstance(obj, h5py.Dataset):
                    data.provenance[name] = _decode(obj[()])
            _read_reference(prov, data)
        _read_columns(res, data, max_points)
        for name, ds in res.items():
            if not isinstance(ds, h5py.Dataset) or name in _SKIP_COLUMNS or name.endswith("_length"):
                continue
            kind = _attr(ds, "kind") or _attr(ds, "interpretation")
            unit, label = _attr(ds, "units"), _attr(ds, "long_name", name)
            if ds.ndim == 2 and kind == "spectrum" and ds.shape[1] > 0 and n:
                rows = min(n, ds.shape[0])
                mean, last = _spectrum_mean_last(ds, rows)
                data.spectra.append((_Series(name, mean, unit, label), last))
            elif ds.ndim == 2 and kind == "image" and ds.size:
                fid = res.get(f"{name}_frame_id")
                where = f"frame {int(fid[()])}" if isinstance(fid, h5py.Dataset) else "last frame"
                data.images.append((name, ds[...], f"{label} ({where})"))
        order = {s.name: i for i, s in enumerate(data.scalars)}
        if data.main in order:  # main result first
            data.scalars.insert(0, data.scalars.pop(order[data.main]))
        summary = entry.get("summary")
        if isinstance(summary, h5py.Group):
            for name, obj in summary.items():
                if isinstance(obj, h5py.Group):
                    if name == "counters":
                        data.counters = {k: _decode(v[()]) for k, v in obj.items() if isinstance(v, h5py.Dataset)}
                    continue
                if name.endswith("_json") and name != "frame_verdict_counts_json":
                    continue
                if obj.ndim == 0:
                    data.summary[name] = _decode(obj[()])
                elif obj.dtype.kind in "biuf" and obj.size <= 64 * 1024 * 1024:
                    data.summary[name] = obj[...]
        data.info.update(_loss_counts(data.counters))
    data.declared = _json_dict(data.provenance.get("results_declared_json"))
    return data


def _read_reference(prov: h5py.Group, data: _ScanData) -> None:
    """The reference the scan was judged against: what it is (``provenance/reference``: version,
    name, scan id, created) and its 1-D arrays (``provenance/reference_arrays``, see ScanWriter)."""
    ref = prov.get("reference")
    if isinstance(ref, h5py.Group):
        data.reference_info = {k: _decode(v[()]) for k, v in ref.items()
                               if isinstance(v, h5py.Dataset) and v.ndim == 0}
    arrays = prov.get("reference_arrays")
    if isinstance(arrays, h5py.Group):
        for name, obj in arrays.items():
            if isinstance(obj, h5py.Dataset) and obj.ndim == 1 and obj.dtype.kind in "biuf" and obj.size <= 1 << 20:
                data.reference[name] = obj[...].astype(np.float64)


def _json_dict(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _projection_axis(name: str, length: int, rois: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """Detector pixel coordinates of a profile projection (``profile_x``, ``profile_run_y`` ...):
    the ROI offset plus the channel, so they read like the centroid (in detector pixels)."""
    import re

    m = re.fullmatch(r"profile(?:_run)?_([xy])", name)
    if not m:
        return None, ""
    roi = rois.get("roi_profile")
    offset = 0
    if isinstance(roi, (list, tuple)) and len(roi) == 4:
        offset = int(roi[0] if m.group(1) == "x" else roi[2])
    return offset + np.arange(length), f"detector {m.group(1)} [px]"


def _loss_counts(counters: dict[str, Any]) -> dict[str, Any]:
    """lost/bad/completed/total of a finished scan's counters, for its status wording."""
    def num(key: str) -> int | None:
        v = counters.get(key)
        return int(v) if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) else None
    if num("completed") is None:
        return {}
    # "dropped" counts every lost event once, events whose primary frame never arrived included
    return {"completed": num("completed"), "total": num("total") or 0, "expected": num("expected"),
            "lost": num("dropped") or 0, "bad": num("bad") or 0}

