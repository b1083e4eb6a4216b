"""Read-only HDF5 -> HSDS REST JSON: the object, link, attribute and value documents h5pyd reads.

Ids are stable: derived from the domain and the object's HDF5 path (HSDS v2 form, e.g.
``d-1a2b3c4d-5e6f7a8b-...``), so a client that re-opens the domain after a new frame block
finds the same ids. Ids name paths made of hard links only: a soft link to such a path is
served as a hard link to it (h5pyd cannot follow soft links), and external links are reported but never opened,
so nothing outside the file is read; datasets with virtual or external storage are refused.

Files are opened per request through a Python file object (h5py's ``fileobj`` driver): HDF5
then treats the reader as a separate file, as if it were another process, so a read never
shares the engine's SWMR writer handle and never blocks the writer's re-open at the end of a
scan or a Flag/Archive (HDF5 refuses ``r+`` on a file this process holds open read-only).
Each request sees the file as of the writer's last flush.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from h5json.array_util import arrayToBytes, bytesArrayToList
from h5json.hdf5dtype import getTypeItem

DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # largest binary value response
JSON_FRACTION = 8  # JSON values take ~3-20x the binary size: allow max_bytes / 8 of data as JSON
MAX_POINTS = 1_000_000  # coordinates in one point selection
MAX_LIST = 1_000_000  # indices in one list (fancy) dimension
MAX_SELECT_CHARS = 1_000_000
_ID_RE = re.compile(r"^[gdt]-[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{6}-[0-9a-f]{6}$")
_INT_RE = re.compile(r"^-?\d{1,19}$")


class HttpError(Exception):
    """A request refused with an HTTP status and a message saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# ---- ids ------------------------------------------------------------------------------------


def _hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _rot(ch: str) -> str:
    return format((int(ch, 16) + 8) % 16, "x")


def _format(prefix: str, token: str) -> str:
    return f"{prefix}-{token[0:8]}-{token[8:16]}-{token[16:20]}-{token[20:26]}-{token[26:32]}"


@functools.lru_cache(maxsize=1024)
def root_id(domain: str) -> str:
    """The root group's id: HSDS v2 root form (last 16 hex digits rotate the first 16)."""
    head = _hex("root:" + domain)[:16]
    return _format("g", head + "".join(_rot(c) for c in head))


def object_id(domain: str, kind: str, path: str) -> str:
    """Stable id of the object at ``path`` (``kind`` 'g' or 'd'), sharing the root's first 16 digits."""
    if path == "/":
        return root_id(domain)
    return _format(kind, root_id(domain)[2:19].replace("-", "") + _hex(f"{kind}:{path}")[:16])


class IdIndex:
    """id -> (domain, kind, path) for every id handed out; bounded, refilled by walking a file."""

    def __init__(self, max_entries: int = 200_000):
        self._lock = threading.Lock()
        self._ids: dict[str, tuple[str, str, str]] = {}
        self._max = max_entries

    def add(self, domain: str, kind: str, path: str) -> str:
        oid = object_id(domain, kind, path)
        with self._lock:
            if len(self._ids) >= self._max:
                self._ids.clear()  # ids are recomputable: a miss walks the file again
            self._ids[oid] = (domain, kind, path)
        return oid

    def get(self, oid: str) -> tuple[str, str, str] | None:
        with self._lock:
            return self._ids.get(oid)


def check_id(oid: str, collection: str) -> None:
    if not _ID_RE.match(oid or ""):
        raise HttpError(400, f"{oid!r} is not an object id (expected e.g. g-xxxxxxxx-xxxxxxxx-xxxx-xxxxxx-xxxxxx)")
    if oid[0] != collection[0]:
        raise HttpError(400, f"{oid} is not an id of the {collection} collection")


# ---- opening --------------------------------------------------------------------------------


@contextmanager
def open_file(path: Path) -> Iterator[h5py.File]:
    """The file as of its writer's last flush, through a private file object (see module doc)."""
    try:
        fo = open(path, "rb")  # noqa: SIM115 - closed in the finally below, after the h5py file
    except FileNotFoundError:
        raise HttpError(404, f"{path.name} does not exist (moved by Flag/Archive, or not written yet)") from None
    except OSError as exc:
        raise HttpError(503, f"cannot open {path.name}: {exc.strerror}") from None
    try:
        try:
            f = h5py.File(fo, "r")
        except OSError as exc:  # not HDF5, or caught mid-flush
            raise HttpError(503, f"cannot read {path.name} now ({exc}); retry") from None
        try:
            yield f
        finally:
            f.close()
    finally:
        fo.close()


def _walk(f: h5py.File, path: str) -> h5py.Group | h5py.Dataset:
    """The object at ``path`` reached through hard links only (no soft or external link is followed)."""
    obj: Any = f
    for part in [p for p in path.split("/") if p]:
        if not isinstance(obj, h5py.Group):
            raise KeyError(path)
        link = obj.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            raise KeyError(path)
        obj = obj[part]
    return obj


def _clean(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise KeyError(path)
    return "/" + "/".join(parts)


def _join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


# ---- documents -----------------------------------------------------------------------------


def shape_json(shape: tuple[int, ...] | None, maxshape: tuple[int | None, ...] | None) -> dict[str, Any]:
    if shape is None:
        return {"class": "H5S_NULL"}
    if len(shape) == 0:
        return {"class": "H5S_SCALAR"}
    out: dict[str, Any] = {"class": "H5S_SIMPLE", "dims": [int(n) for n in shape]}
    if maxshape is not None and tuple(maxshape) != tuple(shape):
        out["maxdims"] = [0 if m is None else int(m) for m in maxshape]  # HSDS: 0 = unlimited
    return out


def _type_json(dtype: np.dtype) -> Any:
    try:
        return getTypeItem(dtype)
    except (TypeError, KeyError, ValueError) as exc:
        raise HttpError(501, f"HDF5 type {dtype} is not served: {exc}") from None


def attribute_json(obj: h5py.HLObject, name: str, include_data: bool, max_bytes: int) -> dict[str, Any]:
    aid = h5py.h5a.open(obj.id, name.encode("utf-8"))
    space = aid.get_space()
    shape = None if space.get_simple_extent_type() == h5py.h5s.NULL else aid.shape
    doc: dict[str, Any] = {"name": name, "type": _type_json(aid.dtype), "shape": shape_json(shape, None),
                           "created": 0.0}
    if include_data and shape is not None:
        nbytes = int(np.prod(shape, dtype=np.int64)) * aid.dtype.itemsize
        if nbytes > max_bytes // JSON_FRACTION:
            raise HttpError(413, f"attribute {name!r} of {obj.name} is {nbytes} bytes, more than the "
                                 f"{max_bytes // JSON_FRACTION} bytes served as JSON")
        value = obj.attrs[name]
        doc["value"] = bytesArrayToList(value)
    return doc


def _attributes(obj: h5py.HLObject, max_bytes: int) -> dict[str, Any]:
    return {name: attribute_json(obj, name, True, max_bytes) for name in obj.attrs}


_KINDS = {h5py.h5o.TYPE_GROUP: "g", h5py.h5o.TYPE_DATASET: "d"}


def link_json(domain: str, ids: IdIndex, group: h5py.Group, gpath: str, name: str) -> dict[str, Any]:
    link = group.get(name, getlink=True)
    doc: dict[str, Any] = {"title": name, "created": 0.0}
    if isinstance(link, h5py.SoftLink):
        # h5pyd follows only hard links: a soft link to an object reachable by hard links is served
        # as a hard link to that path; a dangling or chained one stays a soft link
        target = link.path if link.path.startswith("/") else _join(gpath, link.path)
        try:
            obj = _walk(group.file, _clean(target))
        except KeyError:
            obj = None
        if isinstance(obj, (h5py.Group, h5py.Dataset)):
            kind = "g" if isinstance(obj, h5py.Group) else "d"
            doc.update({"class": "H5L_TYPE_HARD", "id": ids.add(domain, kind, _clean(target)),
                        "collection": "groups" if kind == "g" else "datasets"})
        else:
            doc.update({"class": "H5L_TYPE_SOFT", "h5path": link.path})
    elif isinstance(link, h5py.ExternalLink):
        doc.update({"class": "H5L_TYPE_EXTERNAL", "h5path": link.path, "file": link.filename,
                    "h5domain": link.filename})  # reported, never opened
    elif isinstance(link, h5py.HardLink):
        # the object's type from its header, without opening it (a group may have hundreds of members)
        hard = _KINDS.get(h5py.h5o.get_info(group.id, name.encode("utf-8")).type)
        if hard is None:
            doc.update({"class": "H5L_TYPE_USER_DEFINED"})  # committed datatypes are not served
        else:
            doc.update({"class": "H5L_TYPE_HARD", "id": ids.add(domain, hard, _join(gpath, name)),
                        "collection": "groups" if hard == "g" else "datasets"})
    else:
        doc.update({"class": "H5L_TYPE_USER_DEFINED"})
    return doc


def _links(domain: str, ids: IdIndex, group: h5py.Group, gpath: str) -> dict[str, Any]:
    return {name: link_json(domain, ids, group, gpath, name) for name in group}


def _check_storage(ds: h5py.Dataset) -> None:
    """Refuse datasets whose values would be read from other files."""
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        raise HttpError(403, f"{ds.name} is a virtual dataset (values in other files); not served")
    if dcpl.get_external_count() > 0:
        raise HttpError(403, f"{ds.name} has external raw storage (values in other files); not served")


def _creation_properties(ds: h5py.Dataset) -> dict[str, Any]:
    if ds.chunks:
        layout: dict[str, Any] = {"class": "H5D_CHUNKED", "dims": [int(c) for c in ds.chunks]}
    else:
        layout = {"class": "H5D_CONTIGUOUS"}
    props: dict[str, Any] = {"layout": layout}
    if ds.compression == "gzip":
        props["filters"] = [{"class": "H5Z_FILTER_DEFLATE", "id": 1, "level": ds.compression_opts or 0}]
    return props


def object_json(domain: str, ids: IdIndex, f: h5py.File, kind: str, path: str, oid: str, mtime: float,
                max_bytes: int, include_attrs: bool = True, include_links: bool = True) -> dict[str, Any]:
    obj = _walk(f, path)
    t = mtime
    doc: dict[str, Any] = {"id": oid, "root": root_id(domain), "alias": [path], "created": t, "lastModified": t,
                           "domain": domain, "attributeCount": len(obj.attrs)}
    if kind == "g":
        if not isinstance(obj, h5py.Group):
            raise KeyError(path)
        doc["linkCount"] = len(obj)
        doc["creationProperties"] = {}
        if include_links:
            doc["links"] = _links(domain, ids, obj, path)
    else:
        if not isinstance(obj, h5py.Dataset):
            raise KeyError(path)
        doc["type"] = _type_json(obj.dtype)
        doc["shape"] = shape_json(obj.shape, obj.maxshape)
        doc["creationProperties"] = _creation_properties(obj)
        doc["layout"] = doc["creationProperties"]["layout"]
    if include_attrs:
        doc["attributes"] = _attributes(obj, max_bytes)
    return doc


def domain_stats(f: h5py.File) -> dict[str, int]:
    counts = {"num_groups": 1, "num_datasets": 0}

    def visit(_name: str, obj: Any) -> None:
        counts["num_groups" if isinstance(obj, h5py.Group) else "num_datasets"] += 1

    f.visititems(visit)  # visititems follows hard links only
    counts["num_objects"] = counts["num_groups"] + counts["num_datasets"]
    counts["num_datatypes"] = 0
    return counts


def find_id(domain: str, ids: IdIndex, f: h5py.File, oid: str) -> tuple[str, str] | None:
    """(kind, path) of ``oid`` in ``f``: from the index, else by walking the file's hard links."""
    known = ids.get(oid)
    if known is not None and known[0] == domain:
        return known[1], known[2]
    if oid == root_id(domain):
        return "g", "/"
    found: list[tuple[str, str]] = []

    def visit(name: str, obj: Any) -> Any:
        kind = "g" if isinstance(obj, h5py.Group) else "d" if isinstance(obj, h5py.Dataset) else ""
        if kind and ids.add(domain, kind, "/" + name) == oid:
            found.append((kind, "/" + name))
            return True
        return None

    f.visititems(visit)
    return found[0] if found else None


# ---- selections and values -----------------------------------------------------------------


def _int(text: str, what: str) -> int:
    text = text.strip()
    if not _INT_RE.match(text):
        raise HttpError(400, f"select: {what} {text!r} is not an integer")
    return int(text)


def _split_dims(body: str) -> list[str]:
    """Top-level comma split of ``a:b,[1,2,3],4`` (brackets group a list dimension)."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in body:
        if ch == "[":
            depth += 1
            if depth > 1:
                raise HttpError(400, "select: nested brackets are not allowed")
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise HttpError(400, "select: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise HttpError(400, "select: unbalanced '['")
    parts.append("".join(cur))
    return parts


def parse_select(text: str | None, shape: tuple[int, ...]) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """Parse an HSDS ``select`` (``[0:10,3]``, ``[0:100:2,[1,5,9]]``) against ``shape``.

    Returns (h5py index, result shape). Everything is checked before any data is read:
    syntax, bounds, steps, and at most one list dimension (sorted, unique) as HDF5 allows.
    """
    rank = len(shape)
    if text is None or text.strip() in ("", "[]"):
        return (Ellipsis,) if rank else (), tuple(shape)
    if len(text) > MAX_SELECT_CHARS:
        raise HttpError(413, f"select is longer than {MAX_SELECT_CHARS} characters")
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise HttpError(400, f"select must look like [start:stop:step,...], got {text[:80]!r}")
    dims = _split_dims(text[1:-1])
    if rank == 0:
        raise HttpError(400, "select is not allowed on a scalar dataset")
    if len(dims) != rank:
        raise HttpError(400, f"select has {len(dims)} dimensions, the dataset has {rank} (shape {list(shape)})")
    index: list[Any] = []
    out: list[int] = []
    lists = 0
    for d, (part, n) in enumerate(zip(dims, shape)):
        part = part.strip()
        if part.startswith("["):
            if not part.endswith("]"):
                raise HttpError(400, f"select: dimension {d}: list must end with ']'")
            lists += 1
            if lists > 1:
                raise HttpError(400, "select: at most one dimension may be a list of indices")
            items = [s for s in part[1:-1].split(",") if s.strip()]
            if not items or len(items) > MAX_LIST:
                raise HttpError(400 if not items else 413,
                                f"select: dimension {d}: a list needs 1 to {MAX_LIST} indices")
            vals = [_int(s, f"dimension {d} index") for s in items]
            if any(v < 0 or v >= n for v in vals):
                raise HttpError(400, f"select: dimension {d}: index out of range 0..{n - 1}")
            if any(b <= a for a, b in itertools.pairwise(vals)):
                raise HttpError(400, f"select: dimension {d}: list indices must be increasing")
            index.append(vals)
            out.append(len(vals))
        elif ":" in part:
            fields = part.split(":")
            if len(fields) > 3:
                raise HttpError(400, f"select: dimension {d}: {part!r} has too many ':'")
            start = _int(fields[0], f"dimension {d} start") if fields[0].strip() else 0
            stop = _int(fields[1], f"dimension {d} stop") if fields[1].strip() else n
            step = _int(fields[2], f"dimension {d} step") if len(fields) == 3 and fields[2].strip() else 1
            if step < 1:
                raise HttpError(400, f"select: dimension {d}: step must be >= 1, got {step}")
            if not 0 <= start <= stop <= n:
                raise HttpError(400, f"select: dimension {d}: {start}:{stop} is outside 0:{n}")
            index.append(slice(start, stop, step))
            out.append(len(range(start, stop, step)))
        else:
            i = _int(part, f"dimension {d} index")
            if not 0 <= i < n:
                raise HttpError(400, f"select: dimension {d}: index {i} is outside 0..{n - 1}")
            index.append(slice(i, i + 1))  # keep the rank; HSDS returns the bytes, the client shapes them
            out.append(1)
    return tuple(index), tuple(out)


def check_size(count: int, itemsize: int, limit: int, what: str) -> None:
    nbytes = count * itemsize
    if nbytes > limit:
        raise HttpError(413, f"{what} is {nbytes} bytes ({count} elements), more than the limit of {limit} bytes "
                             "per response; request a smaller select (e.g. fewer rows at a time)")


def _fixed_itemsize(ds: h5py.Dataset) -> int:
    return ds.dtype.itemsize if ds.dtype.kind != "O" else 64  # vlen strings: a bound, checked again after


def read_values(ds: h5py.Dataset, select: str | None, limit: int) -> np.ndarray:
    _check_storage(ds)
    if ds.shape is None:
        raise HttpError(400, f"{ds.name} has a null dataspace: no values")
    index, out_shape = parse_select(select, ds.shape)
    count = math.prod(out_shape)
    check_size(count, _fixed_itemsize(ds), limit, f"the selection {list(out_shape)} of {ds.name}")
    if count == 0:
        return np.empty(out_shape, dtype=ds.dtype)
    arr = ds[index] if index else ds[()]
    out = np.empty(out_shape, dtype=ds.dtype)  # keeps h5py's vlen-string dtype (a scalar reads as bytes)
    out[...] = np.asarray(arr, dtype=ds.dtype).reshape(out_shape)
    return out


def read_points(ds: h5py.Dataset, body: bytes, limit: int) -> np.ndarray:
    """Values at the coordinates in ``body`` (uint64, ``(n, rank)`` C order), as h5pyd POSTs them."""
    _check_storage(ds)
    rank = len(ds.shape or ())
    if rank == 0:
        raise HttpError(400, "point selection on a scalar dataset")
    if len(body) % (8 * rank):
        raise HttpError(400, f"point selection must be uint64 coordinates, {rank} per point")
    n = len(body) // (8 * rank)
    if n == 0 or n > MAX_POINTS:
        raise HttpError(400 if n == 0 else 413, f"point selection needs 1 to {MAX_POINTS} points")
    check_size(n, _fixed_itemsize(ds), limit, f"the point selection of {ds.name}")
    coords = np.frombuffer(body, dtype="<u8").reshape(n, rank)
    if np.any(coords >= np.asarray(ds.shape, dtype=np.uint64)):
        raise HttpError(400, f"point selection: a coordinate is outside the shape {list(ds.shape)}")
    fspace = ds.id.get_space()
    fspace.select_elements(coords.astype(np.uint64))
    mspace = h5py.h5s.create_simple((n,))
    out = np.empty((n,), dtype=ds.dtype)
    ds.id.read(mspace, fspace, out)
    return out


def to_binary(arr: np.ndarray, limit: int) -> bytes:
    data = arrayToBytes(arr)
    if len(data) > limit:  # variable-length strings were only estimated before reading
        raise HttpError(413, f"the selection is {len(data)} bytes, more than the limit of {limit} bytes")
    return data


def to_json_value(arr: np.ndarray, limit: int) -> Any:
    check_size(arr.size, max(arr.dtype.itemsize, 8), limit // JSON_FRACTION, "the selection (as JSON)")
    return bytesArrayToList(arr)
