"""The simulated detector: a fresh, deterministic noise realisation per frame, jitter,
shot noise and zingers, fast enough not to make the demo CPU-bound."""
from __future__ import annotations

import numpy as np
import pytest

from tango_dqm.simulation import FrameGenerator, Scene


def test_every_frame_has_its_own_noise_and_is_deterministic():
    gen = FrameGenerator(Scene(shape=(64, 80), amplitude=0, background=100, noise=5, seed=2))
    frames = np.stack([gen.render(i) for i in range(200)]).astype(np.float64)
    sums = frames.sum(axis=(1, 2))
    assert len(np.unique(sums)) > 150  # the old pool of 4 frames gave 4 values (integer sums may tie)
    # per pixel the frames are independent: the temporal std is the noise, lag-1 autocorrelation ~0
    assert frames.std(axis=0).mean() == pytest.approx(5.0, rel=0.05)
    d = frames - frames.mean(axis=0)
    lag1 = (d[1:] * d[:-1]).mean() / (d * d).mean()
    assert abs(lag1) < 0.02
    # the signal sum fluctuates like the sum of independent pixels, not as a sawtooth
    assert sums.std() == pytest.approx(5.0 * np.sqrt(64 * 80), rel=0.2)
    again = FrameGenerator(Scene(shape=(64, 80), amplitude=0, background=100, noise=5, seed=2))
    for i in (0, 7, 199, 10**9):
        np.testing.assert_array_equal(again.render(i), gen.render(i))
    other = FrameGenerator(Scene(shape=(64, 80), amplitude=0, background=100, noise=5, seed=3))
    assert not np.array_equal(other.render(0), gen.render(0))


def test_jitter_intensity_offset_shot_noise_and_zingers():
    scene = Scene(shape=(128, 128), sigma=6.0, amplitude=4000.0, background=100.0, noise=3.0, drift_x=0.1,
                  jitter_x=0.5, jitter_y=0.3, intensity_jitter=0.05, offset_jitter=2.0, zingers=2.0, seed=1)
    gen = FrameGenerator(scene)
    truth = np.array([gen.truth(i) for i in range(300)])
    drift = 63.5 + 0.1 * np.arange(300)
    assert (truth[:, 0] - drift).std() == pytest.approx(0.5, rel=0.15)
    assert (truth[:, 1] - 63.5).std() == pytest.approx(0.3, rel=0.15)
    assert (truth[:, 2] / 4000.0).std() == pytest.approx(0.05, rel=0.15)
    frames = [gen.render(i) for i in range(300)]
    # the spot is where the truth says (centroid of the background-subtracted frame)
    y, x = np.mgrid[0:128, 0:128]
    for i in (0, 150, 299):
        f = frames[i].astype(np.float64)
        f[f == 65535] = 100.0  # zingers
        w = np.clip(f - 100.0, 0, None) * (np.hypot(x - truth[i, 0], y - truth[i, 1]) < 30)
        assert (w * x).sum() / w.sum() == pytest.approx(truth[i, 0], abs=0.1)
    # per-frame offset: the median of a corner (no spot) moves by ~2 counts rms
    corner = np.array([np.median(f[:20, :20]) for f in frames])
    assert 1.2 < corner.std() < 3.0
    zingers = np.array([np.count_nonzero(f == 65535) for f in frames])
    assert zingers.mean() == pytest.approx(2.0, rel=0.2)
    # no jitter, no zingers: a static spot's peak pixel scatters by sqrt(A) (shot) + read noise
    still = FrameGenerator(Scene(shape=(64, 64), sigma=5.0, amplitude=4000.0, background=100.0, noise=3.0))
    peak = np.array([still.render(i)[32, 32] for i in range(200)], np.float64)  # centre 31.5: 0.99 A
    assert peak.std() == pytest.approx(np.sqrt(4000 * 0.99 + 9), rel=0.15)
    flat = FrameGenerator(Scene(shape=(64, 64), sigma=5.0, amplitude=4000.0, background=100.0, noise=3.0,
                                shot_noise=False))
    assert np.array([flat.render(i)[32, 32] for i in range(200)], np.float64).std() == pytest.approx(3.0, rel=0.2)


def test_sim_source_options():
    from tango_dqm.sources.base import SourceError, SourceSpec
    from tango_dqm.sources.sim import SimSource

    src = SimSource(SourceSpec.parse("sim://?shape=32x48&jitter_x=0.5&zingers=1.5&intensity_jitter=0.1"
                                     "&offset_jitter=1&shot_noise=0&zinger_value=5000&hot_value=4000"))
    s = src.scene
    assert (s.jitter_x, s.zingers, s.intensity_jitter, s.offset_jitter, s.shot_noise, s.zinger_value,
            s.hot_value) == (0.5, 1.5, 0.1, 1.0, False, 5000.0, 4000.0)
    for bad in ("zingers=-1", "jitter_y=nan", "noise=-2", "shot_noise=maybe"):
        with pytest.raises(SourceError, match=bad.split("=")[0]):
            SimSource(SourceSpec.parse(f"sim://?{bad}"))


def test_demo_scene_renders_full_frames():
    """The demo's scene at full size: uint16 frames of the right shape with the spot where it is
    placed (its rendering rate is a benchmark: benchmarks/bench_simulation.py)."""
    scene = Scene(shape=(1024, 1024), sigma=20.0, amplitude=1000.0, jitter_x=0.5, jitter_y=0.5,
                  intensity_jitter=0.02, offset_jitter=1.0, zingers=1.0, spot_x=300.0, spot_y=700.0)
    frame = FrameGenerator(scene).render(1)
    assert frame.dtype == np.uint16 and frame.shape == (1024, 1024)
    spot = frame[690:711, 290:311].astype(float).mean()
    far = frame[100:200, 800:900].astype(float).mean()
    assert spot - far > 0.8 * scene.amplitude  # the spot's peak (jitter of 0.5 px and 2%) is where it was put
