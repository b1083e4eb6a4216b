"""Run reports and the run list: static pages, plots that exist, escaping, marks, background worker."""
from __future__ import annotations

import html.parser
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from tango_dqm.engine import Counters
from tango_dqm.plugin import Result
from tango_dqm.report import ReportWorker, main, write_report, write_run_list
from tango_dqm.storage import ScanWriter, mark_scan, scan_file_name

DECL = [Result(f"r{i}", float, unit="counts", label=f"Result {i}") for i in range(13)] + [
    Result("saturated_pixels", int, unit="pixels"),
    Result("profile_x", float, kind="spectrum", unit="counts"),
    Result("last_image", np.uint16, kind="image"),
]


class Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.img: list[str] = []
        self.a: list[str] = []
        self.other: list[str] = []  # any other tag with src/href (there should be none)

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("src", "href"):
                (self.img if tag == "img" else self.a if tag == "a" else self.other).append(value)


def links(page: Path) -> Links:
    p = Links()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def local_target(page: Path, ref: str) -> Path:
    u = urlparse(ref)
    assert not u.scheme and not u.netloc and not ref.startswith("//"), f"external resource {ref!r}"
    return (page.parent / unquote(u.path)).resolve()


def make_scan(root: Path, scan_id: str, frames: int = 60, verdict: str = "OK", finish: bool = True,
              seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w = ScanWriter(root / scan_file_name(scan_id), scan_id, DECL,
                   {"parameters": {"roi_signal": [30, 15, 10, 10], "saturation_level": 65535},
                    "thresholds": {"r0": {"warning": [-3, 3]}}, "sources": ["sim://?frames=60"]},
                   main_result="r0")
    for i in range(frames):
        r = {f"r{k}": float(rng.normal(k, 1)) for k in range(13)}
        r["saturated_pixels"] = int(rng.integers(0, 4))
        r["profile_x"] = np.exp(-((np.arange(40) - 20) / 5.0) ** 2) * (1 + i)
        r["last_image"] = rng.integers(0, 1000, (32, 40)).astype(np.uint16)
        w.append(i, 1.7e9 + i, r, verdict="WARNING" if i == 7 else "OK")
    if not finish:
        w.close()
        return w.path
    summary = {"run_r0_mean": 0.1, "run_r0_std": 1.0, "pixel_map": rng.random((32, 40)),
               "hist_run_counts": np.bincount(rng.integers(0, 20, 500), minlength=20),
               "hist_edges": np.linspace(0, 1000, 21), "fit": {"sigma": 5.0}}
    return w.finish(summary, Counters(total=frames, completed=frames, dropped=1, bad=2), verdict,
                    end_reason="series end")


def test_report_page_with_plots(tmp_path):
    h5 = make_scan(tmp_path, "scan_0007", verdict="WARNING")
    page = write_report(h5)
    assert page == tmp_path.resolve() / "scan_0007.html"
    text = page.read_text(encoding="utf-8")
    assert "scan_0007" in text and "WARNING" in text and "not marked" in text
    assert "series end" in text and "hist_run_counts" in text
    found = links(page)
    assert found.other == []  # no scripts, stylesheets or other linked resources
    assert len(found.img) >= 1 + 14 + 1 + 1 + 2  # verdict, trends, projection, image, map + histogram
    for src in found.img:
        target = local_target(page, src)
        assert target.is_file() and target.parent == tmp_path.resolve() / "scan_0007_plots", src
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = {Path(unquote(s)).name for s in found.img}
    assert any("trend_r0" in n for n in names) and any("profile_x" in n for n in names)
    assert any("last_image" in n for n in names) and any("pixel_map" in n for n in names)
    assert any("hist_run_counts" in n for n in names) and not any("hist_edges" in n for n in names)
    for href in found.a:  # the results file and the run list, both relative
        local_target(page, href)
    # regenerating replaces the plots rather than accumulating them
    (tmp_path / "scan_0007_plots" / "stale.png").write_bytes(b"x")
    write_report(h5)
    assert not (tmp_path / "scan_0007_plots" / "stale.png").exists()


def test_report_escapes_strings_and_writes_to_out_dir(tmp_path):
    evil = 'scan_<script>alert("x")</script>&'
    w = ScanWriter(tmp_path / "evil.h5", evil, [Result("x", float)], {"parameters": {"note": "<b>bold</b>"}})
    for i in range(5):
        w.append(i, 0.0, {"x": float(i)})
    w.finish({"comment": "<img src=x onerror=alert(1)>"}, None, "<i>OK</i>")
    out = tmp_path / "reports"
    page = write_report(w.path, out)
    assert page.parent == out.resolve()
    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>bold" not in text and "<img src=x" not in text and "<i>OK" not in text
    assert "scan_&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    for src in links(page).img:
        assert local_target(page, src).is_file()


def test_report_of_unfinished_and_empty_scans(tmp_path):
    h5 = make_scan(tmp_path, "unfinished", finish=False)
    text = write_report(h5).read_text()
    assert "incomplete" in text and "unfinished" in text
    w = ScanWriter(tmp_path / "empty.h5", "empty", DECL, {})
    w.finish({}, Counters(), "INSUFFICIENT")
    page = write_report(w.path)
    assert "INSUFFICIENT" in page.read_text()
    for src in links(page).img:
        assert local_target(page, src).is_file()


def test_run_list_links_every_report_including_marked(tmp_path):
    root = tmp_path
    a = make_scan(root, "scan_a", verdict="OK", seed=1)
    b = make_scan(root, "scan_b", verdict="ERROR", seed=2)
    c = make_scan(root, "scan_c", verdict="WARNING", seed=3)
    for h5 in (a, b, c):
        write_report(h5)
    b = mark_scan(root, b, "flagged", "detector <tripped>")
    c = mark_scan(root, c, "archived", "reference run")
    for h5 in (b, c):  # marking moved the pages; regenerated, they show the mark and link back correctly
        write_report(h5)
    assert "detector &lt;tripped&gt;" in (root / "flagged" / "scan_b.html").read_text()
    index = write_run_list(root)
    assert index == root.resolve() / "index.html"
    text = index.read_text()
    found = links(index)
    reports = {unquote(h) for h in found.a if h.endswith(".html")}
    assert reports == {"scan_a.html", "flagged/scan_b.html", "archive/scan_c.html"}
    for href in found.a:
        assert local_target(index, href).is_file(), href
    for needle in ("scan_a", "scan_b", "scan_c", "OK", "ERROR", "WARNING", "flagged", "archived",
                   "detector &lt;tripped&gt;", "3 scans"):
        assert needle in text
    assert found.img == [] and found.other == []
    # each report links back to the run list
    for page in (root / "scan_a.html", root / "flagged" / "scan_b.html", root / "archive" / "scan_c.html"):
        back = [h for h in links(page).a if h.endswith("index.html")]
        assert back and local_target(page, back[0]) == index


def test_report_worker_runs_in_background(tmp_path, caplog):
    root = tmp_path
    files = [make_scan(root, f"scan_{i}", seed=i) for i in range(3)]
    (root / "broken.h5").write_bytes(b"not hdf5")
    worker = ReportWorker(root)
    try:
        t0 = time.perf_counter()
        for f in files:
            worker.submit(f)
        worker.submit(root / "broken.h5")
        submit_s = time.perf_counter() - t0
        assert not worker.wait_idle(0)  # the caller did not wait for the reports
        assert worker.wait_idle(120)
    finally:
        worker.close()
    assert submit_s < 0.5
    for i in range(3):
        assert (root / f"scan_{i}.html").is_file()
    assert len(worker.errors) == 1 and "broken.h5" in worker.last_error  # logged, worker went on
    index = root / "index.html"
    assert index.is_file()
    reports = {unquote(h) for h in links(index).a if h.endswith(".html")}
    assert reports == {"scan_0.html", "scan_1.html", "scan_2.html"}
    assert "unreadable" in index.read_text()  # the broken file is listed, not hidden
    with pytest.raises(RuntimeError, match="closed"):
        worker.submit(files[0])


def test_worker_after_mark_refreshes_report_and_list(tmp_path):
    h5 = make_scan(tmp_path, "scan_m")
    with ReportWorker() as worker:  # root inferred from the file's location
        worker.submit(h5)
        assert worker.wait_idle(60)
        new = mark_scan(tmp_path, h5, "flagged", "bad beam")
        worker.submit(new)
        assert worker.wait_idle(60) and not worker.errors
    page = tmp_path / "flagged" / "scan_m.html"
    assert "bad beam" in page.read_text() and not (tmp_path / "scan_m.html").exists()
    for src in links(page).img:
        assert local_target(page, src).is_file()
    assert "flagged/scan_m.html" in {unquote(h) for h in links(tmp_path / "index.html").a}


def test_main_regenerates_offline(tmp_path, capsys):
    h5 = make_scan(tmp_path, "scan_cli")
    assert main([str(h5)]) == 0
    out = capsys.readouterr().out
    assert str(tmp_path.resolve() / "scan_cli.html") in out and (tmp_path / "index.html").is_file()
    (tmp_path / "scan_cli.html").unlink()
    assert main([str(tmp_path)]) == 0  # a directory: every scan in it
    assert (tmp_path / "scan_cli.html").is_file()
    assert main([str(tmp_path / "missing.h5")]) == 1
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])


# ---- lost frames: gaps, not bridges; "complete" only without loss ----------------------------------


def test_lost_frames_break_the_trend_lines_instead_of_bridging_them():
    from tango_dqm.report import _with_gaps

    x = np.array([0, 1, 2, 6, 7, 9], float)                            # 3-5 and 8 lost
    lost = np.array([[3, 5], [8, 8], [100, 120]])                      # a range outside the plot is ignored
    xg, yg, zg = _with_gaps(x, lost, np.arange(6.0), np.ones(6))
    assert xg.tolist() == [0, 1, 2, 3, 6, 7, 8, 9]
    assert np.isnan(yg[[3, 6]]).all() and yg[~np.isnan(yg)].tolist() == list(range(6))
    assert np.isnan(zg[[3, 6]]).all()


def test_report_marks_lost_frames_and_never_calls_a_lossy_scan_complete(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from tango_dqm.storage import write_lost_frames

    w = ScanWriter(tmp_path / "lossy.h5", "lossy", [Result("x", float)], {})
    ids = [i for i in range(300) if not (40 <= i <= 45 or i == 100 or 201 <= i <= 204)]
    for i in ids:
        w.append(i, 0.0, {"x": float(i % 5)})
    w.finish({}, Counters(total=300, completed=289, dropped=11, expected=300), "ERROR", end_reason="series end")
    write_lost_frames(w.path, [[40, 45], [100, 100], [201, 204]])
    drawn: list[np.ndarray] = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: (drawn.append(np.asarray(a[1], float)),
                                                             plot(self, *a, **k))[1])
    text = write_report(w.path).read_text()
    assert "finished: 289/300 completed, 11 lost (series end)" in text and "<td>complete" not in text
    assert "11 in 3 ranges: 40-45, 100, 201-204" in text
    trend = drawn[-1]                                                   # the x trend: one NaN per gap
    assert len(trend) == 289 + 3 and np.isnan(trend).sum() == 3
    assert "finished: 289/300 completed, 11 lost" in write_run_list(tmp_path).read_text()


@pytest.mark.parametrize("counters, end_reason, status", [
    (Counters(total=60, completed=60, expected=60), "series end", "complete"),
    (Counters(total=60, completed=58, dropped=2, expected=60), "series end", "finished: 58/60 completed, 2 lost"),
    (Counters(total=60, completed=60, bad=1), "source ended", "finished: 60/60 completed, 0 lost, 1 bad"),
    (Counters(total=300, completed=0, expected=300), "stopped", "stopped: 0/300 completed, 0 lost"),
    (Counters(total=300, completed=120, expected=300), "stopped", "stopped: 120/300 completed, 0 lost"),
    (Counters(), "source ended", "finished: 0/0 completed, 0 lost"),
    (None, "series end", "finished"),                                  # no counters: nothing says all arrived
])
def test_status_wording_of_finished_scans(tmp_path, counters, end_reason, status):
    from tango_dqm.report import _status

    w = ScanWriter(tmp_path / "s.h5", "s", [Result("x", float)], {})
    for i in range(3 if counters is None or counters.completed else 0):
        w.append(i, 0.0, {"x": 1.0})
    w.finish({}, counters, "OK", end_reason=end_reason)
    page = write_report(w.path).read_text()
    assert f"<td>{status} ({end_reason})</td>" in page, page[:3000]
    rows = write_run_list(tmp_path).read_text()
    assert f"<td>{status}</td>" in rows
    assert _status({"complete": False, "running": True}) == "running"  # an unfinished scan is never complete


# ---- a report that reads like a run page ------------------------------------------------------


def _colour_pixels(png: Path, hex_colour: str, tol: int = 40, left: float = 1.0) -> int:
    """Pixels of about ``hex_colour`` in the ``left`` fraction of the image (legends are on the right)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    rgb = rgb[:, : int(rgb.shape[1] * left)]
    want = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - want).sum(axis=2) < tol).sum())


def test_verdict_reasons_with_frames_and_metadata_come_first(tmp_path):
    checks = [{"type": "range", "name": "x_range", "result": "x", "warning": [-1, 3], "error": None}]
    w = ScanWriter(tmp_path / "v.h5", "v", [Result("x", float), Result("y", float)],
                   {"thresholds": checks, "metadata": {"sample": "Au <foil>", "pmt_serial": "SN-9"}, "mode": "scan"})
    for i in range(20):
        x = 5.0 if 5 <= i <= 7 or i == 12 else 1.0
        w.append(100 + i, 0.0, {"x": x, "y": float("nan")}, verdict="WARNING" if x > 3 else "OK")
    report = ("verdict WARNING: 1 of 1 checks failing, 0 insufficient, 0 OK; 20 frames\n"
              "WARNING x_range: 4 frames outside")
    w.finish({}, Counters(total=20, completed=20), "WARNING", end_reason="series end",
             provenance={"quality_report": report})
    text = write_report(w.path).read_text(encoding="utf-8")
    top = text.index("<h2>Summary")
    assert text.index("WARNING x_range: 4 frames outside") < top
    # the frames concerned, by id, under the reason of the check
    assert text.index("x_range: 4 frames outside<br><span class=frames>4 frames: 105-107, 112</span>") < top
    assert text.index("frames judged WARNING: 4 frames: 105-107, 112") < top
    assert text.index("Au &lt;foil&gt;") < top and "SN-9" in text[:top]
    assert "y</th><td>scalar: no value in any frame (all NaN)" in text  # listed, not drawn empty
    assert not list((tmp_path / "v_plots").glob("*trend_y*")) and list((tmp_path / "v_plots").glob("*trend_x*"))


def test_every_scalar_result_is_plotted_beyond_24(tmp_path):
    decl = [Result(f"s{i:02d}", float) for i in range(30)]
    w = ScanWriter(tmp_path / "many.h5", "many", decl, {})
    for i in range(10):
        w.append(i, 0.0, {f"s{k:02d}": float(i + k) for k in range(30)})
    w.finish({}, Counters(total=10, completed=10), "OK")
    write_report(w.path)
    trends = sorted(p.name for p in (tmp_path / "many_plots").glob("*_trend_*.png"))
    assert len(trends) == 30 and any("s29" in t for t in trends)


def test_plot_axes_have_no_offset_and_projections_are_in_detector_pixels(tmp_path):
    from matplotlib.figure import Figure

    from tango_dqm.report import _axis_for, _projection_axis, _save

    fig = Figure()
    ax = fig.subplots()
    ax.plot(np.arange(10), 1.0734e7 + np.arange(10))
    _save(fig, tmp_path / "t.png")
    assert ax.yaxis.get_major_formatter().get_offset() == ""
    px, label = _projection_axis("profile_x", 400, {"roi_profile": [312, 400, 300, 200]})
    assert (px[0], px[-1], label) == (312, 711, "detector x [px]")
    py, label = _projection_axis("profile_run_y", 200, {"roi_profile": [312, 400, 300, 200]})
    assert (py[0], label) == (300, "detector y [px]")
    assert _projection_axis("spectrum", 10, {})[0] is None
    edges = np.linspace(0, 4096, 257)
    axis, label = _axis_for("hist_run_counts", np.ones(256), {"hist_edges": edges}, {}, {"hist_edges": "counts"})
    assert axis is edges and label == "bin position [counts]"


def test_histogram_is_log_and_the_run_mean_is_drawn_on_top(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from tango_dqm.report import _plot_curves

    scales, orders = [], []
    set_yscale, stairs = Axes.set_yscale, Axes.stairs
    monkeypatch.setattr(Axes, "set_yscale", lambda self, v, **k: (scales.append(v), set_yscale(self, v, **k))[1])
    monkeypatch.setattr(Axes, "stairs", lambda self, *a, **k: (orders.append((k["label"], k["zorder"])),
                                                               stairs(self, *a, **k))[1])
    counts = np.r_[1e6, np.full(99, 10.0)]
    _plot_curves("h", [("run mean", counts), ("last frame", counts)], "counts", tmp_path / "h.png",
                 x=np.arange(101.0), log=True)
    assert scales == ["log"]
    assert dict(orders)["run mean"] > dict(orders)["last frame"]


def test_pixel_map_is_categorical_with_markers_and_mean_map_has_roi_boxes(tmp_path):
    from tango_dqm.report import PIXEL_CATEGORIES, ROI_STYLES, _plot_image

    pmap = np.zeros((1024, 1024), np.uint8)
    pmap[100, 200] = pmap[900, 50] = 1  # hot: a single pixel each, invisible at this size without a marker
    pmap[500, 600] = 2
    _plot_image("pixels_map", pmap, tmp_path / "map.png", categories=PIXEL_CATEGORIES["pixels_map"])
    hot, dead = PIXEL_CATEGORIES["pixels_map"][1][1], PIXEL_CATEGORIES["pixels_map"][2][1]
    assert _colour_pixels(tmp_path / "map.png", hot) > 40 and _colour_pixels(tmp_path / "map.png", dead) > 20
    assert _colour_pixels(tmp_path / "map.png", "#440154") == 0  # no continuous (viridis) colour scale

    mean = np.random.default_rng(0).normal(100, 5, (256, 256))
    rois = {"roi_signal": [20, 60, 150, 60], "roi_background": [0, 30, 0, 30], "roi_profile": [300, 10, 0, 10]}
    _plot_image("mean", mean, tmp_path / "mean.png", unit="counts", rois=rois)
    # the boxes on the image (its left half: the legend and colour bar are on the right)
    assert _colour_pixels(tmp_path / "mean.png", ROI_STYLES["roi_signal"][0], 60, left=0.5) > 60
    assert _colour_pixels(tmp_path / "mean.png", ROI_STYLES["roi_background"][0], 60, left=0.5) > 30
    assert _colour_pixels(tmp_path / "mean.png", ROI_STYLES["roi_profile"][0], 60) == 0  # outside: not drawn


def test_page_after_a_mark_reuses_the_plots_and_shows_the_mark(tmp_path):
    """Flag/Archive rewrites the page (it shows the mark) but not the plots, which moved with the
    scan: drawing them again cost seconds of CPU beside the next scan."""
    h5 = make_scan(tmp_path, "scan_0009")
    page = write_report(h5)
    plots = sorted((tmp_path / "scan_0009_plots").glob("*.png"))
    assert plots
    stamps = {p.name: p.stat().st_mtime_ns for p in plots}
    before = {local_target(page, ref) for ref in links(page).img}
    dest = mark_scan(tmp_path, h5, "archived", "looked fine")
    moved = write_report(dest, reuse_plots=True)
    text = moved.read_text(encoding="utf-8")
    assert "archived" in text and "looked fine" in text and "not marked" not in text
    moved_plots = {p.name: p.stat().st_mtime_ns for p in (dest.parent / "scan_0009_plots").glob("*.png")}
    assert moved_plots == stamps  # the same files, not drawn again
    after = {local_target(moved, ref) for ref in links(moved).img}
    assert len(after) == len(before) and all(p.is_file() for p in after)
    # a plot missing: everything is drawn again, never a page with a broken image
    victim = sorted(after)[0]
    victim.unlink()
    again = write_report(dest, reuse_plots=True)
    assert all(local_target(again, ref).is_file() for ref in links(again).img)
    assert victim.is_file()
