"""Deterministic synthetic detector frames: a Gaussian spot on noise.

Shared by the ``sim://`` source and the DetectorSimulator device. A frame depends
only on the scene and the frame id, so a replay is bit-identical to the live run.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_POOL = 4  # distinct noise frames; frame i uses pool[i % _POOL]


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


class FrameGenerator:
    """Renders frames of a :class:`Scene`; cheap per frame (noise pool + local spot)."""

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
        noise = rng.normal(scene.background, scene.noise, size=(_POOL, rows, cols))
        self._pool = self._cast(noise)
        n_px = rows * cols
        picks = rng.choice(n_px, size=min(n_px, scene.hot_pixels + scene.dead_pixels), replace=False)
        self.hot_index = np.sort(picks[: scene.hot_pixels])
        self.dead_index = np.sort(picks[scene.hot_pixels:])

    def _limits(self) -> tuple[float, float]:
        if self.dtype.kind in "ui":
            info = np.iinfo(self.dtype)
            return float(info.min), float(info.max)
        return -np.inf, np.inf

    def _cast(self, a: np.ndarray) -> np.ndarray:
        if self.dtype.kind in "ui":
            a = np.rint(np.clip(a, self._lo, self._hi))
        return a.astype(self.dtype)

    def spot_centre(self, frame_id: int) -> tuple[float, float]:
        s = self.scene
        rows, cols = s.shape
        cx = (cols - 1) / 2 if s.spot_x is None else s.spot_x
        cy = (rows - 1) / 2 if s.spot_y is None else s.spot_y
        return cx + s.drift_x * frame_id, cy + s.drift_y * frame_id

    def render(self, frame_id: int) -> np.ndarray:
        s = self.scene
        rows, cols = s.shape
        img = self._pool[frame_id % _POOL].copy()
        if s.amplitude and s.sigma > 0:
            cx, cy = self.spot_centre(frame_id)
            r = int(np.ceil(5 * s.sigma))
            x0, x1 = max(0, int(cx) - r), min(cols, int(cx) + r + 2)
            y0, y1 = max(0, int(cy) - r), min(rows, int(cy) + r + 2)
            if x0 < x1 and y0 < y1:
                gx = np.exp(-0.5 * ((np.arange(x0, x1) - cx) / s.sigma) ** 2)
                gy = np.exp(-0.5 * ((np.arange(y0, y1) - cy) / s.sigma) ** 2)
                window = img[y0:y1, x0:x1].astype(np.float64) + s.amplitude * np.outer(gy, gx)
                img[y0:y1, x0:x1] = self._cast(window)
        flat = img.reshape(-1)
        if self.hot_index.size:
            hot = s.hot_value if s.hot_value is not None else (self._hi if self.dtype.kind in "ui" else 65535.0)
            flat[self.hot_index] = self._cast(np.asarray(hot, dtype=np.float64))
        if self.dead_index.size:
            flat[self.dead_index] = 0
        return img
