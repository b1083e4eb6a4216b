"""A safe wire format for accumulators and per-frame results (scale-out; no pickle).

A value is encoded as one JSON tree plus raw numpy buffers (extra ZeroMQ parts). The tree
knows only plain data (None, bool, int, str, float as its exact hex form, lists, tuples,
dicts with any encodable keys), numpy scalars and arrays of numeric/bool/text dtypes, and
objects of *registered* classes (see :class:`Registry`): the accumulator classes of the
public API plus the ones an analysis lists in ``wire_types``. Decoding never calls a
constructor or imports anything: a registered class is made with ``object.__new__`` and
only its declared fields (dataclass fields or ``__slots__``) are set. Every size is checked
before anything is allocated for it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..accumulators import RunningStats, ScalarSeries

#: limits a message must keep (checked before decoding or allocating)
MAX_TREE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_BUFFERS = 4096
MAX_ARRAY_BYTES = 1 << 31
#: dtype kinds an array or scalar may have (no objects, no structured/void data)
_KINDS = "biufcSU"


class WireError(ValueError):
    """A message that does not follow the wire format (or a value that cannot be sent)."""


def _type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _fields(cls: type) -> tuple[str, ...]:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    slots: list[str] = []
    for klass in reversed(cls.__mro__):
        own = klass.__dict__.get("__slots__", ())
        slots.extend([own] if isinstance(own, str) else own)
    names = tuple(s for s in slots if s not in ("__weakref__", "__dict__"))
    if not names:
        raise WireError(f"{_type_name(cls)} is neither a dataclass nor a class with __slots__: "
                        "it cannot be registered for the wire")
    return names


class Registry:
    """The classes a message may name, by ``module:qualname``, with the fields each may set."""

    def __init__(self, types: Iterable[type] = ()):
        self._by_name: dict[str, tuple[type, tuple[str, ...]]] = {}
        for cls in (RunningStats, ScalarSeries, *types):
            self.add(cls)

    def add(self, cls: type) -> None:
        if not isinstance(cls, type):
            raise WireError(f"wire_types must hold classes, got {cls!r}")
        self._by_name[_type_name(cls)] = (cls, _fields(cls))

    @classmethod
    def for_analyses(cls, analyses: Iterable[Any]) -> "Registry":
        """The public API's accumulator classes plus every class the analyses declare in ``wire_types``."""
        types: list[type] = []
        for a in analyses:
            inner = getattr(a, "inner", a)  # a v1 plugin behind its adapter
            types.extend(getattr(inner, "wire_types", ()) or ())
        return cls(types)

    def lookup(self, name: str) -> tuple[type, tuple[str, ...]]:
        try:
            return self._by_name[name]
        except KeyError:
            raise WireError(f"type {name!r} is not registered for the wire (an analysis lists the classes "
                            "of its accumulator in wire_types)") from None

    def knows(self, cls: type) -> tuple[str, ...] | None:
        entry = self._by_name.get(_type_name(cls))
        return entry[1] if entry is not None and entry[0] is cls else None


def _check_dtype(dt: np.dtype) -> np.dtype:
    if dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None:
        raise WireError(f"dtype {dt.str} cannot be sent (numbers, bool and text only)")
    return dt


class _Encoder:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.buffers: list[memoryview] = []

    def node(self, v: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"value nested deeper than {MAX_DEPTH}")
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return {"i": str(v)}  # exact whatever its size
        if isinstance(v, float):
            return {"f": v.hex()}  # bit-exact, NaN and inf included
        if isinstance(v, np.ndarray):
            dt = _check_dtype(v.dtype)
            data = np.ascontiguousarray(v)
            self.buffers.append(memoryview(data.tobytes()))  # a copy: the accumulator goes on changing
            return {"a": len(self.buffers) - 1, "dtype": dt.str, "shape": list(v.shape)}
        if isinstance(v, np.generic):
            dt = _check_dtype(v.dtype)
            return {"s": dt.str, "hex": v.tobytes().hex()}
        if isinstance(v, list):
            return {"l": [self.node(x, depth + 1) for x in v]}
        if isinstance(v, tuple):
            return {"t": [self.node(x, depth + 1) for x in v]}
        if isinstance(v, dict):
            return {"d": [[self.node(k, depth + 1), self.node(x, depth + 1)] for k, x in v.items()]}
        fields = self.registry.knows(type(v))
        if fields is None:
            raise WireError(f"a {_type_name(type(v))} cannot be sent: list its class in the analysis' wire_types")
        return {"o": _type_name(type(v)), "v": {f: self.node(getattr(v, f, None), depth + 1) for f in fields}}


def encode(value: Any, registry: Registry) -> tuple[bytes, list[memoryview]]:
    """``value`` as (JSON tree, buffers); WireError for a value that cannot be sent."""
    enc = _Encoder(registry)
    tree = enc.node(value)
    return json.dumps(tree, separators=(",", ":")).encode(), enc.buffers


class _Decoder:
    def __init__(self, registry: Registry, buffers: Sequence[Any]):
        self.registry = registry
        self.buffers = buffers
        self.used: set[int] = set()

    def node(self, n: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"message nested deeper than {MAX_DEPTH}")
        if n is None or isinstance(n, (bool, str)):
            return n
        if not isinstance(n, dict) or len(n) == 0:
            raise WireError(f"unexpected node {str(n)[:60]!r}")
        if "i" in n:
            text = n["i"]
            if not isinstance(text, str) or len(text) > 400 or not text.lstrip("-").isdigit():
                raise WireError("bad integer")
            return int(text)
        if "f" in n:
            try:
                return float.fromhex(n["f"])
            except (TypeError, ValueError):
                raise WireError("bad float") from None
        if "a" in n:
            return self.array(n)
        if "s" in n:
            dt = self.dtype(n["s"])
            raw = n.get("hex")
            if not isinstance(raw, str) or len(raw) != 2 * dt.itemsize:
                raise WireError("bad scalar")
            try:
                return np.frombuffer(bytes.fromhex(raw), dt)[0]
            except ValueError:
                raise WireError("bad scalar") from None
        for tag, kind in (("l", list), ("t", tuple)):
            if tag in n:
                items = n[tag]
                if not isinstance(items, list):
                    raise WireError(f"bad {kind.__name__}")
                return kind(self.node(x, depth + 1) for x in items)
        if "d" in n:
            pairs = n["d"]
            if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
                raise WireError("bad dict")
            out = {}
            for k, x in pairs:
                key = self.node(k, depth + 1)
                if isinstance(key, (list, dict, np.ndarray)):
                    raise WireError("a dict key must be hashable")
                out[key] = self.node(x, depth + 1)
            return out
        if "o" in n:
            cls, fields = self.registry.lookup(n["o"])
            values = n.get("v")
            if not isinstance(values, dict) or set(values) - set(fields):
                raise WireError(f"fields of {n['o']} must be among {list(fields)}")
            obj: Any = object.__new__(cls)
            for f in fields:
                object.__setattr__(obj, f, self.node(values.get(f), depth + 1))
            return obj
        raise WireError(f"unknown node {sorted(n)[:3]}")

    @staticmethod
    def dtype(text: Any) -> np.dtype:
        if not isinstance(text, str) or len(text) > 16:
            raise WireError("bad dtype")
        try:
            dt = np.dtype(text)
        except TypeError:
            raise WireError(f"unknown dtype {text!r}") from None
        return _check_dtype(dt)

    def array(self, n: dict[str, Any]) -> np.ndarray:
        index, shape = n.get("a"), n.get("shape")
        dt = self.dtype(n.get("dtype"))
        if not (isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.buffers)):
            raise WireError("array names a buffer the message does not have")
        if index in self.used:
            raise WireError("two arrays name the same buffer")
        if not (isinstance(shape, list) and len(shape) <= 32
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise WireError("bad array shape")
        count = math.prod(shape)
        if count * dt.itemsize > MAX_ARRAY_BYTES:
            raise WireError(f"array of {count * dt.itemsize} bytes is larger than {MAX_ARRAY_BYTES}")
        buf = self.buffers[index]
        size = buf.nbytes if isinstance(buf, memoryview) else len(buf)
        if size != count * dt.itemsize:
            raise WireError(f"array buffer holds {size} bytes, its shape {shape} x {dt.str} needs "
                            f"{count * dt.itemsize}")
        self.used.add(index)
        # a writable copy: accumulators are merged in place
        return np.frombuffer(buf, dt).reshape(shape).copy()


def decode(tree: bytes | memoryview, buffers: Sequence[Any], registry: Registry) -> Any:
    """The value of an encoded (tree, buffers) pair; WireError for anything malformed."""
    raw = bytes(tree)
    if len(raw) > MAX_TREE_BYTES:
        raise WireError(f"message tree of {len(raw)} bytes is larger than {MAX_TREE_BYTES}")
    if len(buffers) > MAX_BUFFERS:
        raise WireError(f"message has {len(buffers)} buffers, at most {MAX_BUFFERS}")
    try:
        node = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"message tree is not JSON: {exc}") from None
    dec = _Decoder(registry, buffers)
    try:
        value = dec.node(node)
    except RecursionError:
        raise WireError("message nested too deeply") from None
    if len(dec.used) != len(buffers):
        raise WireError(f"message has {len(buffers) - len(dec.used)} buffers no array names")
    return value


__all__ = ["MAX_ARRAY_BYTES", "MAX_TREE_BYTES", "Registry", "WireError", "decode", "encode"]
