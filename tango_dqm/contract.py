"""The contract every analysis plugin passes, checked offline (no Tango, no stream).

``check_plugin(cls)`` returns a list of problems (empty: the plugin keeps the contract):

- declarations: the load-time validation (``tango_dqm.plugin.validate_analysis``: names, types
  Tango can represent, limits), integer-typed limits on integer results, ``axis`` and what
  Jive and Taranta show (label, description, unit, display format);
- ``process`` is pure: the same frame twice gives equal outputs and ``frame.data`` is unchanged;
  it publishes declared per-frame results only;
- ``merge`` of a run split in two (several seeded split points) equals the run in one, exactly
  for integers, within 1e-12 relative for floats; ``finish`` does not modify the accumulator
  (the engine calls it during the run) and runs on an empty accumulator;
- the accumulator survives the scale-out wire format unchanged (classes of its own are listed
  in ``wire_types``), so a worker can send it to a reducer.

``tango-dqm check-plugin module:Class`` runs it; the Tango attribute set itself is built
offline by ``tango_dqm.devices.mapping.describe_attributes``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import re
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

from .frames import Frame
from .params import Parameter, Params, ParamType
from .plugin import Analysis, PluginError, Result, Runner, instantiate, is_v1, validate_analysis

#: printf display formats Tango and Taranta understand, by the kind of value
_INT_FORMAT = re.compile(r"^%[-+ 0#]*\d*[diuxXo]$")
_FLOAT_FORMAT = re.compile(r"^%[-+ 0#]*\d*(\.\d+)?[eEfFgG]$")
_NUMERIC_PARAMS = {ParamType.INT: "i", ParamType.FLOAT: "f", ParamType.INT_ARRAY: "i",
                   ParamType.FLOAT_ARRAY: "f", ParamType.ROI: "i"}
#: synthetic run: frames of this shape, this many, these split points (seeded)
SHAPE, FRAMES, SPLITS, SEED = (64, 64), 12, 4, 20261201
REL = 1e-12


def check_plugin(cls: Any, frames: Sequence[np.ndarray] | None = None) -> list[str]:
    """Problems of an analysis class (``[]``: none). ``frames``: synthetic uint16 images by default."""
    if not (isinstance(cls, type) and issubclass(cls, Analysis)):
        return [f"{cls!r} is not a tango_dqm.Analysis subclass"]
    problems = declaration_problems(cls)
    if is_v1(cls):
        problems.append(f"{_who(cls)}: uses the deprecated plugin API v1 (process(frame, params) with '_' keys); "
                        "migrate to v2 (docs/plugins.md, 'Migrating from v1')")
    if problems:
        return problems  # behaviour checks need sound declarations
    return behaviour_problems(cls, frames)


def _who(cls: type[Analysis]) -> str:
    return f"analysis {cls.name or cls.__name__!r}"


# ---- declarations ------------------------------------------------------------------------------


def declaration_problems(cls: type[Analysis]) -> list[str]:
    """What is wrong with the declared name, parameters and results (no plugin code runs):
    the load-time validation the device applies (first problem), then what Jive and Taranta
    need of every declaration (all problems)."""
    who = _who(cls)
    try:
        validate_analysis(cls)
    except PluginError as exc:
        return [str(exc)]  # the device would refuse it at load: fix this first
    params, results = list(cls.parameters), list(cls.results)
    out: list[str] = []
    for p in params:
        out += [f"{who}: parameter {p.name!r}: {m}" for m in _display_problems(p, _NUMERIC_PARAMS.get(p.type))]
    by_name = {r.name: r for r in results}
    for r in results:
        out += [f"{who}: result {r.name!r}: {m}" for m in _result_problems(r, by_name)]
    if cls.prepare_parameters is not None:
        unknown = sorted(set(cls.prepare_parameters) - {p.name for p in params})
        if unknown:
            out.append(f"{who}: prepare_parameters names undeclared parameters {unknown}")
    return out


def _display_problems(decl: Parameter | Result, numeric: str | None) -> list[str]:
    """label, description, unit and format: what Jive and Taranta show."""
    out = []
    if not decl.label.strip():
        out.append("needs a label (shown by Jive and Taranta)")
    if not decl.description.strip():
        out.append("needs a description (Jive shows 'No description' otherwise)")
    if numeric is None:
        return out
    if decl.dimensionless and decl.unit:
        out.append(f"is dimensionless=True but has unit {decl.unit!r}; choose one")
    elif not decl.unit and not decl.dimensionless:
        out.append("needs a unit, or dimensionless=True for a pure number")
    pattern, example = (_INT_FORMAT, "%d") if numeric == "i" else (_FLOAT_FORMAT, "%.4g")
    if not decl.format:
        out.append(f"needs a display format, e.g. format={example!r}")
    elif not pattern.match(decl.format):
        out.append(f"format {decl.format!r} is not a printf format for {'integers' if numeric == 'i' else 'floats'}"
                   f", e.g. {example!r}")
    return out


def _result_problems(r: Result, by_name: dict[str, Result]) -> list[str]:
    kind = r.dtype.kind
    numeric = "i" if kind in "iu" else "f" if kind == "f" else None
    out = _display_problems(r, numeric)
    if numeric == "i":
        for which in ("warning", "alarm"):
            for v in getattr(r, which) or ():
                if v is not None and not isinstance(v, (Integral, np.integer)):
                    # the device rounds it, but the declaration reads as a float threshold on a count
                    out.append(f"{which} limit {v!r} must be written as an integer, as the result is {r.dtype} "
                               f"(write {_as_int(v)}, not {v!r})")
    if r.axis:
        axis = by_name.get(r.axis)
        if r.kind != "spectrum":
            out.append(f"axis={r.axis!r} is only for spectrum results")
        elif axis is None or axis.kind != "spectrum" or axis.name == r.name:
            out.append(f"axis {r.axis!r} must name another spectrum result of the same analysis")
        elif axis.run_summary != r.run_summary:
            out.append(f"axis {r.axis!r} must be given at the same time (run_summary {axis.run_summary})")
    return out


def _as_int(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError, OverflowError):
        return "an integer"


# ---- behaviour -----------------------------------------------------------------------------------


def synthetic_frames(n: int = FRAMES, shape: tuple[int, int] = SHAPE, seed: int = SEED) -> list[np.ndarray]:
    """Seeded uint16 images: Poisson background, a bright spot that moves, a few saturated pixels."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    out = []
    for i in range(n):
        cy, cx = shape[0] / 2 + 3 * math.sin(i), shape[1] / 2 + 3 * math.cos(i)
        spot = 2000 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
        img = rng.poisson(100 + spot).clip(0, 65535).astype(np.uint16)
        img[rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)] = 65535
        out.append(img)
    return out


def default_params(cls: type[Analysis]) -> Params:
    return Params({p.name: p.default for p in cls.parameters})


def behaviour_problems(cls: type[Analysis], frames: Sequence[np.ndarray] | None = None) -> list[str]:
    """Run the plugin on synthetic frames as the engine does and check purity, merge and finish."""
    who = _who(cls)
    images = list(frames) if frames is not None else synthetic_frames()
    params = default_params(cls)
    try:
        analysis = instantiate(cls)
    except Exception as exc:  # noqa: BLE001 - any failure is a problem to report
        return [f"{who}: cannot be instantiated without arguments: {_exc(exc)}"]
    out: list[str] = []
    per_frame = {r.name: r for r in cls.results if not r.run_summary}

    def run(part: Sequence[int], interim: bool = False) -> Any:
        runner = Runner(analysis)
        acc = analysis.new_accumulator()
        for i in part:
            acc = analysis.accumulate(acc, runner.process(Frame(images[i], i), params), params)
            if interim:
                analysis.finish(acc)  # as the engine's interim quality checks do
        return acc

    # purity: the same frame twice, frame.data untouched, declared per-frame results only
    frame = Frame(images[0], 0)
    before = images[0].copy()
    try:
        runner = Runner(analysis)
        first = runner.process(frame, params)
        second = Runner(analysis).process(Frame(images[0], 0), params)
        again = runner.process(frame, params)  # with the cached context
    except Exception as exc:  # noqa: BLE001
        what = f"a synthetic {images[0].dtype} {images[0].shape} frame with the default parameters"
        return [f"{who}: process failed on {what}: {_exc(exc)}"]
    if not np.array_equal(frame.data, before):
        out.append(f"{who}: process modified frame.data (it is a view on the receive buffer: never write to it)")
    for label, other in [("a second call", second), ("a call with the cached prepare() context", again)]:
        diff = _difference(first.results, other.results) or _difference(first.private, other.private, "private")
        if diff:
            out.append(f"{who}: process is not pure: {label} on the same frame gave a different output ({diff})")
            break
    undeclared = sorted(set(first.results) - set(per_frame))
    if undeclared:
        out.append(f"{who}: process published undeclared results {undeclared} (declare them, or pass them "
                   "as FrameOutput.private)")
    out += [f"{who}: result {k!r}: {m}" for k, v in first.results.items() if k in per_frame
            for m in _shape_problem(per_frame[k], v)]

    # finish on an empty accumulator, merge of empties
    try:
        empty = analysis.finish(analysis.new_accumulator())
        analysis.merge(analysis.new_accumulator(), analysis.new_accumulator())
    except Exception as exc:  # noqa: BLE001
        return out + [f"{who}: finish or merge of an empty accumulator failed: {_exc(exc)}"]
    if not isinstance(empty, dict):
        return out + [f"{who}: finish returned {type(empty).__name__}, not a dict"]

    # the run in one, with interim finish calls, and split in two at seeded points
    n = len(images)
    try:
        whole_acc = run(range(n))
        whole = analysis.finish(whole_acc)
    except Exception as exc:  # noqa: BLE001
        return out + [f"{who}: accumulate or finish failed on a synthetic run: {_exc(exc)}"]
    missing = sorted(r.name for r in cls.results if r.run_summary and r.name not in whole)
    if missing:
        out.append(f"{who}: finish does not give the declared run_summary results {missing}")
    try:
        interim = analysis.finish(run(range(n), interim=True))
    except Exception as exc:  # noqa: BLE001
        return out + [f"{who}: finish during the run failed: {_exc(exc)}"]
    diff = _difference(whole, interim)
    if diff:
        out.append(f"{who}: finish modified the accumulator (the engine calls it during the run): {diff}")
    rng = random.Random(SEED)
    points = sorted({0, n, *rng.sample(range(1, n), min(SPLITS, n - 1))})
    for k in points:
        try:
            a, b = run(range(k)), run(range(k, n))
            a_before = copy.deepcopy(analysis.finish(a))
            merged = analysis.merge(a, b)
            result = analysis.finish(merged)
            a_after = analysis.finish(a)
        except Exception as exc:  # noqa: BLE001
            return out + [f"{who}: merge of a run split at frame {k} of {n} failed: {_exc(exc)}"]
        diff = _difference(whole, result) or _difference(whole_acc, merged, "accumulator")
        if diff:
            out.append(f"{who}: merge of a run split at frame {k} of {n} differs from the run in one: {diff}")
            break
        if _difference(a_before, a_after):
            out.append(f"{who}: merge modified its first argument (split at frame {k}); return a new accumulator")
            break
    out += _wire_problems(who, analysis, whole_acc)
    return out


def _wire_problems(who: str, analysis: Analysis, acc: Any) -> list[str]:
    """A scale-out worker sends its accumulator to the reducer: it must survive the wire format
    unchanged (tango_dqm.scaleout.wire; classes of the plugin's own listed in wire_types)."""
    from .scaleout.wire import Registry, WireError, decode, encode  # only the check needs it

    try:
        registry = Registry.for_analyses([analysis])
        tree, buffers = encode(acc, registry)
        back = decode(tree, [bytes(b) for b in buffers], registry)
    except WireError as exc:
        return [f"{who}: its accumulator cannot be sent to a scale-out reducer: {exc}"]
    diff = _difference(acc, back, "accumulator")
    if diff:
        return [f"{who}: its accumulator changes on the way to a scale-out reducer: {diff}"]
    return []


def _shape_problem(r: Result, v: Any) -> list[str]:
    if v is None:
        return []
    ndim = {"scalar": 0, "spectrum": 1, "image": 2}[r.kind]
    got = np.ndim(v)
    if got != ndim:
        return [f"declared {r.kind} but process gave a value of {got} dimensions"]
    return []


def _exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _difference(a: Any, b: Any, path: str = "") -> str:
    """"" when equal under the contract's rule (integers and text exactly, floats within 1e-12
    relative, NaN equals NaN), else where they differ."""
    where = path or "value"
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where}: keys {sorted(map(str, set(a) ^ set(b)))} in only one"
        for k in a:
            d = _difference(a[k], b[k], f"{path}[{k!r}]" if path else repr(k))
            if d:
                return d
        return ""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = _difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return ""
    if isinstance(a, (np.ndarray, np.generic, Real)) and isinstance(b, (np.ndarray, np.generic, Real)) \
            and not isinstance(a, (str, bytes)) and not isinstance(b, (str, bytes)):
        return _numbers(np.asarray(a), np.asarray(b), where)
    if type(a) is type(b) and not isinstance(a, (str, bytes)) and type(a).__eq__ is object.__eq__ \
            and (dataclasses.is_dataclass(a) or hasattr(a, "__dict__") or hasattr(type(a), "__slots__")):
        return _difference(_fields(a), _fields(b), path)  # an accumulator object: compare its fields
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        return _difference(_fields(a), _fields(b), path)
    try:
        same = bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable: different
        same = False
    return "" if same else f"{where}: {_short(a)} vs {_short(b)}"


def _fields(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    names = list(getattr(obj, "__dict__", {}))
    for klass in type(obj).__mro__:
        names += [s for s in getattr(klass, "__slots__", ()) if hasattr(obj, s)]
    return {n: getattr(obj, n) for n in dict.fromkeys(names)}


def _numbers(a: np.ndarray, b: np.ndarray, where: str) -> str:
    if a.shape != b.shape:
        return f"{where}: shape {a.shape} vs {b.shape}"
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        bad = a != b
    elif a.dtype.kind in "biuf" and b.dtype.kind in "biuf":
        x, y = a.astype(np.float64), b.astype(np.float64)
        with np.errstate(invalid="ignore"):
            close = (x == y) | (np.abs(x - y) <= REL * np.maximum(np.abs(x), np.abs(y)))
        bad = ~(close | (np.isnan(x) & np.isnan(y)))
    else:
        bad = a != b
    bad = np.asarray(bad)
    if not bad.any():
        return ""
    if a.ndim == 0:
        return f"{where}: {a.item()!r} vs {b.item()!r}"
    i = tuple(int(v) for v in np.argwhere(bad)[0])
    return f"{where}{list(i)}: {a[i]!r} vs {b[i]!r} ({int(bad.sum())} of {a.size} differ)"


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def format_problems(spec: str, problems: Sequence[str]) -> str:
    """The report ``tango-dqm check-plugin`` prints."""
    if not problems:
        return f"{spec}: OK, keeps the plugin contract"
    return "\n".join([f"{spec}: {len(problems)} problem(s)", *(f"  - {p}" for p in problems)])


__all__ = ["behaviour_problems", "check_plugin", "declaration_problems", "default_params", "format_problems",
           "synthetic_frames"]
