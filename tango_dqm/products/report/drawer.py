"""Live pages drawn in a child process, so drawing never takes the GIL from the analysis.

Drawing a page (matplotlib, Agg) holds the GIL most of the time: drawn on a thread of the
monitor's process, a live page every 10 s raised the device's p99 latency at 100 Hz from
13 ms to 40-60 ms. The :class:`LiveDrawer` keeps one child process
(``python -m tango_dqm.products.report.live_child``, no shell) that imports matplotlib once and
draws the pages it is asked for, at a lower CPU priority (``nice`` +10), so the analysis
wins the cores when both want them. It reads the results file as any other process does
(SWMR while the scan runs) and writes the page and plots where ``write_report`` writes them.

The protocol is one JSON object per line, nothing else crosses (no pickle): the parent
sends ``{"path": "...", "live_refresh": 10.0}``, the child answers ``{"page": "..."}`` or
``{"error": "..."}``. A page given up (the scan ended, shutdown) is given up by ending the
child; the next live page starts a new one.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .page import ReportCancelled


class DrawError(RuntimeError):
    """The child could not draw the page (its message says why)."""


class LiveDrawer:
    """One child process drawing live pages, started on first use and after a cancel or a crash."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.started = 0  # child processes started (diagnostics, tests)
        self.busy = False  # a page is being drawn

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    def draw(self, path: Path, live_refresh: float, cancelled: Callable[[], bool] | None = None,
             timeout: float = 600.0) -> Path:
        """Draw the live page of ``path``; returns the page's path. ReportCancelled when
        ``cancelled()`` became true meanwhile (the child is ended), DrawError when the child failed."""
        with self._lock:
            proc = self._child()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps({"path": str(path), "live_refresh": float(live_refresh)}) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                self._end()
                raise DrawError(f"the report drawer process ended ({exc})") from None
            self.busy = True
            try:
                return self._answer(proc, path, cancelled, timeout)
            finally:
                self.busy = False

    def _answer(self, proc: subprocess.Popen, path: Path, cancelled: Callable[[], bool] | None,
                timeout: float) -> Path:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while True:
            if cancelled is not None and cancelled():
                self._end()
                raise ReportCancelled(str(path))
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                break
            if time.monotonic() > deadline:
                self._end()
                raise DrawError(f"the report drawer took more than {timeout:.0f} s for {path}")
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            self._proc = None
            raise DrawError(f"the report drawer process ended with exit status {code}")
        answer = json.loads(line)
        if "error" in answer:
            raise DrawError(str(answer["error"]))
        return Path(answer["page"])

    def close(self, timeout: float = 5.0) -> None:
        """End the child (it finishes nothing: a live page is never needed after the scan)."""
        with self._lock:
            self._end(timeout)

    def _child(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tango_dqm.products.report.live_child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=None, text=True, env=env, close_fds=True,
            start_new_session=True)  # a Ctrl-C meant for the server is not the child's
        self.started += 1
        return self._proc

    def _end(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
