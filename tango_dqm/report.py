"""Run reports: a static HTML page with PNG plots per scan, and a run list across scans.

``write_report(h5)`` writes ``<stem>.html`` next to the results file (``<stem>`` is the file
name without ``.h5``, i.e. the safe form of the scan id) and its plots in ``<stem>_plots/``,
linked relatively, so the page, its plots and the results file move together (see
``storage.mark_scan``). ``write_run_list(root)`` writes ``root/index.html`` listing every scan
under ``root``, ``root/flagged`` and ``root/archive``. Pages use no external resources
(no CDN, no scripts) and every string taken from a file is HTML-escaped.

``ReportWorker`` does both in a background thread, so ending a scan is not slowed down.

Plots use matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), never
``pyplot``: no global backend state is touched, so reports can be drawn from a worker thread
in a process that also has a GUI, and ``matplotlib.use`` is not needed.
"""
from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import html
import json
import logging
import math
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import h5py
import numpy as np

from . import runlog
from .quality import format_id_ranges
from .storage import (INT_MISSING, MARKS, VERDICTS, StorageError, _decode, open_scan, read_lost_frames,
                      read_scan_info, safe_name, scan_files)

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


# ---- plots --------------------------------------------------------------------------------


def _figure(width: float = 7.5, height: float = 2.6, **adjust: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)  # fixed margins: constrained layout costs 2.5x
    margins = {"left": 0.10, "right": 0.98, "bottom": 0.19, "top": 0.88, "wspace": 0.04}
    margins.update(adjust)
    fig.subplots_adjust(**margins)
    return fig


def _save(fig: Any, out: Path) -> None:
    """Save without offset notation (``+1.073e7`` above an axis is misread): plain tick values."""
    from matplotlib.ticker import ScalarFormatter

    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            fmt = axis.get_major_formatter()
            if isinstance(fmt, ScalarFormatter):
                fmt.set_useOffset(False)
                fmt.set_powerlimits((-4, 9))  # 10740000, not 1.074 with "1e7" in a corner
    fig.savefig(out)


def _envelope(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS):
    """Per-bin (x, min, max, mean) so that a long series keeps its spikes when drawn."""
    bins = math.ceil(len(y) / max_points)
    m = len(y) // bins * bins
    xs, ys = x[:m].reshape(-1, bins), y[:m].reshape(-1, bins)
    with np.errstate(invalid="ignore"), _quiet():
        return xs[:, 0], np.nanmin(ys, axis=1), np.nanmax(ys, axis=1), np.nanmean(ys, axis=1)


class _quiet:
    """Silence numpy's all-NaN RuntimeWarnings inside a block."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


MAX_GAPS_SHADED = 200    # lost ranges shaded per plot (every gap still breaks the line)


def _with_gaps(x: np.ndarray, lost: np.ndarray, *ys: np.ndarray) -> tuple[np.ndarray, ...]:
    """``x`` and ``ys`` with a NaN point inserted at the first id of every lost range inside the
    plotted span, so a line is broken at lost frames instead of bridging them."""
    x = np.asarray(x, dtype=np.float64)
    if not len(lost) or not len(x):
        return (x, *ys)
    starts = lost[:, 0].astype(np.float64)
    starts = starts[(starts > x[0]) & (starts < x[-1])]
    at = np.searchsorted(x, starts)
    return (np.insert(x, at, starts), *(np.insert(np.asarray(y, np.float64), at, np.nan) for y in ys))


def _shade_gaps(ax: Any, lost: np.ndarray) -> None:
    for i, (a, b) in enumerate(lost[:MAX_GAPS_SHADED]):
        ax.axvspan(a - 0.5, b + 0.5, color="#fc9272", alpha=0.35, linewidth=0,
                   label="lost frames" if i == 0 else None)


def _plot_trend(s: _Series, x: np.ndarray, out: Path, main: bool,
                lost: np.ndarray = np.zeros((0, 2), np.int64)) -> None:
    fig = _figure()
    ax, axh = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    y = s.values
    finite = np.isfinite(y)
    ylabel = f"{s.name} [{s.unit}]" if s.unit else s.name
    _shade_gaps(ax, lost)
    if len(y) > MAX_POINTS:
        xb, *bins = _envelope(x.astype(np.float64), y)
        xb, lo, hi, mean = _with_gaps(xb, lost, *bins)
        ax.fill_between(xb, lo, hi, color="#9ecae1", step="post", linewidth=0, label="min-max per bin")
        ax.plot(xb, hi, color="#6baed6", linewidth=0.5, drawstyle="steps-post")
        ax.plot(xb, lo, color="#6baed6", linewidth=0.5, drawstyle="steps-post")
        ax.plot(xb, mean, color="#08519c", linewidth=0.8, drawstyle="steps-post", label="mean per bin")
        ax.legend(loc="upper right", fontsize=7)  # "best" costs ~80 ms per plot
    else:
        xg, yg = _with_gaps(x, lost, y)
        ax.plot(xg, yg, color="#08519c", linewidth=0.9, marker="." if len(y) <= 200 else None, markersize=3)
        if len(lost):
            ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("frame id")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{s.label or s.name}{' (main result)' if main else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    if finite.any():
        axh.hist(y[finite], bins=min(50, max(5, int(np.sqrt(finite.sum())))), orientation="horizontal",
                 color="#6baed6")
    axh.set_xlabel("frames")
    axh.set_title(f"{int(finite.sum())} values", fontsize=8)
    axh.tick_params(labelleft=False)
    _save(fig, out)


def _plot_verdicts(x: np.ndarray, codes: np.ndarray, out: Path,
                   lost: np.ndarray = np.zeros((0, 2), np.int64)) -> None:
    fig = _figure(height=1.8, left=0.14, bottom=0.26, top=0.85)
    ax = fig.subplots()
    _shade_gaps(ax, lost)
    if len(codes) > MAX_POINTS:
        xb, _, hi, _ = _envelope(x.astype(np.float64), codes.astype(np.float64))
        ax.plot(*_with_gaps(xb, lost, hi), drawstyle="steps-post", color="#444444", linewidth=0.9)
    else:
        ax.plot(*_with_gaps(x, lost, codes.astype(np.float64)), drawstyle="steps-post", color="#444444",
                linewidth=0.9)
    ax.set_yticks(range(len(VERDICTS)), VERDICTS, fontsize=7)
    ax.set_ylim(-0.5, len(VERDICTS) - 0.5)
    ax.set_xlabel("frame id")
    ax.set_title("per-frame verdict (worst per bin)" if len(codes) > MAX_POINTS else "per-frame verdict", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, out)


def _plot_curves(title: str, curves: list[tuple[str, np.ndarray]], ylabel: str, out: Path,
                 x: np.ndarray | None = None, step: bool = False, xlabel: str = "", log: bool = False) -> None:
    """Curves over ``x`` (bin edges when one longer: a histogram). The first curve (e.g. the run
    mean) is drawn last and thicker, so a later one (the last frame) never hides it."""
    fig = _figure(6.0, 2.8, left=0.13, bottom=0.17)
    ax = fig.subplots()
    styles = [{"linewidth": 1.6, "zorder": 3, "color": "#08519c"}, {"linewidth": 0.8, "zorder": 2, "color": "#fd8d3c",
                                                                     "alpha": 0.9}]
    for i, (label, y) in reversed(list(enumerate(curves))):
        style = styles[min(i, 1)] if len(curves) > 1 else {"linewidth": 0.9, "color": "#08519c"}
        if x is not None and len(x) == len(y) + 1:  # histogram bin edges
            ax.stairs(y, x, label=label, **style)
            continue
        xs = np.arange(len(y)) if x is None or len(x) != len(y) else x
        ax.plot(xs, y, label=label, drawstyle="steps-mid" if step else "default", **style)
    ax.set_xlabel(xlabel or ("channel" if x is None else "bin position"))
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    if log:
        values = np.concatenate([np.asarray(y, np.float64).ravel() for _, y in curves]) if curves else np.zeros(0)
        positive = values[np.isfinite(values) & (values > 0)]
        if positive.size and positive.max() > 100 * positive.min():
            ax.set_yscale("log")  # counts over decades: a linear axis puts everything in the first bins
    if len(curves) > 1:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out)


#: category codes of the pixels analysis' map (analysis/pixels.py: 0 ok, 1 hot, 2 dead, 3 saturated)
PIXEL_CATEGORIES = {"pixels_map": [("ok", "#f0f0f0"), ("hot", "#e31a1c"), ("dead", "#1f78b4"),
                                   ("saturated", "#ff7f00")]}
ROI_STYLES = {"roi_signal": ("#e7298a", "signal ROI"), "roi_background": ("#66a61e", "background ROI"),
              "roi_profile": ("#e6ab02", "profile ROI"), "roi_histogram": ("#7570b3", "histogram ROI")}
MAX_MARKERS = 2000  # bad pixels marked individually on a categorical map


def _roi_boxes(rois: dict[str, Any], shape: tuple[int, ...]) -> list[tuple[str, str, list[int]]]:
    """(name, colour, [offset_x, size_x, offset_y, size_y]) of the ROIs that fit ``shape``."""
    out = []
    for name, (colour, label) in ROI_STYLES.items():
        roi = rois.get(name)
        if isinstance(roi, (list, tuple)) and len(roi) == 4 and all(isinstance(v, (int, float)) for v in roi):
            ox, sx, oy, sy = (int(v) for v in roi)
            if sx > 0 and sy > 0 and ox + sx <= shape[1] and oy + sy <= shape[0]:
                out.append((label, colour, [ox, sx, oy, sy]))
    return out


def _plot_image(title: str, image: np.ndarray, out: Path, unit: str = "", rois: dict[str, Any] | None = None,
                categories: list[tuple[str, str]] | None = None) -> None:
    """An image in detector pixels with a colour bar labelled with its unit, the ROIs drawn on it;
    a category map (``categories``: (label, colour) per code) gets a legend with counts and a
    marker on every non-zero pixel, which would be invisible at one pixel in a thousand."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch, Rectangle

    img = np.asarray(image, dtype=np.float64)
    # legends sit outside the image (right of a category map, under a colour-scaled one): never over a pixel
    fig = _figure(6.4 if categories else 5.6, 4.8, left=0.10, right=0.70 if categories else 0.93,
                  bottom=0.27 if not categories else 0.11, top=0.93)
    ax = fig.subplots()
    aspect = "equal" if max(img.shape) <= 4 * min(img.shape) else "auto"
    handles = []
    if categories:
        cmap = ListedColormap([c for _, c in categories])
        norm = BoundaryNorm(np.arange(len(categories) + 1) - 0.5, len(categories))
        ax.imshow(np.clip(np.nan_to_num(img), 0, len(categories) - 1), origin="upper", interpolation="nearest",
                  cmap=cmap, norm=norm, aspect=aspect)
        codes = np.rint(np.nan_to_num(img)).astype(np.int64)
        for code, (label, colour) in enumerate(categories):
            n = int((codes == code).sum())
            if code == 0:
                handles.append(Patch(facecolor=colour, edgecolor="#999999", label=f"{label}: {n}"))
                continue
            ys, xs = np.nonzero(codes == code)
            if len(xs):
                ax.scatter(xs[:MAX_MARKERS], ys[:MAX_MARKERS], s=40, facecolors="none", edgecolors=colour,
                           linewidths=1.2, zorder=3)
            handles.append(Patch(facecolor=colour, label=f"{label}: {n}"))
    else:
        finite = img[np.isfinite(img)]
        vmin = vmax = None
        if finite.size:
            vmin, vmax = np.percentile(finite, [0.5, 99.5])
            if vmax <= vmin:
                vmin, vmax = float(finite.min()), float(finite.max()) or 1.0
        im = ax.imshow(img, origin="upper", interpolation="nearest", cmap="viridis", vmin=vmin, vmax=vmax,
                       aspect=aspect)
        bar = fig.colorbar(im, ax=ax, shrink=0.85)
        bar.set_label(unit or "value", fontsize=8)
    for label, colour, (ox, sx, oy, sy) in _roi_boxes(rois or {}, img.shape):
        for edge, width, z in (("white", 2.8, 4), (colour, 1.4, 5)):  # a white halo: visible on any colour map
            ax.add_patch(Rectangle((ox - 0.5, oy - 0.5), sx, sy, fill=False, edgecolor=edge, linewidth=width, zorder=z))
        handles.append(Patch(facecolor="none", edgecolor=colour, label=label))
    if handles and categories:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0)
    elif handles:
        ax.legend(handles=handles, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.19), ncol=3,
                  borderaxespad=0)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("detector x [px]")
    ax.set_ylabel("detector y [px]")
    _save(fig, out)


# ---- the report page ------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.2em 2em;color:#222;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}.nowrap,td.num{white-space:nowrap}
.verdict{font-weight:bold;padding:.1em .5em;border-radius:.3em;color:#fff}
.mark-flagged{color:#c0171d;font-weight:bold}.mark-archived{color:#1b7f3b;font-weight:bold}
.plots{display:flex;flex-wrap:wrap;gap:.6em}.plots figure{margin:0;flex:0 1 600px;max-width:100%}
.plots img{width:100%;height:auto}td{overflow-wrap:break-word}
figcaption{font-size:.8em;color:#555}
pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere}
.verdict-box{border:1px solid #ccc;border-radius:.4em;padding:.3em .9em;background:#fafafa}
.verdict-box ul.reasons{font-size:.95em}.frames{color:#555;font-size:.9em}
.muted{color:#777}.small{font-size:.8em}
table.runs{width:100%;table-layout:auto;font-size:.85em}td.brk{overflow-wrap:anywhere}td.scan{min-width:9em}
td.why{min-width:15em}.verdict{white-space:nowrap}
ul.reasons{margin:.2em 0 0 1em;padding:0;font-size:.85em}
"""


def _verdict_html(verdict: Any) -> str:
    v = str(verdict or "")
    if not v:
        return '<span class="muted">none</span>'
    colour = VERDICT_COLOURS.get(v.upper(), "#444444")
    return f'<span class="verdict" style="background:{colour}">{_esc(v)}</span>'


def _mark_html(info: dict[str, Any]) -> str:
    mark = info.get("mark") or ""
    if not mark:
        return '<span class="muted">not marked</span>'
    cls = f"mark-{mark}" if mark in MARKS else ""
    extra = f": {_esc(info.get('mark_reason'))}" if info.get("mark_reason") else ""
    when = f' <span class="muted">({_esc(info.get("mark_time"))})</span>' if info.get("mark_time") else ""
    return f'<span class="{cls}">{_esc(mark)}</span>{extra}{when}'


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


def _status(info: dict[str, Any]) -> str:
    """``complete`` only for a finished scan that analysed every frame and lost none; otherwise
    e.g. ``finished: 289/300 completed, 11 lost`` or ``stopped: 0/300 completed, 0 lost``."""
    if info.get("error"):
        return "unreadable"
    if info.get("complete"):
        completed = info.get("completed")
        if completed is None:  # a file without counters: finished, but nothing says all arrived
            return "finished" if info.get("frames") else "finished: no frames"
        lost, bad, total, expected = info["lost"], info["bad"], info["total"], info.get("expected")
        stopped = info.get("end_reason") == "stopped"
        if completed > 0 and not lost and not bad and not stopped and (expected is None or completed >= expected):
            return "complete"
        return (f"{'stopped' if stopped else 'finished'}: {completed}/{total} completed, {lost} lost"
                + (f", {bad} bad" if bad else ""))
    if info.get("running"):
        return "running"
    if info.get("recovered"):
        return "incomplete (writer stopped; recovered)"
    return "incomplete (writer stopped)"


def _rows(pairs: Sequence[tuple[str, str]], raw: bool = False) -> str:
    return "\n".join(f"<tr><th>{_esc(k)}</th><td>{v if raw else _esc(v)}</td></tr>" for k, v in pairs)


def _duration(start: str, end: str) -> str:
    try:
        d = _dt.datetime.fromisoformat(end) - _dt.datetime.fromisoformat(start)
    except (TypeError, ValueError):
        return ""
    return f"{d.total_seconds():.1f} s"


def write_report(h5_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<stem>.html`` and ``<stem>_plots/*.png`` for one results file; returns the page path."""
    h5_path = Path(h5_path).resolve()
    data = _read(h5_path)
    out = Path(out_dir).resolve() if out_dir is not None else h5_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(h5_path.stem)
    plots_name = f"{stem}_plots"
    plots = out / plots_name
    plots.mkdir(exist_ok=True)
    for old in plots.glob("*.png"):
        old.unlink()
    x = data.frame_id
    figures: dict[str, list[tuple[str, str]]] = {"trends": [], "spectra": [], "histograms": [], "images": []}

    def add(section: str, file: str, caption: str, draw) -> None:
        try:
            draw(plots / file)
        except Exception as exc:  # noqa: BLE001 - one bad plot must not lose the page
            log.warning("report %s: plot %s failed: %s", stem, file, exc)
            return
        figures[section].append((f"{plots_name}/{file}", caption))

    if data.verdict is not None and len(x):
        add("trends", "00_verdict.png", "per-frame verdict",
            lambda p: _plot_verdicts(x, data.verdict, p, data.lost))
    rois = _json_dict(data.provenance.get("rois_json"))
    unit_of = {k: str(v.get("unit") or "") for k, v in data.declared.items() if isinstance(v, dict)}
    plotted = 0
    for s in data.scalars:  # every result: all-NaN ones are listed on the page instead (_page_body)
        if len(x) and np.isfinite(s.values).any():
            plotted += 1
            add("trends", f"{plotted:02d}_trend_{safe_name(s.name)}.png", f"{s.name}: trend and histogram",
                lambda p, s=s: _plot_trend(s, x, p, s.name == data.main, data.lost))
    for i, (mean, last) in enumerate(data.spectra):
        px, xlabel = _axis_for(mean.name, mean.values, data.summary, rois, unit_of)
        hist = "hist" in mean.name.lower()
        add("histograms" if hist else "spectra", f"spectrum_{i:02d}_{safe_name(mean.name)}.png",
            f"{mean.name}: run mean and last frame",
            lambda p, mean=mean, last=last, px=px, xlabel=xlabel, hist=hist: _plot_curves(
                mean.label or mean.name, [("run mean", mean.values), ("last frame", last)],
                "counts" if hist else (mean.unit or "value"), p, x=px, xlabel=xlabel, step=hist, log=hist))
    for i, (name, image, caption) in enumerate(data.images):
        add("images", f"image_{i:02d}_{safe_name(name)}.png", caption,
            lambda p, name=name, image=image, caption=caption: _plot_image(caption, image, p, unit_of.get(name, ""),
                                                                          rois, PIXEL_CATEGORIES.get(name)))
    for i, (name, value) in enumerate(sorted(data.summary.items())):
        if not isinstance(value, np.ndarray) or value.size < 2:
            continue
        if value.ndim == 2 and min(value.shape) > 1:
            add("images", f"summary_{i:02d}_{safe_name(name)}.png", f"run summary: {name}",
                lambda p, name=name, value=value: _plot_image(f"run summary: {name}", value, p,
                                                              unit_of.get(name, ""), rois,
                                                              PIXEL_CATEGORIES.get(name)))
        elif value.ndim == 1 and not name.endswith(_AXIS_SUFFIXES):
            x_axis, xlabel = _axis_for(name, value, data.summary, rois, unit_of)
            hist = "hist" in name.lower() or (x_axis is not None and not xlabel.startswith("detector"))
            section = "histograms" if hist else "spectra"
            add(section, f"summary_{i:02d}_{safe_name(name)}.png", f"run summary: {name}",
                lambda p, name=name, value=value, x_axis=x_axis, hist=hist, xlabel=xlabel: _plot_curves(
                    f"run summary: {name}", [(name, value)], "counts" if hist else (unit_of.get(name) or "value"),
                    p, x=x_axis, step=hist, xlabel=xlabel, log=hist))

    body = _page_body(data, stem, h5_path, out, figures)
    page = out / f"{stem}.html"
    tmp = out / f".{stem}.html.tmp"
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, page)  # a browser never sees half a page
    return page


_AXIS_SUFFIXES = ("_edges", "_bins", "_centers", "_centres")


def _axis_for(name: str, value: np.ndarray, summary: dict[str, Any], rois: dict[str, Any],
              units: dict[str, str]) -> tuple[np.ndarray | None, str]:
    """x values and label of a 1-D array: its bin edges/centres (labelled with their unit), or
    detector pixels for a projection, or None (channels)."""
    axis = _matching_axis(name, value, summary)
    if axis is None:
        return _projection_axis(name, len(value), rois)
    axis_name = next((k for k, v in summary.items() if v is axis), "")
    unit = units.get(axis_name, "")
    return axis, f"bin position{f' [{unit}]' if unit else ''}"


def _matching_axis(name: str, value: np.ndarray, summary: dict[str, Any]) -> np.ndarray | None:
    """Bin positions for a 1-D summary array: the ``*_edges`` (n+1) or ``*_centers`` (n) array
    sharing the longest name prefix with it (``hist_run_counts`` <- ``hist_edges``)."""
    best, best_len = None, 0
    for other, axis in summary.items():
        if not (isinstance(axis, np.ndarray) and axis.ndim == 1 and other.endswith(_AXIS_SUFFIXES)):
            continue
        if len(axis) not in (len(value), len(value) + 1):
            continue
        prefix = len(os.path.commonprefix([name, other]))
        if prefix > best_len:
            best, best_len = axis, prefix
    return best


def _id_ranges(ids: np.ndarray) -> list[tuple[int, int]]:
    """Sorted frame ids as inclusive (first, last) runs of consecutive ids."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    if not ids.size:
        return []
    breaks = np.nonzero(np.diff(ids) != 1)[0]
    starts, ends = np.r_[ids[0], ids[breaks + 1]], np.r_[ids[breaks], ids[-1]]
    return list(zip(starts.tolist(), ends.tolist()))


def _frames_text(ids: np.ndarray, limit: int = 20) -> str:
    ranges = _id_ranges(ids)
    return f"{len(np.unique(ids))} frames: {format_id_ranges(ranges, limit)}" if ranges else ""


def _range_check_frames(data: _ScanData) -> dict[str, np.ndarray]:
    """Per range check (by name): ids of the frames outside its warning range (limits are outside)."""
    try:
        # a list of check configs is stored as one JSON dataset ("thresholds"), a dict also as "*_json"
        checks = json.loads(data.provenance.get("thresholds_json") or data.provenance.get("thresholds") or "[]")
    except (TypeError, ValueError):
        return {}
    series = {s.name: s.values for s in data.scalars}
    out = {}
    for c in checks if isinstance(checks, list) else []:
        if not isinstance(c, dict) or c.get("type") != "range" or c.get("result") not in series:
            continue
        lo, hi = (c.get("warning") or c.get("error") or [None, None])[:2]
        v = series[c["result"]]
        with np.errstate(invalid="ignore"):
            bad = np.zeros(len(v), bool)
            if lo is not None:
                bad |= v <= lo
            if hi is not None:
                bad |= v >= hi
        out[str(c.get("name"))] = data.frame_id[bad & np.isfinite(v)]
    return out


def _verdict_section(data: _ScanData) -> str:
    """The verdict, then each reason (one failing check) with the frames concerned, first on the page."""
    report = str(data.provenance.get("quality_report") or "")
    lines = [ln.strip() for ln in report.splitlines() if ln.strip()]
    per_check = _range_check_frames(data)
    items = []
    for line in lines[1:]:
        name = line.split(":", 1)[0].split(" ", 1)[-1]
        frames = _frames_text(per_check[name]) if name in per_check else ""
        items.append(f"<li>{_esc(line)}{f'<br><span class=frames>{_esc(frames)}</span>' if frames else ''}</li>")
    if data.verdict is not None and len(data.verdict):
        for code in range(len(VERDICTS) - 1, 1, -1):  # STALE, ERROR, WARNING frames
            ids = data.frame_id[data.verdict == code]
            if len(ids):
                items.append(f"<li>frames judged {_esc(VERDICTS[code])}: {_esc(_frames_text(ids))}</li>")
    if len(data.lost):
        n_lost = int((data.lost[:, 1] - data.lost[:, 0] + 1).sum())
        items.append(f"<li>lost frames (never analysed): {n_lost}: "
                     f"{_esc(format_id_ranges([(int(a), int(b)) for a, b in data.lost], 20))}</li>")
    head = _esc(lines[0]) if lines else '<span class="muted">no quality report recorded</span>'
    reasons = f"<ul class=reasons>{''.join(items)}</ul>" if items else '<p class="muted">nothing to report</p>'
    return (f'<div class="verdict-box"><p>{_verdict_html(data.info.get("verdict"))} {head}</p>{reasons}</div>')


def _metadata_section(data: _ScanData) -> str:
    md = _json_dict(data.provenance.get("metadata_json"))
    mode = data.provenance.get("mode") or ""
    pairs = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in md.items()]
    if mode:
        pairs.insert(0, ("mode", str(mode)))
    if not pairs:
        return '<p class="muted">no scan metadata recorded</p>'
    return f'<table class="meta">{_rows(pairs)}</table>'


def _not_plotted(data: _ScanData, figures: dict[str, list]) -> str:
    """Declared results that have no plot, each with why: none is silently dropped."""
    shown = " ".join(cap for items in figures.values() for _, cap in items)
    drawn = {name for name, *_ in data.images} | {mean.name for mean, _ in data.spectra}
    nan = {s.name for s in data.scalars if not np.isfinite(s.values).any()}
    rows = []
    for name, decl in sorted(data.declared.items()):
        kind = decl.get("kind", "") if isinstance(decl, dict) else ""
        if name in nan:
            why = "no value in any frame (all NaN)"
        elif name in drawn or f"{name}:" in shown or f"run summary: {name}" in shown:
            continue
        elif name in data.summary:
            why = f"run summary value: {_fmt(data.summary[name])}" if not isinstance(data.summary[name], np.ndarray) \
                else "run summary array (see below)"
        elif kind == "scalar" and any(s.name == name for s in data.scalars):
            continue
        else:
            why = "not recorded in this file"
        rows.append((name, f"{kind}: {why}" if kind else why))
    if not rows:
        return ""
    return ("<h3>Results without a plot</h3><table>" + _rows(rows) + "</table>")


def _page_body(data: _ScanData, stem: str, h5_path: Path, out: Path, figures: dict[str, list]) -> str:
    info = data.info
    n = len(data.frame_id)
    c = data.counters
    key = [
        ("scan id", _esc(info["scan_id"])),
        ("verdict", _verdict_html(info.get("verdict"))),
        ("flag status", _mark_html(info)),
        ("status", _esc(_status(info) + (f" ({info['end_reason']})" if info.get("end_reason") else ""))),
        ("start", _esc(info.get("start_time"))),
        ("end", _esc(info.get("end_time") or "—")),
        ("duration", _esc(_duration(info.get("start_time", ""), info.get("end_time", "")))),
        ("frames stored", _esc(n)),
        ("frame ids", _esc(f"{int(data.frame_id[0])} … {int(data.frame_id[-1])}" if n else "—")),
    ]
    for name in ("total", "completed", "dropped", "bad", "expected"):
        if name in c:
            key.append((f"{name} events", _esc(_fmt(c[name]))))
    if len(data.lost):
        n_lost = int((data.lost[:, 1] - data.lost[:, 0] + 1).sum())
        key.append(("lost frames", _esc(f"{n_lost} in {len(data.lost)} ranges: "
                                        + format_id_ranges([(int(a), int(b)) for a, b in data.lost], 50))))
    if data.verdict is not None and n:
        counts = np.bincount(data.verdict.astype(np.int64), minlength=len(VERDICTS))
        key.append(("frames per verdict", _esc(", ".join(
            f"{VERDICTS[i] if i < len(VERDICTS) else i}: {k}" for i, k in enumerate(counts) if k))))
    if data.main:
        key.append(("main result", _esc(data.main)))
    rel_h5 = os.path.relpath(h5_path, out)
    key.append(("results file", f'<a href="{_href(rel_h5)}">{_esc(h5_path.name)}</a>'))

    stats_rows = []
    for s in data.scalars:
        v = s.values
        fin = v[np.isfinite(v)]
        last = v[-1] if len(v) else float("nan")
        cells = [len(fin), *(f(fin) if fin.size else float("nan") for f in (np.mean, np.std, np.min, np.max)), last]
        stats_rows.append(f"<tr><th>{_esc(s.name)}</th><td>{_esc(s.unit)}</td>"
                          + "".join(f'<td class="num">{_esc(_fmt(x))}</td>' for x in cells) + "</tr>")

    summary_rows = [(k, _fmt(v)) for k, v in sorted(data.summary.items())
                    if not isinstance(v, np.ndarray)
                    and k not in ("verdict", "end_reason", "frame_verdict_counts_json")]
    summary_rows += [(k, f"array {list(v.shape)} {v.dtype}") for k, v in sorted(data.summary.items())
                     if isinstance(v, np.ndarray)]

    def gallery(items: list[tuple[str, str]]) -> str:
        if not items:
            return '<p class="muted">none</p>'
        return '<div class="plots">' + "".join(
            f'<figure><img src="{_href(src)}" alt="{_esc(cap)}"><figcaption>{_esc(cap)}</figcaption></figure>'
            for src, cap in items) + "</div>"

    prov = data.provenance
    prov_html = []
    params = prov.get("parameters_json")
    if params:
        try:
            pdict = json.loads(params)
            prov_html.append("<h3>Parameters</h3><table>" + _rows([(k, json.dumps(v)) for k, v in pdict.items()])
                             + "</table>")
        except (TypeError, ValueError):
            pass
    for name in sorted(prov):
        if name in ("parameters_json", "json", "results_declared_json"):
            continue
        value = prov[name]
        if name.endswith("_json"):
            try:
                value = json.dumps(json.loads(value), indent=1, sort_keys=True)
            except (TypeError, ValueError):
                pass
        elif isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        elif isinstance(value, np.ndarray):
            value = json.dumps(value.tolist())
        prov_html.append(f"<h3>{_esc(name)}</h3><pre>{_esc(value)}</pre>")

    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    title = f"tango-dqm report: {info['scan_id']}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
<p><a href="{_href(os.path.relpath(_run_list_root(h5_path) / 'index.html', out))}">run list</a></p>
<h2>Verdict</h2>
{_verdict_section(data)}
<h2>Scan</h2>
{_metadata_section(data)}
<h2>Summary</h2>
<table>
{_rows(key, raw=True)}
</table>
<h2>Results per frame</h2>
<table><tr><th>result</th><th>unit</th><th>frames</th><th>mean</th><th>std</th><th>min</th><th>max</th>
<th>last</th></tr>
{"".join(stats_rows) or '<tr><td colspan="8" class="muted">no scalar results</td></tr>'}
</table>
<h2>Trends</h2>
{gallery(figures["trends"])}
{_not_plotted(data, figures)}
<h2>Projections and spectra</h2>
{gallery(figures["spectra"])}
<h2>Histograms</h2>
{gallery(figures["histograms"])}
<h2>Images</h2>
{gallery(figures["images"])}
<h2>Run summary values</h2>
<table>
{_rows(summary_rows) or '<tr><td class="muted">none</td></tr>'}
</table>
<h2>Provenance</h2>
{"".join(prov_html) or '<p class="muted">none</p>'}
<p class="muted">Generated {_esc(generated)} by tango-dqm from {_esc(h5_path.name)}.</p>
</body></html>
"""


def _run_list_root(h5_path: Path) -> Path:
    """The output root a results file belongs to (its directory, or the parent of flagged/ or archive/)."""
    parent = h5_path.parent
    return parent.parent if parent.name in MARKS.values() else parent


# ---- the run list ----------------------------------------------------------------------------

def write_run_list(root: str | os.PathLike) -> Path:
    """Write ``root/index.html`` (every scan under root, flagged/ and archive/, newest first, with a
    link to its report) and the run log ``root/runs.csv`` and ``root/runs.json`` (see runlog)."""
    root = Path(root).resolve()
    run_rows = runlog.rows(root)
    runlog.write_run_log(root, run_rows)
    verdicts: dict[str, int] = {}
    for r in run_rows:
        v = str(r.get("verdict") or "none")
        verdicts[v] = verdicts.get(v, 0) + 1
    body_rows = []
    for r in reversed(run_rows):
        scan = _esc(r.get("scan_id"))
        link = f'<a href="{_href(r["report"])}">{scan}</a>' if r.get("report") else scan
        folder = str(Path(r["file"]).parent.as_posix())
        h5_link = f'<a class="small" href="{_href(r["file"])}">{_esc(Path(r["file"]).name)}</a>'
        status = r.get("status", "") + (f": {r['error']}" if r.get("error") else "")
        md = r.get("metadata") or {}
        other = ", ".join(f"{k}={v}" for k, v in md.items() if k not in runlog.COMMON_METADATA)
        reasons = "".join(f"<li>{_esc(x)}</li>" for x in r.get("reasons") or [])
        frames = _esc(r.get("frames_completed")) + (f" / {_esc(r['frames_expected'])}"
                                                    if r.get("frames_expected") is not None else "")
        main = (f"{_esc(r['main_result'])}<br>mean {_esc(_fmt(r['main_mean']))}"
                if r.get("main_result") and r.get("main_mean") is not None else "")
        duration = f"{r['duration_s']:.1f} s" if r.get("duration_s") is not None else ""
        mark = {"mark": r.get("flag"), "mark_reason": r.get("flag_reason"), "mark_time": ""}
        body_rows.append(
            f"<tr><td class='brk scan'>{link}<br>{h5_link}"
            f"{'' if r.get('report') else ' <span class=muted>no report</span>'}"
            f"{f' <span class=muted>({_esc(folder)})</span>' if folder != '.' else ''}</td>"
            f"<td class=nowrap>{'<br>'.join(_esc(p) for p in str(r.get('start') or '')[:19].split('T'))}<br>"
            f"<span class=muted>{_esc(duration)}</span></td><td>{_esc(r.get('mode'))}</td>"
            f'<td class="num">{frames}</td><td class="num">{_esc(r.get("frames_lost"))}</td>'
            f'<td class="num">{_esc(r.get("frames_bad"))}</td><td>{_esc(status)}</td>'
            f"<td class='brk why'>{_verdict_html(r.get('verdict'))}"
            f"{f'<ul class=reasons>{reasons}</ul>' if reasons else ''}</td>"
            f"<td>{_mark_html(mark)}</td><td>{_esc(md.get('sample'))}</td><td>{_esc(md.get('operator'))}</td>"
            f"<td>{_esc(md.get('proposal'))}</td><td class=brk>{_esc(other)}</td><td class=brk>{main}</td></tr>")
    counts = ", ".join(f"{_esc(k)}: {v}" for k, v in sorted(verdicts.items()))
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tango-dqm run list</title><style>{_CSS}</style></head>
<body>
<h1>tango-dqm run list</h1>
<p>{len(run_rows)} scans in {_esc(root)} ({counts or 'none'}). Run log:
<a href="{runlog.RUNS_CSV}">{runlog.RUNS_CSV}</a>, <a href="{runlog.RUNS_JSON}">{runlog.RUNS_JSON}</a>.</p>
<table class="runs">
<tr><th>scan</th><th>start</th><th>mode</th><th>frames</th><th>lost</th><th>bad</th><th>status</th>
<th>verdict and reasons</th><th>flag status</th><th>sample</th><th>operator</th><th>proposal</th><th>metadata</th>
<th>main result</th></tr>
{"".join(body_rows) or '<tr><td colspan="14" class="muted">no scans yet</td></tr>'}
</table>
<p class="muted">Generated {_esc(generated)} by tango-dqm.</p>
</body></html>
"""
    out = root / "index.html"
    tmp = root / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


# ---- background worker ---------------------------------------------------------------------

# A daemon thread still drawing (or importing matplotlib) while the interpreter finalizes
# crashes the process ("Fatal Python error: Segmentation fault" at every server stop). Exit
# waits for every worker instead: the current job finishes, then the thread ends.
_LIVE_WORKERS: "weakref.WeakSet[ReportWorker]" = weakref.WeakSet()


@atexit.register
def _join_workers_at_exit() -> None:
    for worker in list(_LIVE_WORKERS):
        worker.close(timeout=None)


class ReportWorker:
    """Writes reports and refreshes the run list in a background thread.

    ``submit`` returns at once. The run list is rewritten whenever the queue runs empty
    (several quick submissions give one refresh). ``root`` is the output directory whose
    ``index.html`` is refreshed; by default the one each submitted file belongs to.
    Errors are logged and kept in ``errors``; the thread keeps going.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, name: str = "dqm-report"):
        self.root = Path(root).resolve() if root is not None else None
        self._q: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._pending = 0
        self._closed = False
        self._skip_reports = False
        self._dirty_roots: set[Path] = set()
        self.errors: deque[str] = deque(maxlen=50)
        self.reports: deque[Path] = deque(maxlen=200)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _LIVE_WORKERS.add(self)

    @property
    def last_error(self) -> str:
        return self.errors[-1] if self.errors else ""

    def submit(self, h5_path: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> None:
        """Queue a report for ``h5_path`` (and a run-list refresh)."""
        self._put(("report", Path(h5_path), out_dir))

    def refresh_run_list(self, root: str | os.PathLike | None = None) -> None:
        """Queue a run-list refresh only."""
        target = Path(root) if root is not None else self.root
        if target is None:
            raise ValueError("no root given and the worker has none")
        self._put(("runlist", target, None))

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run ``fn(*args)`` on the worker thread, in order with the reports (so nothing else
        has the file open); returns a Future with its result."""
        future: Future = Future()
        self._put(("call", (fn, args, future), None))
        return future

    def _put(self, item: tuple) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("ReportWorker is closed")
            self._pending += 1
        self._q.put(item)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted job is done; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float | None = 30.0, skip_reports: bool = False) -> None:
        """Finish queued jobs, then stop the thread (waits at most ``timeout`` seconds).

        ``skip_reports`` (device shutdown): reports not yet started are left out (logged, and
        ``tango-dqm report`` regenerates them); the one being drawn and every ``call`` finish."""
        with self._cond:
            self._skip_reports = self._skip_reports or skip_reports
            first, self._closed = not self._closed, True
        if first:
            self._q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("report worker still busy after %s s; it is waited for at exit", timeout)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._refresh_dirty()
                return
            kind, path, out_dir = item
            try:
                if kind == "call":
                    fn, args, future = path
                    try:
                        future.set_result(fn(*args))
                    except Exception as exc:  # noqa: BLE001 - handed to whoever waits on the future
                        future.set_exception(exc)
                        log.error("%s failed: %s: %s", getattr(fn, "__name__", fn), type(exc).__name__, exc)
                elif kind == "report" and self._skip_reports:
                    log.warning("report for %s not written (shutting down); regenerate it with: "
                                "tango-dqm report %s", path, path)
                    self._dirty_roots.add(self.root or _run_list_root(Path(path).resolve()))
                elif kind == "report":
                    t0 = time.perf_counter()
                    page = write_report(path, out_dir)
                    self.reports.append(page)
                    log.info("report %s written in %.2f s", page, time.perf_counter() - t0)
                    self._dirty_roots.add(self.root or _run_list_root(Path(path).resolve()))
                else:
                    self._dirty_roots.add(Path(path).resolve())
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the worker
                msg = f"report for {path} failed: {type(exc).__name__}: {exc}"
                log.error("%s", msg)
                self.errors.append(msg)
                if kind == "report" and Path(path).parent.is_dir():
                    self._dirty_roots.add(self.root or _run_list_root(Path(path).resolve()))
            if self._q.empty():
                self._refresh_dirty()
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _refresh_dirty(self) -> None:
        while self._dirty_roots:
            root = self._dirty_roots.pop()
            try:
                write_run_list(root)
            except Exception as exc:  # noqa: BLE001
                msg = f"run list in {root} failed: {type(exc).__name__}: {exc}"
                log.error("%s", msg)
                self.errors.append(msg)

    def __enter__(self) -> "ReportWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``tango-dqm report FILE.h5|DIR ... [-o OUT] [--no-run-list]``: regenerate reports offline."""
    parser = argparse.ArgumentParser(
        prog="tango-dqm report",
        description="Write the HTML run report (with PNG plots) of tango-dqm results files, and the run list. "
                    "A directory stands for every results file in it and in its flagged/ and archive/.")
    parser.add_argument("paths", nargs="+", type=Path, help="results files (.h5) or output directories")
    parser.add_argument("-o", "--out-dir", type=Path, default=None,
                        help="write reports here instead of next to each results file")
    parser.add_argument("--no-run-list", action="store_true", help="do not rewrite the run list (index.html)")
    args = parser.parse_args(argv)
    failed = 0
    roots: set[Path] = set()
    for p in args.paths:
        if p.is_dir():
            files, root = scan_files(p), p.resolve()
            roots.add(root)
            if not files:
                print(f"{p}: no results files", file=sys.stderr)
        elif p.is_file():
            files = [p]
            roots.add(_run_list_root(p.resolve()))
        else:
            print(f"{p}: no such file or directory", file=sys.stderr)
            failed += 1
            continue
        for f in files:
            try:
                print(write_report(f, args.out_dir))
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                print(f"{f}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed += 1
    if not args.no_run_list and args.out_dir is None:
        for root in sorted(roots):
            try:
                print(write_run_list(root))
            except Exception as exc:  # noqa: BLE001
                print(f"run list in {root}: {type(exc).__name__}: {exc}", file=sys.stderr)
                failed += 1
    return 1 if failed else 0


__all__ = ["ReportWorker", "main", "write_report", "write_run_list"]


if __name__ == "__main__":
    sys.exit(main())
