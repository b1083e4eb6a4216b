"""The profile analysis against independent numpy computations and known Gaussian spots."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tango_dqm import Frame, Params, load_analysis
from tango_dqm.analysis.profile import axis_stats
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tests.helpers import run_scan

SPEC = "tango_dqm.analysis.profile:Profile"
FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))  # 2.3548


@pytest.fixture(scope="module")
def analysis():
    return load_analysis(SPEC)()


def params(analysis, **values) -> Params:
    """Validated parameter values, as the engine's parameter store gives them."""
    return Params({p.name: p.validate(values.get(p.name, p.default)) for p in analysis.parameters})


def spot(shape=(200, 260), cx=140.3, cy=90.6, sx=6.0, sy=9.0, amplitude=1000.0, background=100.0):
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return background + amplitude * np.exp(-0.5 * ((x - cx) / sx) ** 2 - 0.5 * ((y - cy) / sy) ** 2)


def moments(p: np.ndarray, offset: int, background: float, window: tuple[int, int] | None = None):
    """Independent centroid/RMS of a projection minus a given background, inside window [lo, hi)."""
    lo, hi = window or (0, p.size)
    q = p[lo:hi] - background
    i = np.arange(lo, hi) + offset
    c = (i * q).sum() / q.sum()
    return c, math.sqrt(((i - c) ** 2 * q).sum() / q.sum())


def test_projections_are_exact_row_and_column_sums(analysis):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 65535, size=(70, 90), dtype=np.uint16)
    r = analysis.process(Frame(img, 0), params(analysis, roi_profile=[5, 40, 7, 30])).results
    region = img[7:37, 5:45].astype(np.int64)
    assert r["profile_x"].dtype == np.float64 and r["profile_y"].dtype == np.float64
    np.testing.assert_array_equal(r["profile_x"], region.sum(axis=0))
    np.testing.assert_array_equal(r["profile_y"], region.sum(axis=1))
    img = np.rint(spot(shape=(70, 90), cx=30.2, cy=20.7, sx=4.0, sy=3.0) + rng.normal(0, 3, (70, 90)))
    img = img.astype(np.uint16)
    r = analysis.process(Frame(img, 0), params(analysis, roi_profile=[5, 40, 7, 30])).results
    region = img[7:37, 5:45].astype(np.int64)
    for ax, proj, off in (("x", region.sum(axis=0), 5), ("y", region.sum(axis=1), 7)):
        bg = axis_stats(proj.astype(np.float64)).background  # the moments given that background
        assert proj.min() <= bg <= np.median(proj)
        c, rms = moments(proj.astype(np.float64), off, bg)
        assert r[f"profile_centroid_{ax}"] == pytest.approx(c, rel=1e-9)
        assert r[f"profile_rms_{ax}"] == pytest.approx(rms, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint16, np.int32])
def test_gaussian_spot_centroid_rms_fwhm(analysis, dtype):
    img = spot(amplitude=30000.0)
    img = np.rint(img).astype(dtype) if np.dtype(dtype).kind in "iu" else img.astype(dtype)
    r = analysis.process(Frame(img, 0), params(analysis)).results
    assert r["profile_centroid_x"] == pytest.approx(140.3, abs=0.01)
    assert r["profile_centroid_y"] == pytest.approx(90.6, abs=0.01)
    assert r["profile_rms_x"] == pytest.approx(6.0, rel=0.01)
    assert r["profile_rms_y"] == pytest.approx(9.0, rel=0.01)
    assert r["profile_fwhm_x"] == pytest.approx(FWHM_PER_SIGMA * 6.0, rel=0.01)
    assert r["profile_fwhm_y"] == pytest.approx(FWHM_PER_SIGMA * 9.0, rel=0.01)
    assert math.isnan(r["profile_fit_sigma_x"])  # fit off by default


def test_positions_are_in_full_image_coordinates(analysis):
    img = spot()
    r = analysis.process(Frame(img, 0), params(analysis, roi_profile=[100, 80, 50, 90])).results
    assert r["profile_x"].size == 80 and r["profile_y"].size == 90
    assert r["profile_centroid_x"] == pytest.approx(140.3, abs=0.01)
    assert r["profile_centroid_y"] == pytest.approx(90.6, abs=0.01)


def test_fwhm_matches_linear_interpolation(analysis):
    # triangle of half-width 10 on a pedestal: FWHM is 10 exactly
    p = np.concatenate([np.arange(0, 11), np.arange(9, -1, -1)]).astype(np.float64) + 5
    img = np.tile(p, (3, 1))
    r = analysis.process(Frame(img, 0), params(analysis)).results
    assert r["profile_fwhm_x"] == pytest.approx(10.0, abs=1e-12)
    assert r["profile_centroid_x"] == pytest.approx(10.0, abs=1e-12)
    assert math.isnan(r["profile_fwhm_y"])  # flat along y: no peak
    assert math.isnan(r["profile_centroid_y"])


def test_gaussian_fit_recovers_spot(analysis):
    rng = np.random.default_rng(0)
    img = spot() + rng.normal(0, 2.0, size=(200, 260))
    r = analysis.process(Frame(img, 0), params(analysis, profile_fit=True)).results
    # x projection: amplitude A sqrt(2 pi) sy, offset background * rows
    assert r["profile_fit_mean_x"] == pytest.approx(140.3, abs=0.02)
    assert r["profile_fit_sigma_x"] == pytest.approx(6.0, rel=0.005)
    assert r["profile_fit_amplitude_x"] == pytest.approx(1000 * math.sqrt(2 * math.pi) * 9.0, rel=0.005)
    assert r["profile_fit_offset_x"] == pytest.approx(100.0 * 200, rel=0.001)
    assert r["profile_fit_mean_y"] == pytest.approx(90.6, abs=0.02)
    assert r["profile_fit_sigma_y"] == pytest.approx(9.0, rel=0.005)
    assert r["profile_fit_amplitude_y"] == pytest.approx(1000 * math.sqrt(2 * math.pi) * 6.0, rel=0.005)
    assert r["profile_fit_offset_y"] == pytest.approx(100.0 * 260, rel=0.001)


def test_failed_fit_gives_nan_not_exception(analysis, monkeypatch):
    import scipy.optimize

    def broken(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "curve_fit", broken)
    r = analysis.process(Frame(spot(), 0), params(analysis, profile_fit=True)).results
    assert all(math.isnan(r[f"profile_fit_{w}_{a}"]) for w in ("amplitude", "mean", "sigma", "offset")
               for a in "xy")
    assert r["profile_centroid_x"] == pytest.approx(140.3, abs=0.01)  # the moments still work
    flat = analysis.process(Frame(np.full((20, 30), 7, np.uint16), 0), params(analysis, profile_fit=True)).results
    assert math.isnan(flat["profile_fit_sigma_x"]) and math.isnan(flat["profile_centroid_x"])


def run(analysis, frames, p):
    acc = analysis.new_accumulator()
    for i, f in enumerate(frames):
        acc = analysis.accumulate(acc, analysis.process(Frame(f, i), p), p)
    return acc


def test_run_mean_projection_and_merge(analysis):
    rng = np.random.default_rng(1)
    frames = [np.rint(spot(cx=130 + i, cy=80 + 0.5 * i) + rng.normal(0, 3, (200, 260))).astype(np.uint16)
              for i in range(10)]
    p = params(analysis, roi_profile=[60, 150, 20, 150])
    whole = analysis.finish(run(analysis, frames, p))
    region = np.stack(frames)[:, 20:170, 60:210].astype(np.float64)
    mean_x, mean_y = region.sum(axis=1).mean(axis=0), region.sum(axis=2).mean(axis=0)
    np.testing.assert_allclose(whole["profile_run_x"], mean_x, rtol=1e-12)
    np.testing.assert_allclose(whole["profile_run_y"], mean_y, rtol=1e-12)
    assert whole["profile_run_frames"] == 10
    for ax, m, off in (("x", mean_x, 60), ("y", mean_y, 20)):
        st = axis_stats(m)  # the moments given the background and the +-3 FWHM window
        window = (max(0, math.floor(st.peak - 3 * st.fwhm)), min(m.size, math.ceil(st.peak + 3 * st.fwhm) + 1))
        assert whole[f"profile_run_centroid_{ax}"] == pytest.approx(moments(m, off, st.background, window)[0],
                                                                    rel=1e-12)
    assert whole["profile_run_centroid_y"] == pytest.approx(82.25, abs=0.2)
    assert whole["profile_run_centroid_x"] == pytest.approx(134.5, abs=0.2)
    # two workers, merged in either grouping, give the same finish
    a, b, c = run(analysis, frames[:3], p), run(analysis, frames[3:7], p), run(analysis, frames[7:], p)
    for merged in (analysis.merge(analysis.merge(a, b), c), analysis.merge(a, analysis.merge(b, c))):
        out = analysis.finish(merged)
        assert out.keys() == whole.keys()
        for k, v in whole.items():
            np.testing.assert_array_equal(out[k], v, err_msg=k)
    # merging did not modify its inputs
    np.testing.assert_array_equal(analysis.finish(a)["profile_run_x"], np.stack(frames[:3])[:, 20:170, 60:210]
                                  .astype(np.float64).sum(axis=1).mean(axis=0))


def test_accumulate_leaves_published_results_untouched(analysis):
    p = params(analysis)
    r0 = analysis.process(Frame(spot(), 0), p)
    before = r0.results["profile_x"].copy()
    acc = analysis.accumulate(analysis.new_accumulator(), r0, p)
    analysis.accumulate(acc, analysis.process(Frame(spot(), 1), p), p)
    np.testing.assert_array_equal(r0.results["profile_x"], before)


def test_roi_change_during_run_reports_latest_region(analysis):
    frames = [np.rint(spot()).astype(np.uint16)] * 4
    acc = run(analysis, frames[:2], params(analysis))
    acc = analysis.merge(acc, run(analysis, frames[2:], params(analysis, roi_profile=[100, 80, 50, 90])))
    out = analysis.finish(acc)
    assert out["profile_run_frames"] == 2 and out["profile_run_x"].size == 80
    assert out["profile_run_centroid_x"] == pytest.approx(140.3, abs=0.05)


def test_empty_run(analysis):
    out = analysis.finish(analysis.new_accumulator())
    assert out["profile_run_frames"] == 0 and math.isnan(out["profile_run_centroid_x"])


def test_declared_results_cover_what_is_published(analysis):
    declared = {r.name for r in analysis.results}
    r = analysis.process(Frame(spot(), 0), params(analysis, profile_fit=True)).results
    assert set(r) <= declared
    assert set(analysis.finish(run(analysis, [spot()], params(analysis)))) <= declared
    assert all(n.startswith("profile_") for n in declared)


def run_engine(analyses, uri="sim://?frames=20&shape=256x256", timeout=60.0):
    snap = run_scan(Engine(EngineConfig(sources=[uri], analyses=analyses)), timeout=timeout)
    assert snap.state is EngineState.CLOSE, snap.status
    return snap


def test_runs_in_the_engine():
    snap = run_engine([SPEC])
    assert snap.counters.completed == 20
    assert snap.results["profile_x"].shape == (256,)
    assert snap.results["profile_centroid_x"] == pytest.approx(127.5, abs=1.0)  # sim spot at the centre
    assert snap.summary["profile_run_frames"] == 20
    assert snap.summary["profile_run_centroid_y"] == pytest.approx(127.5, abs=1.0)


def test_saturation_parameter_is_shared_with_roi(analysis):
    from tango_dqm.analysis.roi import RoiStats  # the test may look; the plugin may not import it

    mine = next(p for p in analysis.parameters if p.name == "saturation_level")
    assert mine == next(p for p in RoiStats.parameters if p.name == "saturation_level")


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_saturated_and_nan_pixels_are_replaced_by_their_neighbours(analysis, dtype):
    img = spot(amplitude=3000.0).astype(dtype)
    expected = analysis.process(Frame(img, 0), params(analysis)).results
    bad = img.copy()
    bad[20, 30] = 65535  # far from the spot: would pull the centroid by ~1 px
    bad[90, 140] = 65535  # at the spot's peak
    if np.dtype(dtype).kind == "f":
        bad[150, 200] = np.nan
    r = analysis.process(Frame(bad, 0), params(analysis)).results
    for ax in "xy":
        assert r[f"profile_centroid_{ax}"] == pytest.approx(expected[f"profile_centroid_{ax}"], abs=0.01)
        assert r[f"profile_fwhm_{ax}"] == pytest.approx(expected[f"profile_fwhm_{ax}"], rel=0.003)
    assert np.isfinite(r["profile_x"]).all()
    # the replacement is the mean of the 8 neighbours: the column sum barely changes
    assert r["profile_x"][30] == pytest.approx(expected["profile_x"][30], rel=1e-3)
    # a level above every value excludes nothing: the column holds the 65535 again
    r = analysis.process(Frame(bad, 0), params(analysis, saturation_level=10**6)).results
    assert r["profile_x"][30] > expected["profile_x"][30] + 60000
