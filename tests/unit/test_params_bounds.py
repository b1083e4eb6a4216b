"""Numeric parameters: finite values only, declared bounds finite, and no shipped plugin overflows at its limits."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tango_dqm import Frame, Params, load_analysis
from tango_dqm.plugin import Runner, instantiate
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.params import Parameter, ParameterError, ParameterStore, ParamType
from tests.helpers import run_scan

PLUGINS = ["tango_dqm.analysis.gain:Gain", "tango_dqm.analysis.histogram:Histogram",
           "tango_dqm.analysis.pixels:Pixels", "tango_dqm.analysis.profile:Profile",
           "tango_dqm.analysis.roi:RoiStats"]


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, np.float32("inf"), np.float64("nan")])
def test_float_parameters_refuse_non_finite_values(value):
    s = ParameterStore([Parameter("x", float, 1.0), Parameter("xs", "float[]", [1.0])])
    with pytest.raises(ParameterError, match="x: must be a finite number"):
        s.set("x", value)
    with pytest.raises(ParameterError, match="xs: must be a finite number"):
        s.set("xs", [0.0, value])
    assert s.get("x") == 1.0 and s.get("xs") == (1.0,) and s.version == 0


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30, 1e300])
def test_int_parameters_must_fit_64_bits(value):
    s = ParameterStore([Parameter("n", int, 5)])
    with pytest.raises(ParameterError, match="n: must fit in a 64-bit integer"):
        s.set("n", value)
    assert s.set("n", 2**63 - 1) == 2**63 - 1 and s.set("n", -(2**63)) == -(2**63)


@pytest.mark.parametrize("kwargs, rule", [
    ({"min": math.inf}, "min and max must be finite numbers"),
    ({"max": math.nan}, "min and max must be finite numbers"),
    ({"min": "0"}, "min and max must be finite numbers"),
    ({"min": 2.0, "max": 1.0}, "min 2.0 is larger than max 1.0"),
])
def test_declarations_with_bad_bounds_fail_loudly(kwargs, rule):
    with pytest.raises(ValueError, match=rule):
        Parameter("x", float, 1.5, **kwargs)


def test_gain_pedestal_1e300_is_refused_with_its_bound():
    decl = load_analysis("tango_dqm.analysis.gain:Gain").parameters
    s = ParameterStore(decl)
    with pytest.raises(ParameterError, match=r"gain_pedestal: must be <= 1000000000000.0, got 1e\+300"):
        s.set("gain_pedestal", 1e300)
    with pytest.raises(ParameterError, match="gain_bin_width: must be <= "):
        s.set("gain_bin_width", 1e300)
    assert s.get("gain_pedestal") == 0.0


def test_every_float_parameter_of_the_shipped_plugins_has_finite_bounds_or_is_safe_at_extremes():
    """A float parameter without bounds is listed here only if its arithmetic was checked safe below."""
    unbounded = sorted(f"{p.name}" for spec in PLUGINS for p in load_analysis(spec).parameters
                       if p.type is ParamType.FLOAT and (p.min is None or p.max is None))
    assert set(unbounded) <= {"hot_sigma", "dead_threshold"}, unbounded


def _extremes(p: Parameter) -> list:
    lo = p.min if p.min is not None else (-1e308 if p.type is ParamType.FLOAT else -(2**63))
    hi = p.max if p.max is not None else (1e308 if p.type is ParamType.FLOAT else 2**63 - 1)
    return [lo, hi]


def _frames(kind: str):
    rng = np.random.default_rng(1)
    for i in range(30):
        if kind == "huge":
            yield Frame(np.full((16, 16), 1e300) * rng.choice([-1, 1], (16, 16)), i)
        else:
            yield Frame(rng.integers(0, 1000, (16, 16)).astype(np.uint16), i)


@pytest.mark.parametrize("kind", ["counts", "huge"])
@pytest.mark.parametrize("spec", PLUGINS)
def test_plugins_never_raise_at_parameter_limits(spec, kind):
    """Each numeric parameter at its min and max (or +-1e308 / int64 limits without a bound): process,
    accumulate and finish run without exception (an OverflowError at finish put the scan in FAULT)."""
    cls = load_analysis(spec)
    runner = Runner(instantiate(cls))  # as the engine calls it (prepare, v1 plugins adapted)
    analysis = runner.analysis
    cases = [(p, v) for p in cls.parameters if p.type in (ParamType.FLOAT, ParamType.INT) for v in _extremes(p)]
    for p, value in cases or [(None, None)]:  # no numeric parameter: the defaults, with the same frames
        values = {q.name: q.default for q in cls.parameters}
        if p is not None:
            values[p.name] = p.validate(value)
        params = Params(values)
        acc = analysis.new_accumulator()
        with np.errstate(all="ignore"):
            for frame in _frames(kind):
                acc = analysis.accumulate(acc, runner.process(frame, params), params)
            summary = analysis.finish(acc)
        assert isinstance(summary, dict), (p, value)


def test_gain_scan_with_extreme_charges_closes_with_a_reason_not_fault():
    engine = Engine(EngineConfig(sources=["sim://?frames=20&shape=64x64"], analyses=["tango_dqm.analysis.gain:Gain"]))
    with pytest.raises(ParameterError):
        engine.set_parameter("gain_pedestal", 1e300)
    # At the bounds every charge lies beyond 2**52 bin widths: none is counted, finish says why.
    snap = run_scan(engine, {"gain_pedestal": 1e12, "gain_bin_width": 1e-12})
    assert snap.state is EngineState.CLOSE, snap.status
    s = snap.summary
    assert s["gain_status"] == "INSUFFICIENT" and s["gain_entries"] == 0 and math.isnan(s["gain"])
