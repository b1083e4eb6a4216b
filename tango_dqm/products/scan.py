"""What a scan leaves behind: its HDF5 results file, its report, the run list, its mark.

One :class:`ScanProducts` per engine, rooted at the ``OutputDirectory``. The engine
thread calls ``begin``/``append``/``end``; reports are written by a background worker so
closing a scan is never slowed (and, while it runs, rewritten every ``report_interval`` s);
``mark`` (Flag/Archive) moves files only under the root.
"""
from __future__ import annotations

import logging
from pathlib import Path
from concurrent.futures import Future
from typing import Any
from collections.abc import Mapping

from .report import ReportWorker
from .marks import mark_scan
from .scanfile import MARKS, confined_path, scan_file_name, write_lost_frames
from .writer import ScanWriter

log = logging.getLogger(__name__)

AUTO_ARCHIVE_REASON = "not marked before the next Start: archived automatically"


class ScanProducts:
    """The results file of the current scan and the marks of finished ones."""

    def __init__(self, root: str | Path, main_result: str | None = None, flush_interval: float = 1.0,
                 report_interval: float = 10.0):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.main_result = main_result
        self.flush_interval = flush_interval
        #: seconds between live rewrites of the running scan's report and the run list (0: at the end only)
        self.report_interval = report_interval
        self.worker = ReportWorker(self.root)
        self._writer: ScanWriter | None = None
        self.current: Path | None = None  # results file of the current or last scan
        self.mark_of_current: str | None = None
        self.pending: Future | None = None  # the last mark being carried out

    def begin(self, scan_id: str, results: Mapping[str, Any], provenance: Mapping[str, Any],
              name: str | None = None, reference: Mapping[str, Any] | None = None) -> Path:
        """Create the results file of a new scan (after archiving an unmarked previous one);
        ``reference``: the arrays of the reference in use, kept for the report's overlay."""
        self.auto_archive()
        path = confined_path(self.root, name or scan_file_name(scan_id))
        main = self.main_result if self.main_result in results else None
        self._writer = ScanWriter(path, scan_id, results, provenance, root=self.root,
                                  flush_interval=self.flush_interval, main_result=main, reference=reference)
        self.current, self.mark_of_current = path, None
        self.worker.refresh_run_list()  # the run list and run log show the new scan as running
        self.worker.live(path, self.report_interval)
        return path

    def append(self, frame_id: int, timestamp: float, results: Mapping[str, Any], verdict: int) -> None:
        if self._writer is not None:
            self._writer.append(frame_id, timestamp, results, verdict)

    def append_point(self, record: Any) -> None:
        """One latched scan point (tango_dqm.points.PointRecord) as a row of /entry/points."""
        if self._writer is not None:
            self._writer.append_point(record)

    def end(self, summary: Mapping[str, Any], counters: Any, verdict: str, end_reason: str,
            provenance: Mapping[str, Any], lost_frames: Any = None) -> Path | None:
        """Finish the results file (with the lost frame id ranges, if any) and queue its report."""
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        self.worker.live(None)
        path = writer.finish(summary, counters, verdict, end_reason=end_reason, provenance=provenance)
        write_lost_frames(path, lost_frames if lost_frames is not None else ())
        self._submit(path)
        return path

    def _submit(self, path: Path) -> None:
        try:
            self.worker.submit(path)
        except RuntimeError:  # closed: the device is shutting down while the scan ended
            log.warning("report for %s not written (shutting down); regenerate it with: tango-dqm report %s",
                        path, path)

    def abort(self) -> None:
        """Close the results file of a failed scan, keeping every frame written so far."""
        writer, self._writer = self._writer, None
        self.worker.live(None)
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - already failing; keep the first error
                log.exception("closing %s failed", writer.path)
            self._submit(writer.path)

    def mark(self, mark: str, reason: str) -> Path:
        """Flag ("flagged") or archive ("archived") the last finished scan; returns its new path.

        Checked here, carried out on the report worker's thread, in order with the reports
        (so no report holds the file open while it moves); a late failure is logged.
        """
        if self.current is None:
            raise ValueError("no finished scan to mark")
        if self.mark_of_current is not None:
            raise ValueError(f"{self.current.name} is already {self.mark_of_current}")
        if mark not in MARKS:
            raise ValueError(f"mark must be one of {sorted(MARKS)}, got {mark!r}")
        dest = confined_path(self.root, Path(MARKS[mark]) / self.current.name)
        if dest.exists():
            raise FileExistsError(f"{dest} already exists; not overwriting it")
        self.pending = self.worker.call(mark_scan, self.root, self.current, mark, reason)
        self.worker.submit(dest, reuse_plots=True)  # the page shows the mark; the plots moved with it
        self.current, self.mark_of_current = dest, mark
        return dest

    def auto_archive(self) -> None:
        """Archive the last scan if nobody flagged or archived it (as operators expect)."""
        if self.current is not None and self.mark_of_current is None and self._writer is None \
                and self.current.exists():
            try:
                self.mark("archived", AUTO_ARCHIVE_REASON)
            except (OSError, ValueError, RuntimeError) as exc:
                log.warning("automatic archive of %s failed: %s", self.current, exc)

    def close(self) -> None:
        # The device returns from delete_device only when the worker has stopped: a thread
        # still drawing while the server process exits crashes it. Reports not yet started are
        # skipped (the aborted scan's too), so a stop waits at most for the one being drawn.
        self.worker.close(timeout=120.0, skip_reports=True)
        self.abort()
