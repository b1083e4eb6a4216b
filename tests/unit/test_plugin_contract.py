"""The plugin contract: every installed analysis and every docs example keeps it, and the check
finds what breaks it (impure process, merge that drops data, finish that changes the accumulator,
declarations Tango or Jive cannot use). Also the v2 calls themselves: prepare() caching, private
data never published, v1 plugins through the deprecated adapter."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from tango_dqm import Analysis, Frame, FrameOutput, Params, PluginError, Result, load_analysis
from tango_dqm.cli import main as cli_main
from tango_dqm.contract import behaviour_problems, check_plugin, declaration_problems, default_params
from tango_dqm.engine import Engine, EngineConfig
from tango_dqm.plugin import Runner, V1Adapter, instantiate, registered_analyses
from tests.helpers import run_scan
from tests.unit import plugins

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
BUILT_IN = ("roi", "profile", "pixels", "histogram", "gain")


def test_built_in_analyses_are_registered():
    assert set(BUILT_IN) <= set(registered_analyses())


@pytest.mark.parametrize("name", registered_analyses())
def test_installed_analysis_keeps_the_contract(name):
    assert check_plugin(load_analysis(name)) == []


def docs_examples() -> list[type[Analysis]]:
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    classes = []
    for i, code in enumerate(blocks):
        namespace: dict = {"__name__": f"docs_plugins_example_{i}"}
        exec(compile(code, f"{DOCS}:block{i}", "exec"), namespace)  # noqa: S102 - our own docs, not untrusted input
        classes += [v for v in namespace.values()
                    if isinstance(v, type) and issubclass(v, Analysis) and v is not Analysis]
    return classes


def test_docs_examples_keep_the_contract():
    classes = docs_examples()
    assert {c.__name__ for c in classes} >= {"Threshold", "AnnulusMean"}
    for cls in classes:
        assert check_plugin(cls) == [], cls.__name__


def test_old_docs_threshold_is_refused_with_a_clear_message(capsys):
    problems = check_plugin(plugins.OldDocsThreshold)
    limit = [p for p in problems if "threshold_pixels" in p and "limit" in p]
    assert len(limit) == 2 and all("must be written as an integer" in p for p in limit), problems
    assert any("write 100, not 100.0" in p for p in limit)
    assert any("plugin API v1" in p for p in problems)
    assert any("threshold_mode" in p and "description" in p for p in problems)
    assert cli_main(["check-plugin", "tests.unit.plugins:OldDocsThreshold"]) == 1
    err = capsys.readouterr().err
    assert "threshold_pixels" in err and "must be written as an integer" in err


def test_cli_accepts_a_plugin_that_keeps_the_contract(capsys):
    assert cli_main(["check-plugin", "roi", "tests.unit.plugins:AnnulusMean"]) == 0
    assert capsys.readouterr().out.count("OK, keeps the plugin contract") == 2
    assert cli_main(["check-plugin", "no_such_module_xyz:Thing"]) == 1
    assert "cannot import module 'no_such_module_xyz'" in capsys.readouterr().err


# ---- the check finds broken plugins -------------------------------------------------------------


def _r(name, dtype=float, **kw):
    kw.setdefault("kind", "scalar")
    fmt = "%d" if np.dtype(dtype).kind in "iu" else "%.4g"
    return Result(name, dtype, unit="counts", label=name, description=f"test result {name}", format=fmt, **kw)


class _Good(Analysis):
    """Sum of the frame per frame; the run total: a correct plugin that the broken ones modify."""

    name = "good"
    results = [_r("good_sum", int), _r("good_total", int, run_summary=True)]

    def process(self, frame, params, context):
        return FrameOutput({"good_sum": int(frame.data.sum(dtype=np.int64))})

    def new_accumulator(self):
        return {"total": 0}

    def accumulate(self, acc, output, params):
        return {"total": acc["total"] + output.results["good_sum"]}

    def merge(self, a, b):
        return {"total": a["total"] + b["total"]}

    def finish(self, acc):
        return {"good_total": acc["total"]}


class _Impure(_Good):
    def __init__(self):
        self.calls = 0

    def process(self, frame, params, context):
        self.calls += 1  # state on self between frames
        return FrameOutput({"good_sum": int(frame.data.sum(dtype=np.int64)) + self.calls})


class _WritesFrame(_Good):
    def process(self, frame, params, context):
        frame.data[0, 0] = 0
        return super().process(frame, params, context)


class _DropsOnMerge(_Good):
    def merge(self, a, b):
        return a  # v1's default: the second accumulator is lost


class _FinishModifies(_Good):
    def finish(self, acc):
        total, acc["total"] = acc["total"], 0
        return {"good_total": total}


class _MergeMutates(_Good):
    def merge(self, a, b):
        a["total"] += b["total"]
        return a


class _Undeclared(_Good):
    def process(self, frame, params, context):
        return FrameOutput({"good_sum": 1, "extra": 2.0})


class _EmptyFinishFails(_Good):
    def finish(self, acc):
        return {"good_total": acc["total"] // (acc["total"] - acc["total"])}


class _FloatOrder(_Good):
    """Floats summed in a different order when merged: equal within 1e-12 relative, accepted."""

    results = [_r("good_sum", int), _r("good_total", float, run_summary=True)]

    def new_accumulator(self):
        return {"total": 0.0}

    def accumulate(self, acc, output, params):
        return {"total": acc["total"] + output.results["good_sum"] * 0.1}


class _NoMerge(_Good):
    merge = Analysis.merge


class _Box:
    __slots__ = ("total",)

    def __init__(self, total=0):
        self.total = total

    def __eq__(self, other):
        return isinstance(other, _Box) and self.total == other.total


class _UnlistedClass(_Good):
    """An accumulator of its own class, not listed in wire_types: a worker could not send it."""

    def new_accumulator(self):
        return _Box()

    def accumulate(self, acc, output, params):
        return _Box(acc.total + output.results["good_sum"])

    def merge(self, a, b):
        return _Box(a.total + b.total)

    def finish(self, acc):
        return {"good_total": acc.total}


class _ListedClass(_UnlistedClass):
    wire_types = (_Box,)


@pytest.mark.parametrize("cls, expected", [
    (_Impure, "process is not pure"),
    (_WritesFrame, "process modified frame.data"),
    (_DropsOnMerge, "differs from the run in one"),
    (_FinishModifies, "finish modified the accumulator"),
    (_MergeMutates, "merge modified its first argument"),
    (_Undeclared, "undeclared results ['extra']"),
    (_EmptyFinishFails, "finish or merge of an empty accumulator failed: ZeroDivisionError"),
    (_NoMerge, "does not define merge()"),
    (_UnlistedClass, "its accumulator cannot be sent to a scale-out reducer"),
])
def test_behaviour_problems_are_found(cls, expected):
    assert declaration_problems(cls) == []
    problems = check_plugin(cls)
    assert any(expected in p for p in problems), problems


def test_correct_plugins_pass_including_float_rounding_within_tolerance():
    assert check_plugin(_Good) == []
    assert check_plugin(_FloatOrder) == []
    assert check_plugin(_ListedClass) == []  # its class listed in wire_types: it goes over the wire


def test_merge_check_uses_several_split_points():
    seen = []

    class Spy(_Good):
        def merge(self, a, b):
            seen.append((a["total"] > 0, b["total"] > 0))
            return super().merge(a, b)

    assert behaviour_problems(Spy) == []
    assert (True, True) in seen and (False, True) in seen and (True, False) in seen
    assert len(seen) >= 4


@pytest.mark.parametrize("result, expected", [
    (Result("x_a", float, label="A", description="d", format="%.3f"), "needs a unit, or dimensionless=True"),
    (Result("x_a", float, unit="V", dimensionless=True, label="A", description="d", format="%.3f"), "choose one"),
    (Result("x_a", float, unit="V", description="d", format="%.3f"), "needs a label"),
    (Result("x_a", float, unit="V", label="A", format="%.3f"), "needs a description"),
    (Result("x_a", float, unit="V", label="A", description="d"), "needs a display format"),
    (Result("x_a", float, unit="V", label="A", description="d", format="%d"), "not a printf format for floats"),
    (Result("x_a", int, unit="V", label="A", description="d", format="%.2f"), "not a printf format for integers"),
    (Result("x_a", int, unit="V", label="A", description="d", format="%d", alarm=(0, 2.5)), "must be an integer"),
    (Result("x_a", float, unit="V", label="A", description="d", format="%g", warning=(5.0, 1.0)), "must be below"),
    (Result("x_a", float, kind="spectrum", unit="V", label="A", description="d", format="%g", alarm=(0.0, 1.0)),
     "limits need a numeric scalar result"),
    (Result("x_a", float, kind="spectrum", unit="V", label="A", description="d", format="%g", axis="x_nope"),
     "axis 'x_nope' must name another spectrum"),
    (Result("x-a", float, unit="V", label="A", description="d", format="%g"), "valid Tango attribute name"),
    (Result("x_a", int, unit="V", label="A", description="d", format="%d", alarm=(0.0, 2.0)),
     "alarm limit 0.0 must be written as an integer"),
    (Result("x_a", "complex128", unit="V", label="A", description="d", format="%g"), "has no Tango type"),
])
def test_declaration_problems_are_found(result, expected):
    cls = type("Decl", (_Good,), {"name": "decl", "results": [result]})
    problems = declaration_problems(cls)
    assert any(expected in p for p in problems), problems


def test_declarations_dimensionless_text_and_axis_accepted_and_case_clash_refused():
    ok = type("Ok", (_Good,), {"name": "ok", "results": [
        Result("ok_ratio", float, dimensionless=True, label="Ratio", description="a ratio", format="%.3f"),
        Result("ok_status", str, label="Status", description="a text"),
        Result("ok_y", float, kind="spectrum", unit="counts", label="Y", description="y", format="%g", axis="ok_x"),
        Result("ok_x", float, kind="spectrum", unit="mm", label="X", description="x", format="%g")]})
    assert declaration_problems(ok) == []
    clash = type("Clash", (_Good,), {"name": "clash", "results": [_r("Val"), _r("val")]})
    assert any("case-insensitive" in p for p in declaration_problems(clash))


# ---- the v2 calls ---------------------------------------------------------------------------------


def test_prepare_runs_again_only_when_its_parameters_change():
    runner = Runner(plugins.AnnulusMean())
    frame = Frame(np.arange(400, dtype=np.uint16).reshape(20, 20), 0)
    values = {p.name: p.default for p in plugins.AnnulusMean.parameters}
    first = runner.process(frame, Params(values))
    for _ in range(5):
        runner.process(frame, Params(values))
    assert runner.prepared == 1
    scaled = runner.process(frame, Params({**values, "annulus_scale": 2.0}))  # not a prepare parameter
    assert runner.prepared == 1
    assert scaled.results["annulus_mean"] == pytest.approx(2 * first.results["annulus_mean"])
    wider = runner.process(frame, Params({**values, "annulus_outer": 9.0}))
    assert runner.prepared == 2 and wider.private > first.private
    y, x = np.indices((20, 20))
    r = np.hypot(y - 9.5, x - 9.5)
    assert first.results["annulus_mean"] == pytest.approx(frame.data[(r >= 2) & (r < 6)].mean())


def test_engine_publishes_results_only_and_caches_the_context():
    engine = Engine(EngineConfig(["sim://?frames=15&shape=32x32"], ["tests.unit.plugins:AnnulusMean", "histogram"]))
    assert engine.warmed.wait(30)  # the Init warm-up prepared the context with the defaults
    snap = run_scan(engine)
    assert snap.counters.completed == 15
    declared = {r.name for a in engine.analyses for r in a.results if not r.run_summary}
    assert set(snap.results) == declared  # no private data among the published results
    assert engine._runners[0].prepared == 1  # the scan reused it
    y, x = np.indices((32, 32))
    r = np.hypot(y - 15.5, x - 15.5)
    assert snap.summary["annulus_pixels"] == 15 * int(((r >= 2) & (r < 6)).sum())
    assert snap.summary["hist_run_frames"] == 15


def test_a_parameter_written_after_init_gets_its_own_context():
    engine = Engine(EngineConfig(["sim://?frames=10&shape=32x32"], ["tests.unit.plugins:AnnulusMean"]))
    snap = run_scan(engine, {"annulus_outer": 9.0})  # possibly while the warm-up still prepares the default
    y, x = np.indices((32, 32))
    r = np.hypot(y - 15.5, x - 15.5)
    assert snap.summary["annulus_pixels"] == 10 * int(((r >= 2) & (r < 9)).sum())


def test_base_merge_refuses_to_drop_data():
    with pytest.raises(PluginError, match="'no_merge' keeps an accumulator but does not define merge"):
        plugins.NoMerge().merge(1, 2)
    assert Analysis().merge(None, None) is None


def test_process_must_return_frame_output_or_dict():
    class Bad(_Good):
        def process(self, frame, params, context):
            return [1, 2]

    with pytest.raises(PluginError, match="'good': process returned list, not a FrameOutput or dict"):
        Runner(Bad()).process(Frame(np.zeros((4, 4)), 0), default_params(Bad))


def test_v1_plugin_runs_through_the_deprecated_adapter():
    with pytest.warns(DeprecationWarning, match="'old_style' uses the deprecated plugin API v1"):
        a = instantiate(plugins.OldStyle)
    assert isinstance(a, V1Adapter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        engine = Engine(EngineConfig(["sim://?frames=10&shape=16x16"], ["tests.unit.plugins:OldStyle"]))
    snap = run_scan(engine)
    assert set(snap.results) == {"old_mean"}  # the "_" key went to accumulate only
    assert snap.summary["old_pixels"] == 10 * 256
