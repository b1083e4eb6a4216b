"""``watch:///abs/dir?pattern=*.h5&dataset=/entry/data/data``: a directory of growing HDF5 files.

URI form::

    watch:///abs/dir[?pattern=*.h5][&dataset=/entry/data/data][&ids=/entry/data/frame_id]
                    [&poll=0.2][&idle=SECONDS][&state=/abs/state.json][&bad_after=10]
                    [&block=N][&series=NAME]

Every frame of every matching file is read exactly once, none sampled away: new files,
and frames appended to files already seen (by SWMR writers or by writers that reopen the
file to append). Files are visited in name order at every poll, so a writer that finishes
one file before starting the next is read in file name order.

- ``pattern``: shell pattern of the file names (default ``*.h5``); sub-directories are
  not searched. ``dataset`` (default ``/entry/data/data``): frames along the first axis.
- Frame ids: a global running index over all frames read (in read order), unless the file
  has the ``ids`` dataset (1-D integers), which then gives the ids of its frames; only
  frames that have both data and an id are read.
- Files are opened read-only with ``swmr=True`` and without HDF5 file locking, so the
  watcher never blocks a writer. While a file keeps changing its handle stays open and the
  datasets are refreshed (``Dataset.refresh()``) at every poll; a file unchanged for
  ``max(2 s, 5 polls)`` is closed, and reopened when its size or mtime changes. (A
  non-SWMR writer that appends with the file open gives no consistency guarantee to any
  reader; the watcher then retries until what it reads is readable.)
- A file that cannot be opened yet (being created), has no dataset yet, or fails to read
  is retried at every poll, never skipped. Only when it has stayed unchanged for
  ``bad_after`` seconds (default 10) is it counted once as BadInput (``unreadable_file``,
  ``missing_dataset``, ``bad_dataset``, or ``read_error`` for one frame, which is then
  skipped; its id is used up and carried by the BadInput, so the engine counts it bad, once).
  It is retried when it changes.
- End: live watchers never end. In a scan, the series ends (SeriesEnd) once ``idle``
  seconds pass without a new frame (default: never; Stop ends it).

Position (frames already read per file): ``state`` is a dict
``{"files": {file_name: n_read}, "next_id": N}`` that can be set before ``open()`` and read
at any time (a copy). ``?state=/abs/path.json`` also loads it at open (if the file exists)
and saves it (atomically) after every poll that read frames and at close, so a restarted
watcher (Stop then Start within a scan, or a restarted server) continues where it stopped
instead of re-reading. Delete the state file (or use a new path) to read everything again.
A frame counts as read when the consumer asks for the next item after it (the generator is
resumed), so a frame handed out but never taken is read again after a restart.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h5py
import hdf5plugin  # noqa: F401 - registers bslz4 & co. with HDF5

from ..frames import BadInput, Frame, SeriesEnd
from .base import Source, SourceError, SourceItem, SourceSpec
from .hdf5_replay import DEFAULT_DATASET, block_frames, check_frames_dataset, check_ids_dataset

log = logging.getLogger(__name__)

#: what h5py raises for unreadable files and datasets
H5_ERRORS = (OSError, RuntimeError, ValueError)


@dataclass
class _Track:
    """What the watcher knows about one file."""

    name: str
    path: str
    n_read: int = 0
    handle: h5py.File | None = None
    ds: h5py.Dataset | None = None
    ids: h5py.Dataset | None = None
    sig: tuple[int, int] | None = None  # (size, mtime_ns) at the last poll
    changed_at: float = 0.0  # monotonic time the signature last changed
    checked_sig: tuple[int, int] | None = None  # signature when last read completely
    failing: str = ""  # why the last attempt failed ("" when it did not)
    logged: str = ""  # failure kind last logged (logged once until the file makes progress)
    opens: int = 0  # successful opens (a SWMR file being written is opened once and refreshed)
    reported_sig: tuple[int, int] | None = None  # signature at which a failure was reported


class WatchDirSource(Source):
    """Reads new frames from the HDF5 files of a directory (see the module docstring)."""

    scheme = "watch"

    def __init__(self, spec: SourceSpec, state: dict[str, Any] | None = None):
        super().__init__(spec)
        self.directory = spec.path
        if spec.host or not self.directory or not os.path.isabs(self.directory):
            raise SourceError(f"source {spec.uri!r}: expected an absolute directory, e.g. "
                              "watch:///data/scan_0001?pattern=*.h5&dataset=/entry/data/data")
        self.pattern = spec.q("pattern", "*.h5")
        self.dataset = spec.q("dataset", DEFAULT_DATASET)
        self.ids_path = spec.query.get("ids") or None
        self.poll = spec.q_float("poll", 0.2)
        self.idle = spec.q_float("idle", 0.0)
        self.bad_after = spec.q_float("bad_after", 10.0)
        self.block = spec.q_int("block", 0)
        self.state_path = spec.query.get("state") or None
        self.series = spec.q("series", os.path.basename(self.directory.rstrip("/")))
        if self.poll <= 0 or self.idle < 0 or self.bad_after < 0 or self.block < 0:
            raise SourceError(f"source {spec.uri!r}: poll must be > 0; idle, bad_after and block >= 0")
        if self.state_path and not os.path.isabs(self.state_path):
            raise SourceError(f"source {spec.uri!r}: state must be an absolute path, got {self.state_path!r}")
        self.close_after = max(2.0, 5 * self.poll)
        self._tracks: dict[str, _Track] = {}
        self._next_id = 0
        self._dirty = False
        self._opened = False
        self._lock = threading.Lock()
        if state is not None:
            self.state = state
        try:  # best effort: the first matching file's frame shape, for ROI checks at Init
            first = next(iter(self._list()), None) if os.path.isdir(self.directory) else None
            if first is not None:
                with h5py.File(os.path.join(self.directory, first), "r", locking=False) as f:
                    ds = check_frames_dataset(f[self.dataset], self.dataset)
                    self.image_shape = tuple(int(v) for v in ds.shape[1:])
        except (OSError, KeyError, SourceError, ValueError):
            pass

    # ---- position state ----------------------------------------------------------------

    @property
    def state(self) -> dict[str, Any]:
        """``{"files": {file_name: frames read}, "next_id": next running id}`` (a copy)."""
        with self._lock:
            return {"files": {t.name: t.n_read for t in self._tracks.values()}, "next_id": self._next_id}

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        files = value.get("files", {}) if isinstance(value, dict) else None
        next_id = value.get("next_id", 0) if isinstance(value, dict) else None
        if (not isinstance(files, dict) or not isinstance(next_id, int)
                or not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in files.items())):
            raise SourceError(f"source {self.spec.uri!r}: state must look like "
                              '{"files": {"name.h5": n_read}, "next_id": n}, got ' + repr(value)[:200])
        with self._lock:
            for t in self._tracks.values():
                self._close_track(t)
            self._tracks = {name: _Track(name, os.path.join(self.directory, name), n)
                            for name, n in files.items()}
            self._next_id = next_id

    @property
    def open_counts(self) -> dict[str, int]:
        """Successful opens per file name (diagnostics)."""
        with self._lock:
            return {t.name: t.opens for t in self._tracks.values()}

    def _save_state(self) -> None:
        if not self.state_path or not self._dirty:
            return
        state = self.state
        folder = os.path.dirname(self.state_path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=".watch-state-", suffix=".json", dir=folder)
            with os.fdopen(fd, "w") as fh:
                json.dump(state, fh)
            os.replace(tmp, self.state_path)
            self._dirty = False
        except OSError as exc:
            log.warning("cannot save watch state to %s: %s", self.state_path, exc)

    # ---- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        if not os.path.isdir(self.directory):
            raise SourceError(f"source {self.spec.uri!r}: {self.directory} is not a directory")
        if self.state_path:
            if os.path.exists(self.state_path):
                try:
                    with open(self.state_path) as fh:
                        self.state = json.load(fh)
                except (OSError, ValueError) as exc:
                    raise SourceError(f"source {self.spec.uri!r}: cannot read state file {self.state_path}: "
                                      f"{exc}. Fix or delete it") from None
            elif not os.path.isdir(os.path.dirname(self.state_path)):
                raise SourceError(f"source {self.spec.uri!r}: directory of state file {self.state_path} "
                                  "does not exist")
        self._opened = True

    def close(self) -> None:
        with self._lock:
            for t in self._tracks.values():
                self._close_track(t)
        if self._opened:
            self._save_state()

    def _list(self) -> list[str]:
        try:
            with os.scandir(self.directory) as it:
                names = [e.name for e in it if fnmatch.fnmatchcase(e.name, self.pattern) and e.is_file()]
        except OSError as exc:
            log.warning("cannot list %s: %s", self.directory, exc)
            return []
        return sorted(names)

    # ---- reading -------------------------------------------------------------------------

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        assert self._opened, "open() first"
        last_data = time.monotonic()
        while not stop.is_set():
            t_poll = time.monotonic()
            progressed = False
            for name in self._list():
                track = self._tracks.get(name)
                if track is None:
                    with self._lock:
                        track = self._tracks[name] = _Track(name, os.path.join(self.directory, name))
                before = track.n_read
                # The file's generator is always resumed after a yield (it checks stop
                # itself), so the frame the consumer took last is counted as read.
                yield from self._poll_file(track, stop)
                if track.n_read != before:
                    progressed = True
                if stop.is_set():
                    break
            if progressed:
                last_data = time.monotonic()
                self._save_state()
            if stop.is_set():
                break
            if not live and self.idle and time.monotonic() - last_data >= self.idle:
                self._save_state()
                yield SeriesEnd(self.name, self.series)
                return
            while not stop.is_set():  # sleep until the next poll, yielding None every 0.1 s
                remaining = t_poll + self.poll - time.monotonic()
                if remaining <= 0:
                    break
                stop.wait(min(remaining, 0.1))
                yield None

    def _failure(self, track: _Track, kind: str, detail: str) -> BadInput | None:
        """Note a failed attempt; a BadInput once the file has stayed unchanged for ``bad_after``."""
        if track.logged != kind:
            log.info("%s: %s (%s); retrying every %.2g s", track.path, kind, detail, self.poll)
            track.logged = kind
        track.failing = kind
        if (track.sig != track.reported_sig and time.monotonic() - track.changed_at >= self.bad_after):
            track.reported_sig = track.sig
            return BadInput(kind, f"{track.path}: {detail} (unchanged for {self.bad_after:g} s)", self.name)
        return None

    @staticmethod
    def _close_track(track: _Track) -> None:
        if track.handle is not None:
            handle, track.handle, track.ds, track.ids = track.handle, None, None, None
            try:
                handle.close()
            except Exception:  # noqa: BLE001
                log.debug("closing %s failed", track.path, exc_info=True)

    def _open_track(self, track: _Track) -> BadInput | None | bool:
        """Open the file and find its datasets. True on success, else a BadInput or None (retry)."""
        try:
            try:
                handle = h5py.File(track.path, "r", swmr=True, locking=False)
            except H5_ERRORS:
                handle = h5py.File(track.path, "r", locking=False)
        except H5_ERRORS as exc:
            return self._failure(track, "unreadable_file", f"cannot open as HDF5: {exc}")
        track.handle = handle
        track.opens += 1
        try:
            obj = handle[self.dataset]
        except (KeyError, *H5_ERRORS) as exc:
            self._close_track(track)
            return self._failure(track, "missing_dataset", f"no dataset {self.dataset!r} yet ({exc})")
        try:
            track.ds = check_frames_dataset(obj, f"{self.dataset!r}")
            track.ids = None
            if self.ids_path:
                try:
                    ids = handle[self.ids_path]
                except KeyError:
                    ids = None  # this file has no ids: running index
                if ids is not None:
                    track.ids = check_ids_dataset(ids, f"ids {self.ids_path!r}")
        except SourceError as exc:
            self._close_track(track)
            return self._failure(track, "bad_dataset", str(exc))
        except H5_ERRORS as exc:
            self._close_track(track)
            return self._failure(track, "missing_dataset", f"cannot open {self.dataset!r}: {exc}")
        return True

    def _available(self, track: _Track) -> int:
        ds, ids = track.ds, track.ids
        assert ds is not None and track.handle is not None
        if track.handle.swmr_mode:
            ds.refresh()
            if ids is not None:
                ids.refresh()
        n = ds.shape[0]
        if ids is not None:
            n = min(n, ids.shape[0])
        return n

    def _poll_file(self, track: _Track, stop: threading.Event) -> Iterator[SourceItem]:
        now = time.monotonic()
        try:
            st = os.stat(track.path)
        except FileNotFoundError:
            self._close_track(track)
            return
        except OSError as exc:
            self._close_track(track)
            bad = self._failure(track, "unreadable_file", f"cannot stat: {exc}")
            if bad is not None:
                yield bad
            return
        sig = (st.st_size, st.st_mtime_ns)
        changed = sig != track.sig
        if changed:
            track.sig, track.changed_at = sig, now
        if track.handle is None:
            if sig == track.checked_sig:
                return  # read completely at this size and mtime: nothing new
            if track.failing and sig == track.reported_sig:
                return  # reported as bad; retried when it changes
        had_handle = track.handle is not None
        for attempt in range(2):
            if track.handle is None:
                opened = self._open_track(track)
                if opened is not True:
                    if isinstance(opened, BadInput):
                        yield opened
                    return
            try:
                n = self._available(track)
            except H5_ERRORS as exc:
                self._close_track(track)
                bad = self._failure(track, "unreadable_file", f"cannot refresh {self.dataset!r}: {exc}")
                if bad is not None:
                    yield bad
                return
            track.failing = ""
            if n > track.n_read or not (had_handle and changed) or attempt:
                break
            # the file changed but a kept handle sees nothing new: look again with a fresh one
            self._close_track(track)
            had_handle = False
        if n < track.n_read:
            log.warning("%s: %s has %d frames, fewer than the %d already read; waiting for more",
                        track.path, self.dataset, n, track.n_read)
        yield from self._read_new(track, n, stop)
        if track.failing:
            return
        if track.n_read >= n:
            track.checked_sig = sig
        if not track.handle or not track.handle.swmr_mode or now - track.changed_at >= self.close_after:
            self._close_track(track)

    def _read_new(self, track: _Track, n: int, stop: threading.Event) -> Iterator[SourceItem]:
        ds, ids = track.ds, track.ids
        assert ds is not None
        step = block_frames(ds, self.block)
        while track.n_read < n and not stop.is_set():
            start = track.n_read
            end = min(n, start + step)
            try:
                block = ds[start:end]
                block_ids = ids[start:end] if ids is not None else None
            except H5_ERRORS:
                block, block_ids = None, None
            if block is None:  # find the frame that fails; read the good ones one at a time
                end = start + 1
                try:
                    block = ds[start:end]
                    block_ids = ids[start:end] if ids is not None else None
                except H5_ERRORS as exc:
                    bad = self._failure(track, "read_error", f"{self.dataset}[{start}] cannot be read: {exc}")
                    if bad is None:
                        self._close_track(track)
                        return  # retry at the next poll with a fresh handle
                    if ids is None:
                        bad.frame_id = self._next_id  # the engine counts this id as bad, not also as a gap
                    yield bad
                    with self._lock:  # skipped after bad_after: its id is used up
                        track.n_read += 1
                        self._next_id += 1
                        self._dirty = True
                    track.failing = ""
                    track.reported_sig = None
                    continue
            for k in range(end - start):
                frame_id = int(block_ids[k]) if block_ids is not None else self._next_id
                yield Frame(block[k], frame_id, time.time(), self.name, self.series,
                            {"file": track.name, "index": start + k})
                # resumed: the consumer took the frame
                with self._lock:
                    track.n_read += 1
                    self._next_id += 1
                    self._dirty = True
                track.logged = ""
                if stop.is_set():
                    return


__all__ = ["WatchDirSource"]
