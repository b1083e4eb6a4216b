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
