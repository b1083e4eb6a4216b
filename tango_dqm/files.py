"""File-backed parameter values (masks, dark images, geometry): confined, size-limited, parsed.

A file parameter is set by writing a path. Only paths under the configured directories
are accepted (after resolving symlinks), files larger than the limit are refused, and
the content is parsed, never unpickled: ``.npy`` with ``allow_pickle=False``, an HDF5
dataset (``file.h5#/entry/mask``; without ``#`` the file's only dataset), JSON, or YAML
(``safe_load``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5", ".nxs")


class FileParameterError(ValueError):
    """A file path was refused or its content could not be parsed; the message says why."""


@dataclass
class FileAccess:
    """Where file parameters may be read from, and how large they may be."""

    roots: list[Path] = field(default_factory=list)
    max_bytes: int = DEFAULT_MAX_BYTES

    def resolve(self, name: str, text: str) -> tuple[Path, str]:
        """Confine ``text`` (``path`` or ``path#/dataset``) to the roots; return (path, dataset)."""
        path_text, _, dataset = text.partition("#")
        if not self.roots:
            raise FileParameterError(f"{name}: no directory is configured for parameter files "
                                     "(device property ParameterFileDirectories)")
        raw = Path(path_text).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self.roots]
        for candidate in candidates:
            real = candidate.resolve()
            if any(real.is_relative_to(root.resolve()) for root in self.roots):
                if not real.is_file():
                    raise FileParameterError(f"{name}: {real} does not exist or is not a file")
                size = real.stat().st_size
                if size > self.max_bytes:
                    raise FileParameterError(f"{name}: {real} is {size} bytes, more than the limit of "
                                             f"{self.max_bytes} bytes")
                return real, dataset
        raise FileParameterError(f"{name}: {path_text} is outside the parameter file directories "
                                 f"({', '.join(str(r) for r in self.roots)})")

    def load(self, name: str, text: str, fmt: str) -> Any:
        """Read and parse the file named by ``text`` as ``fmt`` (array, json or yaml)."""
        path, dataset = self.resolve(name, text)
        try:
            if fmt == "json":
                return json.loads(path.read_text())
            if fmt == "yaml":
                import yaml
                return yaml.safe_load(path.read_text())
            return _load_array(path, dataset)
        except FileParameterError:
            raise
        except Exception as exc:  # noqa: BLE001 - any parse error is a refused value
            raise FileParameterError(f"{name}: cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from None


def _load_array(path: Path, dataset: str) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        data = np.load(path, allow_pickle=False)
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        import h5py
        import hdf5plugin  # noqa: F401 - compressed detector files

        with h5py.File(path, "r") as f:
            if not dataset:
                names: list[str] = []
                f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                if len(names) != 1:
                    raise FileParameterError(f"{path.name} has {len(names)} datasets; name one as "
                                             f"{path.name}#/path/to/dataset")
                dataset = names[0]
            obj = f.get(dataset)
            if not isinstance(obj, h5py.Dataset):
                raise FileParameterError(f"{path.name} has no dataset {dataset!r}")
            data = obj[()]
    else:
        raise FileParameterError(f"{path.name}: expected {', '.join(ARRAY_SUFFIXES)}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise FileParameterError(f"{path.name}: dtype {data.dtype} is not numeric")
    data.setflags(write=False)
    return data


def text_of(value: Any) -> str:
    """The path text a file parameter was set with (os.PathLike or str)."""
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else value
