"""Hot and dead pixels on scenes with known truth: beams of sigma 3..30 px and up to 200x
the background, drifting; hot pixels of 3x..100x their neighbourhood inside and outside
the beam; dead pixels; zingers. Must hold: recall >= 0.95 for hot pixels, at most one
false positive per scene and none in a beam, dead pixels exact."""
from __future__ import annotations

import numpy as np
import pytest

from tango_dqm import load_analysis
from tests.unit.test_validation_scenes import ValScene, params, run

SCENES = {
    "sigma3_200x": dict(sigma=3.0, amplitude=20000.0, drift=(12.0, 4.0)),
    "sigma5_20x": dict(sigma=5.0, amplitude=2000.0, drift=(20.0, 5.0)),
    "sigma10_20x_issue": dict(sigma=10.0, amplitude=2000.0, drift=(20.0, 0.0)),
    "sigma20_200x": dict(sigma=20.0, amplitude=20000.0, drift=(10.0, 10.0)),
    "sigma30_50x": dict(sigma=30.0, amplitude=5000.0, drift=(15.0, 0.0), shape=(192, 224), start=(110.0, 95.0)),
    "sigma8_3x_dim": dict(sigma=8.0, amplitude=300.0, background=10.0, drift=(5.0, 5.0)),
    "static_sigma4": dict(sigma=4.0, amplitude=10000.0, drift=(0.0, 0.0)),
}


@pytest.fixture(scope="module")
def analysis():
    return load_analysis("tango_dqm.analysis.pixels:Pixels")()


def positions(mask) -> set[tuple[int, int]]:
    return {tuple(int(v) for v in ij) for ij in np.argwhere(mask)}


@pytest.mark.parametrize("name", SCENES)
def test_hot_and_dead_pixels_against_truth(analysis, name):
    scene = ValScene(seed=len(name), **SCENES[name])
    _, out = run(analysis, scene.render(), params(analysis))
    pmap = out["pixels_map"]
    hot = positions(pmap == 1)
    truth = set(scene.hot)
    recall = len(hot & truth) / len(truth)
    false = hot - truth
    assert recall >= 0.95, (name, sorted((p, round(scene.hot[p], 1)) for p in truth - hot))
    assert len(false) <= 1, (name, sorted(false))
    assert not [p for p in false if scene.in_beam(p)], (name, sorted(false))
    assert positions(pmap == 2) == set(scene.dead)
    assert out["pixels_dead"] == len(scene.dead)
    # the saturated-in-run count holds the zinger pixels and the hot pixels that clip
    assert out["pixels_saturated_run"] >= 1


def test_the_issue_scene(analysis):
    """The case of the report: 256x256 Poisson, sigma 10 px, amplitude 2000 on 100,
    drifting 20 px, one hot and one dead pixel: exactly those two are found."""
    scene = ValScene(seed=10, shape=(256, 256), frames=60, start=(118.0, 128.0), drift=(20.0, 0.0),
                     n_hot_in=0, n_hot_out=1, hot_factors=(10.0, 10.0), n_dead=1, zingers=1)
    _, out = run(analysis, scene.render(), params(analysis))
    assert positions(out["pixels_map"] == 1) == set(scene.hot)
    assert positions(out["pixels_map"] == 2) == set(scene.dead)
    assert out["pixels_hot"] == 1 and out["pixels_dead"] == 1


def test_a_zinger_never_makes_a_pixel_hot(analysis):
    scene = ValScene(seed=3, n_hot_in=0, n_hot_out=0, n_dead=0, zingers=20)
    frames = scene.render()
    _, out = run(analysis, frames, params(analysis))
    hits = (np.stack(frames) == 65535).sum(axis=0)
    assert np.count_nonzero(hits == 1) > 400  # 600 zingers in 30 frames of 30720 pixels
    assert np.count_nonzero(hits == 2) >= 3
    # up to two hits in a run are trimmed away; only a pixel hit three times could be hot
    assert positions(out["pixels_map"] == 1) <= positions(hits >= 3)


def test_mean_and_std_maps_against_numpy(analysis):
    scene = ValScene(seed=4)
    frames = scene.render()
    _, out = run(analysis, frames, params(analysis))
    stack = np.stack(frames).astype(np.float64)
    np.testing.assert_allclose(out["pixels_mean_map"], stack.mean(0), rtol=1e-6)
    np.testing.assert_allclose(out["pixels_std_map"], stack.std(0), rtol=1e-5, atol=1e-3)
