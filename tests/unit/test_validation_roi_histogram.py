"""roi and histogram results against numpy on scenes with known truth (beams of sigma 3..30
px and up to 200x the background, hot, dead and saturated pixels, zingers)."""
from __future__ import annotations

import numpy as np
import pytest

from tango_dqm import load_analysis
from tests.unit.test_validation_scenes import FULL, ValScene, params, run

SCENES = [dict(sigma=3.0, amplitude=20000.0), dict(sigma=10.0, amplitude=2000.0),
          dict(sigma=30.0, amplitude=5000.0, shape=(192, 224), start=(110.0, 95.0))]


@pytest.mark.parametrize("kw", SCENES)
def test_roi_against_numpy(kw):
    analysis = load_analysis("roi")()
    scene = ValScene(seed=21, frames=8, **kw)
    frames = scene.render()
    sig, bkg = [60, 60, 40, 60], [0, 30, 0, 30]  # [offset_x, size_x, offset_y, size_y]
    results, _ = run(analysis, frames, params(analysis, roi_signal=sig, roi_background=bkg, saturation_level=60000))
    for f, r in zip(frames, results):
        s = f[40:100, 60:120].astype(np.float64)
        b = f[0:30, 0:30].astype(np.float64)
        for name, region in (("signal", s), ("background", b)):
            assert r[f"{name}_sum"] == region.sum()
            assert r[f"{name}_mean"] == pytest.approx(region.mean(), rel=1e-12)
            assert r[f"{name}_std"] == pytest.approx(region.std(), rel=1e-9)
            assert (r[f"{name}_min"], r[f"{name}_max"]) == (region.min(), region.max())
        assert r["net_signal"] == pytest.approx(s.sum() - b.mean() * s.size, rel=1e-12)
        assert (r["frame_min"], r["frame_max"]) == (f.min(), f.max())
        assert r["saturated_pixels"] == np.count_nonzero(f >= 60000)
    assert any(r["saturated_pixels"] > 0 for r in results)  # zingers and clipped hot pixels


@pytest.mark.parametrize("kw", SCENES)
@pytest.mark.parametrize("bins,lo,hi", [(1024, 0.0, 65536.0), (100, 50.0, 350.5), (7, 90.0, 110.0)])
def test_histogram_against_numpy(kw, bins, lo, hi):
    analysis = load_analysis("histogram")()
    scene = ValScene(seed=22, frames=6, **kw)
    frames = scene.render()
    roi = [10, 150, 5, 120]
    results, out = run(analysis, frames, params(analysis, roi_histogram=roi, hist_bins=bins, hist_min=lo,
                                                hist_max=hi))
    total = np.zeros(bins, np.int64)
    inside = []
    for f, r in zip(frames, results):
        v = f[5:125, 10:160].astype(np.float64).ravel()
        counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
        np.testing.assert_array_equal(r["hist_counts"], counts)
        assert r["hist_underflow"] == np.count_nonzero(v < lo)
        assert r["hist_overflow"] == np.count_nonzero(v > hi)
        kept = v[(v >= lo) & (v <= hi)]
        assert r["hist_mean"] == pytest.approx(kept.mean(), rel=1e-12)
        total += counts
        inside.append(kept)
    np.testing.assert_array_equal(out["hist_run_counts"], total)
    np.testing.assert_array_equal(out["hist_edges"], edges)
    assert out["hist_run_mean"] == pytest.approx(np.concatenate(inside).mean(), rel=1e-12)
    assert out["hist_run_frames"] == len(frames)
    assert FULL in np.concatenate([f.ravel() for f in frames])  # the saturated values were there
