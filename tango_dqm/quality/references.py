"""Versioned store of reference histograms and backgrounds (dark images), as HDF5 files.

Layout under the store directory::

    <directory>/reference/<name>/v000001.h5
    <directory>/background/<name>/v000001.h5

Each file holds one dataset per array (dtype and shape kept exactly) and, as attributes of
the root group, ``name``, ``kind``, ``version``, ``scan_id``, ``created`` (unix time),
``created_iso`` and ``meta`` (a JSON object). No pickle anywhere: only numeric and boolean
arrays are accepted, and files are read with h5py. Versions count up from 1 per name and
kind; a file is written to a temporary name and then linked to its version name, so readers
never see a half-written file and two writers never get the same version.

Names (of references, of backgrounds and of arrays) are plain file names: letters, digits,
``_``, ``-``, ``.``, not starting with ``.``; anything with a path separator or ``..`` is
refused, and every path is checked to resolve inside the directory.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..files import PathConfinementError, confine

KINDS = ("reference", "background")
BACKGROUND_ARRAY = "background"

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_VERSION_RE = re.compile(r"^v(\d{6,})\.h5$")


class ReferenceStoreError(ValueError):
    """A bad name or array, or a reference that does not exist."""


@dataclass(frozen=True)
class ReferenceInfo:
    name: str
    kind: str
    version: int
    scan_id: str
    created: float
    path: Path
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reference:
    info: ReferenceInfo
    arrays: Mapping[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]


def check_name(name: Any, what: str = "name") -> str:
    """A safe file name, or ReferenceStoreError saying why not."""
    if not isinstance(name, str) or not name:
        raise ReferenceStoreError(f"{what} must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        raise ReferenceStoreError(f"{what} {name!r} must not contain a path separator")
    if ".." in name:
        raise ReferenceStoreError(f"{what} {name!r} must not contain '..'")
    if not _NAME_RE.match(name):
        raise ReferenceStoreError(f"{what} {name!r} may only use letters, digits, '_', '-' and '.', "
                                  "not start with '.', at most 128 characters")
    return name


class ReferenceStore:
    """Saves, lists and loads versioned references and backgrounds under one directory."""

    def __init__(self, directory: str | os.PathLike[str], create: bool = True):
        self.directory = Path(directory)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        if not self.directory.is_dir():
            raise ReferenceStoreError(f"reference directory {str(self.directory)!r} does not exist")
        self._root = self.directory.resolve()

    # ---- paths -----------------------------------------------------------------------

    def _dir(self, name: str, kind: str, create: bool = False) -> Path:
        if kind not in KINDS:
            raise ReferenceStoreError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        d = self.directory / kind / check_name(name)
        if create:
            d.mkdir(parents=True, exist_ok=True)
        self._confine(d)
        return d

    def _confine(self, path: Path) -> Path:
        try:
            return confine(path, [self._root], "reference directory")
        except PathConfinementError as exc:
            raise ReferenceStoreError(f"{exc}; refused") from None

    def _version_files(self, name: str, kind: str) -> dict[int, Path]:
        d = self._dir(name, kind)
        if not d.is_dir():
            return {}
        out = {}
        for p in d.iterdir():
            m = _VERSION_RE.match(p.name)
            if m:
                out[int(m.group(1))] = p
        return dict(sorted(out.items()))

    # ---- writing ------------------------------------------------------------------------

    def save(self, name: str, arrays: Mapping[str, Any], *, kind: str = "reference", scan_id: str = "",
             meta: Mapping[str, Any] | None = None, created: float | None = None) -> ReferenceInfo:
        """Save ``arrays`` as the next version of ``name``; returns its info (with the version)."""
        if not isinstance(arrays, Mapping) or not arrays:
            raise ReferenceStoreError(f"{kind} {name!r}: give at least one array as {{name: array}}")
        data: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            check_name(key, f"{kind} {name!r}: array name")
            a = np.asarray(value)
            if a.dtype.kind not in "biufc":
                raise ReferenceStoreError(f"{kind} {name!r}: array {key!r} has dtype {a.dtype}; only numeric "
                                          "and boolean arrays are stored (no objects, no pickle)")
            data[key] = a
        if not isinstance(scan_id, str):
            raise ReferenceStoreError(f"{kind} {name!r}: scan_id must be a string, got {scan_id!r}")
        try:
            meta_json = json.dumps(dict(meta or {}), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ReferenceStoreError(f"{kind} {name!r}: meta must be a JSON object of plain values: {exc}") from None
        created = time.time() if created is None else float(created)
        d = self._dir(name, kind, create=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".h5", dir=d)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            while True:
                versions = self._version_files(name, kind)
                version = (max(versions) if versions else 0) + 1
                self._write(tmp, data, name, kind, version, scan_id, created, meta_json)
                final = d / f"v{version:06d}.h5"
                try:
                    os.link(tmp, final)  # atomic and exclusive: never overwrites another writer's version
                    break
                except FileExistsError:
                    continue  # another writer took this version: renumber and retry
        finally:
            tmp.unlink(missing_ok=True)
        return ReferenceInfo(name, kind, version, scan_id, created, final, json.loads(meta_json))

    @staticmethod
    def _write(path: Path, data: Mapping[str, np.ndarray], name: str, kind: str, version: int, scan_id: str,
               created: float, meta_json: str) -> None:
        with h5py.File(path, "w") as f:
            f.attrs["name"] = name
            f.attrs["kind"] = kind
            f.attrs["version"] = version
            f.attrs["scan_id"] = scan_id
            f.attrs["created"] = created
            f.attrs["created_iso"] = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(created))
            f.attrs["meta"] = meta_json
            f.attrs["creator"] = "tango_dqm.references"
            for key, a in data.items():
                f.create_dataset(key, data=a)

    def save_background(self, name: str, image: Any, *, scan_id: str = "", meta: Mapping[str, Any] | None = None,
                        created: float | None = None) -> ReferenceInfo:
        """Save a background (dark image) as the next version of ``name``."""
        return self.save(name, {BACKGROUND_ARRAY: image}, kind="background", scan_id=scan_id, meta=meta,
                         created=created)

    # ---- reading -------------------------------------------------------------------------

    def names(self, kind: str = "reference") -> list[str]:
        """Names that have at least one version."""
        if kind not in KINDS:
            raise ReferenceStoreError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        base = self.directory / kind
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if _NAME_RE.match(p.name) and ".." not in p.name
                      and self._version_files(p.name, kind))

    def versions(self, name: str, kind: str = "reference") -> list[ReferenceInfo]:
        """Every stored version of ``name``, oldest first."""
        return [self._info(p, name, kind, v) for v, p in self._version_files(name, kind).items()]

    def latest(self, name: str, kind: str = "reference") -> ReferenceInfo | None:
        """Info of the newest version, or None when there is none."""
        files = self._version_files(name, kind)
        if not files:
            return None
        v = max(files)
        return self._info(files[v], name, kind, v)

    def load(self, name: str, version: int | None = None, kind: str = "reference") -> Reference:
        """Load the given version of ``name`` (the newest by default)."""
        files = self._version_files(name, kind)
        if not files:
            raise ReferenceStoreError(f"no {kind} named {name!r} in {str(self.directory)!r}")
        if version is None:
            version = max(files)
        elif isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version not in files:
            raise ReferenceStoreError(f"{kind} {name!r} has no version {version!r}; versions: "
                                      f"{', '.join(map(str, files))}")
        path = self._confine(files[int(version)])
        with h5py.File(path, "r") as f:
            arrays = {key: _read(f, key) for key in f if isinstance(f[key], h5py.Dataset)}
            info = _info_from_attrs(f.attrs, path, name, kind, int(version))
        return Reference(info, arrays)

    def load_background(self, name: str, version: int | None = None) -> tuple[np.ndarray, ReferenceInfo]:
        """The background image of ``name`` (newest by default) and its info."""
        ref = self.load(name, version, kind="background")
        return ref.arrays[BACKGROUND_ARRAY], ref.info

    def _info(self, path: Path, name: str, kind: str, version: int) -> ReferenceInfo:
        with h5py.File(self._confine(path), "r") as f:
            return _info_from_attrs(f.attrs, path, name, kind, version)


# ---- policy: where a device's references live, and which one it uses at start ----------------

#: folder under OutputDirectory that holds the references when ReferenceDirectory is not set
DEFAULT_SUBFOLDER = "references"


def reference_folder(reference_directory: str = "", output_directory: str = "") -> str:
    """Where references live: ``reference_directory``, else ``output_directory/references``;
    "" when neither is set (no references)."""
    if reference_directory:
        return reference_directory
    return f"{output_directory}/{DEFAULT_SUBFOLDER}" if output_directory else ""


def open_store(folder: str, create: bool = False) -> ReferenceStore | None:
    """The store in ``folder``; None when no folder is configured or (``create`` False) it does not exist."""
    if not folder:
        return None
    try:
        return ReferenceStore(folder, create=create)
    except ReferenceStoreError:
        return None


def latest_reference(folder: str, name: str = "reference") -> Reference | None:
    """The newest version of reference ``name`` in ``folder`` (what a device uses at start), or None."""
    store = open_store(folder)
    if store is None or store.latest(name) is None:
        return None
    return store.load(name)


def _read(f: h5py.File, key: str) -> np.ndarray:
    ds = f[key]
    if ds.dtype.kind not in "biufc":
        raise ReferenceStoreError(f"{f.filename}: dataset {key!r} has dtype {ds.dtype}; not a stored array")
    return np.asarray(ds[()])


def _info_from_attrs(attrs: Any, path: Path, name: str, kind: str, version: int) -> ReferenceInfo:
    def text(key: str, default: str = "") -> str:
        v = attrs.get(key, default)
        return v.decode() if isinstance(v, bytes) else str(v)

    try:
        meta = json.loads(text("meta", "{}"))
    except json.JSONDecodeError:
        meta = {}
    return ReferenceInfo(name, kind, version, text("scan_id"), float(attrs.get("created", 0.0)), path, meta)


__all__ = ["BACKGROUND_ARRAY", "DEFAULT_SUBFOLDER", "KINDS", "Reference", "ReferenceInfo", "ReferenceStore",
           "ReferenceStoreError", "check_name", "latest_reference", "open_store", "reference_folder"]
