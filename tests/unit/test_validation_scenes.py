"""Scenes with known truth for the validation tests, built here with numpy alone
(independent of tango_dqm.simulation): Poisson frames of a drifting Gaussian beam on a
flat background, hot pixels as a gain of 3x..100x (clipped at 65535, so a bright one is
also saturated), dead pixels (0 in every frame) and zingers (one frame, one pixel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tango_dqm import Frame, Params

FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
FULL = 65535


@dataclass
class ValScene:
    seed: int = 0
    shape: tuple[int, int] = (160, 192)
    frames: int = 30
    background: float = 100.0
    sigma: float = 10.0
    amplitude: float = 2000.0
    start: tuple[float, float] = (80.3, 70.6)  # (x, y) of the beam in frame 0
    drift: tuple[float, float] = (20.0, 5.0)  # (x, y) moved over the whole scene
    n_hot_in: int = 10  # hot pixels on the beam's track
    n_hot_out: int = 10
    hot_factors: tuple[float, float] = (3.0, 100.0)
    n_dead: int = 3
    zingers: int = 3  # per frame
    hot: dict = field(default_factory=dict)  # (row, col) -> factor
    dead: list = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.seed, 1])
        rows, cols = self.shape
        taken: list[tuple[int, int]] = []

        def free(p):  # apart from every chosen defect and 2 px from the border
            return 2 <= p[0] < rows - 2 and 2 <= p[1] < cols - 2 and all(
                max(abs(p[0] - q[0]), abs(p[1] - q[1])) > 2 for q in taken)

        lo, hi = self.hot_factors
        while len(taken) < self.n_hot_in:
            t = rng.uniform()
            x, y = self.centre(t * (self.frames - 1))
            p = (int(round(y + rng.normal(0, self.sigma))), int(round(x + rng.normal(0, self.sigma))))
            if free(p):
                taken.append(p)
        while len(taken) < self.n_hot_in + self.n_hot_out:
            p = (int(rng.integers(rows)), int(rng.integers(cols)))
            if free(p) and not self.in_beam(p):
                taken.append(p)
        factors = np.exp(rng.uniform(math.log(lo), math.log(hi), len(taken)))
        if len(taken):
            factors[0], factors[-1] = lo, lo  # the hardest case, inside and outside the beam
        self.hot = {p: float(f) for p, f in zip(taken, factors)}
        while len(self.dead) < self.n_dead:
            p = (int(rng.integers(rows)), int(rng.integers(cols)))
            if free(p):
                taken.append(p)
                self.dead.append(p)

    def centre(self, i: float) -> tuple[float, float]:
        t = i / max(self.frames - 1, 1)
        return self.start[0] + self.drift[0] * t, self.start[1] + self.drift[1] * t

    def in_beam(self, p: tuple[int, int], k: float = 3.0) -> bool:
        """Within k sigma of the beam's track (for 'none inside a beam')."""
        return any(math.hypot(p[1] - x, p[0] - y) < k * self.sigma + 1
                   for x, y in (self.centre(i) for i in np.linspace(0, self.frames - 1, 50)))

    def expected(self, i: int) -> np.ndarray:
        """The noise-free image of frame i (no defects)."""
        rows, cols = self.shape
        x, y = self.centre(i)
        gy = np.exp(-0.5 * ((np.arange(rows) - y) / self.sigma) ** 2)
        gx = np.exp(-0.5 * ((np.arange(cols) - x) / self.sigma) ** 2)
        return self.background + self.amplitude * np.outer(gy, gx)

    def render(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, 2])
        out = []
        for i in range(self.frames):
            lam = self.expected(i)
            for (r, c), f in self.hot.items():
                lam[r, c] *= f
            img = np.minimum(rng.poisson(lam), FULL)
            for p in self.dead:
                img[p] = 0
            for _ in range(self.zingers):
                img[rng.integers(self.shape[0]), rng.integers(self.shape[1])] = FULL
            out.append(img.astype(np.uint16))
        return out


def params(analysis, **values) -> Params:
    return Params({p.name: p.validate(values.get(p.name, p.default)) for p in analysis.parameters})


def run(analysis, frames, p):
    acc = analysis.new_accumulator()
    results = []
    for i, f in enumerate(frames):
        out = analysis.process(Frame(f, i), p)
        results.append(out.results)
        acc = analysis.accumulate(acc, out, p)
    return results, analysis.finish(acc)


def test_scene_truth_is_what_the_frames_hold():
    s = ValScene(seed=5, frames=40, zingers=0)
    frames = s.render()
    stack = np.stack(frames).astype(np.float64)
    mean_expected = np.mean([s.expected(i) for i in range(s.frames)], axis=0)
    ok = np.ones(s.shape, bool)
    for p in list(s.hot) + s.dead:
        ok[p] = False
    # Poisson: the mean of 40 frames is within 5 standard errors everywhere
    z = (stack.mean(0) - mean_expected) / np.sqrt(mean_expected / s.frames)
    assert np.abs(z[ok]).max() < 5.5
    assert all(stack[:, r, c].max() == 0 for r, c in s.dead)
    assert len(s.hot) == 20 and sum(s.in_beam(p) for p in s.hot) >= 10
    assert all(stack[:, r, c].mean() >= 2.5 * mean_expected[r, c] for r, c in s.hot)
