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

from ..scanfile import (INT_MISSING, StorageError, _decode, open_scan, read_lost_frames, read_scan_info)

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
    values: np.ndarray
    unit: str = ""
    label: str = ""


@dataclass
class _ScanData:
    path: Path
    info: dict[str, Any]
    frame_id: np.ndarray
    verdict: np.ndarray | None
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


def _read(path: Path) -> _ScanData:
    info = read_scan_info(path)
    if info["error"]:
        raise StorageError(f"cannot read {path}: {info['error']}")
    with open_scan(path) as f:
        entry = f["entry"]
        res = entry["results"]
        n = res["frame_id"].shape[0]
        data = _ScanData(path, info, res["frame_id"][:n], None)
        data.verdict = res["verdict"][:n] if "verdict" in res else None
        data.lost = read_lost_frames(f)
        main = entry.get("provenance/main_result")
        data.main = _decode(main[()]) if isinstance(main, h5py.Dataset) else _attr(entry.get("data", entry), "signal")
        for name, ds in res.items():
            if not isinstance(ds, h5py.Dataset) or name in _SKIP_COLUMNS or name.endswith("_length"):
                continue
            kind = _attr(ds, "kind") or _attr(ds, "interpretation")
            unit, label = _attr(ds, "units"), _attr(ds, "long_name", name)
            if ds.ndim == 1 and ds.dtype.kind in "iuf" and ds.shape[0] >= n and kind in ("", "scalar"):
                values = ds[:n].astype(np.float64)
                if ds.dtype.kind in "iu":
                    values[ds[:n] == INT_MISSING] = np.nan
                data.scalars.append(_Series(name, values, unit, label))
            elif ds.ndim == 2 and kind == "spectrum" and ds.shape[1] > 0 and n:
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
        prov = entry.get("provenance")
        if isinstance(prov, h5py.Group):
            for name, obj in prov.items():
                if isinstance(obj, h5py.Dataset):
                    data.provenance[name] = _decode(obj[()])
    data.declared = _json_dict(data.provenance.get("results_declared_json"))
    return data


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

