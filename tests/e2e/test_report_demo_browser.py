"""The report and run list of a demo-like scan, in headless Chromium, with screenshots kept.

The scan is the demo's (config/demo.json): 300 simulated 1024x1024 frames with 5 hot and 3 dead
pixels over ZeroMQ STINS into the real engine with roi, profile, pixels and histogram and the
demo's quality checks, except that the beam drifts (0.5 px per frame, so the centroid's range
check fails from about frame 125 on) and frames 120-139 are never sent (lost). Chromium loads
the pages served over HTTP on 127.0.0.1; every image and link must load, and the screenshots
are kept in the test's basetemp directory and in ``test-artifacts/`` (git-ignored):

- ``demo_report_top.png``   the first 1280x1800 px: verdict and reasons, metadata, summary
- ``demo_report_full.png``  the whole page: trends with the lost-frame gap, images
- ``demo_run_list.png``     the run list

The pictures are also checked by colour: the lost-frame shading in the trends, the ROI boxes on
the mean map, the hot and dead categories on the pixel map.
"""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.report import write_run_list
from tango_dqm.simulation import FrameGenerator, Scene
from tests.e2e.test_report_browser import (BROWSER_OWN, Dom, Server, chromium, decode_png, fetch, keep, page_width,
                                           require_chromium)
from tests.helpers import PeersConnected, StinsSender, free_port
from tests.unit.test_engine import wait_state

pytestmark = pytest.mark.timeout(600)

FRAMES, LOST = 300, range(120, 140)
CHECKS = [{"type": "range", "result": "profile_centroid_x", "warning": [450, 574], "error": [400, 624],
           "min_entries": 10},
          {"type": "channels", "result": "pixels_mean_map", "dead_below": 1, "max_bad_warning": 0,
           "max_bad_error": 100}]
PARAMS = {"roi_signal": [462, 100, 462, 100], "roi_background": [0, 100, 0, 100],
          "roi_profile": [312, 400, 312, 400], "pixels_min_frames": 50, "hist_max": 4096.0, "hist_bins": 256}
METADATA = {"sample": "Si wafer 7", "operator": "ann", "proposal": "p2026-17", "pmt_serial": "SN-4711"}


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 10) -> int:
    return int((np.abs(pixels.reshape(-1, 3).astype(int) - np.array(rgb)).max(axis=1) <= tol).sum())


def hex_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "output"
    port = free_port()
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{port}"], ["roi", "profile", "pixels", "histogram"],
                            checks=[json.dumps(c) for c in CHECKS], output_directory=str(root), report_interval=0))
    for name, value in PARAMS.items():
        e.set_parameter(name, value)
    e.set_metadata(METADATA)
    gen = FrameGenerator(Scene(shape=(1024, 1024), spot_x=512, spot_y=512, sigma=25, amplitude=3000,
                               hot_pixels=5, dead_pixels=3, drift_x=0.5))
    det = StinsSender(port)
    try:
        with PeersConnected(det):
            e.start()
        det.header("demo", nimages=FRAMES)
        for i in range(FRAMES):
            if i not in LOST:
                det.image(i, gen.render(i))
        det.series_end()
        wait_state(e, EngineState.CLOSE, timeout=300)
        assert e.products.worker.wait_idle(300)
        h5 = Path(e.output_file)
        counters = e.snapshot().counters
    finally:
        det.close()
        e.close()
    assert (counters.completed, counters.dropped, counters.total) == (FRAMES - len(LOST), len(LOST), FRAMES)
    write_run_list(root)
    server = Server(root)
    yield root, server, h5.with_suffix(".html")
    server.close()


def load(server: Server, url: str) -> Dom:
    """The page's DOM after Chromium loaded it; every request it made succeeded, every image loaded."""
    server.clear()
    dom = Dom(chromium("--dump-dom", url))
    served = dict(server.requests())
    for src in dom.img:
        assert served.get(unquote(urlparse(urljoin(url, src)).path)) == 200, f"image {src} not loaded"
    broken = [(p, c) for p, c in server.requests() if c != 200 and p not in BROWSER_OWN]
    assert not broken, f"requests that failed: {broken}"
    for href in dom.a:
        assert fetch(urljoin(url, href))[0] == 200, f"broken link {href}"
    return dom


def test_demo_report_in_chromium(demo_site, tmp_path):
    require_chromium()
    root, server, page = demo_site
    url = server.base + urllib.request.pathname2url(page.relative_to(root).as_posix())
    dom = load(server, url)
    text = dom.all_text
    # the verdict and its reasons first, with the frames concerned, then the scan's metadata
    top = text.index("Summary scan id")
    assert dom.verdicts[0] == "ERROR", dom.verdicts
    for first in ("profile_centroid_x", "frames judged ERROR", "lost frames (never analysed): 20: 120-139",
                  *METADATA.values()):
        assert 0 <= text.find(first) < top, f"{first!r} is not above the summary"
    assert "channels" in text[:top] or "pixels_mean_map" in text[:top]  # the hot/dead pixel check

    # the pictures: lost-frame gaps shaded in the trends, ROI boxes on the mean map, categories on the pixel map
    def png(part: str) -> np.ndarray:
        src = next(s for s in dom.img if part in s)
        return decode_png(fetch(urljoin(url, src))[1])

    from tango_dqm.products.report.plots import PIXEL_CATEGORIES, ROI_STYLES

    gap = (254, 217, 206)  # #fc9272 at alpha 0.35 over white
    assert near(png("_trend_profile_centroid_x"), gap, 4) > 200, "lost frames not shaded in the trend"
    mean_map = png("pixels_mean_map")
    for roi in ("roi_signal", "roi_background", "roi_profile"):  # thin lines: tens of pixels of each colour
        assert near(mean_map, hex_rgb(ROI_STYLES[roi][0]), 40) > 30, f"{roi} box not drawn"
    pixel_map = png("_pixels_map")
    for label, colour in PIXEL_CATEGORIES["pixels_map"][1:3]:  # hot, dead
        assert near(pixel_map, hex_rgb(colour), 30) > 30, f"{label} pixels not marked"

    width, window = page_width(root, server, page.relative_to(root).as_posix())
    assert width <= window, f"the report is {width} px wide in a {window} px window"
    for name, size in (("demo_report_top.png", "1280,1800"), ("demo_report_full.png", "1280,12000")):
        shot = tmp_path / name
        chromium(f"--screenshot={shot}", f"--window-size={size}", "--hide-scrollbars", url)
        pixels = decode_png(shot.read_bytes())
        assert pixels.shape[1] == 1280 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
        keep(shot)


def test_demo_run_list_in_chromium(demo_site, tmp_path):
    require_chromium()
    root, server, page = demo_site
    url = server.base + "index.html"
    dom = load(server, url)
    text = dom.all_text
    for shown in ("1 scan in", "ERROR", "Si wafer 7", "ann", "p2026-17", "pmt_serial=SN-4711",
                  f"finished: {FRAMES - len(LOST)}/{FRAMES} completed, {len(LOST)} lost"):
        assert shown in text, shown
    assert any(unquote(urlparse(h).path).endswith(page.name) for h in dom.a), dom.a
    width, window = page_width(root, server, "index.html")
    assert width <= window, f"the run list is {width} px wide in a {window} px window"
    shot = tmp_path / "demo_run_list.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,700", "--hide-scrollbars", url)
    assert decode_png(shot.read_bytes()).shape[:2] == (700, 1280)
    keep(shot)
