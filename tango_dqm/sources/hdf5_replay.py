"""``hdf5:///abs/file.h5?dataset=/entry/data/data``: replay of a recorded HDF5 dataset.

URI form::

    hdf5:///abs/path/file.h5[?dataset=/entry/data/data][&ids=/entry/data/frame_id]
                            [&rate=FRAMES_PER_S][&block=N][&series=NAME]

- Frames are the entries along the dataset's first axis (``dataset`` default
  ``/entry/data/data``); a 3-D dataset gives 2-D images, a 2-D one waveforms.
- ``ids``: path of a 1-D integer dataset with one frame id per frame (at least as long
  as the data); it must exist when given. Without ``ids`` the frame id is the index.
- ``rate``: frames per second at most (default: as fast as the consumer takes them).
- ``block``: frames read per h5py call (default: whole HDF5 chunks, about 1 MiB). Frames
  are views into the block just read; a new block is allocated per read, never reused,
  so frames still queued in the engine stay valid.
- A dataset stored as ``tango-dqm record`` writes it (one unfiltered chunk per frame, native
  byte order) is read chunk by chunk with HDF5's direct chunk read: one copy of the stored
  bytes into a new read-only buffer, about twice as fast as a selection read. Each chunk's
  stored size is checked against the frame's before it is read; a chunk never written
  (a gap in a file still growing) is read the general way (HDF5's fill value).
- ``expected_frames`` and ``image_shape`` are read at construction when the file is
  readable then (so ROIs can be checked at Init), and again at open.
- The end of the data yields SeriesEnd.

Errors: a missing, truncated or non-HDF5 file, a missing dataset or a dataset that is not
an array of frames makes ``open()`` raise SourceError naming the file and the problem. A
block that cannot be read mid-file (corrupt chunk, filter failure) is re-read frame by
frame: the frames that fail are yielded as ``BadInput("read_error")`` and the replay goes on.

``hdf5plugin`` is imported so files written with detector compressions (bitshuffle/LZ4,
LZ4, Blosc, Zstd, ...) open.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - registers bslz4 & co. with HDF5
import numpy as np

from ..frames import BadInput, Frame, SeriesEnd
from .base import Source, SourceError, SourceItem, SourceSpec

log = logging.getLogger(__name__)

DEFAULT_DATASET = "/entry/data/data"
TARGET_BLOCK_BYTES = 1 << 20  # measured: larger blocks read slower (fresh pages, cache)
IDS_BLOCK = 4096  # frame ids read at a time


def block_frames(ds: h5py.Dataset, requested: int = 0) -> int:
    """Frames per h5py read: ``requested``, else whole chunks of about TARGET_BLOCK_BYTES (at least one chunk)."""
    if requested > 0:
        return requested
    frame_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    n = max(1, TARGET_BLOCK_BYTES // frame_bytes)
    chunk = ds.chunks[0] if ds.chunks else 1
    return max(chunk, -(-n // chunk) * chunk)  # a whole number of chunks along the frame axis


def direct_chunks(ds: h5py.Dataset) -> bool:
    """Whether every frame is one unfiltered chunk of native byte order, so that its stored
    bytes are the frame (H5Dread_chunk, without HDF5's selection machinery)."""
    try:
        return (ds.chunks == (1, *ds.shape[1:]) and ds.dtype.isnative
                and ds.id.get_create_plist().get_nfilters() == 0)
    except (OSError, RuntimeError, ValueError, TypeError):
        return False


def check_frames_dataset(ds: Any, where: str) -> h5py.Dataset:
    """The dataset as an array of frames, or SourceError saying why it is not one."""
    if not isinstance(ds, h5py.Dataset):
        raise SourceError(f"{where} is a {type(ds).__name__}, not a dataset")
    if ds.ndim < 2:
        raise SourceError(f"{where} has shape {ds.shape}: expected frames along the first axis "
                          "(2-D for waveforms, 3-D for images)")
    if ds.dtype.kind not in "uif":
        raise SourceError(f"{where} has dtype {ds.dtype}, expected integers or floats")
    return ds


def check_ids_dataset(ids: Any, where: str) -> h5py.Dataset:
    if not isinstance(ids, h5py.Dataset) or ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise SourceError(f"{where} must be a 1-D integer dataset of frame ids, got "
                          f"{getattr(ids, 'shape', type(ids).__name__)} {getattr(ids, 'dtype', '')}")
    return ids


class Hdf5ReplaySource(Source):
    """Replays one dataset of one HDF5 file, block by block."""

    scheme = "hdf5"

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        self.path = spec.path
        if spec.host or not self.path or not os.path.isabs(self.path):
            raise SourceError(f"source {spec.uri!r}: expected an absolute file path, e.g. "
                              "hdf5:///data/scan_0001.h5?dataset=/entry/data/data")
        self.dataset = spec.q("dataset", DEFAULT_DATASET)
        self.ids_path = spec.query.get("ids")
        self.rate = spec.q_float("rate", 0.0)
        self.block = spec.q_int("block", 0)
        self.series = spec.q("series", os.path.splitext(os.path.basename(self.path))[0])
        if self.rate < 0 or self.block < 0:
            raise SourceError(f"source {spec.uri!r}: rate and block must be >= 0")
        self._file: h5py.File | None = None
        self._ds: h5py.Dataset | None = None
        self._ids: h5py.Dataset | None = None
        self._direct = False
        self._frame_layout: tuple[tuple[int, ...], int, tuple[int, ...]] = ((), 0, ())
        self._ids_cache: tuple[int, np.ndarray] | None = None  # (first index, ids read from there)
        try:  # best effort: lets the engine check ROIs against the shape at Init
            with h5py.File(self.path, "r", locking=False) as f:
                ds = check_frames_dataset(f[self.dataset], self.dataset)
                self.expected_frames = int(ds.shape[0])
                self.image_shape = tuple(int(v) for v in ds.shape[1:])
                self.image_dtype = ds.dtype.name
        except (OSError, KeyError, SourceError, ValueError):
            pass  # reported by open()

    def open(self) -> None:
        where = f"source {self.spec.uri!r}"
        try:
            f = h5py.File(self.path, "r", locking=False)
        except FileNotFoundError:
            raise SourceError(f"{where}: file {self.path} does not exist") from None
        except OSError as exc:
            raise SourceError(f"{where}: cannot open {self.path} as HDF5 (truncated, not HDF5 or unreadable): "
                              f"{exc}") from None
        try:
            try:
                obj = f[self.dataset]
            except KeyError:
                raise SourceError(f"{where}: {self.path} has no dataset {self.dataset!r}; "
                                  f"top-level entries: {sorted(f.keys())}") from None
            except OSError as exc:
                raise SourceError(f"{where}: cannot read {self.dataset!r} in {self.path}: {exc}") from None
            ds = check_frames_dataset(obj, f"{where}: {self.dataset!r} in {self.path}")
            ids = None
            if self.ids_path:
                try:
                    ids = check_ids_dataset(f[self.ids_path], f"{where}: ids {self.ids_path!r}")
                except KeyError:
                    raise SourceError(f"{where}: {self.path} has no ids dataset {self.ids_path!r}") from None
                if ids.shape[0] < ds.shape[0]:
                    raise SourceError(f"{where}: ids {self.ids_path!r} has {ids.shape[0]} entries for "
                                      f"{ds.shape[0]} frames")
        except BaseException:
            f.close()
            raise
        self._file, self._ds, self._ids = f, ds, ids
        self._direct = direct_chunks(ds)
        shape = tuple(ds.shape[1:])
        self._frame_layout = (shape, int(np.prod(shape, dtype=np.int64)) * ds.dtype.itemsize, (0,) * len(shape))
        self._ids_cache = None
        self.expected_frames = int(ds.shape[0])
        self.image_shape = tuple(int(v) for v in ds.shape[1:])

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        ds, ids = self._ds, self._ids
        assert ds is not None, "open() first"
        n = ds.shape[0]
        step = block_frames(ds, self.block)
        period = 1.0 / self.rate if self.rate else 0.0
        t0 = time.monotonic()
        index = 0
        while index < n and not stop.is_set():
            end = min(n, index + step)
            frames, frame_ids = self._read_block(ds, ids, index, end)
            for k, data in enumerate(frames):
                i = index + k
                while period:  # rate limit, staying responsive to Stop
                    delay = t0 + i * period - time.monotonic()
                    if delay <= 0 or stop.is_set():
                        break
                    stop.wait(min(delay, 0.1))
                    if delay > 0.1:
                        yield None
                if stop.is_set():
                    return
                if isinstance(data, BadInput):
                    data.frame_id = int(frame_ids[k])  # the id is accounted as bad, not also as a gap
                    yield data
                else:
                    yield Frame(data, int(frame_ids[k]), time.time(), self.name, self.series)
            index = end
        if not stop.is_set():
            yield SeriesEnd(self.name, self.series)

    def _read_block(self, ds: h5py.Dataset, ids: h5py.Dataset | None, start: int,
                    end: int) -> tuple[list[np.ndarray | BadInput], np.ndarray]:
        frame_ids = self._frame_ids(ids, start, end)
        if self._direct:
            return self._read_chunks(ds, start, end), frame_ids
        try:
            block = ds[start:end]
            return list(block), frame_ids
        except (OSError, RuntimeError, ValueError):
            pass
        out: list[np.ndarray | BadInput] = []  # the block failed: find the bad frames one by one
        for i in range(start, end):
            try:
                out.append(ds[i])
            except (OSError, RuntimeError, ValueError) as exc:
                out.append(BadInput("read_error", f"{self.path} {self.dataset}[{i}]: {exc}", self.name))
        return out, frame_ids

    def _frame_ids(self, ids: h5py.Dataset | None, start: int, end: int) -> np.ndarray:
        """Ids of frames ``start:end``, read IDS_BLOCK at a time (a selection read per frame
        cost a fifth of a replay's reading)."""
        if ids is None:
            return np.arange(start, end)
        have = self._ids_cache
        if have is None or start < have[0] or end > have[0] + len(have[1]):
            try:
                have = self._ids_cache = (start, ids[start:max(end, start + IDS_BLOCK)])
            except (OSError, RuntimeError, ValueError):
                self._ids_cache = None
                try:  # a damaged chunk of ids: only this block's ids are lost
                    return ids[start:end]
                except (OSError, RuntimeError, ValueError) as exc:
                    log.warning("%s: cannot read ids %d:%d (%s); using indices", self.path, start, end, exc)
                    return np.arange(start, end)
        return have[1][start - have[0]:end - have[0]]

    def _read_chunks(self, ds: h5py.Dataset, start: int, end: int) -> list[np.ndarray | BadInput]:
        """Frames ``start:end`` of a one-chunk-per-frame dataset, each its chunk's stored bytes."""
        shape, nbytes, tail = self._frame_layout
        out: list[np.ndarray | BadInput] = []
        for i in range(start, end):
            coord = (i, *tail)
            try:
                info = ds.id.get_chunk_info_by_coord(coord)
                if info.byte_offset is not None and info.size == nbytes and info.filter_mask == 0:
                    _, raw = ds.id.read_direct_chunk(coord)
                    if len(raw) == nbytes:
                        out.append(np.frombuffer(raw, ds.dtype).reshape(shape))  # read-only: frames never change
                        continue
                out.append(ds[i])  # not written yet (fill value) or stored otherwise: the general read
            except (OSError, RuntimeError, ValueError) as exc:
                out.append(BadInput("read_error", f"{self.path} {self.dataset}[{i}]: {exc}", self.name))
        return out

    def close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            self._ds = self._ids = None
            try:
                f.close()
            except Exception:  # noqa: BLE001
                log.debug("closing %s failed", self.path, exc_info=True)
