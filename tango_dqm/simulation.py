"""Deterministic synthetic detector frames: a Gaussian spot on noise, like a real detector.

Shared by the ``sim://`` source and :mod:`tango_dqm.sim_streamer` (the DetectorSimulator
device). A frame depends only on the scene and the frame id, so a replay is bit-identical
to the live run.

Every frame has its own noise realisation. Drawing ~1 Mpixel of normal deviates per
frame would cost ~20 ms, so the generator draws once two pools of read noise (about two
and one frames long, each with half the variance; plus a pool of unit normals for the
shot noise of the spot) and each frame adds the two pools read from its own start
offsets, chosen by a random generator seeded with ``(seed, frame_id)``: the frame's
pixels are independent, and two frames share a value only if both their offsets differ
by the same amount (~1/N per pair of frames), so trends and run histograms are made of
independent draws. A frame costs one numba pass over the image plus the spot window
(~1.5 ms for 1024x1024 uint16).
On top of the noise, per frame: a global offset (``offset_jitter``, counts rms, rounded to
whole counts for integer frames), beam
intensity jitter (``intensity_jitter``, relative rms), beam position jitter on top of
the drift (``jitter_x``/``jitter_y``, pixels rms), Poisson-like shot noise of the spot
(``shot_noise``: sqrt(signal) counts rms) and zingers (``zingers``: mean number of
single-pixel cosmic-ray hits per frame, each ``zinger_value`` or the dtype maximum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

_POOL_EXTRA = 4099  # pool length = 2 frames + this (odd, so offsets do not align with rows)


@dataclass
class Scene:
    """What the simulated detector sees. Positions in pixels, x = column, y = row."""

    shape: tuple[int, int] = (512, 512)
    dtype: str = "uint16"
    seed: int = 0
    background: float = 100.0
    noise: float = 5.0
    spot_x: float | None = None  # None: image centre
    spot_y: float | None = None
    sigma: float = 20.0
    amplitude: float = 1000.0
    drift_x: float = 0.0  # pixels per frame
    drift_y: float = 0.0
    hot_pixels: int = 0
    dead_pixels: int = 0
    hot_value: float | None = None  # None: dtype maximum (saturated)
    jitter_x: float = 0.0  # beam position jitter, pixels rms, on top of the drift
    jitter_y: float = 0.0
    intensity_jitter: float = 0.0  # relative rms of the spot amplitude per frame
    offset_jitter: float = 0.0  # counts rms of a per-frame offset of the whole frame
    shot_noise: bool = True  # spot pixels get sqrt(signal) counts rms of extra noise
    zingers: float = 0.0  # mean number of zingers (single-pixel hits) per frame
    zinger_value: float | None = None  # None: dtype maximum


@numba.njit(nogil=True, cache=True)
def _fill_int(pool_a, start_a, pool_b, start_b, offset, lo, hi, out):  # pragma: no cover - compiled
    """out[k] = clip(pool_a[start_a + k] + pool_b[start_b + k] + offset), in int64 (vectorises)."""
    for k in range(out.shape[0]):
        v = np.int64(pool_a[start_a + k]) + np.int64(pool_b[start_b + k]) + offset
        out[k] = min(max(v, lo), hi)


@numba.njit(nogil=True, cache=True)
def _fill_float(pool_a, start_a, pool_b, start_b, offset, out):  # pragma: no cover - compiled
    for k in range(out.shape[0]):
        out[k] = pool_a[start_a + k] + pool_b[start_b + k] + offset


class FrameGenerator:
    """Renders frames of a :class:`Scene`; cheap per frame (noise pool + local spot).

    ``render`` reads the spot, jitter and zinger fields from ``self.scene`` at each call
    (a running series swaps the scene); shape, dtype, seed, background, noise
    and the hot/dead pixel counts are fixed when the generator is built.
    """

    def __init__(self, scene: Scene):
        self.scene = scene
        rows, cols = scene.shape
        if rows <= 0 or cols <= 0:
            raise ValueError(f"frame shape must be positive, got {scene.shape}")
        self.dtype = np.dtype(scene.dtype)
        if self.dtype.kind not in "uif":
            raise ValueError(f"unsupported dtype {scene.dtype!r}")
        rng = np.random.default_rng(scene.seed)
        self._lo, self._hi = self._limits()
        n_px = rows * cols
        # Two pools of different lengths, each with half the noise variance, read at
        # independent offsets: two frames share a pixel value only if both offsets differ by
        # the same amount (~1/N per pair of frames), so even a run histogram of many frames
        # is made of independent draws.
        half = scene.noise / math.sqrt(2.0)
        # (at least 1M and 0.5M values: small frames then never share values in practice)
        pool_a = scene.background + half * rng.standard_normal(max(2 * n_px, 1 << 20) + _POOL_EXTRA, np.float32)
        pool_b = half * rng.standard_normal(max(n_px, 1 << 19) + 2 * _POOL_EXTRA, np.float32)
        if self.dtype.kind in "ui":  # counts already; the sum is formed in int64
            lim = np.iinfo(np.int32)
            self._pool = np.clip(np.rint(pool_a), lim.min, lim.max).astype(np.int32)
            self._pool_b = np.clip(np.rint(pool_b), lim.min, lim.max).astype(np.int32)
        else:
            self._pool, self._pool_b = pool_a.astype(np.float32), pool_b.astype(np.float32)
        # shot noise of the spot window (at most a frame): unit normals, read at its own offset
        self._unit = rng.standard_normal(n_px + _POOL_EXTRA, np.float32)
        self._fill(0, 0, 0.0, np.empty(1, self.dtype))  # compile (or load) the kernel now, not in frame 0
        picks = rng.choice(n_px, size=min(n_px, scene.hot_pixels + scene.dead_pixels), replace=False)
        self.hot_index = np.sort(picks[: scene.hot_pixels])
        self.dead_index = np.sort(picks[scene.hot_pixels:])

    def _fill(self, start_a: int, start_b: int, offset: float, out: np.ndarray) -> np.ndarray:
        if self.dtype.kind in "ui":
            _fill_int(self._pool, start_a, self._pool_b, start_b, np.int64(round(offset)), np.int64(self._lo),
                      np.int64(self._hi), out)
        else:
            _fill_float(self._pool, start_a, self._pool_b, start_b, float(offset), out)
        return out

    def _limits(self) -> tuple[float, float]:
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return float(info.min), float(info.max)
        return -np.inf, np.inf

    def _cast(self, a: np.ndarray) -> np.ndarray:
        if self.dtype.kind in "ui":
            a = np.rint(np.clip(a, self._lo, self._hi))
        return a.astype(self.dtype)

    def _draws(self, frame_id: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
        """The frame's generator and its first draws, always in this order (determinism):
        three uniforms (pool starts) and four normals (offset, jitter x, jitter y, intensity)."""
        rng = np.random.default_rng([self.scene.seed & (2**63 - 1), frame_id & (2**63 - 1), 0x5157])
        return rng, rng.random(3), rng.standard_normal(4)

    def spot_centre(self, frame_id: int) -> tuple[float, float]:
        """The spot centre of frame ``frame_id`` (drift and position jitter included): the truth."""
        return self.truth(frame_id)[:2]

    def truth(self, frame_id: int) -> tuple[float, float, float]:
        """(centre x, centre y, amplitude) of the spot in frame ``frame_id``."""
        s = self.scene
        rows, cols = s.shape
        cx = (cols - 1) / 2 if s.spot_x is None else s.spot_x
        cy = (rows - 1) / 2 if s.spot_y is None else s.spot_y
        cx, cy = cx + s.drift_x * frame_id, cy + s.drift_y * frame_id
        amplitude = s.amplitude
        if s.jitter_x or s.jitter_y or s.intensity_jitter:
            z = self._draws(frame_id)[2]
            cx += s.jitter_x * z[1]
            cy += s.jitter_y * z[2]
            amplitude *= max(0.0, 1.0 + s.intensity_jitter * z[3])
        return cx, cy, amplitude

    def render(self, frame_id: int) -> np.ndarray:
        s = self.scene
        rows, cols = s.shape
        n_px = rows * cols
        rng, u, z = self._draws(frame_id)
        start = min(int(u[0] * (self._pool.size - n_px + 1)), self._pool.size - n_px)
        start_b = min(int(u[2] * (self._pool_b.size - n_px + 1)), self._pool_b.size - n_px)
        offset = s.offset_jitter * float(z[0])
        img = self._fill(start, start_b, offset, np.empty(n_px, self.dtype)).reshape(rows, cols)
        cx, cy, amplitude = self.truth(frame_id)
        if amplitude and s.sigma > 0:
            r = int(np.ceil(5 * s.sigma))
            x0, x1 = max(0, int(cx) - r), min(cols, int(cx) + r + 2)
            y0, y1 = max(0, int(cy) - r), min(rows, int(cy) + r + 2)
            if x0 < x1 and y0 < y1:
                gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx) / s.sigma) ** 2)
                gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy) / s.sigma) ** 2)
                spot = amplitude * np.outer(gy, gx)
                if s.shot_noise:
                    m = spot.size
                    k = min(int(u[1] * (self._unit.size - m + 1)), self._unit.size - m)
                    spot += np.sqrt(spot) * self._unit[k:k + m].reshape(spot.shape)
                window = img[y0:y1, x0:x1].astype(np.float64) + spot
                img[y0:y1, x0:x1] = self._cast(window)
        flat = img.reshape(-1)
        if s.zingers > 0:
            n = int(rng.poisson(s.zingers))
            if n:
                where = rng.integers(0, n_px, n)
                value = s.zinger_value if s.zinger_value is not None else \
                    (self._hi if self.dtype.kind in "ui" else 65535.0)
                flat[where] = self._cast(np.asarray(value, dtype=np.float64))
        if self.hot_index.size:
            hot = s.hot_value if s.hot_value is not None else (self._hi if self.dtype.kind in "ui" else 65535.0)
            flat[self.hot_index] = self._cast(np.asarray(hot, dtype=np.float64))
        if self.dead_index.size:
            flat[self.dead_index] = 0
        return img

