"""``sim://?shape=512x512&dtype=uint16&rate=100&frames=N&seed=0``: built-in simulated detector.

Scene keys: background, noise, spot_x, spot_y, sigma, amplitude, drift_x, drift_y,
hot_pixels, dead_pixels, hot_value, jitter_x, jitter_y (beam position jitter, px rms),
intensity_jitter (relative rms), offset_jitter (counts rms), shot_noise (0/1), zingers
(mean zingers per frame), zinger_value (see :class:`tango_dqm.simulation.Scene`).
``frames=0`` runs until stopped; ``rate=0`` runs flat out.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

from ..frames import Frame, SeriesEnd
from ..simulation import FrameGenerator, Scene
from .base import Source, SourceError, SourceItem, SourceSpec


def parse_shape(text: str) -> tuple[int, int]:
    """``"1024x512"`` -> (rows=1024, cols=512)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SourceError(f"shape must look like ROWSxCOLS, got {text!r}") from None
    if rows <= 0 or cols <= 0:
        raise SourceError(f"shape must be positive, got {text!r}")
    return rows, cols


class SimSource(Source):
    """Deterministic simulated frames (see :mod:`tango_dqm.simulation`)."""

    scheme = "sim"

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        opt = lambda key: spec.q_float(key, 0.0) if key in spec.query else None  # noqa: E731
        scene = Scene(shape=parse_shape(spec.q("shape", "512x512")), dtype=spec.q("dtype", "uint16"),
                      seed=spec.q_int("seed", 0))
        for key in ("background", "noise", "sigma", "amplitude", "drift_x", "drift_y", "jitter_x", "jitter_y",
                    "intensity_jitter", "offset_jitter", "zingers"):
            if key in spec.query:
                value = spec.q_float(key, 0.0)
                if not math.isfinite(value):
                    raise SourceError(f"source {spec.uri!r}: {key} must be a finite number, got {value}")
                setattr(scene, key, value)
        for key in ("jitter_x", "jitter_y", "intensity_jitter", "offset_jitter", "zingers", "noise"):
            if getattr(scene, key) < 0:
                raise SourceError(f"source {spec.uri!r}: {key} must be >= 0, got {getattr(scene, key):g}")
        scene.spot_x, scene.spot_y = opt("spot_x"), opt("spot_y")
        scene.hot_value, scene.zinger_value = opt("hot_value"), opt("zinger_value")
        scene.shot_noise = spec.q_bool("shot_noise", True)
        scene.hot_pixels = spec.q_int("hot_pixels", 0)
        scene.dead_pixels = spec.q_int("dead_pixels", 0)
        self.scene = scene
        self.frames = spec.q_int("frames", 100)
        self.rate = spec.q_float("rate", 0.0)
        if self.frames < 0 or self.rate < 0:
            raise SourceError(f"source {spec.uri!r}: frames and rate must be >= 0")
        self.expected_frames = self.frames or None
        self.image_shape = scene.shape
        self.image_dtype = str(scene.dtype)
        self._gen: FrameGenerator | None = None

    def open(self) -> None:
        try:
            self._gen = FrameGenerator(self.scene)
        except (ValueError, TypeError) as exc:
            raise SourceError(f"source {self.spec.uri!r}: {exc}") from None

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        assert self._gen is not None, "open() first"
        series = self.spec.q("series", "sim")
        period = 1.0 / self.rate if self.rate else 0.0
        t0 = time.monotonic()
        frame_id = 0
        while not stop.is_set() and (live or not self.frames or frame_id < self.frames):
            if period:
                delay = t0 + frame_id * period - time.monotonic()
                if delay > 0:
                    stop.wait(min(delay, 0.1))
                    if delay > 0.1:
                        yield None
                        continue
            yield Frame(self._gen.render(frame_id), frame_id, time.time(), self.name, series)
            frame_id += 1
        if not stop.is_set():
            yield SeriesEnd(self.name, series)
