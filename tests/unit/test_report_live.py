"""Live pages: while a scan runs, its report and the run list are rewritten at an interval by the
report worker (never by the engine thread), say they are live and reload themselves; the final
report and run list have no reload tag."""
from __future__ import annotations

import os
import re
import time

import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineError
from tango_dqm.plugin import Result
from tango_dqm.products import ScanProducts
from tango_dqm.products.report import next_tick

DECL = {r.name: ("t", r) for r in [Result("signal", float, unit="counts"), Result("n_hot", int)]}
REFRESH = re.compile(r'<meta http-equiv="refresh" content="(\d+)">')


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.01)


def begin_with_frames(products: ScanProducts, scan: str, n: int) -> None:
    """Begin ``scan`` (file ``scan_<word>.h5``) and write ``n`` frames of results to the file."""
    products.begin(scan, DECL, {"mode": "scan"}, name=scan.replace(" ", "_") + ".h5")
    for i in range(n):
        products.append(i, 0.0, {"signal": float(i), "n_hot": 0}, 0)
    products._writer.flush()


def test_next_tick_skips_the_ticks_that_passed_while_drawing():
    assert next_tick(10.0, 2.0, 10.5) == (12.0, 0)
    assert next_tick(10.0, 2.0, 12.0) == (14.0, 1)  # exactly due is passed
    assert next_tick(10.0, 2.0, 17.3) == (18.0, 3)  # 12, 14, 16 fell while the page was drawn


def test_live_report_and_run_list_while_the_scan_runs(tmp_path):
    products = ScanProducts(tmp_path, main_result="signal", report_interval=0.2, flush_interval=0.05)
    worker = products.worker
    page = tmp_path / "scan_live_1.html"
    try:
        path = products.begin("scan live 1", DECL, {"mode": "scan", "metadata": {"sample": "Si"}},
                              name="scan_live_1.h5")
        for i in range(30):
            products.append(i, 1.7e9 + i, {"signal": float(i), "n_hot": i % 3}, 0)
        products._writer.flush()
        index_file = tmp_path / "index.html"
        wait_for(lambda: page.is_file() and "30 frames so far" in page.read_text(), "live page of 30 frames")
        wait_for(lambda: REFRESH.search(index_file.read_text()), "live run list")  # written after the page
        first = page.read_text()
        assert REFRESH.search(first).group(1) == "1"  # 0.2 s rounds up to the 1 s a browser honours
        assert "LIVE: scan running, 30 frames so far" in first and "<title>LIVE tango-dqm report" in first
        index = index_file.read_text()
        assert "LIVE: 1 scan running (scan live 1)" in index
        for i in range(30, 75):
            products.append(i, 1.7e9 + i, {"signal": float(i), "n_hot": i % 3}, 0)
        products._writer.flush()
        wait_for(lambda: "75 frames so far" in page.read_text(), "live page rewritten with 75 frames")
        # the child writes the page before it answers: the count follows the answer, a moment later
        wait_for(lambda: worker.live_pages >= 2, "two live pages counted")
        assert products.end({"run_signal_mean": 37.0}, {"total": 75, "completed": 75, "dropped": 0, "bad": 0},
                            "OK", "series end", {"quality_report": "verdict OK: 0 checks failing"}) == path
        assert worker.wait_idle(60)
        final, index = page.read_text(), (tmp_path / "index.html").read_text()
        assert not REFRESH.search(final) and "LIVE" not in final and "series end" in final
        assert not REFRESH.search(index) and "LIVE" not in index
        pages = worker.live_pages
        assert worker.wait_idle(1) and worker.live_pages == pages  # no tick after the end
        assert not worker.errors, list(worker.errors)
    finally:
        products.close()


def test_report_interval_zero_writes_the_report_at_the_end_only(tmp_path):
    products = ScanProducts(tmp_path, report_interval=0)
    try:
        products.begin("scan quiet", DECL, {"mode": "scan"}, name="scan_quiet.h5")
        products.append(0, 0.0, {"signal": 1.0, "n_hot": 0}, 0)
        assert products.worker.wait_idle(60)  # the run list written at begin
        assert products.worker._tick_wait() is None and not (tmp_path / "scan_quiet.html").exists()
        products.end({}, None, "OK", "series end", {})
        assert products.worker.wait_idle(60)
        assert (tmp_path / "scan_quiet.html").is_file() and products.worker.live_pages == 0
    finally:
        products.close()


@pytest.mark.parametrize("bad", [-1, 86401, float("nan"), float("inf"), True, "10"])
def test_report_interval_out_of_range_is_refused(bad):
    with pytest.raises(EngineError, match="ReportInterval must be between 0 and 86400 s"):
        Engine(EngineConfig(["sim://?frames=1&shape=8x8"], report_interval=bad))


def test_end_of_scan_gives_up_the_live_page_being_drawn(tmp_path):
    """A live page being drawn (by the drawer's child process) is given up when the scan ends
    (or the device shuts down): the child is ended, so neither the final report nor
    delete_device waits for a whole page."""
    products = ScanProducts(tmp_path, report_interval=0.05)
    drawer = products.worker.drawer
    try:
        begin_with_frames(products, "scan slow", 5)
        wait_for(lambda: drawer.busy, "a live page being drawn")  # the child is still importing matplotlib
        pid = drawer.pid
        assert pid is not None and pid != os.getpid()
        pages = products.worker.live_pages
        products.worker.live(None)  # what end() does first
        wait_for(lambda: drawer.pid is None and not drawer.busy, "the drawer's child ended", timeout=5)
        with pytest.raises(ProcessLookupError):
            for _ in range(100):  # reaped by the drawer: gone from the process table
                os.kill(pid, 0)
                time.sleep(0.01)
        products.end({}, None, "OK", "series end", {})
        assert products.worker.wait_idle(60)
        text = (tmp_path / "scan_slow.html").read_text()
        assert "LIVE" not in text and not REFRESH.search(text)
        assert products.worker.live_pages == pages and not products.worker.errors  # given up, not failed
    finally:
        products.close()
    assert drawer.pid is None  # close ends the child


def test_live_pages_are_drawn_by_one_child_process(tmp_path):
    """Drawing holds the GIL: live pages are drawn by a child process, started once and reused."""
    products = ScanProducts(tmp_path, report_interval=0.05, flush_interval=0.05)
    drawer = products.worker.drawer
    try:
        begin_with_frames(products, "scan child", 3)
        wait_for(lambda: products.worker.live_pages >= 2, "two live pages")
        assert drawer.started == 1 and drawer.pid not in (None, os.getpid())
        assert "LIVE: scan running, 3 frames so far" in (tmp_path / "scan_child.html").read_text()
        products.end({}, None, "OK", "series end", {})
        assert products.worker.wait_idle(60)
    finally:
        products.close()
    assert drawer.pid is None and not products.worker.errors, list(products.worker.errors)
