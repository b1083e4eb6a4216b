"""Typed analysis parameters: declaration, validation and the live parameter store."""
from __future__ import annotations

import enum
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from .files import FileAccess, FileParameterError
from .roi import Roi, RoiError, parse_roi


class ParameterError(ValueError):
    """A parameter value was refused; the message names the parameter and the rule."""


class ParamType(str, enum.Enum):
    """The value types a parameter can declare."""

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    ENUM = "enum"
    INT_ARRAY = "int[]"
    FLOAT_ARRAY = "float[]"
    ROI = "roi"
    FILE = "file"


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_PY_TYPES = {int: ParamType.INT, float: ParamType.FLOAT, bool: ParamType.BOOL, str: ParamType.STR}


@dataclass(frozen=True)
class Parameter:
    """A typed, validated analysis parameter.

    ``type`` is ``int``, ``float``, ``bool``, ``str`` or a :class:`ParamType`
    (``"enum"`` with ``choices``, ``"int[]"``/``"float[]"`` with optional ``length``,
    ``"roi"``, ``"file"``). ``min``/``max`` (finite) bound scalars and every array element;
    floats must be finite (no inf/NaN) and integers fit in 64 bits even without bounds.
    A ``"file"`` parameter is set with a path (``""`` unsets it); its value in
    :class:`Params` is the parsed content (``file_format``: ``"array"`` for .npy or an
    HDF5 dataset, ``"json"`` or ``"yaml"``), or None when unset.
    """

    name: str
    type: Any = float
    default: Any = None
    unit: str = ""
    label: str = ""
    description: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    length: int | None = None
    file_format: str = "array"
    #: display format for Jive/Taranta, printf style ("%.3f", "%d"); "" for str, bool, enum, roi, file
    format: str = ""
    #: a number with no unit: the only case where ``unit`` may be "" (checked by tango_dqm.contract)
    dimensionless: bool = False

    def __post_init__(self) -> None:
        ptype = _PY_TYPES.get(self.type) or ParamType(self.type)
        object.__setattr__(self, "type", ptype)
        object.__setattr__(self, "choices", tuple(self.choices))
        if ptype is ParamType.ENUM and not self.choices:
            raise ValueError(f"parameter {self.name}: an enum needs choices")
        for bound in (self.min, self.max):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (Real, np.number))
                                      or not math.isfinite(bound)):
                raise ValueError(f"parameter {self.name}: min and max must be finite numbers, got {bound!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"parameter {self.name}: min {self.min} is larger than max {self.max}")
        if ptype is ParamType.FILE and (self.file_format not in ("array", "json", "yaml") or self.default):
            raise ValueError(f"parameter {self.name}: file_format must be array, json or yaml, default ''")
        if self.default is None:
            defaults = {ParamType.INT: 0, ParamType.FLOAT: 0.0, ParamType.BOOL: False,
                        ParamType.STR: "", ParamType.INT_ARRAY: [], ParamType.FLOAT_ARRAY: [],
                        ParamType.ROI: [], ParamType.FILE: ""}
            default = self.choices[0] if ptype is ParamType.ENUM else defaults[ptype]
            object.__setattr__(self, "default", default)
        # A declaration whose own default is invalid is a programming error: fail loudly.
        object.__setattr__(self, "default", self.validate(self.default))

    @property
    def is_array(self) -> bool:
        return self.type in (ParamType.INT_ARRAY, ParamType.FLOAT_ARRAY, ParamType.ROI)

    def validate(self, value: Any, image_shape: Sequence[int] | None = None,
                 files: FileAccess | None = None) -> Any:
        """Return the canonical value, or raise ParameterError naming the broken rule."""
        t = self.type
        if t is ParamType.FILE:
            if value is None:
                return None
            if not isinstance(value, str):
                raise ParameterError(f"{self.name}: must be a file path (string), got {value!r}")
            if not value.strip():
                return None
            try:
                data = (files or FileAccess()).load(self.name, value.strip(), self.file_format)
            except FileParameterError as exc:
                raise ParameterError(str(exc)) from None
            if self.file_format == "array" and image_shape is not None and data.shape != tuple(image_shape):
                raise ParameterError(f"{self.name}: array shape {data.shape} does not match the image "
                                     f"shape {tuple(image_shape)}")
            return data
        if t is ParamType.ROI:
            try:
                return parse_roi(value, image_shape, self.name)
            except RoiError as exc:
                raise ParameterError(str(exc)) from None
        if t is ParamType.BOOL:
            if isinstance(value, (bool, np.bool_)):
                return bool(value)
            raise ParameterError(f"{self.name}: must be a boolean, got {value!r}")
        if t is ParamType.STR:
            if isinstance(value, str):
                return value
            raise ParameterError(f"{self.name}: must be a string, got {value!r}")
        if t is ParamType.ENUM:
            if isinstance(value, (Integral, np.integer)) and not isinstance(value, bool):
                if 0 <= int(value) < len(self.choices):
                    return self.choices[int(value)]
            if isinstance(value, str) and value in self.choices:
                return value
            raise ParameterError(f"{self.name}: must be one of {list(self.choices)}, got {value!r}")
        if t in (ParamType.INT, ParamType.FLOAT):
            return self._scalar(value, t)
        # arrays
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise ParameterError(f"{self.name}: must be an array of numbers, got {value!r}")
        items = list(np.asarray(value).ravel().tolist()) if isinstance(value, np.ndarray) else list(value)
        if self.length is not None and len(items) != self.length:
            raise ParameterError(f"{self.name}: must have exactly {self.length} values, got {len(items)}")
        elem = ParamType.INT if t is ParamType.INT_ARRAY else ParamType.FLOAT
        return tuple(self._scalar(v, elem) for v in items)

    def _scalar(self, value: Any, t: ParamType) -> int | float:
        if isinstance(value, (bool, np.bool_)):
            raise ParameterError(f"{self.name}: must be a number, got {value!r}")
        if t is ParamType.INT:
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                value = int(value)
            if not isinstance(value, (Integral, np.integer)):
                raise ParameterError(f"{self.name}: must be an integer, got {value!r}")
            out: int | float = int(value)
            if not _INT64_MIN <= out <= _INT64_MAX:  # Tango DevLong64, numpy int64
                raise ParameterError(f"{self.name}: must fit in a 64-bit integer, got {out}")
        else:
            if not isinstance(value, (Real, np.number)):
                raise ParameterError(f"{self.name}: must be a number, got {value!r}")
            out = float(value)
            if not math.isfinite(out):  # inf/nan would overflow or poison the arithmetic later
                raise ParameterError(f"{self.name}: must be a finite number, got {out}")
        if self.min is not None and out < self.min:
            raise ParameterError(f"{self.name}: must be >= {self.min}, got {out}")
        if self.max is not None and out > self.max:
            raise ParameterError(f"{self.name}: must be <= {self.max}, got {out}")
        return out

    def to_plain(self, value: Any) -> Any:
        """A JSON-friendly form of a canonical value (lists, not tuples or Roi)."""
        if isinstance(value, Roi):
            return value.as_list()
        if value is None and self.type is ParamType.ROI:
            return []
        if isinstance(value, tuple):
            return list(value)
        return value


class Params(Mapping[str, Any]):
    """Read-only view of parameter values, by key or attribute: ``params.saturation_level``."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("Params are read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"


@dataclass
class ParameterChange:
    """A parameter write, and the first frame id it applied to (set by the engine)."""

    name: str
    value: Any
    version: int
    applied_at_frame: int | None = None


class ParameterStore:
    """Current values of all declared parameters, validated on write.

    Writes replace an immutable :class:`Params` snapshot, so the engine thread takes
    a consistent set per frame without locking: a write applies from the next frame.
    """

    def __init__(self, declarations: Sequence[Parameter], files: FileAccess | None = None):
        self.files = files or FileAccess()
        self.file_paths: dict[str, str] = {}  # file parameters: the path each value came from
        self._decl: dict[str, Parameter] = {}
        for p in declarations:
            if p.name in self._decl:
                raise ValueError(f"parameter {p.name!r} is declared twice")
            self._decl[p.name] = p
        self._lock = threading.Lock()
        self._snapshot = Params({p.name: p.default for p in declarations})
        self.version = 0
        self.changes: list[ParameterChange] = []
        self.image_shape: tuple[int, ...] | None = None

    @property
    def declarations(self) -> dict[str, Parameter]:
        return dict(self._decl)

    def snapshot(self) -> Params:
        return self._snapshot

    def snapshot_with_version(self) -> tuple[Params, int]:
        with self._lock:
            return self._snapshot, self.version

    def get(self, name: str) -> Any:
        return self._snapshot[name]

    def set(self, name: str, value: Any) -> Any:
        """Validate and store ``value``; on error raise ParameterError, keep the old value."""
        try:
            decl = self._decl[name]
        except KeyError:
            raise ParameterError(f"unknown parameter {name!r}") from None
        canonical = decl.validate(value, self.image_shape, self.files)
        with self._lock:
            if decl.type is ParamType.FILE:
                self.file_paths[name] = value.strip() if canonical is not None else ""
            values = dict(self._snapshot)
            values[name] = canonical
            self.version += 1
            self._snapshot = Params(values)
            plain = self.file_paths[name] if decl.type is ParamType.FILE else decl.to_plain(canonical)
            self.changes.append(ParameterChange(name, plain, self.version))
        return canonical

    def plain(self) -> dict[str, Any]:
        """All values in JSON-friendly form (for provenance and parameter files)."""
        return {n: self.file_paths.get(n, "") if self._decl[n].type is ParamType.FILE else self._decl[n].to_plain(v)
                for n, v in self._snapshot.items()}
