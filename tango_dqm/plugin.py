"""The public analysis plugin API (version 2, docs/plugins.md).

An analysis is a class that declares typed ``parameters`` and ``results`` and implements
``prepare`` (parameter-derived context, cached), a pure per-frame ``process`` returning a
:class:`FrameOutput`, and mergeable run-level accumulation (``accumulate``, ``merge``,
``finish``). The same class runs in the Tango device, in ``tango-dqm replay`` and in tests;
:class:`Runner` calls it as the engine does, ``tango_dqm.contract`` checks it.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import math
import re
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from numbers import Real
from typing import Any, ClassVar

import numpy as np

from .frames import Frame
from .params import Parameter, Params, ParamType

ENTRY_POINT_GROUP = "tango_dqm.analysis"
log = logging.getLogger(__name__)
# What a Tango attribute can be named: a letter, then letters, digits or underscores.
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
MAX_ARRAY_LENGTH = 1 << 16  # longest spectrum attribute the device declares
# The monitor device's own attributes (Tango names are case-insensitive): a plugin cannot reuse
# them, and ``live_<stream>`` is the device's per-detector switch.
DEVICE_ATTRIBUTES = frozenset(n.lower() for n in (
    "State", "Status", "totalEvents", "completedEvents", "droppedEvents", "badEvents", "partialEvents",
    "duplicateEvents", "outOfOrderEvents", "eventRate", "latency", "scanId", "deployedVersions", "verdict",
    "verdictReport", "verdictCoverage", "outputFile", "referenceVersion", "runSummary", "parameterLog",
    "lostFraction", "httpUrl", "sample", "operator", "proposal", "scanMetadata",
    "pointNumber", "pointReady", "pointTimeouts", "pointFrames", "pointInfo", "workerStates", "reducerEndpoint"))
RESERVED_PREFIX = "live_"
#: ``point_<result>`` is the device's latched per-point value of a scalar result
POINT_PREFIX = "point_"
#: how a scalar result is summarised over the frames of one scan point (Result.point)
POINT_AGGREGATES = ("mean", "sum", "last", "min", "max")


class PluginError(RuntimeError):
    """An analysis could not be found or loaded, or violated the plugin API."""


@dataclass(frozen=True)
class Result:
    """A declared analysis result.

    ``kind`` is ``"scalar"``, ``"spectrum"`` (1-D) or ``"image"`` (2-D); ``dtype`` may be
    ``str`` for a status text. ``warning`` and ``alarm`` are default ``(min, max)`` ranges
    (``None`` for an open side) that the device maps onto Tango's attribute alarm
    properties; for an integer result they must be integers. ``run_summary=True`` marks a
    result that ``finish`` gives once per run rather than ``process`` per frame.

    What Jive and Taranta show: ``label``, ``description``, ``unit`` (``""`` only with
    ``dimensionless=True``) and ``format`` (printf style, ``"%.3f"``, ``"%d"``; ``""`` for
    ``str``/``bool``). ``axis`` names the spectrum result that holds the x values of this
    spectrum (``Result("profile_x", ..., axis="profile_x_axis")``): plotted together.

    ``point`` says how a scalar result is summarised over the frames of one scan point
    (``StartPoint``/``EndPoint``, docs/sardana.md): ``"mean"``, ``"sum"``, ``"last"``, ``"min"``
    or ``"max"``; ``""`` (the default) is ``"mean"`` for numbers and ``"last"`` for text and bool.
    """

    name: str
    dtype: Any = float
    kind: str = "scalar"
    unit: str = ""
    label: str = ""
    description: str = ""
    archive: bool = True
    warning: tuple[float | None, float | None] | None = None
    alarm: tuple[float | None, float | None] | None = None
    run_summary: bool = False
    format: str = ""
    dimensionless: bool = False
    axis: str = ""
    point: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("scalar", "spectrum", "image"):
            raise ValueError(f"result {self.name}: kind must be scalar, spectrum or image")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.point not in ("", *POINT_AGGREGATES):
            raise ValueError(f"result {self.name}: point must be one of {', '.join(POINT_AGGREGATES)} "
                             f"(or \"\" for the default), got {self.point!r}")

    @property
    def point_aggregate(self) -> str:
        """The per-point summary actually used: ``point``, or its default for the dtype."""
        numeric = self.dtype.kind in "iuf"
        if self.point:
            return self.point
        return "mean" if numeric else "last"

    @property
    def has_point(self) -> bool:
        """Per-frame scalars get a per-point value (run summaries and arrays do not)."""
        return self.kind == "scalar" and not self.run_summary


@dataclass(frozen=True)
class FrameOutput:
    """What ``process`` returns: published ``results`` (declared names only) and ``private``
    data for ``accumulate`` alone (never published, stored or checked)."""

    results: dict[str, Any]
    private: Any = None


class Analysis:
    """Base class of every analysis plugin (plugin API v2).

    Subclasses set ``name``, ``parameters`` and ``results`` and override ``process``.
    ``prepare`` computes parameter-derived data (masks, slices) once: the engine calls it
    again only when one of ``prepare_parameters`` (default: all the plugin's parameters)
    changes, and hands the result to ``process`` as ``context``. ``process`` must be pure:
    no I/O, no state kept on ``self`` between frames, never modify ``frame.data`` or the
    context. Run-level state lives in the accumulator, which must be mergeable:
    ``merge(accumulate(a, x), b) == accumulate(merge(a, b), x)``; ``finish`` must not
    modify it (it is also called during the run, for interim quality checks).
    """

    #: plugin API version the class is written against (1: deprecated, see docs/plugins.md)
    api_version: ClassVar[int] = 2
    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    parameters: ClassVar[list[Parameter]] = []
    results: ClassVar[list[Result]] = []
    #: the parameters ``prepare`` depends on; None: all of this plugin's parameters
    prepare_parameters: ClassVar[tuple[str, ...] | None] = None
    #: classes of this plugin's accumulator beyond plain data, numpy and the public API's
    #: accumulators (RunningStats, ScalarSeries): a scale-out worker may send only these
    #: (dataclasses or classes with ``__slots__``; see tango_dqm.scaleout.wire)
    wire_types: ClassVar[tuple[type, ...]] = ()

    def prepare(self, params: Params) -> Any:
        """Parameter-derived data for ``process`` (None by default)."""
        return None

    def process(self, frame: Frame, params: Params, context: Any) -> FrameOutput | dict[str, Any]:
        """Per-frame results (a plain dict is results only, no private data)."""
        raise NotImplementedError

    def new_accumulator(self) -> Any:
        """An empty run-level accumulator (``None`` if the analysis keeps none)."""
        return None

    def accumulate(self, acc: Any, output: FrameOutput, params: Params) -> Any:
        """Fold one frame's output into ``acc`` and return it."""
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        """Combine two accumulators (from two workers or two parts of a run)."""
        if a is None and b is None:
            return None
        raise PluginError(f"analysis {self.name!r} keeps an accumulator but does not define merge(); "
                          "define merge(a, b) so that no accumulated data is dropped")

    def finish(self, acc: Any) -> dict[str, Any]:
        """Run summary values from the final (or an interim) accumulator."""
        return {}


def as_output(value: Any, name: str = "") -> FrameOutput:
    """``process``'s return value as a FrameOutput; PluginError for anything else."""
    if isinstance(value, FrameOutput):
        if not isinstance(value.results, dict):
            raise PluginError(f"analysis {name!r}: FrameOutput.results is {type(value.results).__name__}, "
                              "not a dict")
        return value
    if isinstance(value, dict):
        return FrameOutput(value)
    raise PluginError(f"analysis {name!r}: process returned {type(value).__name__}, not a FrameOutput or dict")


def _same(a: Any, b: Any) -> bool:
    # Arrays (file parameters) are compared by identity: the store makes a new one per write.
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an odd value: treat as changed, prepare again
        return False


class Runner:
    """Calls one analysis the way the engine, replay and the contract test do: the
    ``prepare`` context cached on the values it depends on, outputs normalised."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        names = analysis.prepare_parameters
        self._keys = tuple(p.name for p in analysis.parameters) if names is None else tuple(names)
        # (values, context) as one object: the engine thread and the Init warm-up thread may both
        # call process, and a context must never be paired with the values of another call
        self._cache: tuple[tuple[Any, ...], Any] | None = None
        self.prepared = 0  # how often prepare ran (tests, diagnostics)

    def context(self, params: Params) -> Any:
        values = tuple(params.get(k) for k in self._keys)
        cached = self._cache
        if cached is not None and all(_same(a, b) for a, b in zip(values, cached[0])):
            return cached[1]
        context = self.analysis.prepare(params)
        self._cache = (values, context)
        self.prepared += 1
        return context

    def process(self, frame: Frame, params: Params) -> FrameOutput:
        return as_output(self.analysis.process(frame, params, self.context(params)), self.analysis.name)

    def accumulate(self, acc: Any, output: FrameOutput, params: Params) -> Any:
        return self.analysis.accumulate(acc, output, params)


class V1Adapter(Analysis):
    """Deprecated: runs a plugin API v1 class (``process(frame, params)`` returning ``_``-prefixed
    private keys, ``accumulate(acc, frame_results)``) through the v2 calls. Removed in a later release."""

    def __init__(self, inner: Analysis):
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.version = inner.version  # type: ignore[misc]
        self.parameters = inner.parameters  # type: ignore[misc]
        self.results = inner.results  # type: ignore[misc]

    def process(self, frame: Frame, params: Params, context: Any) -> FrameOutput:
        out = self.inner.process(frame, params)  # type: ignore[call-arg]
        if not isinstance(out, dict):
            return as_output(out, self.name)
        return FrameOutput({k: v for k, v in out.items() if not k.startswith("_")}, out)

    def new_accumulator(self) -> Any:
        return self.inner.new_accumulator()

    def accumulate(self, acc: Any, output: FrameOutput, params: Params) -> Any:
        if type(self.inner).accumulate is Analysis.accumulate:  # v1 plugin without an accumulator
            return acc
        full = output.private if isinstance(output.private, dict) else output.results
        return self.inner.accumulate(acc, full)  # type: ignore[call-arg, arg-type]  # v1 signature (acc, results)

    def merge(self, a: Any, b: Any) -> Any:
        return self.inner.merge(a, b)

    def finish(self, acc: Any) -> dict[str, Any]:
        return self.inner.finish(acc)


def is_v1(cls: type[Analysis]) -> bool:
    """A class written against plugin API v1 (declared, or ``process`` without ``context``)."""
    if getattr(cls, "api_version", 2) == 1:
        return True
    try:
        n = len(inspect.signature(cls.process).parameters)
    except (TypeError, ValueError):
        return False
    return n == 3  # self, frame, params


def instantiate(cls: type[Analysis]) -> Analysis:
    """An instance ready for the v2 calls (a v1 class wrapped in :class:`V1Adapter`, with a warning)."""
    if is_v1(cls):
        warnings.warn(f"analysis {cls.name!r} uses the deprecated plugin API v1; see docs/plugins.md, "
                      "'Migrating from v1'", DeprecationWarning, stacklevel=2)
        log.warning("analysis %r uses the deprecated plugin API v1 (docs/plugins.md, 'Migrating from v1')",
                    cls.name)
        return V1Adapter(cls())
    return cls()


def load_analysis(spec: str) -> type[Analysis]:
    """Find an analysis class by entry-point name (``roi``) or by ``module:Class``."""
    spec = spec.strip()
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"analysis {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        except Exception as exc:  # a bad declaration raises while the module's classes are built
            raise PluginError(f"analysis {spec!r}: importing {module_name!r} failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        try:
            cls = getattr(module, attr)
        except AttributeError:
            raise PluginError(f"analysis {spec!r}: module {module_name!r} has no {attr!r}") from None
    else:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == spec]
        if not found:
            known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
            raise PluginError(f"unknown analysis {spec!r}; installed: {known} (or use module:Class)")
        try:
            cls = found[0].load()
        except Exception as exc:
            raise PluginError(f"analysis {spec!r}: loading {found[0].value} failed: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Analysis)):
        raise PluginError(f"analysis {spec!r} is not a tango_dqm.Analysis subclass")
    if not cls.name:
        raise PluginError(f"analysis {spec!r} has no name")
    validate_analysis(cls, spec)
    return cls


def registered_analyses() -> list[str]:
    """Names of the analyses installed through the ``tango_dqm.analysis`` entry point group."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def validate_analysis(cls: type[Analysis], spec: str = "") -> None:
    """Refuse a declaration the Tango device cannot represent, with one message naming the
    plugin, the parameter or result, and the rule. Run at load, so the device and ``replay``
    refuse the same plugin and the device never builds half an attribute set."""
    where = f"analysis {cls.name!r}" + (f" ({spec})" if spec and spec != cls.name else "")
    seen: dict[str, str] = {}
    for kind, items in (("parameter", cls.parameters), ("result", cls.results)):
        expected = Parameter if kind == "parameter" else Result
        if not isinstance(items, (list, tuple)):
            raise PluginError(f"{where}: {kind}s must be a list of {expected.__name__}")
        for item in items:
            if not isinstance(item, expected):
                raise PluginError(f"{where}: {kind}s must hold {expected.__name__} objects, got {item!r}")
            rule = _name_rule(item.name, seen)
            if rule is None:
                rule = _parameter_rule(item) if isinstance(item, Parameter) else _result_rule(item)
            if rule is not None:
                raise PluginError(f"{where}: {kind} {item.name!r}: {rule}")
            seen[item.name.lower()] = f"{kind} {item.name!r}"


def _name_rule(name: Any, seen: dict[str, str]) -> str | None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return ("the name must be a valid Tango attribute name: a letter, then letters, digits or "
                "underscores, at most 64 characters")
    low = name.lower()
    if low in DEVICE_ATTRIBUTES:
        return "the name is an attribute of the monitor device itself (names are case-insensitive)"
    if low.startswith(RESERVED_PREFIX):
        return f"names starting with {RESERVED_PREFIX!r} are reserved for the device's detector switches"
    if low.startswith(POINT_PREFIX):
        return f"names starting with {POINT_PREFIX!r} are reserved for the device's per-point results"
    if low in seen:
        return f"the name clashes with {seen[low]} (Tango attribute names are case-insensitive)"
    return None


def _text_rule(**texts: Any) -> str | None:
    for field, text in texts.items():
        if not isinstance(text, str):
            return f"{field} must be a string, got {text!r}"
        if field != "description" and any(c in text for c in "\n\r\0"):
            return f"{field} must be one line of text"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, (Real, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _parameter_rule(p: Parameter) -> str | None:
    rule = _text_rule(unit=p.unit, label=p.label, description=p.description, format=p.format)
    if rule:
        return rule
    numeric = p.type in (ParamType.INT, ParamType.FLOAT, ParamType.INT_ARRAY, ParamType.FLOAT_ARRAY)
    integer = p.type in (ParamType.INT, ParamType.INT_ARRAY)
    for field in ("min", "max"):
        bound = getattr(p, field)
        if bound is None:
            continue
        if not numeric:
            return f"{field} applies to int, float and their arrays, not to {p.type.value}"
        if not _number(bound) or not math.isfinite(float(bound)):
            return f"{field} must be a finite number, got {bound!r}"
        if integer and not float(bound).is_integer():
            return f"{field} of an int parameter must be an integer (Tango parses it as DevLong64), got {bound!r}"
        if integer and abs(int(bound)) >= 2**63:
            return f"{field} {bound!r} does not fit a Tango DevLong64"
    if p.min is not None and p.max is not None and not float(p.min) < float(p.max):
        return f"min ({p.min!r}) must be below max ({p.max!r})"
    if p.type is ParamType.ENUM:
        if not all(isinstance(c, str) and c and _text_rule(choice=c) is None for c in p.choices):
            return f"enum choices must be non-empty one-line strings, got {list(p.choices)!r}"
        if len({c.lower() for c in p.choices}) != len(p.choices):
            return f"enum choices must be distinct, got {list(p.choices)!r}"
    if p.length is not None and not (isinstance(p.length, int) and 0 < p.length <= MAX_ARRAY_LENGTH):
        return f"length must be an integer from 1 to {MAX_ARRAY_LENGTH}, got {p.length!r}"
    return None


def _result_rule(r: Result) -> str | None:
    rule = _text_rule(unit=r.unit, label=r.label, description=r.description, format=r.format, axis=r.axis)
    if rule:
        return rule
    kind = r.dtype.kind
    if kind not in "biufUS":
        return f"dtype {r.dtype} has no Tango type (use bool, an int or float type, or str)"
    if kind in "US" and r.kind != "scalar":
        return "a str result must be a scalar"
    for field in ("archive", "run_summary"):
        if not isinstance(getattr(r, field), bool):
            return f"{field} must be True or False, got {getattr(r, field)!r}"
    if r.point and r.point != "last" and kind not in "iuf":
        return f"point {r.point!r} needs a numeric result; a {r.dtype} result can only be point=\"last\""
    for field in ("warning", "alarm"):
        limits = getattr(r, field)
        if limits is None:
            continue
        if r.kind != "scalar" or kind not in "iuf":
            return f"{field} limits need a numeric scalar result (this one is a {r.dtype} {r.kind})"
        if not isinstance(limits, (tuple, list)) or len(limits) != 2:
            return f"{field} must be a (min, max) pair with None for an open side, got {limits!r}"
        for side, bound in zip(("min", "max"), limits):
            if bound is None:
                continue
            if not _number(bound) or not math.isfinite(float(bound)):
                return f"{field} {side} must be a finite number or None, got {bound!r}"
            if kind in "iu" and not float(bound).is_integer():
                return (f"{field} {side} of an int result must be an integer (Tango parses it as the "
                        f"attribute's type, DevLong64), got {bound!r}")
        lo, hi = limits
        if lo is not None and hi is not None and not float(lo) < float(hi):
            return f"{field} min ({lo!r}) must be below its max ({hi!r})"
    return None
