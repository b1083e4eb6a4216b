"""The public analysis plugin API.

An analysis is a class that declares typed ``parameters`` and ``results`` and
implements pure per-frame ``process`` plus mergeable run-level accumulation.
The same class runs in the Tango device, in ``tango-dqm replay`` and in tests.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

from .frames import Frame
from .params import Parameter, Params

ENTRY_POINT_GROUP = "tango_dqm.analysis"


class PluginError(RuntimeError):
    """An analysis could not be found or loaded, or violated the plugin API."""


@dataclass(frozen=True)
class Result:
    """A declared analysis result.

    ``kind`` is ``"scalar"``, ``"spectrum"`` (1-D) or ``"image"`` (2-D); ``dtype`` may be
    ``str`` for a status text. ``warning`` and ``alarm`` are default ``(min, max)`` ranges
    (``None`` for an open side) that the device maps onto Tango's attribute alarm
    properties. ``run_summary=True`` marks a result that ``finish`` gives once per run
    rather than ``process`` per frame.
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

    def __post_init__(self) -> None:
        if self.kind not in ("scalar", "spectrum", "image"):
            raise ValueError(f"result {self.name}: kind must be scalar, spectrum or image")
        object.__setattr__(self, "dtype", np.dtype(self.dtype))


class Analysis:
    """Base class of every analysis plugin.

    Subclasses set ``name``, ``parameters`` and ``results`` and override ``process``.
    ``process`` must be pure: no I/O, no state kept on ``self`` between frames, never
    modify ``frame.data``. Run-level state lives in the accumulator, which must be
    mergeable: ``merge(accumulate(a, x), b) == accumulate(merge(a, b), x)``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "0"
    parameters: ClassVar[list[Parameter]] = []
    results: ClassVar[list[Result]] = []

    def process(self, frame: Frame, params: Params) -> dict[str, Any]:
        """Per-frame results, keyed by declared result names."""
        raise NotImplementedError

    def new_accumulator(self) -> Any:
        """An empty run-level accumulator (``None`` if the analysis keeps none)."""
        return None

    def accumulate(self, acc: Any, frame_results: dict[str, Any]) -> Any:
        """Fold one frame's results into ``acc`` and return it."""
        return acc

    def merge(self, a: Any, b: Any) -> Any:
        """Combine two accumulators (from two workers or two parts of a run)."""
        return a

    def finish(self, acc: Any) -> dict[str, Any]:
        """Run summary values from the final accumulator."""
        return {}


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
