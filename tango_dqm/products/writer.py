"""The scan file writer (:class:`ScanWriter`): the layout and its rules are in :mod:`.scanfile`."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..plugin import Result
from .scanfile import (CHUNK_CACHE_BYTES, CHUNK_CACHE_SLOTS, INT_MISSING, METADATA_CACHE_BYTES, RESERVED, VERDICT_CODES,
                       VERDICTS, _OPEN_LOCK, _OPEN_WRITERS, _STR, StorageError, _acquire_writer_lock, _now_iso,
                       _open_rw, _release_writer_lock, _write_tree, _write_value, confined_path, to_json)

log = logging.getLogger(__name__)

# ---- the writer ----------------------------------------------------------------------------


def _bound_metadata_cache(f: h5py.File, max_bytes: int | None = None) -> None:
    """Cap the HDF5 metadata cache of ``f`` (adaptive resizing stays on, within the cap)."""
    max_bytes = METADATA_CACHE_BYTES if max_bytes is None else max_bytes
    cfg = f.id.get_mdc_config()
    cfg.set_initial_size = True
    cfg.initial_size = min(cfg.initial_size, max_bytes)
    cfg.min_size = min(cfg.min_size, cfg.initial_size)
    cfg.max_size = max_bytes
    cfg.max_increment = min(cfg.max_increment, max_bytes // 4)
    f.id.set_mdc_config(cfg)


class _Column:
    """One per-frame dataset and its in-memory block buffer."""

    __slots__ = ("name", "kind", "ds", "buf", "fill", "length_ds", "fixed_width", "warned", "last",
                 "last_frame", "frame_ds", "dirty")

    def __init__(self, name: str, kind: str, ds: h5py.Dataset, *, fixed_width: int | None = None,
                 length_ds: h5py.Dataset | None = None, frame_ds: h5py.Dataset | None = None):
        self.name, self.kind = name, kind
        self.ds = ds
        self.buf: Any = None
        self.fill: Any = None
        self.length_ds = length_ds  # spectra: the true length of each row
        self.fixed_width = fixed_width  # spectra: declared width (None: grows with the longest)
        self.warned = False
        self.last: np.ndarray | None = None  # images: the latest one, until flushed
        self.last_frame = -1
        self.frame_ds = frame_ds  # images: the frame id of the latest one
        self.dirty = False


def _normalise_results(results: Any) -> dict[str, tuple[str, Result]]:
    """Accept {name: Result}, {name: (analysis, Result)} (the engine's result_decl) or [Result]."""
    out: dict[str, tuple[str, Result]] = {}
    items: Iterable[Any] = results.values() if isinstance(results, Mapping) else (results or [])
    for item in items:
        owner, r = ("", item) if isinstance(item, Result) else tuple(item)
        if not isinstance(r, Result):
            raise TypeError(f"expected a Result declaration, got {r!r}")
        if r.name in out:
            raise ValueError(f"result {r.name!r} is declared twice")
        out[r.name] = (str(owner), r)
    return out


class ScanWriter:
    """Writes one scan's results file while the scan runs (see the module doc for the layout).

    ``results`` are the result declarations (``{name: Result}``, the engine's
    ``{name: (analysis, Result)}``, or a list of Result). ``provenance`` is a dict written
    under ``/entry/provenance`` (keys such as parameters, rois, thresholds, reference,
    background, versions, sources; dicts become groups plus a ``<key>_json`` dataset).
    When ``root`` is given, ``path`` (absolute or relative to root) must lie inside it.

    ``append`` is cheap (it fills memory buffers); blocks go to disk every ``flush_frames``
    frames or ``flush_interval`` seconds (``None``: no timer), whichever comes first.
    Thread-safe: the timer thread and the caller share a lock.
    """

    def __init__(self, path: str | os.PathLike, scan_id: str, results: Any,
                 provenance: Mapping[str, Any] | None = None, *, root: str | os.PathLike | None = None,
                 flush_interval: float | None = 1.0, flush_frames: int = 1024,
                 main_result: str | None = None, spectrum_widths: Mapping[str, int] | None = None,
                 title: str | None = None, overwrite: bool = False):
        if flush_frames < 1:
            raise ValueError("flush_frames must be >= 1")
        if flush_interval is not None and flush_interval <= 0:
            raise ValueError("flush_interval must be > 0 seconds (or None for no timer)")
        self._path = confined_path(root, path) if root is not None else Path(path).expanduser().resolve()
        self.scan_id = str(scan_id)
        self.decl = _normalise_results(results)
        for name in self.decl:
            if name in RESERVED or "/" in name or name in (".", ".."):
                raise ValueError(f"result name {name!r} is reserved or not a valid dataset name")
        spectra = [n for n, (_, r) in self.decl.items() if r.kind == "spectrum"]
        for n in spectra:
            if f"{n}_length" in self.decl:
                raise ValueError(f"result {n + '_length'!r} clashes with the length dataset of spectrum {n!r}")
        for n, (_, r) in self.decl.items():
            if r.kind == "image" and f"{n}_frame_id" in self.decl:
                raise ValueError(f"result {n + '_frame_id'!r} clashes with the frame id of image {n!r}")
        self.flush_interval = flush_interval
        self.flush_frames = int(flush_frames)
        self._spectrum_widths = dict(spectrum_widths or {})
        scalars = [n for n, (_, r) in self.decl.items() if r.kind == "scalar"]
        if main_result is not None and main_result not in scalars:
            raise ValueError(f"main_result {main_result!r} is not a declared scalar result ({scalars})")
        self.main_result = main_result or next(
            (n for n in scalars if self.decl[n][1].dtype.kind == "f"), scalars[0] if scalars else None)
        self._lock = threading.RLock()
        self._pending = 0
        self._written = 0
        self._appended = 0
        self._last_flush = time.monotonic()
        self._error: BaseException | None = None
        self._finished = False
        self._closed = False
        self.flush_count = 0
        self.flush_seconds = 0.0
        self.start_time = _now_iso()
        self._timer_stop = threading.Event()
        self._timer: threading.Thread | None = None
        with _OPEN_LOCK:
            if self._path in _OPEN_WRITERS:
                raise StorageError(f"results file {self._path} is already being written by this process")
            _OPEN_WRITERS.add(self._path)
        self._lock_fd: int | None = None
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _acquire_writer_lock(self._path)
            self._file = h5py.File(self._path, "w" if overwrite else "w-", libver="latest",
                                   rdcc_nbytes=CHUNK_CACHE_BYTES, rdcc_nslots=CHUNK_CACHE_SLOTS, rdcc_w0=1.0)
        except FileExistsError:
            self._unregister()
            raise StorageError(f"results file {self._path} already exists; refusing to overwrite it") from None
        except StorageError:
            self._unregister()
            raise
        except OSError as exc:
            self._unregister()
            raise StorageError(f"cannot create results file {self._path}: {exc}") from exc
        try:
            _bound_metadata_cache(self._file)
            self._create_layout(provenance or {}, title)
            self._file.swmr_mode = True
            self._file.flush()
        except Exception:
            self._file.close()
            self._path.unlink(missing_ok=True)  # no half-made results file in the run list
            self._unregister()
            raise
        if flush_interval is not None:
            self._timer = threading.Thread(target=self._timer_loop, name=f"dqm-h5-flush-{self.scan_id}",
                                           daemon=True)
            self._timer.start()

    # ---- layout --------------------------------------------------------------------------

    def _create_layout(self, provenance: Mapping[str, Any], title: str | None) -> None:
        from .. import __version__

        f = self._file
        f.attrs.update({"default": "entry", "creator": "tango-dqm", "file_name": self._path.name,
                        "file_time": self.start_time, "HDF5_Version": h5py.version.hdf5_version,
                        "h5py_version": h5py.version.version})
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = "data"
        entry.create_dataset("title", data=title or self.scan_id, dtype=_STR)
        entry.create_dataset("entry_identifier", data=self.scan_id, dtype=_STR)
        entry.create_dataset("start_time", data=self.start_time, dtype=_STR)
        entry.create_dataset("program_name", data="tango-dqm", dtype=_STR).attrs["version"] = __version__

        res = entry.create_group("results", track_order=True)  # declaration order for readers
        res.attrs["NX_class"] = "NXprocess"
        res.create_dataset("program", data="tango-dqm", dtype=_STR)
        res.create_dataset("version", data=__version__, dtype=_STR)
        res.create_dataset("date", data=self.start_time, dtype=_STR)
        n = self.flush_frames
        self._cols: list[_Column] = []

        def column(name: str, dtype: Any, fill: Any, **attrs: Any) -> _Column:
            dtype = np.dtype(dtype)
            chunk = max(256, min(16384, 65536 // max(1, dtype.itemsize)))
            c = _Column(name, "scalar", res.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,),
                                                           dtype=dtype, fillvalue=fill if dtype != _STR else None))
            c.ds.attrs.update({k: v for k, v in attrs.items() if not (v is None or (isinstance(v, str) and not v))})
            c.fill = fill
            c.buf = np.full(n, fill, dtype=object if dtype == _STR else dtype)
            return c

        self._frame_col = column("frame_id", np.int64, INT_MISSING, long_name="frame id")
        self._time_col = column("timestamp", np.float64, np.nan, units="s",
                                long_name="frame timestamp (seconds since 1970-01-01 UTC)")
        self._verdict_col = column("verdict", np.uint8, 0, long_name="per-frame verdict code",
                                   flag_values=np.arange(len(VERDICTS), dtype=np.uint8),
                                   flag_meanings=" ".join(VERDICTS))
        self._result_cols: dict[str, _Column] = {}
        for name, (owner, r) in self.decl.items():
            if r.run_summary:  # given once by finish(): stored under /entry/summary
                continue
            meta = {"units": r.unit, "long_name": r.label or name, "description": r.description,
                    "analysis": owner, "kind": r.kind, "declared_dtype": str(r.dtype)}
            if r.kind == "scalar":
                if r.dtype.kind in "biu":
                    c = column(name, np.int64, INT_MISSING, **meta)
                    c.ds.attrs["missing_value"] = INT_MISSING
                elif r.dtype.kind in "fc":
                    c = column(name, np.float64, np.nan, **meta)
                else:
                    c = column(name, _STR, "", **meta)
            elif r.kind == "spectrum":
                width = self._spectrum_widths.get(name)
                fixed = None if width is None else int(width)
                if fixed is not None:
                    chunks = (max(1, min(1024, 65536 // max(1, fixed))), max(1, fixed))
                    ds = res.create_dataset(name, shape=(0, fixed), maxshape=(None, fixed),
                                            chunks=chunks, dtype=np.float64, fillvalue=np.nan)
                else:
                    ds = res.create_dataset(name, shape=(0, 0), maxshape=(None, None), chunks=(32, 256),
                                            dtype=np.float64, fillvalue=np.nan)
                lengths = res.create_dataset(f"{name}_length", shape=(0,), maxshape=(None,), chunks=(4096,),
                                             dtype=np.int32, fillvalue=0)
                c = _Column(name, "spectrum", ds, fixed_width=fixed, length_ds=lengths)
                c.ds.attrs.update({k: v for k, v in meta.items() if v})
                c.ds.attrs["interpretation"] = "spectrum"
                c.ds.attrs["padding"] = "NaN; true length in " + name + "_length"
                c.buf = []
            else:  # image: only the latest one is kept
                dtype = r.dtype if r.dtype.kind in "biuf" else np.dtype(np.float64)
                ds = res.create_dataset(name, shape=(0, 0), maxshape=(None, None), chunks=(128, 128),
                                        dtype=dtype, fillvalue=np.nan if dtype.kind == "f" else 0)
                c = _Column(name, "image", ds, frame_ds=res.create_dataset(f"{name}_frame_id", data=np.int64(-1)))
                c.ds.attrs.update({k: v for k, v in meta.items() if v})
                c.ds.attrs["interpretation"] = "image"
                c.ds.attrs["content"] = "the latest image written; its frame id is in " + name + "_frame_id"
            self._result_cols[name] = c
        self._scalar_cols = [c for c in self._result_cols.values() if c.kind == "scalar"]
        self._spectrum_cols = [c for c in self._result_cols.values() if c.kind == "spectrum"]
        self._image_cols = [c for c in self._result_cols.values() if c.kind == "image"]

        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        data["frame_id"] = self._frame_col.ds
        signal = self.main_result or "verdict"
        data[signal] = res[signal]
        data.attrs["signal"] = signal
        data.attrs["axes"] = ["frame_id"]
        data.attrs[f"{signal}_indices"] = 0
        aux = [c.name for c in self._scalar_cols if c.name != signal and c.ds.dtype != _STR]
        for name in aux:
            data[name] = res[name]
        if aux:
            data.attrs["auxiliary_signals"] = aux
        data.attrs["title"] = f"{self.scan_id}: {signal} per frame"

        self._create_points(entry)

        summary = entry.create_group("summary")
        summary.attrs["NX_class"] = "NXcollection"

        prov = entry.create_group("provenance")
        prov.attrs["NX_class"] = "NXcollection"
        provenance = dict(provenance)
        if "versions" not in provenance:
            from ..versions import deployed_versions
            provenance["versions"] = deployed_versions()
        for key, value in provenance.items():
            _write_tree(prov, str(key), value)
        _write_value(prov, "json", to_json(provenance))
        prov.create_dataset("results_declared_json", data=to_json(
            {n: {"analysis": o, "kind": r.kind, "dtype": str(r.dtype), "unit": r.unit, "label": r.label}
             for n, (o, r) in self.decl.items()}), dtype=_STR)
        prov.create_dataset("main_result", data=signal, dtype=_STR)

    def _create_points(self, entry: h5py.Group) -> None:
        """/entry/points: one row per scan point (StartPoint/EndPoint), made now because SWMR
        allows no new datasets later. Per-frame scalars get one dataset each, summarised as
        their Result.point says (its name in the dataset's ``aggregate`` attribute)."""
        pts = entry.create_group("points", track_order=True)
        pts.attrs["NX_class"] = "NXcollection"
        pts.attrs["description"] = ("one row per scan point: the frames that arrived between StartPoint and "
                                    "EndPoint (or the first pointFrames after StartPoint), see docs/sardana.md")
        self._point_cols: dict[str, h5py.Dataset] = {}

        def col(name: str, dtype: Any, fill: Any, **attrs: Any) -> None:
            ds = pts.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(256,), dtype=dtype,
                                    fillvalue=fill)
            ds.attrs.update({k: v for k, v in attrs.items() if v})
            self._point_cols[name] = ds

        col("point", np.int64, INT_MISSING, long_name="point number (1 = first of the scan)")
        col("frames", np.int64, 0, long_name="frames analysed in the point")
        col("expected_frames", np.int64, 0, long_name="pointFrames at StartPoint (0: until EndPoint)")
        col("first_frame", np.int64, INT_MISSING, long_name="frame id of the point's first frame")
        col("last_frame", np.int64, INT_MISSING, long_name="frame id of the point's last frame")
        col("ended", _STR, None, long_name="complete, timeout (EndPoint's timeout passed first) or scan end")
        self._point_results: list[str] = []
        for name, (owner, r) in self.decl.items():
            if not r.has_point or name in self._point_cols:
                continue
            numeric = r.dtype.kind in "iuf"
            col(name, np.float64 if numeric else _STR, np.nan if numeric else None, units=r.unit,
                long_name=r.label or name, analysis=owner, aggregate=r.point_aggregate)
            self._point_results.append(name)

    # ---- properties ----------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def frames(self) -> int:
        """Frames appended so far (written or still buffered)."""
        return self._appended

    @property
    def frames_written(self) -> int:
        """Frames on disk as of the last flush."""
        return self._written

    @property
    def finished(self) -> bool:
        return self._finished

    # ---- writing -------------------------------------------------------------------------

    def append(self, frame_id: int, timestamp: float, results: Mapping[str, Any], verdict: int | str = 0) -> None:
        """Buffer one frame's row; writes a block when ``flush_frames`` or ``flush_interval`` is reached.

        ``results`` is the engine's merged per-frame dict; undeclared keys are ignored,
        absent ones are stored as missing. ``verdict`` is a code or a name from VERDICTS.
        Spectra are copied; image arrays are kept by reference until the next flush (plugins
        return new arrays per frame).
        """
        with self._lock:
            self._check_open()
            i = self._pending
            self._frame_col.buf[i] = frame_id
            self._time_col.buf[i] = timestamp if timestamp is not None else np.nan
            code = VERDICT_CODES.get(verdict.upper(), 255) if isinstance(verdict, str) else int(verdict)
            self._verdict_col.buf[i] = code if 0 <= code <= 255 else 255
            for c in self._scalar_cols:
                v = results.get(c.name)
                if v is None:
                    c.buf[i] = c.fill
                    continue
                try:
                    c.buf[i] = v
                except (TypeError, ValueError, OverflowError):
                    c.buf[i] = c.fill
                    self._warn(c, f"value {v!r} does not fit {c.ds.dtype}; stored as missing")
            for c in self._spectrum_cols:
                v = results.get(c.name)
                if v is None:
                    c.buf.append(None)
                    continue
                try:
                    arr = np.array(v, dtype=np.float64).reshape(-1)
                except (TypeError, ValueError):
                    c.buf.append(None)
                    self._warn(c, f"value of type {type(v).__name__} is not a numeric spectrum; stored as missing")
                    continue
                c.buf.append(arr)
            for c in self._image_cols:
                v = results.get(c.name)
                if v is not None:
                    arr = np.asarray(v)
                    if arr.ndim == 2:
                        c.last, c.last_frame, c.dirty = arr, int(frame_id), True
                    else:
                        self._warn(c, f"value with shape {arr.shape} is not a 2-D image; not stored")
            self._pending += 1
            self._appended += 1
            if self._pending >= self.flush_frames or (
                    self.flush_interval is not None
                    and time.monotonic() - self._last_flush >= self.flush_interval):
                self._flush_locked()

    def append_point(self, record: Any) -> None:
        """Write one latched scan point (a tango_dqm.points.PointRecord) as a row of /entry/points
        at once: a few per second at most, and readers of a running scan see every ended point."""
        with self._lock:
            self._check_open()
            cols = self._point_cols
            i = cols["point"].shape[0]
            row = {"point": record.number, "frames": record.frames, "expected_frames": record.expected_frames,
                   "first_frame": INT_MISSING if record.first_frame is None else record.first_frame,
                   "last_frame": INT_MISSING if record.last_frame is None else record.last_frame,
                   "ended": record.ended}
            for name in self._point_results:
                v = record.values.get(name)
                row[name] = (np.nan if cols[name].dtype != _STR else "") if v is None else v
            for name, ds in cols.items():
                ds.resize((i + 1,))
                ds[i] = row[name] if ds.dtype != _STR else str(row[name])
            self._file.flush()

    def _warn(self, c: _Column, msg: str) -> None:
        if not c.warned:
            c.warned = True
            log.warning("%s: result %r: %s (logged once)", self._path.name, c.name, msg)

    def flush(self) -> None:
        """Write buffered rows and flush the file (SWMR readers see them after this)."""
        with self._lock:
            self._check_open()
            self._flush_locked()

    def _check_open(self) -> None:
        if self._error is not None:
            raise StorageError(f"writing {self._path} failed earlier: {self._error}") from self._error
        if self._closed:
            raise StorageError(f"results file {self._path} is closed")

    def _flush_locked(self) -> None:
        t0 = time.perf_counter()
        n = self._pending
        images = [c for c in self._image_cols if c.dirty]
        if n == 0 and not images:
            self._last_flush = time.monotonic()
            return
        start, end = self._written, self._written + n
        try:
            if n:
                for c in self._spectrum_cols:
                    self._flush_spectrum(c, start, end)
                for c in (self._time_col, self._verdict_col, *self._scalar_cols, self._frame_col):
                    c.ds.resize((end,))
                    c.ds[start:end] = c.buf[:n]
            for c in images:
                img, frame_ds = c.last, c.frame_ds
                if img is None or frame_ds is None:  # dirty means a latest image is held
                    continue
                if c.ds.shape != img.shape:
                    c.ds.resize(img.shape)
                c.ds[...] = img
                frame_ds[()] = c.last_frame
                c.dirty, c.last = False, None
            self._file.flush()
        except Exception as exc:
            self._error = exc
            raise StorageError(f"writing {n} frames to {self._path} failed: {type(exc).__name__}: {exc}") from exc
        self._written = end
        self._pending = 0
        self._last_flush = time.monotonic()
        self.flush_count += 1
        self.flush_seconds += time.perf_counter() - t0

    def _flush_spectrum(self, c: _Column, start: int, end: int) -> None:
        rows = c.buf
        lengths = np.array([0 if r is None else r.size for r in rows], dtype=np.int32)
        longest = int(lengths.max()) if lengths.size else 0
        cur = c.ds.shape[1]
        if c.fixed_width is not None:
            width = c.fixed_width
            if longest > width:
                self._warn(c, f"spectrum of length {longest} is longer than the fixed width {width}; truncated")
        else:
            width = max(cur, longest)
        block = np.full((end - start, width), np.nan)
        for i, r in enumerate(rows):
            if r is not None and r.size:
                k = min(r.size, width)
                block[i, :k] = r[:k]
        c.ds.resize((end, width))
        if width:
            c.ds[start:end, :] = block
        if c.length_ds is not None:  # every spectrum column has one
            c.length_ds.resize((end,))
            c.length_ds[start:end] = lengths
        c.buf = []

    def _timer_loop(self) -> None:
        interval = self.flush_interval or 1.0
        while not self._timer_stop.wait(min(interval / 2, 0.5)):
            with self._lock:
                if self._closed or self._error is not None:
                    return
                if (self._pending or any(c.dirty for c in self._image_cols)) and \
                        time.monotonic() - self._last_flush >= interval:
                    try:
                        self._flush_locked()
                    except StorageError as exc:
                        log.error("%s", exc)
                        return

    # ---- end of scan ---------------------------------------------------------------------

    def finish(self, summary: Mapping[str, Any] | None = None, counters: Any = None, verdict: str | None = None,
               *, end_reason: str = "", provenance: Mapping[str, Any] | None = None) -> Path:
        """Write the last rows, close the SWMR file, then add end time, summary, counters,
        verdict and any late provenance (e.g. parameter changes). Returns the path."""
        with self._lock:
            self._check_open()
            self._flush_locked()
            self._close_locked(unregister=False)  # still ours until the summary is written
            end_time = _now_iso()
            try:
                with _open_rw(self._path) as f:
                    entry = f["entry"]
                    _write_value(entry, "end_time", end_time)
                    s = entry["summary"]
                    for k, v in (summary or {}).items():
                        _write_value(s, k, v)
                    _write_value(s, "frames", self._written)
                    if verdict is not None:
                        _write_value(s, "verdict", getattr(verdict, "name", None) or str(verdict))
                    if end_reason:
                        _write_value(s, "end_reason", str(end_reason))
                    if counters is not None:
                        is_instance = dataclasses.is_dataclass(counters) and not isinstance(counters, type)
                        cdict = dataclasses.asdict(counters) if is_instance else dict(counters)
                        if "counters" in s:
                            del s["counters"]
                        g = s.create_group("counters")
                        g.attrs["NX_class"] = "NXcollection"
                        for k, v in cdict.items():
                            _write_value(g, k, v)
                    if summary:
                        _write_value(s, "summary_json", to_json(summary))
                    codes = entry["results/verdict"][...]
                    if codes.size:
                        counts = np.bincount(codes, minlength=len(VERDICTS))
                        _write_value(s, "frame_verdict_counts_json",
                                     to_json({(VERDICTS[i] if i < len(VERDICTS) else str(i)): int(n)
                                              for i, n in enumerate(counts) if n}))
                    if provenance:
                        p = entry["provenance"]
                        for k, v in provenance.items():
                            _write_tree(p, str(k), v)
                    entry.attrs["dqm_complete"] = True
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(f"writing the run summary to {self._path} failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
            finally:
                self._unregister()
            self._finished = True
            return self._path

    def close(self) -> None:
        """Write buffered rows and close (an unfinished scan keeps no end_time). Idempotent."""
        with self._lock:
            if self._closed:
                return
            try:
                if self._error is None:
                    self._flush_locked()
            finally:
                self._close_locked()

    def _close_locked(self, unregister: bool = True) -> None:
        self._closed = True
        self._timer_stop.set()
        try:
            self._file.close()
        except Exception as exc:  # noqa: BLE001
            log.error("closing %s failed: %s", self._path, exc)
        finally:
            if unregister:
                self._unregister()

    def _unregister(self) -> None:
        _release_writer_lock(self._path, self._lock_fd)
        self._lock_fd = None
        with _OPEN_LOCK:
            _OPEN_WRITERS.discard(self._path)

    def __enter__(self) -> "ScanWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScanWriter({str(self._path)!r}, frames={self._appended}, written={self._written})"


__all__ = ["ScanWriter"]
