"""The gain analysis: a charge spectrum generated with a known gain is fitted back within its error."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tango_dqm import Frame, Params, load_analysis
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tests.helpers import run_scan

SPEC = "tango_dqm.analysis.gain:Gain"
BASELINE = 200  # per sample
SAMPLES = 8  # a short digitised waveform per trigger


@pytest.fixture(scope="module")
def analysis():
    return load_analysis(SPEC)()


def params(analysis, **values) -> Params:
    return Params({p.name: p.validate(values.get(p.name, p.default)) for p in analysis.parameters})


def charges(n, mu=0.5, gain=50.0, s0=4.0, s1=8.0, seed=0) -> np.ndarray:
    """Poisson photoelectrons, each of charge N(gain, s1), on pedestal noise N(0, s0); integers."""
    rng = np.random.default_rng(seed)
    k = rng.poisson(mu, n)
    q = rng.normal(0.0, s0, n) + rng.normal(k * gain, np.sqrt(k) * s1)
    return np.rint(q).astype(np.int64)


def waveforms(q: np.ndarray):
    """One uint16 waveform per trigger whose window sum minus baseline is the charge."""
    for c in q:
        w = np.full(SAMPLES, BASELINE, np.uint16)
        w[2] += c  # the pulse, in one sample (c >= -BASELINE)
        yield w


def run(analysis, q, **values):
    p = params(analysis, gain_pedestal=float(BASELINE), **values)
    acc = analysis.new_accumulator()
    for i, w in enumerate(waveforms(q)):
        acc = analysis.accumulate(acc, analysis.process(Frame(w, i), p), p)
    return acc


def test_charge_is_window_sum_minus_baseline(analysis):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 1000, (40, 50)).astype(np.uint16)
    r = analysis.process(Frame(img, 0), params(analysis, roi_gain=[5, 10, 2, 4], gain_pedestal=12.5)).results
    assert r["gain_charge"] == pytest.approx(img[2:6, 5:15].astype(np.int64).sum() - 12.5 * 40, rel=1e-15)
    r = analysis.process(Frame(img.astype(np.float32), 0), params(analysis)).results
    assert r["gain_charge"] == pytest.approx(img.astype(np.float64).sum(), rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_gain_recovered_within_error(analysis, seed):
    out = analysis.finish(run(analysis, charges(20000, seed=seed)))
    assert out["gain_status"] == "OK"
    assert out["gain_entries"] == 20000
    assert 0 < out["gain_error"] < 0.5  # 1 % of the gain: a meaningful error
    assert abs(out["gain"] - 50.0) < 3 * out["gain_error"]
    assert out["gain_mu"] == pytest.approx(0.5, abs=0.03)
    assert out["gain_pedestal_position"] == pytest.approx(0.0, abs=0.3)
    assert out["gain_pedestal_sigma"] == pytest.approx(4.0, rel=0.1)
    assert out["gain_sigma_1pe"] == pytest.approx(8.0, rel=0.15)
    assert out["gain_chi2_ndf"] < 2.0
    assert out["gain_spectrum"].sum() <= 20000 and out["gain_spectrum"].dtype == np.int64
    assert out["gain_spectrum"].shape == out["gain_spectrum_x"].shape


def test_error_is_a_fair_uncertainty(analysis):
    """Over independent spectra the pulls (fit - truth) / error scatter like a unit Gaussian."""
    pulls = []
    for seed in range(10, 22):
        out = analysis.finish(run(analysis, charges(8000, mu=1.0, gain=40.0, s0=3.0, s1=6.0, seed=seed)))
        assert out["gain_status"] == "OK"
        pulls.append((out["gain"] - 40.0) / out["gain_error"])
    assert abs(np.mean(pulls)) < 1.0 and 0.5 < np.std(pulls) < 1.6


def test_float_charges_and_bin_width(analysis):
    """Charges in pC with a 0.01 pC finest bin."""
    rng = np.random.default_rng(3)
    k = rng.poisson(0.4, 20000)
    q = rng.normal(0.0, 0.05, k.size) + rng.normal(0.8 * k, 0.1 * np.sqrt(k))
    p = params(analysis, gain_bin_width=0.01)
    acc = analysis.new_accumulator()
    for i, c in enumerate(q):
        acc = analysis.accumulate(acc, analysis.process(Frame(np.array([c]), i), p), p)
    out = analysis.finish(acc)
    assert out["gain_status"] == "OK"
    assert abs(out["gain"] - 0.8) < 3 * out["gain_error"]


def test_insufficient_below_min_entries(analysis):
    out = analysis.finish(run(analysis, charges(999)))
    assert out["gain_status"] == "INSUFFICIENT" and out["gain_entries"] == 999
    assert math.isnan(out["gain"]) and math.isnan(out["gain_error"])  # never 0
    assert out["gain_spectrum"].sum() > 0  # the spectrum is still shown
    out = analysis.finish(run(analysis, charges(999), gain_min_entries=500))
    assert out["gain_status"] == "OK"
    empty = analysis.finish(analysis.new_accumulator())
    assert empty["gain_status"] == "INSUFFICIENT" and empty["gain_entries"] == 0 and math.isnan(empty["gain"])


def test_fit_failed_without_photoelectron_peaks(analysis):
    rng = np.random.default_rng(4)
    out = analysis.finish(run(analysis, np.rint(rng.normal(0, 5, 5000)).astype(np.int64)))
    assert out["gain_status"] == "FIT_FAILED"
    assert math.isnan(out["gain"]) and math.isnan(out["gain_error"])
    assert out["gain_entries"] == 5000


def test_merge_equals_single_accumulator(analysis):
    q = charges(6000, seed=7)
    whole = analysis.finish(run(analysis, q))
    assert whole["gain_status"] == "OK"
    a, b, c = run(analysis, q[:1000]), run(analysis, q[1000:3500]), run(analysis, q[3500:])
    for merged in (analysis.merge(analysis.merge(a, b), c), analysis.merge(a, analysis.merge(b, c))):
        out = analysis.finish(merged)
        assert out.keys() == whole.keys()
        for k, v in whole.items():
            np.testing.assert_array_equal(out[k], v, err_msg=k)
    assert analysis.finish(a)["gain_entries"] == 1000  # merge left its inputs alone


def test_nan_charges_are_not_counted(analysis):
    p = params(analysis)
    acc = analysis.new_accumulator()
    acc = analysis.accumulate(acc, analysis.process(Frame(np.array([np.nan, 1.0]), 0), p), p)
    acc = analysis.accumulate(acc, analysis.process(Frame(np.array([2.0, 1.0]), 1), p), p)
    assert analysis.finish(acc)["gain_entries"] == 1


def test_declared_results_cover_what_is_published(analysis):
    declared = {r.name for r in analysis.results}
    r = analysis.process(Frame(np.zeros(4), 0), params(analysis)).results
    assert set(r) <= declared
    assert set(analysis.finish(run(analysis, charges(2000)))) <= declared
    assert all(n.startswith("gain") for n in declared)


def test_runs_in_the_engine():
    engine = Engine(EngineConfig(sources=["sim://?frames=20&shape=256x256"], analyses=[SPEC]))
    snap = run_scan(engine, {"roi_gain": [100, 50, 100, 50]})
    assert snap.state is EngineState.CLOSE, snap.status
    assert snap.results["gain_charge"] > 0
    s = snap.summary
    assert s["gain_status"] == "INSUFFICIENT" and s["gain_entries"] == 20 and math.isnan(s["gain"])
