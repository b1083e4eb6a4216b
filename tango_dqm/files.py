"""File-backed parameter values (masks, dark images, geometry): confined, size-limited, parsed.

A file parameter is set by writing a path. Only paths under the configured directories
are accepted (after resolving symlinks, :func:`confine`), and the content is parsed, never
unpickled: ``.npy`` with ``allow_pickle=False``, an HDF5 dataset (``file.h5#/entry/mask``;
without ``#`` the file's only dataset), JSON, or YAML (``safe_load``).

The limit (``max_bytes``, device property MaxParameterFileSize) bounds both the bytes on disk
and the decoded value, checked before anything is read: an array's shape x itemsize (from
the .npy header or the HDF5 dataspace), and every compressed HDF5 chunk's declared decoded
size. No byte outside the roots is ever read: HDF5 external links (also behind soft links),
external raw storage and virtual datasets are refused, and so are filters whose decoded size
cannot be checked beforehand.

:func:`confine` is the one path-confinement function of the core; the products (results
files, marks) and the reference store use it too.
"""
from __future__ import annotations

import bz2
import json
import math
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5", ".nxs")
MAX_TEXT_BYTES = {"json": 8 * 1024 * 1024, "yaml": 1024 * 1024}  # parsed objects take ~10x the text
MAX_TREE_DEPTH = 64  # JSON/YAML nesting
MAX_TREE_NODES = 1_000_000  # JSON/YAML values, counted each time a YAML alias repeats one
MAX_FILTERED_CHUNKS = 65536  # chunks of a compressed HDF5 dataset checked one by one before reading
MAX_SOFT_LINKS = 32  # soft links followed while resolving one HDF5 dataset path


class PathConfinementError(ValueError):
    """A path was refused because it is (or leads) outside the allowed directories."""


class FileParameterError(ValueError):
    """A file path was refused or its content could not be parsed; the message says why."""


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError, ValueError) as exc:  # a symlink loop, an embedded NUL byte ...
        raise PathConfinementError(f"{path} cannot be resolved: {exc}") from None


def _escaping_link(candidate: Path, lexical: Sequence[Path], real_roots: Sequence[Path]) -> tuple[Path, Path] | None:
    """(link, where it leads) when ``candidate`` is named inside a root but its deepest existing
    part resolves outside: a symbolic link leads out, as opposed to a path that is outside."""
    p = Path(os.path.normpath(candidate))
    while _inside(p, lexical):
        if os.path.lexists(p):
            real = _real(p)
            return None if _inside(real, real_roots) else (p, real)
        p = p.parent
    return None


def confine(path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]],
            what: str = "allowed directories") -> Path:
    """The real path of ``path`` (symlinks resolved), refused unless it lies inside one of ``roots``.

    A relative ``path`` is taken relative to each root in turn: the first root under which it
    exists wins, else the first under which it would lie. The target need not exist. Raises
    :class:`PathConfinementError` naming the rule: outside the ``what``, or a symbolic link
    leading outside it (so a link is never reported as a missing file from the next root).
    """
    if not roots:
        raise PathConfinementError(f"no {what} configured")
    if path is None or str(path) == "":
        raise PathConfinementError("empty path")
    if "\0" in str(path):
        raise PathConfinementError(f"{str(path)!r} contains a NUL byte")
    raw = Path(path).expanduser()
    abs_roots = [Path(os.path.abspath(Path(r).expanduser())) for r in roots]
    real_roots = [_real(r) for r in abs_roots]
    lexical_roots = abs_roots + real_roots
    candidates = [raw] if raw.is_absolute() else [root / raw for root in abs_roots]
    first_inside: Path | None = None
    link_out: tuple[Path, Path] | None = None
    for candidate in candidates:
        real = _real(candidate)
        if _inside(real, real_roots):
            if os.path.lexists(real):
                return real
            first_inside = first_inside or real
        else:
            link_out = link_out or _escaping_link(candidate, lexical_roots, real_roots)
    if link_out is not None:
        raise PathConfinementError(f"{link_out[0]} is a symbolic link leading outside the {what} "
                                   f"(it resolves to {link_out[1]}); refused")
    if first_inside is not None:
        return first_inside
    shown = ", ".join(str(r) for r in abs_roots)
    raise PathConfinementError(f"{path} is outside the {what} ({shown})")


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
        try:
            real = confine(path_text, self.roots, "parameter file directories")
        except PathConfinementError as exc:
            raise FileParameterError(f"{name}: {exc}") from None
        if not real.is_file():
            raise FileParameterError(f"{name}: {real} does not exist or is not a file")
        size = real.stat().st_size
        if size > self.max_bytes:
            raise FileParameterError(f"{name}: {real} is {size} bytes, more than the limit of "
                                     f"{self.max_bytes} bytes")
        return real, dataset

    def load(self, name: str, text: str, fmt: str) -> Any:
        """Read and parse the file named by ``text`` as ``fmt`` (array, json or yaml)."""
        path, dataset = self.resolve(name, text)
        text_limit = min(self.max_bytes, MAX_TEXT_BYTES.get(fmt, self.max_bytes))
        if path.stat().st_size > text_limit:
            raise FileParameterError(f"{name}: {path} is {path.stat().st_size} bytes, more than the limit of "
                                     f"{text_limit} bytes for a {fmt} file")
        try:
            if fmt == "json":
                return _check_tree(json.loads(path.read_text()), path)
            if fmt == "yaml":
                import yaml
                return _check_tree(yaml.safe_load(path.read_text()), path)
            return _load_array(path, dataset, self.max_bytes)
        except FileParameterError as exc:
            raise FileParameterError(f"{name}: {exc}") from None
        except RecursionError:
            raise FileParameterError(f"{name}: {path} is nested too deeply to parse") from None
        except Exception as exc:  # noqa: BLE001 - any parse error is a refused value
            raise FileParameterError(f"{name}: cannot read {path} as {fmt}: {type(exc).__name__}: {exc}") from None


def _check_tree(value: Any, path: Path) -> Any:
    """Refuse JSON/YAML values nested deeper than MAX_TREE_DEPTH or with more than MAX_TREE_NODES
    values (YAML aliases count each time they repeat: an alias bomb or a self-reference is refused)."""
    stack = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_TREE_NODES:
            raise FileParameterError(f"{path.name} has more than {MAX_TREE_NODES} values (YAML aliases count "
                                     "each time they are used)")
        if depth > MAX_TREE_DEPTH:
            raise FileParameterError(f"{path.name} is nested more than {MAX_TREE_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for kv in item.items() for v in kv)
        elif isinstance(item, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in item)
    return value


def _check_decoded(path: Path, shape: Sequence[int], dtype: np.dtype, max_bytes: int) -> None:
    if dtype.hasobject or dtype.kind not in "biuf":
        raise FileParameterError(f"{path.name}: dtype {dtype} is not numeric")
    decoded = math.prod(int(n) for n in shape) * dtype.itemsize  # Python ints: no overflow
    if decoded > max_bytes:
        raise FileParameterError(f"{path.name}: the array {tuple(shape)} {dtype} decodes to {decoded} bytes, "
                                 f"more than the limit of {max_bytes} bytes")


def _load_npy(path: Path, max_bytes: int) -> np.ndarray:
    from numpy.lib import format as npy

    with open(path, "rb") as fh:  # the header alone says how large the array is: check it first
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = npy.read_array_header_2_0(fh)
        else:
            raise FileParameterError(f"{path.name}: .npy format version {version} is not supported")
    if dtype.hasobject:
        raise FileParameterError(f"{path.name}: dtype {dtype} holds Python objects, which would need "
                                 "unpickling; refused")
    _check_decoded(path, shape, dtype, max_bytes)
    return np.load(path, allow_pickle=False)


def _load_array(path: Path, dataset: str, max_bytes: int) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        data = _load_npy(path, max_bytes)
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        import h5py
        import hdf5plugin  # noqa: F401 - compressed detector files

        with h5py.File(path, "r") as f:
            if not dataset:
                names: list[str] = []  # visititems follows hard links only
                f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
                if len(names) != 1:
                    raise FileParameterError(f"{path.name} has {len(names)} datasets; name one as "
                                             f"{path.name}#/path/to/dataset")
                dataset = names[0]
            obj = _open_dataset(f, dataset, path)
            _check_dataset(obj, path, max_bytes)
            data = obj[()]
    else:
        raise FileParameterError(f"{path.name}: expected {', '.join(ARRAY_SUFFIXES)}")
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise FileParameterError(f"{path.name}: dtype {data.dtype} is not numeric")
    data.setflags(write=False)
    return data


# ---- HDF5: nothing outside the file, nothing unbounded ------------------------------------------


def _open_dataset(f: Any, dataset: str, path: Path) -> Any:
    """Open ``dataset`` link by link, so an external link is never followed (also behind soft links)."""
    import h5py

    parts = [p for p in dataset.split("/") if p and p != "."]
    group, hops = f, 0
    while parts:
        part = parts.pop(0)
        try:
            link = group.get(part, getlink=True)
        except Exception as exc:  # noqa: BLE001 - user-defined link classes, bad names
            raise FileParameterError(f"{path.name}: cannot follow {part!r} in {dataset!r}: {exc}") from None
        if link is None:
            raise FileParameterError(f"{path.name} has no dataset {dataset!r}")
        if isinstance(link, h5py.ExternalLink):
            raise FileParameterError(f"{path.name}: {dataset!r} goes through an external link to "
                                     f"{link.filename}:{link.path}; external links are refused in parameter files")
        if isinstance(link, h5py.SoftLink):
            hops += 1
            if hops > MAX_SOFT_LINKS:
                raise FileParameterError(f"{path.name}: {dataset!r} follows more than {MAX_SOFT_LINKS} soft links")
            if link.path.startswith("/"):
                group = f
            parts = [p for p in link.path.split("/") if p and p != "."] + parts
            continue
        if not isinstance(link, h5py.HardLink):
            raise FileParameterError(f"{path.name}: {dataset!r} uses a {type(link).__name__}; refused")
        obj = group[part]
        if not parts:
            if not isinstance(obj, h5py.Dataset):
                raise FileParameterError(f"{path.name} has no dataset {dataset!r}")
            return obj
        if not isinstance(obj, h5py.Group):
            raise FileParameterError(f"{path.name} has no dataset {dataset!r}")
        group = obj
    raise FileParameterError(f"{path.name} has no dataset {dataset!r}")


# HDF5 filter ids: decoded size fixed by the dataset (the library allocates one chunk) ...
_SIZE_KEEPING = {2: "shuffle", 3: "fletcher32", 5: "nbit", 6: "scaleoffset"}
# ... or checked here, chunk by chunk, before the library decodes it
_COMPRESSORS = {1: "deflate", 307: "bzip2", 32001: "blosc", 32004: "lz4", 32008: "bitshuffle", 32015: "zstd"}
_FLETCHER32 = 3


def _check_dataset(ds: Any, path: Path, max_bytes: int) -> None:
    """Refuse data stored outside the file, and any decoded size above ``max_bytes``, before reading."""
    import h5py

    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise FileParameterError(f"{path.name}: {ds.name} is a virtual dataset (VDS) mapping data from other "
                                 "datasets or files; virtual datasets are refused in parameter files")
    if dcpl.get_external_count() > 0:
        raise FileParameterError(f"{path.name}: {ds.name} keeps its raw data in external files; external "
                                 "storage is refused in parameter files")
    if ds.shape is None:
        raise FileParameterError(f"{path.name}: {ds.name} has no data (null dataspace)")
    _check_decoded(path, ds.shape, ds.dtype, max_bytes)
    if ds.chunks is None:
        return
    chunk_bytes = math.prod(ds.chunks) * ds.dtype.itemsize
    if chunk_bytes > max_bytes:  # the library allocates a whole chunk to read any part of it
        raise FileParameterError(f"{path.name}: {ds.name} has chunks of {chunk_bytes} bytes, more than the "
                                 f"limit of {max_bytes} bytes")
    filters = [dcpl.get_filter(i) for i in range(dcpl.get_nfilters())]  # (id, flags, values, name)
    if not filters:
        return
    for fid, _, _, fname in filters:
        if fid not in _SIZE_KEEPING and fid not in _COMPRESSORS:
            allowed = ", ".join(sorted({**_SIZE_KEEPING, **_COMPRESSORS}.values()))
            raise FileParameterError(f"{path.name}: {ds.name} uses HDF5 filter {fid} "
                                     f"({fname.decode(errors='replace') if isinstance(fname, bytes) else fname}), "
                                     f"whose decoded size cannot be checked before reading; allowed filters: "
                                     f"{allowed}")
    nelmts = math.prod(ds.chunks)
    for fid, _, values, _ in filters:
        # nbit and scaleoffset allocate values[2] elements of values[4] bytes, as stored in the file
        if fid in (5, 6) and (len(values) < 5 or values[2] != nelmts or values[4] != ds.dtype.itemsize):
            raise FileParameterError(f"{path.name}: {ds.name} has {_SIZE_KEEPING[fid]} parameters {tuple(values)} "
                                     f"that do not match its chunks of {nelmts} x {ds.dtype.itemsize} bytes; refused")
    # Decoding runs from the last filter to the first: the compressor must be decoded first (only
    # fletcher32 may follow it), so its input is the stored chunk.
    order = [fid for fid, *_ in filters]
    pos = [i for i, fid in enumerate(order) if fid in _COMPRESSORS]
    if len(pos) > 1 or (pos and any(fid != _FLETCHER32 for fid in order[pos[0] + 1:])):
        raise FileParameterError(f"{path.name}: {ds.name} has the filter pipeline {order}; parameter files may "
                                 "use one compressor, applied after shuffle/nbit/scaleoffset")
    if not pos:
        return
    index, (fid, _, values, _) = pos[0], filters[pos[0]]
    fletcher_after = _FLETCHER32 in order[index + 1:]
    nchunks = ds.id.get_num_chunks()
    if nchunks > MAX_FILTERED_CHUNKS:
        raise FileParameterError(f"{path.name}: {ds.name} has {nchunks} compressed chunks, more than "
                                 f"{MAX_FILTERED_CHUNKS}")
    for i in range(nchunks):
        info = ds.id.get_chunk_info(i)
        mask, raw = ds.id.read_direct_chunk(info.chunk_offset)
        if mask & (1 << index):
            continue  # the compressor was skipped for this chunk: stored as it is
        if fletcher_after and not mask & (1 << order.index(_FLETCHER32, index + 1)):
            raw = raw[:-4]
        size = _decoded_size(fid, tuple(values), raw, chunk_bytes)
        if size is None or size > chunk_bytes:
            amount = ("an unknown size" if size is None else  # trial decodes stop one byte past the chunk
                      f"at least {size} bytes" if fid in (1, 307) else f"{size} bytes (its size header)")
            raise FileParameterError(f"{path.name}: {ds.name} chunk {tuple(info.chunk_offset)} decodes to {amount}, "
                                     f"more than its {chunk_bytes} bytes; refused")


def _decoded_size(fid: int, values: tuple[int, ...], raw: bytes, chunk_bytes: int) -> int | None:
    """The decoded size of one compressed chunk, found without decoding more than ``chunk_bytes + 1``
    bytes (deflate, bzip2) or from the size header the filter allocates by (the others)."""
    if fid in (1, 307):
        dec = zlib.decompressobj() if fid == 1 else bz2.BZ2Decompressor()
        try:
            return len(dec.decompress(raw, chunk_bytes + 1))
        except (zlib.error, OSError, ValueError):
            return 0  # corrupt: the library reports it when reading, after allocating one chunk only
    if fid == 32008 and (len(values) < 5 or values[4] not in (2, 3)):
        return chunk_bytes  # bitshuffle without compression keeps the size
    if fid in (32004, 32008):  # lz4 / bitshuffle+lz4/zstd: 8-byte big-endian total size header
        return struct.unpack(">Q", raw[:8])[0] if len(raw) >= 12 else None
    if fid == 32001:  # blosc: uint32 little-endian nbytes at offset 4 of the blosc header
        return struct.unpack("<I", raw[4:8])[0] if len(raw) >= 16 else None
    if fid == 32015:
        return _zstd_content_size(raw)
    return None


def _zstd_content_size(raw: bytes) -> int | None:
    """Frame content size of a zstd frame (RFC 8878 3.1.1), None when the frame does not declare it."""
    if len(raw) < 6 or raw[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = raw[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(raw) < at + size:
        return None
    value = int.from_bytes(raw[at:at + size], "little")
    return value + 256 if size == 2 else value


def text_of(value: Any) -> str:
    """The path text a file parameter was set with (os.PathLike or str)."""
    return os.fspath(value) if isinstance(value, (str, os.PathLike)) else value
