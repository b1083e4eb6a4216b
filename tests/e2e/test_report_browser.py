"""Run report and run list, checked in a real browser: Debian's headless Chromium.

A real results file is written with ``ScanWriter`` (a few hundred frames of scalar and
spectrum results, a run summary with an image map), a second scan is flagged (so the run
list links into ``flagged/``), the reports and the run list are written, and the output
directory is served over HTTP on 127.0.0.1. Chromium loads the pages (``--dump-dom`` for
the DOM after load, ``--screenshot`` for a picture kept in ``test-artifacts/report.png``);
the HTTP server logs every request, which proves the browser fetched every image of the
page (status 200) and that nothing it asked for was missing (no 404).

Needs ``/usr/bin/chromium``: ``sudo deploy/install-test-deps.sh`` installs it. The test
fails, never skips, when it is missing, so CI cannot pass without really checking the pages.
"""
from __future__ import annotations

import html.parser
import http.server
import io
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import numpy as np
import pytest

from tango_dqm.plugin import Result
from tango_dqm.report import write_report, write_run_list
from tango_dqm.storage import ScanWriter, mark_scan, scan_file_name, write_lost_frames

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
INSTALL_HINT = ("Debian's chromium is needed for the browser test of the run reports and is missing "
                f"({CHROMIUM} not found). Install it with:  sudo {REPO / 'deploy' / 'install-test-deps.sh'}  "
                "(or: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium)")

SCAN_ID = 'scan_0042 "beam<b>test</b>" & co'  # escaping is checked by the browser's DOM too
OTHER_ID = "scan_0041"
METADATA = {"sample": "Si wafer 7", "operator": "ann", "proposal": "p2026-17", "pmt_serial": "SN-4711"}
REASON = "3 frames outside the warning range [-3, 3]"
FRAMES = 400
# Chromium asks for these by itself; they are not links of the page.
BROWSER_OWN = {"/favicon.ico"}

N_SCALARS = 28  # more than the 24 trends the report used to stop at
DECL = [Result(f"r{i}", float, unit="counts", label=f"Result {i}") for i in range(N_SCALARS)] + [
    Result("saturated_pixels", int, unit="pixels"),
    Result("never_measured", float, unit="counts"),  # all NaN: listed, not drawn as an empty plot
    Result("profile_x", float, kind="spectrum", unit="counts"),
    Result("profile_y", float, kind="spectrum", unit="counts"),
    Result("last_image", np.uint16, kind="image"),
]


def make_scan(root: Path, scan_id: str, verdict: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rois = {"roi_signal": [30, 15, 10, 10], "roi_background": [0, 10, 0, 10], "roi_profile": [0, 64, 0, 48]}
    w = ScanWriter(root / scan_file_name(scan_id), scan_id, DECL,
                   {"parameters": {**rois, "saturation_level": 65535}, "rois": rois,
                    "thresholds": [{"type": "range", "name": "r0_range", "result": "r0", "warning": [-3, 3],
                                    "error": None}],
                    "metadata": METADATA, "mode": "scan", "sources": ["sim://?frames=400"]},
                   main_result="r0")
    x = np.arange(64)
    for i in range(FRAMES):
        r = {f"r{k}": float(rng.normal(k, 1)) for k in range(N_SCALARS)}
        r["r0"] = 5.0 if i in (7, 8, 300) else r["r0"] * 0.1
        r["never_measured"] = float("nan")
        r["r1"] = float("nan") if i % 50 == 0 else r["r1"]
        r["saturated_pixels"] = int(rng.integers(0, 4))
        r["profile_x"] = np.exp(-((x - 32 - 3 * np.sin(i / 40)) / 6.0) ** 2) * 1000 + rng.normal(0, 5, 64)
        r["profile_y"] = np.exp(-((x[:48] - 20) / 4.0) ** 2) * 800 + rng.normal(0, 5, 48)
        r["last_image"] = rng.integers(0, 1000, (48, 64)).astype(np.uint16)
        if 200 <= i < 220:  # lost frames: ids 1200-1219 never arrived
            continue
        w.append(1000 + i, 1.7e9 + i * 0.01, r, verdict="WARNING" if i in (7, 8, 300) else "OK")
    yy, xx = np.mgrid[0:48, 0:64]
    pixels_map = np.zeros((48, 64), np.uint8)
    pixels_map[5, 50] = pixels_map[40, 3] = 1  # hot
    pixels_map[30, 60] = 2  # dead
    summary = {"run_r0_mean": 0.1, "run_r0_std": 1.0,
               "pixel_map": np.exp(-((xx - 32) ** 2 + (yy - 20) ** 2) / 200.0) + rng.random((48, 64)) * 0.05,
               "hist_run_counts": np.bincount(rng.integers(0, 20, 500), minlength=20),
               "hist_edges": np.linspace(0, 1000, 21), "pixels_map": pixels_map,
               "pixels_mean_map": 100 + 900 * np.exp(-((xx - 37) ** 2 + (yy - 15) ** 2) / 20.0)}
    path = w.finish(summary, {"total": FRAMES, "completed": FRAMES - 20, "dropped": 20, "bad": 3}, verdict,
                    end_reason="series end", provenance={"quality_report": f"verdict {verdict}: 1 of 2 checks failing\n"
                                                         f"{verdict} r0_range: {REASON}"})
    write_lost_frames(path, [[1200, 1219]])
    return path


# ---- HTTP server that logs every request ----------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    log: list[tuple[str, int]]
    lock: threading.Lock

    def log_request(self, code="-", size="-"):
        with self.lock:
            self.log.append((unquote(urlparse(self.path).path), int(getattr(code, "value", code))))

    def log_message(self, format, *args):  # quiet: the log above is what the test reads
        pass


class Server:
    def __init__(self, root: Path):
        self.log: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"log": self.log, "lock": self.lock})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def requests(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.log)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


# ---- the browser ------------------------------------------------------------------------------


def require_chromium() -> None:
    """Fail (not skip) without Chromium: CI must not pass without checking the pages."""
    if not CHROMIUM.exists():
        pytest.fail(INSTALL_HINT, pytrace=False)


def chromium(*args: str, timeout: float = 120) -> str:
    """Run headless Chromium with a fresh profile; returns its stdout."""
    require_chromium()
    with tempfile.TemporaryDirectory(prefix="dqm-chromium-") as profile:
        cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage",  # CI containers have a small /dev/shm
               f"--user-data-dir={profile}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return proc.stdout


class Dom(html.parser.HTMLParser):
    """Tags, links and visible text of the DOM Chromium printed."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.img: list[str] = []
        self.a: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.verdicts: list[str] = []
        self._in_verdict = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.img.append(a["src"])
        elif tag == "a" and "href" in a:
            self.a.append(a["href"])
        self._in_verdict = tag == "span" and "verdict" in (a.get("class") or "").split()

    def handle_endtag(self, tag):
        self._in_verdict = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_verdict:
            self.verdicts.append(data.strip())

    @property
    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    with Image.open(io.BytesIO(data)) as im:
        im.load()  # decodes every row: a truncated file fails here
        return np.asarray(im.convert("RGB"))


def local(url: str, base: str) -> bool:
    return url.startswith(base)


# ---- the test ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports") / "out"
    root.mkdir()
    h5 = make_scan(root, SCAN_ID, "WARNING", seed=1)
    other = make_scan(root, OTHER_ID, "ERROR", seed=2)
    other = mark_scan(root, other, "flagged", "beam lost <at> 12:00")
    page = write_report(h5)
    other_page = write_report(other)
    index = write_run_list(root)
    server = Server(root)
    yield root, server, page, other_page, index
    server.close()


def test_report_in_chromium(site, tmp_path):
    require_chromium()
    root, server, page, _, _ = site
    url = server.base + urllib.request.pathname2url(page.relative_to(root).as_posix())
    server.clear()
    dom = Dom(chromium("--dump-dom", url))
    requests = server.requests()

    # what the operator reads
    text = dom.all_text
    assert SCAN_ID in text, "the scan id is not shown as text"
    assert dom.verdicts and dom.verdicts[0] == "WARNING", dom.verdicts
    assert "series end" in text and f"{FRAMES}" in text
    assert "b" not in dom.tags, "a string from the file became markup"

    # a run page: the verdict and each reason first, with the frames concerned, then the scan's metadata
    top = text.index("Summary scan id")
    for first in (f"r0_range: {REASON} 3 frames: 1007-1008, 1300", "frames judged WARNING: 3 frames",
                  "lost frames (never analysed): 20: 1200-1219", *METADATA.values()):
        assert 0 <= text.find(first) < top, f"{first!r} is not above the summary"
    # every result: each informative scalar has a trend (beyond the old 24), the all-NaN one is listed
    trends = [src for src in dom.img if "_trend_" in src]
    assert len(trends) == N_SCALARS + 1, trends
    assert "never_measured scalar: no value in any frame (all NaN)" in text
    assert not any("never_measured" in src for src in dom.img)
    assert any("pixels_map" in src for src in dom.img) and any("pixels_mean_map" in src for src in dom.img)

    # every image of the page was requested by the browser and served
    served = {path: code for path, code in requests}
    assert len(dom.img) >= 16, dom.img  # verdict + 13 trends + 2 spectra + image + summary map + histogram
    for src in dom.img:
        path = unquote(urlparse(urljoin(url, src)).path)
        assert served.get(path) == 200, f"image {src} was not loaded by the browser ({served.get(path)})"
    broken = [(p, c) for p, c in requests if c != 200 and p not in BROWSER_OWN]
    assert not broken, f"requests that failed: {broken}"
    assert any("pixel_map" in p and p.endswith(".png") for p, _ in requests), "image map not requested"

    # the PNGs are real images
    for src in dom.img:
        code, data = fetch(urljoin(url, src))
        assert code == 200
        pixels = decode_png(data)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8

    # every link of the report works (run list, results file)
    assert dom.a
    for href in dom.a:
        target = urljoin(url, href)
        assert local(target, server.base), f"external link {href}"
        assert fetch(target)[0] == 200, f"broken link {href}"

    # a picture for people: the report as Chromium draws it
    shot = tmp_path / "report.png"
    server.clear()
    chromium(f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url)
    assert shot.is_file(), "chromium wrote no screenshot"
    keep(shot)
    pixels = decode_png(shot.read_bytes())
    assert pixels.shape[:2] == (2000, 1280)
    colours = pixels.reshape(-1, 3).astype(int)
    warning = np.array([0xc7, 0x77, 0x00])  # the WARNING badge (report.VERDICT_COLOURS)
    assert (np.abs(colours - warning).max(axis=1) <= 8).sum() > 50, "verdict badge not drawn"
    assert len(np.unique(colours, axis=0)) > 200, "screenshot looks blank (plots not drawn?)"
    assert not [(p, c) for p, c in server.requests() if c != 200 and p not in BROWSER_OWN]

    # usable at 1280 px: nothing wider than the window (tables wrap, images shrink)
    width, window = page_width(root, server, page.relative_to(root).as_posix())
    assert width <= window, f"the report is {width} px wide in a {window} px window"
    # the whole page as a picture for people (the images section: ROI boxes, categorical pixel map)
    full = tmp_path / "report_full.png"
    chromium(f"--screenshot={full}", "--window-size=1280,14000", "--hide-scrollbars", url)
    keep(full)


def keep(shot: Path) -> None:
    """Screenshots stay in the test's tmp dir and are copied to test-artifacts/ for people to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)


HARNESS = """<!DOCTYPE html><html><head><title>measuring</title></head><body style="margin:0">
<iframe id="f" src="{src}" style="width:1280px;height:900px;border:0"></iframe>
<script>document.getElementById("f").onload = function () {{
  var d = this.contentDocument.documentElement;
  document.title = "width=" + d.scrollWidth + " window=" + this.contentWindow.innerWidth;
}};</script></body></html>"""


def page_width(root: Path, server: Server, rel: str) -> tuple[int, int]:
    """(scroll width, window width) of a page shown in a 1280 px frame, measured by a test-only page
    next to it (the reports themselves have no scripts)."""
    import re

    harness = root / "_test_harness"
    harness.mkdir(exist_ok=True)
    name = f"measure_{abs(hash(rel))}.html"
    (harness / name).write_text(HARNESS.format(src="../" + urllib.request.pathname2url(rel)), encoding="utf-8")
    out = chromium("--dump-dom", "--virtual-time-budget=20000", "--window-size=1400,1000",
                   server.base + f"_test_harness/{name}")
    m = re.search(r"<title>width=(\d+) window=(\d+)</title>", out)
    assert m, f"the measuring page did not run: {out[:500]}"
    return int(m.group(1)), int(m.group(2))


def test_run_list_in_chromium(site, tmp_path):
    require_chromium()
    root, server, page, other_page, index = site
    url = server.base + "index.html"
    server.clear()
    dom = Dom(chromium("--dump-dom", url))
    text = dom.all_text
    assert "2 scans" in text
    assert SCAN_ID in text and OTHER_ID in text
    assert "flagged" in text and "beam lost <at> 12:00" in text
    assert "WARNING" in dom.verdicts and "ERROR" in dom.verdicts
    assert not [(p, c) for p, c in server.requests() if c != 200 and p not in BROWSER_OWN]
    # the run list tells lost frames, the reasons, scan or live, sample and operator; links the run log
    for shown in ("lost", "verdict and reasons", REASON, "Si wafer 7", "ann", "p2026-17", "pmt_serial=SN-4711",
                  "finished: 380/400 completed, 20 lost, 3 bad", "runs.csv", "runs.json"):
        assert shown in text, shown
    assert "scan" in text.split("mode", 1)[1]
    width, window = page_width(root, server, "index.html")
    assert width <= window, f"the run list is {width} px wide in a {window} px window"
    shot = tmp_path / "run_list.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,900", "--hide-scrollbars", url)
    keep(shot)
    assert decode_png(shot.read_bytes()).shape[:2] == (900, 1280)

    # the run list links to both reports (one in flagged/), and each link works
    reports = [urljoin(url, h) for h in dom.a if unquote(urlparse(h).path).endswith(".html")]
    expected = {"/" + p.relative_to(root).as_posix() for p in (page, other_page)}
    assert {unquote(urlparse(r).path) for r in reports} == expected
    for target in reports:
        code, body = fetch(target)
        assert code == 200, f"broken report link {target}"
        assert b"tango-dqm report" in body
    for href in dom.a:  # and the results files
        assert fetch(urljoin(url, href))[0] == 200, f"broken link {href}"

    # the flagged report, loaded in the browser from its sub-directory, has all its images
    flagged_url = next(r for r in reports if "/flagged/" in r)
    server.clear()
    fdom = Dom(chromium("--dump-dom", flagged_url))
    assert OTHER_ID in fdom.all_text and fdom.verdicts[0] == "ERROR" and "flagged" in fdom.all_text
    served = dict(server.requests())
    for src in fdom.img:
        assert served.get(unquote(urlparse(urljoin(flagged_url, src)).path)) == 200, src
    assert not [(p, c) for p, c in server.requests() if c != 200 and p not in BROWSER_OWN]
