"""Run reports: a static HTML page with PNG plots per scan, and a run list across scans.

``write_report(h5)`` writes ``<stem>.html`` next to the results file (``<stem>`` is the file
name without ``.h5``, i.e. the safe form of the scan id) and its plots in ``<stem>_plots/``,
linked relatively, so the page, its plots and the results file move together (see
``storage.mark_scan``). ``write_run_list(root)`` writes ``root/index.html`` listing every scan
under ``root``, ``root/flagged`` and ``root/archive``. Pages use no external resources
(no CDN, no scripts) and every string taken from a file is HTML-escaped.

``ReportWorker`` does both in a background thread, so ending a scan is not slowed down.
While a scan runs it also rewrites that scan's report and the run list every ``interval``
seconds (:meth:`ReportWorker.live`), off the analysis path: live pages are drawn by a child
process (``drawer.LiveDrawer``; drawing holds the GIL, which delayed the analysis when done
here), a tick that falls while a page is still being drawn is skipped, never queued up, and so
are the ticks within ``LIVE_DUTY - 1`` times the drawing time after it (live pages take at most
a fifth of a core).
Live pages say so and reload themselves (a ``<meta http-equiv="refresh">`` tag), the final
report has no such tag.

Plots use matplotlib's object API (``matplotlib.figure.Figure``, rendered by Agg), never
``pyplot``: no global backend state is touched, so reports can be drawn from a worker thread
in a process that also has a GUI, and ``matplotlib.use`` is not needed.
"""
from __future__ import annotations

import argparse
import atexit
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ..marks import scan_files
from .drawer import LiveDrawer
from .page import ReportCancelled, _axis_for, _run_list_root, _status, write_report
from .plots import PIXEL_CATEGORIES, ROI_STYLES, _plot_curves, _plot_image, _save, _with_gaps
from .reading import VERDICT_COLOURS, _projection_axis
from .runlist import write_run_list

# the report in four modules: reading <- plots <- page <- runlist; this module runs them in the background
# (ReportWorker) and from the command line. The underscore names above are re-exported for the tests that
# import them from tango_dqm.report.

log = logging.getLogger(__name__)

# ---- background worker ---------------------------------------------------------------------

#: a live page is drawn at most once per LIVE_DUTY times its drawing time (a 3 s page: every >= 15 s)
LIVE_DUTY = 5.0


def next_tick(due: float, interval: float, now: float) -> tuple[float, int]:
    """The next tick after the one ``due`` (on its grid of ``interval``) that is still ahead of
    ``now``, and how many ticks were skipped because they passed while the page was drawn."""
    ahead = due + interval
    if ahead > now:
        return ahead, 0
    skipped = int((now - ahead) // interval) + 1
    return ahead + skipped * interval, skipped


_WAKE = object()  # queued by live(): wakes the loop, is no job

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
        self._live: tuple[Path, float] | None = None  # (results file, interval) of the running scan
        self._live_cancel = threading.Event()  # set: the live page being drawn is given up
        self._next_tick = 0.0
        self.live_pages = 0  # live reports written
        self.ticks_skipped = 0  # ticks that fell while a page was being drawn
        self.drawer = LiveDrawer()  # live pages: a child process, started at the first one
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()
        _LIVE_WORKERS.add(self)

    @property
    def last_error(self) -> str:
        return self.errors[-1] if self.errors else ""

    def submit(self, h5_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
               reuse_plots: bool = False) -> None:
        """Queue a report for ``h5_path`` (and a run-list refresh); ``reuse_plots``: see write_report."""
        self._put(("report", Path(h5_path), (out_dir, reuse_plots)))

    def refresh_run_list(self, root: str | os.PathLike | None = None) -> None:
        """Queue a run-list refresh only."""
        target = Path(root) if root is not None else self.root
        if target is None:
            raise ValueError("no root given and the worker has none")
        self._put(("runlist", target, None))

    def live(self, h5_path: str | os.PathLike | None, interval: float = 10.0) -> None:
        """Rewrite the report of ``h5_path`` and the run list every ``interval`` seconds from now
        (None or an interval of 0: stop; the final report is ``submit``-ted as usual). Returns at once."""
        with self._cond:
            if h5_path is None or not interval or interval <= 0:
                self._live = None
                self._live_cancel.set()  # the final report need not wait for a live page
            else:
                self._live_cancel.clear()
                self._live = (Path(h5_path), float(interval))
                self._next_tick = time.monotonic() + float(interval)
        self._q.put(_WAKE)  # the loop recomputes how long it may wait

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
            self._live = None
            self._live_cancel.set()  # a live page being drawn stops at its next plot: close waits one plot
        if first:
            self._q.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("report worker still busy after %s s; it is waited for at exit", timeout)

    def _tick_wait(self) -> float | None:
        """Seconds until the next live tick (0: due now), None when no scan is live."""
        with self._cond:
            if self._live is None or self._closed:
                return None
            return max(0.0, self._next_tick - time.monotonic())

    def _tick(self) -> None:
        """Write the live report and run list once, then schedule the next tick on the grid of
        ``interval``; ticks that passed meanwhile are skipped, so a slow page never piles up work."""
        with self._cond:
            live = self._live
        if live is None:
            return
        path, interval = live
        t0 = time.monotonic()
        try:
            page = self._live_report(path, interval)
            self.live_pages += 1
            log.debug("live report %s written in %.2f s", page, time.monotonic() - t0)
        except ReportCancelled:
            log.debug("live report of %s given up (scan ended or shutting down)", path)
            return
        except Exception as exc:  # noqa: BLE001 - the next tick tries again; the scan goes on
            msg = f"live report for {path} failed: {type(exc).__name__}: {exc}"
            log.warning("%s", msg)
            self.errors.append(msg)
        self._dirty_roots.add(self.root or _run_list_root(Path(path).resolve()))
        self._refresh_dirty(refresh=interval)
        with self._cond:
            if self._live is not live:
                return  # stopped or restarted meanwhile: live() set the next tick
            # at most 1/LIVE_DUTY of a core goes to live pages (the child takes it from the analysis)
            now = time.monotonic()
            self._next_tick, skipped = next_tick(self._next_tick, interval, now + (LIVE_DUTY - 1) * (now - t0))
            self.ticks_skipped += skipped

    def _live_report(self, path: Path, interval: float) -> Path:
        """The live page, drawn by the drawer's child process (drawing holds the GIL: in this
        process it delayed the analysis); given up when the scan ends or the worker closes."""
        return self.drawer.draw(path, interval, cancelled=self._live_cancel.is_set)

    def _loop(self) -> None:
        try:
            self._jobs()
        finally:
            self.drawer.close()

    def _jobs(self) -> None:
        while True:
            wait = self._tick_wait()
            if wait == 0.0:
                self._tick()
                continue
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                continue  # a tick is due
            if item is _WAKE:
                continue
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
                    out_dir, reuse = out_dir
                    page = write_report(path, out_dir, reuse_plots=reuse)
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
            with self._cond:
                last = self._pending == 1  # no job behind this one (a queued _WAKE is none)
            if last or self._q.empty():
                self._refresh_dirty()
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def _refresh_dirty(self, refresh: float | None = None) -> None:
        while self._dirty_roots:
            root = self._dirty_roots.pop()
            try:
                write_run_list(root, refresh=refresh)
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


__all__ = ["PIXEL_CATEGORIES", "ROI_STYLES", "VERDICT_COLOURS", "ReportWorker", "main", "next_tick", "write_report",
           "write_run_list", "_axis_for", "_plot_curves", "_plot_image", "_projection_axis", "_save", "_status",
           "_with_gaps"]


if __name__ == "__main__":
    sys.exit(main())
