"""The report's plots: trends with gaps, verdicts, curves and images (matplotlib object API, never pyplot)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..scanfile import (VERDICTS)
from .reading import _Series

log = logging.getLogger(__name__)

# ---- plots --------------------------------------------------------------------------------


def _figure(width: float = 7.5, height: float = 2.6, **adjust: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)  # fixed margins: constrained layout costs 2.5x
    margins = {"left": 0.10, "right": 0.98, "bottom": 0.19, "top": 0.88, "wspace": 0.04}
    margins.update(adjust)
    fig.subplots_adjust(**margins)
    return fig


def _big_tick_format(ticks: np.ndarray) -> str | None:
    """A format for ticks of 8 or more digits that still tells them apart (``1.2e+07``), or None
    when plain numbers are needed for that (10734001, 10734002 ...) or short enough anyway."""
    ticks = ticks[np.isfinite(ticks)]
    if len(ticks) < 2 or np.abs(ticks).max() < 1e7:
        return None
    step = np.diff(np.unique(ticks)).min() if len(np.unique(ticks)) > 1 else 0.0
    if step <= 0:
        return None
    digits = int(np.floor(np.log10(np.abs(ticks).max()))) - int(np.floor(np.log10(step))) + 1
    return f"{{:.{digits}g}}" if digits <= 4 else None


def _save(fig: Any, out: Path) -> None:
    """Save with every tick value written out in full: no offset (``+1.073e7`` above an axis is
    misread) and no multiplier in a corner; ticks of 8+ digits as ``1.2e+07`` where that tells them
    apart, so they are not cut off at the figure's edge. Tick labels at 8 pt."""
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    for ax in fig.axes:
        ax.tick_params(labelsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            fmt = axis.get_major_formatter()
            if not isinstance(fmt, ScalarFormatter):
                continue
            fmt.set_useOffset(False)
            fmt.set_powerlimits((-4, 9))  # 10740000, not 1.074 with "1e7" in a corner
            lo, hi = axis.get_view_interval()
            big = _big_tick_format(np.array([t for t in axis.get_majorticklocs() if min(lo, hi) <= t <= max(lo, hi)],
                                            dtype=np.float64))
            if big is not None:
                axis.set_major_formatter(FuncFormatter(lambda v, _pos, big=big: big.format(v)))
    fig.savefig(out)


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
    """A result over frame id (a min-max band with the mean per bin when decimated, see reading)
    beside the histogram of every frame's value."""
    fig = _figure()
    ax, axh = fig.subplots(1, 2, width_ratios=[3, 1], sharey=True)
    ylabel = f"{s.name} [{s.unit}]" if s.unit else s.name
    _shade_gaps(ax, lost)
    if s.lo is not None and s.hi is not None:
        xb, lo, hi, mean = _with_gaps(x, lost, s.lo, s.hi, s.values)
        ax.fill_between(xb, lo, hi, color="#9ecae1", step="post", linewidth=0, label="min-max per bin")
        ax.plot(xb, hi, color="#6baed6", linewidth=0.5, drawstyle="steps-post")
        ax.plot(xb, lo, color="#6baed6", linewidth=0.5, drawstyle="steps-post")
        ax.plot(xb, mean, color="#08519c", linewidth=0.8, drawstyle="steps-post", label="mean per bin")
        ax.legend(loc="upper right", fontsize=7)  # "best" costs ~80 ms per plot
    else:
        xg, yg = _with_gaps(x, lost, s.values)
        ax.plot(xg, yg, color="#08519c", linewidth=0.9, marker="." if len(s.values) <= 200 else None, markersize=3)
        if len(lost):
            ax.legend(loc="upper right", fontsize=7)
    ax.set_xlabel("frame id")
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(f"{s.label or s.name}{' (main result)' if main else ''}", fontsize=9)
    ax.grid(alpha=0.3)
    if s.hist is not None:
        counts, edges = s.hist
        axh.stairs(counts, edges, orientation="horizontal", fill=True, color="#6baed6")
    axh.set_xlabel("frames")
    axh.set_title(f"{s.stats.count} values", fontsize=8)
    axh.tick_params(labelleft=False)
    _save(fig, out)


def _plot_verdicts(x: np.ndarray, codes: np.ndarray, out: Path,
                   lost: np.ndarray = np.zeros((0, 2), np.int64), binned: bool = False) -> None:
    """Verdict code per plotted point (``binned``: the worst of each bin of frames)."""
    fig = _figure(height=1.8, left=0.14, bottom=0.26, top=0.85)
    ax = fig.subplots()
    _shade_gaps(ax, lost)
    ax.plot(*_with_gaps(x, lost, codes.astype(np.float64)), drawstyle="steps-post", color="#444444", linewidth=0.9)
    ax.set_yticks(range(len(VERDICTS)), VERDICTS, fontsize=7)
    ax.set_ylim(-0.5, len(VERDICTS) - 0.5)
    ax.set_xlabel("frame id")
    ax.set_title("per-frame verdict (worst per bin)" if binned else "per-frame verdict", fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, out)


REFERENCE_STYLE = {"linewidth": 1.3, "zorder": 4, "color": "#222222", "linestyle": (0, (4, 2))}


def _plot_curves(title: str, curves: list[tuple[str, np.ndarray]], ylabel: str, out: Path,
                 x: np.ndarray | None = None, step: bool = False, xlabel: str = "", log: bool = False,
                 reference: tuple[str, np.ndarray] | None = None) -> None:
    """Curves over ``x`` (bin edges when one longer: a histogram). The first curve (e.g. the run
    mean) is drawn last and thicker, so a later one (the last frame) never hides it; a
    ``reference`` (label, values) is drawn dashed in black on top of them all."""
    fig = _figure(6.0, 2.8, left=0.13, bottom=0.17)
    ax = fig.subplots()
    styles = [{"linewidth": 1.6, "zorder": 3, "color": "#08519c"}, {"linewidth": 0.8, "zorder": 2, "color": "#fd8d3c",
                                                                     "alpha": 0.9}]
    if reference is not None:
        curves = [*curves, reference]
    for i, (label, y) in reversed(list(enumerate(curves))):
        style = styles[min(i, 1)] if len(curves) > 1 else {"linewidth": 0.9, "color": "#08519c"}
        if reference is not None and i == len(curves) - 1:
            style = REFERENCE_STYLE
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
