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
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..files import confine
from ..quality.verdicts import Verdict

try:
    import fcntl
except ImportError:  # not POSIX: liveness of writers in other processes is not detectable
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

VERDICTS = tuple(v.name for v in Verdict)  # ("OK", "INSUFFICIENT", "WARNING", "ERROR", "STALE")
"""Per-frame verdict codes (``quality.Verdict`` names): the index is the uint8 stored in ``verdict``."""
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


class _OwnHandle(h5py.File):
    """A read-only file opened through a Python file object, which it closes with itself.

    HDF5 shares one handle among the opens of a file in a process: a reader here would keep
    the writer's (or Flag/Archive's) re-open for writing from succeeding ("already open for
    read-only"). Through a file object the reader has a handle of its own, as another process
    has, and sees the file as of the writer's last flush."""

    def __init__(self, path: Path):
        fobj = path.open("rb")
        try:
            super().__init__(fobj, "r")
        except BaseException:
            fobj.close()
            raise
        self._fobj = fobj

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._fobj.close()


def open_scan(path: str | os.PathLike) -> h5py.File:
    """Open a results file for reading: finished, being written (SWMR) or left by a killed writer."""
    path = Path(path)
    try:
        return _OwnHandle(path)
    except OSError:
        pass  # e.g. a file left by a killed writer: HDF5's own driver knows more ways to open it
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



__all__ = [
    "INT_MISSING", "LOST_FRAMES", "MARKS", "MARKS_LOG", "StorageError", "VERDICTS", "VERDICT_CODES", "confined_path",
    "open_scan", "read_lost_frames", "read_scan_info", "recover_scan_file", "safe_name", "scan_file_name", "to_json",
    "write_lost_frames", "writer_alive",
]
