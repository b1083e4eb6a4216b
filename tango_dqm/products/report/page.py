"""The report page of one scan (:func:`write_report`)."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...quality import format_id_ranges
from ..columns import IdRanges
from ..scanfile import MARKS, VERDICTS, safe_name
from .plots import PIXEL_CATEGORIES, _plot_curves, _plot_image, _plot_trend, _plot_verdicts
from .reading import (VERDICT_COLOURS, _esc, _fmt, _href, _json_dict, _projection_axis, _read,
                      _ScanData)

log = logging.getLogger(__name__)

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
table.runs{width:100%;table-layout:auto;font-size:.8em}td.brk{overflow-wrap:anywhere}td.scan{min-width:7em}
td.why{min-width:11em}.verdict{white-space:nowrap}
ul.reasons{margin:.2em 0 0 1em;padding:0;font-size:.85em}
.live{background:#fff4d6;border:1px solid #c77700;border-radius:.4em;padding:.3em .9em;font-weight:bold}
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


class ReportCancelled(Exception):
    """``write_report`` gave up because its ``cancelled`` callback said so (the page is left as it was)."""


#: the figures of a page (section -> [(file, caption)]), kept beside its plots for reuse_plots
FIGURES_FILE = "figures.json"


def _reused_figures(plots: Path, plots_name: str) -> dict[str, list[tuple[str, str]]] | None:
    """The figures of the last full render when every plot is still there, else None."""
    try:
        figures = json.loads((plots / FIGURES_FILE).read_text(encoding="utf-8"))
        out = {str(k): [(str(f), str(c)) for f, c in v] for k, v in figures.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    prefix = f"{plots_name}/"
    for items in out.values():
        for f, _ in items:  # only our own plot files, all present
            if not f.startswith(prefix) or "/" in f[len(prefix):] or not (plots / f[len(prefix):]).is_file():
                return None
    return out


def write_report(h5_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 live_refresh: float | None = None, cancelled: Callable[[], bool] | None = None,
                 reuse_plots: bool = False) -> Path:
    """Write ``<stem>.html`` and ``<stem>_plots/*.png`` for one results file; returns the page path.

    A file still being written gives a live page (a banner with the frames so far); with
    ``live_refresh`` (seconds) it also reloads itself in the browser while the scan runs.
    ``cancelled`` is asked before each plot: True raises ReportCancelled (a live page given up
    at the scan's end or a device shutdown, which then waits one plot, not a page).
    ``reuse_plots``: keep the plots of the last full render (the page only is rewritten) when
    they are all there, e.g. after Flag/Archive moved the scan: its data did not change, its mark
    did, and drawing a 1 MPix scan's plots again costs seconds of CPU beside the next scan."""
    h5_path = Path(h5_path).resolve()
    data = _read(h5_path)
    out = Path(out_dir).resolve() if out_dir is not None else h5_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = safe_name(h5_path.stem)
    plots_name = f"{stem}_plots"
    plots = out / plots_name
    plots.mkdir(exist_ok=True)
    reused = _reused_figures(plots, plots_name) if reuse_plots else None
    if reused is not None:
        return _write_page(_page_body(data, stem, h5_path, out, reused, live_refresh), out, stem)
    for old in plots.glob("*.png"):
        old.unlink()
    (plots / FIGURES_FILE).unlink(missing_ok=True)
    x = data.frame_id
    figures: dict[str, list[tuple[str, str]]] = {"trends": [], "spectra": [], "histograms": [], "images": []}

    def add(section: str, file: str, caption: str, draw) -> None:
        if cancelled is not None and cancelled():
            raise ReportCancelled(f"report of {h5_path.name} cancelled")
        try:
            draw(plots / file)
        except Exception as exc:  # noqa: BLE001 - one bad plot must not lose the page
            log.warning("report %s: plot %s failed: %s", stem, file, exc)
            return
        figures[section].append((f"{plots_name}/{file}", caption))

    if data.verdict is not None and len(x):
        add("trends", "00_verdict.png", "per-frame verdict",
            lambda p: _plot_verdicts(x, data.verdict, p, data.lost, binned=data.width > 1))
    rois = _json_dict(data.provenance.get("rois_json"))
    unit_of = {k: str(v.get("unit") or "") for k, v in data.declared.items() if isinstance(v, dict)}
    plotted = 0
    for s in data.scalars:  # every result: all-NaN ones are listed on the page instead (_page_body)
        if len(x) and s.stats.count:
            plotted += 1
            add("trends", f"{plotted:02d}_trend_{safe_name(s.name)}.png", f"{s.name}: trend and histogram",
                lambda p, s=s: _plot_trend(s, x, p, s.name == data.main, data.lost))
    for i, (mean, last) in enumerate(data.spectra):
        if _is_axis(mean.name):
            continue  # pixel coordinates of a projection: its x axis, not a curve (listed as such)
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
        elif value.ndim == 1 and not _is_axis(name):
            x_axis, xlabel = _axis_for(name, value, data.summary, rois, unit_of)
            hist = "hist" in name.lower() or (x_axis is not None and not xlabel.startswith("detector"))
            section = "histograms" if hist else "spectra"
            ref = _reference_curve(data, name, value, hist)
            caption = f"run summary: {name}" + (f", with {ref[0]}" if ref else "")
            add(section, f"summary_{i:02d}_{safe_name(name)}.png", caption,
                lambda p, name=name, value=value, x_axis=x_axis, hist=hist, xlabel=xlabel, ref=ref: _plot_curves(
                    f"run summary: {name}", [(name, value)], "counts" if hist else (unit_of.get(name) or "value"),
                    p, x=x_axis, step=hist, xlabel=xlabel, log=hist, reference=ref))

    page = _write_page(_page_body(data, stem, h5_path, out, figures, live_refresh), out, stem)
    (plots / FIGURES_FILE).write_text(json.dumps(figures), encoding="utf-8")
    return page


def _write_page(body: str, out: Path, stem: str) -> Path:
    page = out / f"{stem}.html"
    tmp = out / f".{stem}.html.tmp"
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, page)  # a browser never sees half a page
    return page


_AXIS_SUFFIXES = ("_edges", "_bins", "_centers", "_centres")
_AXIS_NAME = re.compile(r".*_axis(_[xyz])?")  # profile_axis_x, profile_run_axis_y: coordinates, not data


def _is_axis(name: str) -> bool:
    """A 1-D result that holds the positions of another (bin edges, pixel coordinates)."""
    return name.endswith(_AXIS_SUFFIXES) or _AXIS_NAME.fullmatch(name) is not None


def _reference_curve(data: _ScanData, name: str, value: np.ndarray,
                     counts: bool) -> tuple[str, np.ndarray] | None:
    """The reference's array of the same name and length, as (label, values) to overlay: histogram
    counts scaled to this run's entries (the reference check compares shapes), other arrays as they are."""
    ref = data.reference.get(name)
    if ref is None or ref.shape != value.shape:
        return None
    version = data.reference_info.get("version")
    label = f"reference v{version}" if version else "reference"
    if counts:
        total, ref_total = float(np.nansum(value)), float(np.nansum(ref))
        if total > 0 and ref_total > 0:
            return f"{label} (scaled to this run's {total:.6g} entries)", ref * (total / ref_total)
    return label, ref


def _reference_text(data: _ScanData) -> str:
    """Which reference the scan was judged against: version, name, the scan it came from, when."""
    info = data.reference_info
    if not info.get("version"):
        return "none (no reference taken: TakeReference on a good scan stores one)"
    parts = [f"version {info['version']}"]
    if info.get("name"):
        parts.append(f"name {info['name']!r}")
    if info.get("scan_id"):
        parts.append(f"from scan {info['scan_id']}")
    if info.get("created"):
        parts.append(f"taken {info['created']}")
    overlaid = sorted(data.reference)
    return ", ".join(parts) + (f"; its arrays: {', '.join(overlaid)}" if overlaid else "")


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


def _frames_text(ids: IdRanges, limit: int = 20) -> str:
    ranges = ids.ranges()
    if not ranges:
        return ""
    more = f" (and {ids.ranges_dropped} more ranges)" if ids.ranges_dropped else ""
    return f"{ids.count} frames: {format_id_ranges(ranges, limit)}{more}"


def _verdict_section(data: _ScanData) -> str:
    """The verdict, then each reason (one failing check) with the frames concerned, first on the page."""
    report = str(data.provenance.get("quality_report") or "")
    lines = [ln.strip() for ln in report.splitlines() if ln.strip()]
    per_check = data.range_frames
    items = []
    for line in lines[1:]:
        name = line.split(":", 1)[0].split(" ", 1)[-1]
        frames = _frames_text(per_check[name]) if name in per_check else ""
        items.append(f"<li>{_esc(line)}{f'<br><span class=frames>{_esc(frames)}</span>' if frames else ''}</li>")
    for code in range(len(VERDICTS) - 1, 1, -1):  # STALE, ERROR, WARNING frames
        if code in data.verdict_frames:
            text = _frames_text(data.verdict_frames[code])
            items.append(f"<li>frames judged {_esc(VERDICTS[code])}: {_esc(text)}</li>")
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
    drawn = {name for name, *_ in data.images} | {mean.name for mean, _ in data.spectra if not _is_axis(mean.name)}
    nan = {s.name for s in data.scalars if not s.stats.count}
    rows = []
    for name, decl in sorted(data.declared.items()):
        kind = decl.get("kind", "") if isinstance(decl, dict) else ""
        if name in nan:
            why = "no value in any frame (all NaN)"
        elif _is_axis(name):
            why = "positions (bin edges or detector pixels): the x axis of the matching plots"
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


def refresh_tag(seconds: float | None) -> str:
    """The tag that makes a live page reload itself every ``seconds`` (at least 1 s)."""
    return f'<meta http-equiv="refresh" content="{max(1, round(seconds))}">' if seconds else ""


def _live_banner(data: _ScanData, refresh: float | None) -> str:
    """The first thing on a page of a scan still running: live, the frames so far, when."""
    if not data.info.get("running"):
        return ""
    now = _dt.datetime.now().astimezone().strftime("%H:%M:%S")
    c = data.counters
    expected = c.get("expected") if isinstance(c.get("expected"), (int, np.integer)) else None
    frames = f"{data.n} frames so far" + (f" of {int(expected)}" if expected else "")
    again = (f"; this page reloads every {max(1, round(refresh))} s" if refresh
             else "; reload the page for newer results")
    return (f'<p class="live" id="live">LIVE: scan running, {_esc(frames)}, as of {_esc(now)}{_esc(again)}. '
            "The verdict and plots are those of the frames written so far.</p>")


def _page_body(data: _ScanData, stem: str, h5_path: Path, out: Path, figures: dict[str, list],
               live_refresh: float | None = None) -> str:
    info = data.info
    running = bool(info.get("running"))
    n = data.n
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
        ("frame ids", _esc(f"{data.id_span[0]} … {data.id_span[1]}" if data.id_span else "—")),
    ]
    for name in ("total", "completed", "dropped", "bad", "expected"):
        if name in c:
            key.append((f"{name} events", _esc(_fmt(c[name]))))
    if len(data.lost):
        n_lost = int((data.lost[:, 1] - data.lost[:, 0] + 1).sum())
        key.append(("lost frames", _esc(f"{n_lost} in {len(data.lost)} ranges: "
                                        + format_id_ranges([(int(a), int(b)) for a, b in data.lost], 50))))
    if data.verdict_counts is not None and n:
        counts = data.verdict_counts
        key.append(("frames per verdict", _esc(", ".join(
            f"{VERDICTS[i] if i < len(VERDICTS) else i}: {k}" for i, k in enumerate(counts) if k))))
    if data.main:
        key.append(("main result", _esc(data.main)))
    key.append(("reference", _esc(_reference_text(data))))
    rel_h5 = os.path.relpath(h5_path, out)
    key.append(("results file", f'<a href="{_href(rel_h5)}">{_esc(h5_path.name)}</a>'))

    stats_rows = []
    for s in data.scalars:
        st = s.stats
        cells = [st.count, st.mean, st.std, st.min, st.max, st.last]
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
    refresh = refresh_tag(live_refresh) if running else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<title>{_esc(('LIVE ' if running else '') + title)}</title><style>{_CSS}</style></head>
<body>
<h1>{_esc(title)}</h1>
{_live_banner(data, live_refresh)}
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
