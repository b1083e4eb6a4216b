"""The histogram analysis equals numpy.histogram on the same data, per frame and per run."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tango_dqm import Frame, Params, load_analysis
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tests.helpers import run_scan

SPEC = "tango_dqm.analysis.histogram:Histogram"


@pytest.fixture(scope="module")
def analysis():
    return load_analysis(SPEC)()


def params(analysis, **values) -> Params:
    return Params({p.name: p.validate(values.get(p.name, p.default)) for p in analysis.parameters})


def data(dtype, shape=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        d = rng.normal(50, 60, shape)
        d[0, :8] = np.round(d[0, :8])  # some values exactly on integer edges
        d[1, :4] = [-10.5, 0.0, 100.0, 255.0]
        return d.astype(dt)
    info = np.iinfo(dt)
    return rng.integers(max(info.min, -300), min(info.max, 300) + 1, shape).astype(dt)


BINNINGS = [(1, 0.0, 1.0), (7, -10.5, 100.0), (64, 0.0, 256.0), (255, -200.0, 200.0), (10, 3.3, 17.9),
            (3, 100.0, 100.5), (1024, 0.0, 65536.0)]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64,
                                   np.float32, np.float64, np.bool_])
@pytest.mark.parametrize("bins, lo, hi", BINNINGS)
def test_equals_numpy_histogram(analysis, dtype, bins, lo, hi):
    img = data(dtype) if dtype is not np.bool_ else data(np.int16) > 0
    r = analysis.process(Frame(img, 0), params(analysis, hist_bins=bins, hist_min=lo, hist_max=hi)).results
    values = img.astype(np.float64)  # the reference bins in float64 (numpy bins float32 in float32)
    ref, _ = np.histogram(values, bins=bins, range=(lo, hi))
    assert r["hist_counts"].dtype == np.int64
    np.testing.assert_array_equal(r["hist_counts"], ref)
    assert r["hist_underflow"] == np.count_nonzero(values < lo)
    assert r["hist_overflow"] == np.count_nonzero(values > hi)
    inside = values[(values >= lo) & (values <= hi)]
    if inside.size:
        assert r["hist_mean"] == pytest.approx(inside.mean(), rel=1e-12)
    else:
        assert math.isnan(r["hist_mean"])


def test_integer_data_matches_numpy_on_its_own_terms(analysis):
    img = data(np.uint16, shape=(512, 512), seed=5)
    for bins, lo, hi in BINNINGS:
        r = analysis.process(Frame(img, 0), params(analysis, hist_bins=bins, hist_min=lo, hist_max=hi)).results
        np.testing.assert_array_equal(r["hist_counts"], np.histogram(img, bins=bins, range=(lo, hi))[0])


def test_nan_is_in_no_bin(analysis):
    img = np.array([[1.0, np.nan, 2.0, -5.0, 50.0]])
    r = analysis.process(Frame(img, 0), params(analysis, hist_bins=2, hist_min=0.0, hist_max=10.0)).results
    assert r["hist_counts"].tolist() == [2, 0]
    assert (r["hist_underflow"], r["hist_overflow"]) == (1, 1)


def test_roi(analysis):
    img = data(np.uint16, shape=(60, 80))
    r = analysis.process(Frame(img, 0), params(analysis, roi_histogram=[10, 30, 5, 20], hist_bins=16,
                                               hist_min=0.0, hist_max=320.0)).results
    np.testing.assert_array_equal(r["hist_counts"], np.histogram(img[5:25, 10:40], 16, (0, 320))[0])


def test_invalid_range_disables_the_frame(analysis):
    p = params(analysis, hist_min=10.0, hist_max=10.0)
    out = analysis.process(Frame(data(np.uint16), 0), p)
    r = out.results
    assert r["hist_counts"].size == 0 and r["hist_underflow"] is None and math.isnan(r["hist_mean"])
    acc = analysis.accumulate(analysis.new_accumulator(), out, p)
    assert analysis.finish(acc)["hist_run_frames"] == 0


def run(analysis, frames, p):
    acc = analysis.new_accumulator()
    for i, f in enumerate(frames):
        acc = analysis.accumulate(acc, analysis.process(Frame(f, i), p), p)
    return acc


@pytest.mark.parametrize("dtype", [np.uint16, np.float64])
def test_run_histogram_and_merge(analysis, dtype):
    frames = [data(dtype, seed=s) for s in range(9)]
    p = params(analysis, hist_bins=50, hist_min=-20.0, hist_max=180.0)
    whole = analysis.finish(run(analysis, frames, p))
    values = np.stack(frames).astype(np.float64)
    ref, edges = np.histogram(values, bins=50, range=(-20.0, 180.0))
    np.testing.assert_array_equal(whole["hist_run_counts"], ref)
    np.testing.assert_array_equal(whole["hist_edges"], edges)
    assert whole["hist_run_underflow"] == np.count_nonzero(values < -20)
    assert whole["hist_run_overflow"] == np.count_nonzero(values > 180)
    assert whole["hist_run_mean"] == pytest.approx(values[(values >= -20) & (values <= 180)].mean(), rel=1e-12)
    assert whole["hist_run_frames"] == 9
    a, b, c = run(analysis, frames[:2], p), run(analysis, frames[2:6], p), run(analysis, frames[6:], p)
    for merged in (analysis.merge(analysis.merge(a, b), c), analysis.merge(a, analysis.merge(b, c))):
        out = analysis.finish(merged)
        assert out.keys() == whole.keys()
        for k, v in whole.items():
            if dtype is np.float64 and k == "hist_run_mean":  # float sums: order may round differently
                assert out[k] == pytest.approx(v, rel=1e-12)
            else:
                np.testing.assert_array_equal(out[k], v, err_msg=k)
    np.testing.assert_array_equal(analysis.finish(a)["hist_run_counts"],
                                  np.histogram(values[:2], bins=50, range=(-20.0, 180.0))[0])


def test_accumulate_leaves_published_counts_untouched(analysis):
    p = params(analysis, hist_bins=8, hist_min=0.0, hist_max=300.0)
    r0 = analysis.process(Frame(data(np.uint16, seed=1), 0), p)
    before = r0.results["hist_counts"].copy()
    acc = analysis.accumulate(analysis.new_accumulator(), r0, p)
    analysis.accumulate(acc, analysis.process(Frame(data(np.uint16, seed=2), 1), p), p)
    np.testing.assert_array_equal(r0.results["hist_counts"], before)


def test_binning_change_reports_latest(analysis):
    frames = [data(np.uint16, seed=s) for s in range(4)]
    acc = run(analysis, frames[:3], params(analysis, hist_bins=10, hist_min=0.0, hist_max=100.0))
    acc = analysis.merge(acc, run(analysis, frames[3:], params(analysis, hist_bins=4, hist_min=0.0, hist_max=40.0)))
    out = analysis.finish(acc)
    assert out["hist_run_frames"] == 1 and out["hist_run_counts"].size == 4 and out["hist_edges"].size == 5
    np.testing.assert_array_equal(out["hist_run_counts"], np.histogram(frames[3], 4, (0, 40))[0])


def test_declared_results_cover_what_is_published(analysis):
    declared = {r.name for r in analysis.results}
    p = params(analysis)
    r = analysis.process(Frame(data(np.uint16), 0), p).results
    assert set(r) <= declared
    assert set(analysis.finish(run(analysis, [data(np.uint16)], p))) <= declared
    assert set(analysis.finish(analysis.new_accumulator())) <= declared
    assert all(n.startswith("hist_") for n in declared)


def test_runs_in_the_engine():
    engine = Engine(EngineConfig(sources=["sim://?frames=20&shape=256x256"], analyses=[SPEC]))
    snap = run_scan(engine, {"hist_bins": 100, "hist_max": 200.0})
    assert snap.state is EngineState.CLOSE, snap.status
    r, s = snap.results, snap.summary
    assert r["hist_counts"].shape == (100,)
    assert r["hist_counts"].sum() + r["hist_underflow"] + r["hist_overflow"] == 256 * 256
    assert s["hist_run_frames"] == 20
    assert s["hist_run_counts"].sum() + s["hist_run_underflow"] + s["hist_run_overflow"] == 20 * 256 * 256
    assert s["hist_run_mean"] == pytest.approx(100.0, abs=5.0)  # sim background 100, noise 5
