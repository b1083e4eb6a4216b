"""HDF5 results of a scan: one NeXus-style file per scan, readable live (SWMR).

Layout of ``<scan_id>.h5`` (``/`` has ``default=entry``)::

    /entry                      NXentry   title = scan id, entry_identifier, start_time,
                                          end_time (at finish); attrs dqm_mark* when marked
    /entry/results              NXprocess program = tango-dqm, version, date
        frame_id                int64 (n,)       the frame (or pulse) id of every row
        timestamp               float64 (n,)     frame timestamp, seconds since the epoch
        verdict                 uint8 (n,)       per-frame verdict code, see VERDICTS
        <scalar result>         float64 or int64 (n,), per the declared dtype
        <spectrum result>       float64 (n, width), see "Spectra" below
        <spectrum result>_length int32 (n,)      true length of each frame's spectrum
        <image result>          the last image written (2-D), see "Images" below
        <image result>_frame_id int64 ()         the frame id that image belongs to
    /entry/data                 NXdata    signal = the main scalar result, axes = frame_id,
                                          auxiliary_signals = the other scalars (hard links)
    /entry/summary              NXcollection  run summary values (at finish), counters/,
                                          verdict, end_reason, frames
    /entry/provenance           NXcollection  parameters (JSON + one dataset each), rois,
                                          thresholds, reference/background versions,
                                          versions (JSON), sources ...

Rules:

- Every row of the per-frame datasets is one frame. The length of ``frame_id`` is the
  number of frames; a live SWMR reader should use the smallest length over the datasets it
  reads (``frame_id`` is extended last in each block, so it is never longer than the rest).
- Missing values (a result absent from a frame, or ``None``): NaN for float datasets, the
  dataset's ``missing_value`` attribute (``-2**63``) for int64 datasets, ``""`` for strings.
- Spectra are stored as float64 (exact for integers up to 2**53) so that rows can be padded:
  the width is the longest spectrum seen so far, shorter rows are padded with NaN and
  earlier rows grow with NaN when a longer spectrum arrives; ``<name>_length`` keeps the true
  length. With a fixed width (``spectrum_widths``) longer spectra are truncated (logged once).
- Images are large: only the latest one is kept (rewritten at every flush), with its frame
  id. Run-level maps (e.g. a pixel map) belong in the run summary, where arrays are stored
  as datasets.
- SWMR: all objects are created up front from the result declarations, then
  ``swmr_mode`` is switched on. Rows are buffered in memory and written in blocks at most
  ``flush_interval`` seconds apart (a timer thread covers an idle stream) or every
  ``flush_frames`` frames, then the file is flushed. A writer killed with SIGKILL leaves a
  file holding every frame up to the last flush: it opens with
  ``h5py.File(path, "r", swmr=True)``, or with plain h5py after :func:`recover_scan_file`.
- While writing, the writer holds an flock on a hidden ``.<name>.h5.writer`` file next to
  the results file: a live writer and a killed one leave the same HDF5 "open for write"
  flags, and this lock (dropped by the kernel when the process dies) tells them apart
  (:func:`writer_alive`), so a running scan is never recovered, marked or moved.
- ``finish`` closes the SWMR file and reopens it (no SWMR) to add the summary, because a
  SWMR writer cannot create objects.
- Memory is bounded whatever the length of the scan: every dataset's chunk cache is
  ``CHUNK_CACHE_BYTES`` and the file's metadata cache at most ``METADATA_CACHE_BYTES`` (HDF5
  2.0's defaults, 8 MiB per dataset and 32 MiB, grew a Live run's RSS by hundreds of MB).
  One file per scan, so a Live run is one file that grows on disk at the per-frame row size.

Paths are confined to an output root directory (:func:`confined_path`); :func:`mark_scan`
flags or archives a finished scan, moves it with its report into ``root/flagged/`` or
``root/archive/`` and appends a JSON line to ``root/marks.log``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import json
import logging
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .files import confine
from .plugin import Result

try:
    import fcntl
except ImportError:  # not POSIX: liveness of writers in other processes is not detectable
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

VERDICTS = ("OK", "INSUFFICIENT", "WARNING", "ERROR", "STALE")
"""Per-frame verdict codes (as ``quality.Verdict``): the index is the uint8 stored in ``verdict``."""
VERDICT_CODES = {v: i for i, v in enumerate(VERDICTS)}
MARKS = {"flagged": "flagged", "archived": "archive"}
"""Operator marks and the sub-directory of the output root each one moves a scan into."""
MARKS_LOG = "marks.log"
INT_MISSING = np.iinfo(np.int64).min
RESERVED = ("frame_id", "timestamp", "verdict")
SCAN_SUFFIXES = (".h5", ".hdf5", ".nxs")

# Memory bounds of a writer (a Live run writes one file for hours). HDF5 2.0 gives every
# dataset its own 8 MiB chunk cache, and written chunks stay cached until that fills: with
# ~40 per-frame datasets that is ~320 MiB, reached only after a million frames, so RSS looked
# like it grew without end. Rows are written once, in blocks, so a chunk is only needed while
# it is being filled: a few chunks per dataset (the largest chunk below is 128 KiB), fully
# written chunks evicted first (w0=1). The metadata cache (up to 32 MiB by default) grows
# with the chunk index of the spectra (a B-tree: two unlimited dimensions) and its entries
# take ~13x their counted size in memory, so it is capped too. Both are per open file.
CHUNK_CACHE_BYTES = 128 * 1024
CHUNK_CACHE_SLOTS = 31  # a prime, well above the chunks that fit
METADATA_CACHE_BYTES = 256 * 1024

_STR = h5py.string_dtype()
_OPEN_WRITERS: set[Path] = set()  # files this process is writing (HDF5 would share their handle)
_OPEN_LOCK = threading.Lock()


class StorageError(RuntimeError):
    """Writing or reading a results file failed; the message says what and where."""


# ---- paths ---------------------------------------------------------------------------------


def confined_path(root: str | os.PathLike, name: str | os.PathLike) -> Path:
    """``root / name`` with symlinks resolved, refused (ValueError) unless it lies inside ``root``.

    ``name`` may be relative to ``root`` or absolute. The root itself is refused too: a
    results file or a mark always names something inside it.
    """
    if root is None or str(root) == "":
        raise ValueError("no output directory configured (set OutputDirectory)")
    if name is None or str(name) == "":
        raise ValueError("empty file name")
    target = confine(name, [root], "output directory")  # the one confinement rule (tango_dqm.files)
    if target == Path(root).expanduser().resolve():
        raise ValueError(f"path {str(name)!r} is the output directory itself; only files inside it are allowed, "
                         "none at or outside the output directory")
    return target


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(scan_id: str) -> str:
    """``scan_id`` as a single safe file-name component (other characters become ``_``)."""
    name = _UNSAFE.sub("_", str(scan_id)).lstrip(".")
    return name or "scan"


def scan_file_name(scan_id: str) -> str:
    return safe_name(scan_id) + ".h5"


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="milliseconds")


# ---- value conversion ----------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of ``value`` (numpy types, tuples, paths, dataclasses ...)."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else str(v)  # JSON has no NaN/inf
    if isinstance(value, np.ndarray):
        if value.size > 1000:  # large arrays are datasets of their own, not JSON
            return f"<array shape={list(value.shape)} dtype={value.dtype}>"
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "as_list"):  # Roi
        return _jsonable(value.as_list())
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return str(value)


def to_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True)


def _h5_name(key: Any) -> str:
    name = str(key).replace("/", "_").strip()
    return name if name not in ("", ".", "..") else f"_{name or 'empty'}"


def _as_dataset_value(value: Any) -> tuple[Any, bool]:
    """(value for create_dataset, stored_as_json)."""
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value), False
    if isinstance(value, (int, np.integer)):
        return np.int64(value) if -2**63 <= int(value) < 2**63 else str(value), False
    if isinstance(value, (float, np.floating)):
        return np.float64(value), False
    if isinstance(value, str):
        return value, False
    if hasattr(value, "as_list"):  # Roi
        value = value.as_list()
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError):
            arr = None
        if arr is not None:
            if arr.dtype.kind in "biuf":
                return arr, False
            if arr.dtype.kind == "U":
                return np.array(arr.tolist(), dtype=_STR), False
            if arr.dtype.kind == "c":
                return arr.astype(np.complex128), False
    return to_json(value), True


def _write_value(group: h5py.Group, key: Any, value: Any) -> None:
    """One summary/provenance item as a dataset (JSON string when not an array or scalar)."""
    name = _h5_name(key)
    if value is None:
        return
    data, as_json = _as_dataset_value(value)
    if name in group:
        del group[name]
    if isinstance(data, np.ndarray) and data.size > 65536 and data.dtype.kind in "biuf":
        ds = group.create_dataset(name, data=data, chunks=True, compression="gzip", compression_opts=1)
    else:
        ds = group.create_dataset(name, data=data, dtype=_STR if isinstance(data, str) else None)
    if as_json:
        ds.attrs["encoding"] = "json"
    if name != str(key):
        ds.attrs["original_name"] = str(key)


def _write_tree(group: h5py.Group, key: str, value: Any, depth: int = 0) -> None:
    """A provenance item: dicts become groups (plus ``<key>_json``), the rest datasets."""
    name = _h5_name(key)
    if isinstance(value, Mapping) and depth < 3:
        if name in group:
            del group[name]
        sub = group.create_group(name)
        sub.attrs["NX_class"] = "NXcollection"
        for k, v in value.items():
            _write_tree(sub, str(k), v, depth + 1)
        if depth == 0:
            _write_value(group, f"{name}_json", to_json(value))
    else:
        _write_value(group, name, value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


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

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.ds: h5py.Dataset | None = None
        self.buf: Any = None
        self.fill: Any = None
        self.length_ds: h5py.Dataset | None = None
        self.fixed_width: int | None = None
        self.warned = False
        self.last: np.ndarray | None = None
        self.last_frame = -1
        self.frame_ds: h5py.Dataset | None = None
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
        from . import __version__

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
            c = _Column(name, "scalar")
            dtype = np.dtype(dtype)
            chunk = max(256, min(16384, 65536 // max(1, dtype.itemsize)))
            c.ds = res.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(chunk,), dtype=dtype,
                                      fillvalue=fill if dtype != _STR else None)
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
                c = _Column(name, "spectrum")
                width = self._spectrum_widths.get(name)
                if width is not None:
                    c.fixed_width = int(width)
                    chunks = (max(1, min(1024, 65536 // max(1, c.fixed_width))), max(1, c.fixed_width))
                    c.ds = res.create_dataset(name, shape=(0, c.fixed_width), maxshape=(None, c.fixed_width),
                                              chunks=chunks, dtype=np.float64, fillvalue=np.nan)
                else:
                    c.ds = res.create_dataset(name, shape=(0, 0), maxshape=(None, None), chunks=(32, 256),
                                              dtype=np.float64, fillvalue=np.nan)
                c.ds.attrs.update({k: v for k, v in meta.items() if v})
                c.ds.attrs["interpretation"] = "spectrum"
                c.ds.attrs["padding"] = "NaN; true length in " + name + "_length"
                c.length_ds = res.create_dataset(f"{name}_length", shape=(0,), maxshape=(None,), chunks=(4096,),
                                                 dtype=np.int32, fillvalue=0)
                c.buf = []
            else:  # image: only the latest one is kept
                c = _Column(name, "image")
                dtype = r.dtype if r.dtype.kind in "biuf" else np.dtype(np.float64)
                c.ds = res.create_dataset(name, shape=(0, 0), maxshape=(None, None), chunks=(128, 128),
                                          dtype=dtype, fillvalue=np.nan if dtype.kind == "f" else 0)
                c.ds.attrs.update({k: v for k, v in meta.items() if v})
                c.ds.attrs["interpretation"] = "image"
                c.ds.attrs["content"] = "the latest image written; its frame id is in " + name + "_frame_id"
                c.frame_ds = res.create_dataset(f"{name}_frame_id", data=np.int64(-1))
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

        summary = entry.create_group("summary")
        summary.attrs["NX_class"] = "NXcollection"

        prov = entry.create_group("provenance")
        prov.attrs["NX_class"] = "NXcollection"
        provenance = dict(provenance)
        if "versions" not in provenance:
            from .versions import deployed_versions
            provenance["versions"] = deployed_versions()
        for key, value in provenance.items():
            _write_tree(prov, str(key), value)
        _write_value(prov, "json", to_json(provenance))
        prov.create_dataset("results_declared_json", data=to_json(
            {n: {"analysis": o, "kind": r.kind, "dtype": str(r.dtype), "unit": r.unit, "label": r.label}
             for n, (o, r) in self.decl.items()}), dtype=_STR)
        prov.create_dataset("main_result", data=signal, dtype=_STR)

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
                img = c.last
                if c.ds.shape != img.shape:
                    c.ds.resize(img.shape)
                c.ds[...] = img
                c.frame_ds[()] = c.last_frame
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
                        cdict = dataclasses.asdict(counters) if dataclasses.is_dataclass(counters) else dict(counters)
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


# ---- opening files written by others --------------------------------------------------------


def _writer_lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.writer")


def _acquire_writer_lock(path: Path) -> int | None:
    """Hold an exclusive flock on a hidden ``.<name>.writer`` file while writing.

    A SWMR writer releases HDF5's own file lock, and a killed writer leaves the same
    "open for write" flags as a live one; this lock tells them apart (the kernel drops it
    when the process dies). HDF5 readers never touch it.
    """
    if fcntl is None:
        return None
    fd = os.open(_writer_lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StorageError(f"another process is writing {path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release_writer_lock(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    try:
        _writer_lock_path(path).unlink(missing_ok=True)
    finally:
        os.close(fd)


def writer_alive(path: str | os.PathLike) -> bool:
    """True while a ScanWriter (in this or another process on this host) is writing ``path``."""
    path = Path(path).resolve()
    with _OPEN_LOCK:
        if path in _OPEN_WRITERS:
            return True
    if fcntl is None:
        return False
    try:
        fd = os.open(_writer_lock_path(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the probe lock
    return False


def _check_not_being_written(path: Path) -> None:
    if writer_alive(path):
        raise StorageError(f"{path} is still being written (its scan is running); stop the scan first")


def _is_lock_error(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK) or "unable to lock" in str(exc)


def _is_open_for_write(exc: BaseException) -> bool:
    return "already open for write" in str(exc)


class _open_rw:
    """Open for writing without SWMR; tolerate SWMR/plain readers holding the file lock."""

    def __init__(self, path: Path):
        self.path = path
        self.f: h5py.File | None = None

    def __enter__(self) -> h5py.File:
        try:
            self.f = h5py.File(self.path, "r+", libver="latest")
        except OSError as exc:
            if not _is_lock_error(exc):
                self._refuse(exc)
            # A reader holds HDF5's lock. Readers never write, so writing is safe.
            try:
                self.f = h5py.File(self.path, "r+", libver="latest", locking=False)
            except OSError as exc2:
                self._refuse(exc2)
            log.info("%s: a reader holds the file lock; writing without locking", self.path.name)
        return self.f

    def _refuse(self, exc: OSError) -> None:
        if _is_open_for_write(exc):
            if writer_alive(self.path):
                raise StorageError(f"{self.path} is still being written (its scan is running); "
                                   "stop the scan first") from exc
            raise StorageError(f"{self.path} was left open by a writer that stopped; "
                               "recover_scan_file repairs it") from exc
        raise StorageError(f"cannot open {self.path} for writing: {exc}") from exc

    def __exit__(self, *exc: Any) -> None:
        if self.f is not None:
            self.f.close()


def open_scan(path: str | os.PathLike) -> h5py.File:
    """Open a results file for reading: finished, being written (SWMR) or left by a killed writer."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if not (_is_open_for_write(exc) or _is_lock_error(exc)):
            raise StorageError(f"cannot open results file {path}: {exc}") from exc
    try:
        return h5py.File(path, "r", swmr=True)
    except OSError as exc:
        raise StorageError(f"cannot open results file {path}: {exc}") from exc


def recover_scan_file(path: str | os.PathLike) -> bool:
    """Make a file left by a killed SWMR writer openable by any HDF5 reader again.

    Copies everything readable (every frame up to the last flush) into a fresh file, marks
    ``/entry`` with ``dqm_recovered`` and replaces the original. Returns False when the file
    needed no repair. Refuses (StorageError) a file whose writer is still running.
    """
    path = Path(path)
    _check_not_being_written(path)
    try:
        with h5py.File(path, "r", locking=False):  # a read-only probe; readers may hold HDF5's lock
            _writer_lock_path(path).unlink(missing_ok=True)
            return False
    except OSError as exc:
        if not _is_open_for_write(exc):
            raise StorageError(f"cannot open {path}: {exc}") from exc
    tmp = path.with_name(f".{path.name}.recover")
    try:
        with h5py.File(path, "r", swmr=True) as src, h5py.File(tmp, "w", libver="latest") as dst:
            for k, v in src.attrs.items():
                dst.attrs[k] = v
            for name in src:
                src.copy(src[name], dst, name=name)
            if "entry" in dst:
                dst["entry"].attrs["dqm_recovered"] = _now_iso()
                dst["entry"].attrs["dqm_complete"] = False
        os.replace(tmp, path)
        _writer_lock_path(path).unlink(missing_ok=True)  # left behind by the killed writer
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"recovering {path} failed: {type(exc).__name__}: {exc}") from exc
    log.warning("recovered %s (its writer stopped without closing it)", path)
    return True


def read_scan_info(path: str | os.PathLike) -> dict[str, Any]:
    """The few values a run list needs, read without loading per-frame data."""
    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "scan_id": path.stem, "start_time": "", "end_time": "",
                            "frames": 0, "verdict": "", "end_reason": "", "mark": "", "mark_reason": "",
                            "mark_time": "", "complete": False, "recovered": "", "running": False,
                            "error": ""}
    try:
        with open_scan(path) as f:
            entry = f.get("entry")
            if entry is None:
                info["error"] = "no /entry group"
                return info

            def get(name: str, default: Any = "") -> Any:
                obj = entry.get(name)
                if isinstance(obj, h5py.Dataset):
                    return _decode(obj[()])
                return default

            info["scan_id"] = get("title", path.stem)
            info["start_time"] = get("start_time")
            info["end_time"] = get("end_time")
            fid = entry.get("results/frame_id")
            info["frames"] = int(fid.shape[0]) if fid is not None else 0
            info["verdict"] = get("summary/verdict")
            info["end_reason"] = get("summary/end_reason")
            for k in ("mark", "mark_reason", "mark_time"):
                info[k] = _decode(entry.attrs.get(f"dqm_{k}", ""))
            info["complete"] = bool(entry.attrs.get("dqm_complete", False))
            info["recovered"] = _decode(entry.attrs.get("dqm_recovered", ""))
    except (StorageError, OSError, KeyError, ValueError) as exc:
        info["error"] = str(exc)
    info["running"] = not info["complete"] and writer_alive(path)
    return info


#: where a finished scan records its lost frames: int64 (n, 2), inclusive (first, last) id ranges
LOST_FRAMES = "entry/dqm/lost_frames"


def write_lost_frames(path: str | os.PathLike, ranges: Any) -> None:
    """Record the lost frame ids of a finished scan as ``/entry/dqm/lost_frames`` (see LOST_FRAMES)."""
    arr = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)
    try:
        with _open_rw(Path(path)) as f:
            if LOST_FRAMES in f:
                del f[LOST_FRAMES]
            g = f.require_group("entry/dqm")
            g.attrs["NX_class"] = "NXcollection"
            ds = g.create_dataset("lost_frames", data=arr, maxshape=(None, 2))
            ds.attrs["description"] = "frames lost in the scan (dropped, never arrived): inclusive id ranges"
            ds.attrs["columns"] = "first last"
            ds.attrs["frames"] = int((arr[:, 1] - arr[:, 0] + 1).sum()) if arr.size else 0
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"writing the lost frames to {path} failed: {type(exc).__name__}: {exc}") from exc


def read_lost_frames(f: h5py.File) -> np.ndarray:
    """The lost frame id ranges of an open results file (empty when none were recorded)."""
    ds = f.get(LOST_FRAMES)
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[1] != 2 or ds.dtype.kind not in "iu":
        return np.zeros((0, 2), np.int64)
    return ds[...].astype(np.int64)


# ---- operator marks ------------------------------------------------------------------------


def mark_scan(root: str | os.PathLike, scan_file: str | os.PathLike, mark: str, reason: str = "",
              *, user: str | None = None) -> Path:
    """Flag (bad) or archive (good) a finished scan; returns the scan file's new path.

    Writes ``dqm_mark``, ``dqm_mark_reason`` and ``dqm_mark_time`` on ``/entry``, moves the
    file with its report (``<stem>.html`` and ``<stem>_plots/`` next to it) into
    ``root/flagged/`` or ``root/archive/``, and appends one JSON line to ``root/marks.log``.
    Refuses (ValueError) paths outside ``root`` and unknown marks, (StorageError) a scan still
    being written, (FileExistsError) a name already taken in the target directory. A file
    left by a killed writer is recovered first. Regenerate the report afterwards (it shows
    the mark), e.g. ``ReportWorker.submit(new_path)``.
    """
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {sorted(MARKS)}, got {mark!r}")
    root_r = Path(root).expanduser().resolve()
    if not root_r.is_dir():
        raise ValueError(f"output directory {root_r} does not exist")
    src = confined_path(root_r, scan_file)
    if not src.is_file():
        raise FileNotFoundError(f"scan file {src} does not exist")
    if src.suffix.lower() not in SCAN_SUFFIXES:
        raise ValueError(f"{src.name} is not a scan results file ({', '.join(SCAN_SUFFIXES)})")
    dest_dir = confined_path(root_r, MARKS[mark])
    dest = confined_path(root_r, Path(MARKS[mark]) / src.name)
    moving = src != dest
    if moving and dest.exists():
        raise FileExistsError(f"{dest} already exists; not overwriting it")
    recover_scan_file(src)
    now = _now_iso()
    reason = str(reason or "")
    with _open_rw(src) as f:
        entry = f.require_group("entry")
        entry.attrs["dqm_mark"] = mark
        entry.attrs["dqm_mark_reason"] = reason
        entry.attrs["dqm_mark_time"] = now
        scan_id = _decode(entry["title"][()]) if "title" in entry else src.stem
    moved: list[str] = []
    if moving:
        dest_dir.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        moved.append(src.name)
        stem = safe_name(src.stem)  # the report's name (see report.write_report)
        for extra in (src.with_name(stem + ".html"), src.with_name(stem + "_plots")):
            if extra.exists() and not extra.is_symlink():
                target = dest_dir / extra.name
                if target.exists():
                    shutil.rmtree(target) if target.is_dir() else target.unlink()
                shutil.move(str(extra), str(target))
                moved.append(extra.name)
    if user is None:
        try:
            import getpass
            user = getpass.getuser()
        except Exception:  # noqa: BLE001 - no passwd entry in a container
            user = ""
    line = {"time": now, "scan_id": scan_id, "mark": mark, "reason": reason, "user": user,
            "from": str(src.relative_to(root_r)), "to": str(dest.relative_to(root_r)), "moved": moved}
    fd = os.open(root_r / MARKS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, sort_keys=True) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("scan %s %s (%s): %s", scan_id, mark, reason, dest)
    return dest


def read_marks_log(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Every mark ever made under ``root``, oldest first (unparsable lines are skipped)."""
    out = []
    p = Path(root) / MARKS_LOG
    if p.is_file():
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def scan_files(root: str | os.PathLike) -> list[Path]:
    """Results files in ``root`` and its ``flagged/`` and ``archive/`` sub-directories."""
    root = Path(root)
    found: list[Path] = []
    for folder in (root, *(root / d for d in MARKS.values())):
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if p.suffix.lower() in SCAN_SUFFIXES and p.is_file() and not p.name.startswith("."))
    return found


__all__ = [
    "MARKS", "MARKS_LOG", "ScanWriter", "StorageError", "VERDICTS", "VERDICT_CODES", "confined_path",
    "mark_scan", "open_scan", "read_marks_log", "read_scan_info", "recover_scan_file", "safe_name",
    "scan_file_name", "scan_files", "to_json", "writer_alive", "LOST_FRAMES", "write_lost_frames",
    "read_lost_frames",
]
