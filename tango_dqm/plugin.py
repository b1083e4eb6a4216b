"""The public analysis plugin API.

An analysis is a class that declares typed ``parameters`` and ``results`` and
implements pure per-frame ``process`` plus mergeable run-level accumulation.
The same class runs in the Tango device, in ``tango-dqm replay`` and in tests.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from .frames import Frame
from .params import Parameter, Params

ENTRY_POINT_GROUP = "tango_dqm.analysis"
log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        if self.kind not in ("scalar", "spectrum", "image"):
            raise ValueError(f"result {self.name}: kind must be scalar, spectrum or image")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


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
        self._values: tuple[Any, ...] | None = None
        self._context: Any = None
        self.prepared = 0  # how often prepare ran (tests, diagnostics)

    def context(self, params: Params) -> Any:
        values = tuple(params.get(k) for k in self._keys)
        if self._values is None or not all(_same(a, b) for a, b in zip(values, self._values)):
            self._context = self.analysis.prepare(params)
            self._values = values
            self.prepared += 1
        return self._context

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
        return self.inner.accumulate(acc, full)  # type: ignore[call-arg]

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
    return cls


def registered_analyses() -> list[str]:
    """Names of the analyses installed through the ``tango_dqm.analysis`` entry point group."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})
