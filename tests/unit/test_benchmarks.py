"""The benchmarks' own pieces (no timing asserted): the demo configuration they use, the
dranspose ROI worker's equivalence with the roi analysis, and the engine listener they wait on."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.common import LAST_RUN, SHAPE, RunWaiter, demo_engine_parameters, demo_frames, demo_monitor, engine_run
from benchmarks.dranspose_roi import _stats
from tango_dqm import Frame, Params, load_analysis
from tango_dqm.plugin import Runner


def test_demo_configuration_is_read_from_config_demo_json():
    props, params, attr_props = demo_monitor()
    assert props["Analyses"] == ["roi", "profile", "pixels", "histogram"]
    assert params == {"pixels_min_frames": 50, "hist_max": 4096, "hist_bins": 256}
    assert attr_props["saturated_pixels"] == {"max_warning": "1", "max_alarm": "1000"}
    values = demo_engine_parameters()
    assert values["roi_background"] == [0, 100, 0, 100] and values["hist_bins"] == 256


def test_dranspose_worker_statistics_equal_the_roi_analysis():
    image = demo_frames(1)[0]
    roi = load_analysis("roi")()
    p = Params({d.name: d.validate({"roi_signal": [462, 100, 462, 100]}.get(d.name, d.default), SHAPE)
                for d in roi.parameters})
    want = Runner(roi).process(Frame(image, 0), p).results  # plugin API v2
    got = _stats(image[462:562, 462:562], "signal")
    for key, value in got.items():
        assert value == pytest.approx(want[key], rel=1e-9), key


def test_run_waiter_ends_on_close_and_times_the_last_frame():
    waiter = RunWaiter(last_frame=2)
    for i in range(3):
        waiter.on_results({}, i)
    assert not waiter.ended.is_set()
    waiter.on_state("CLOSE", "done")
    assert waiter.ended.is_set() and waiter.first is not None and waiter.last >= waiter.first


def test_engine_run_completes_every_frame_of_a_stream():
    # engine_run raises unless every frame was completed and the first and last results were seen
    rate = engine_run(["roi"], {"roi_signal": [0, 8, 0, 8]}, 20)
    assert rate > 0 and np.isfinite(rate)
    assert LAST_RUN["cpu_ms_per_frame"] > 0  # this process' CPU between the first and the last result


def test_every_benchmark_module_imports_and_has_main():
    """`make bench` discovers benchmarks/bench_*.py: each must import (a stale import once failed
    bench_http only when the whole set ran) and have main(argv)."""
    import importlib
    import inspect

    from benchmarks.__main__ import discover

    names = discover()
    assert {"engine", "device", "replay", "analyses", "http", "simulation"} <= set(names)
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        assert "argv" in inspect.signature(module.main).parameters, name
