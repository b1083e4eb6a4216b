"""Pixel health: saturated pixels per frame; hot and dead pixels from a run-accumulated map.

| parameter            | type  | default | meaning                                                         |
|----------------------|-------|---------|-----------------------------------------------------------------|
| saturation_level     | int   | 65535   | pixels >= this count as saturated (shared with the roi analysis) |
| hot_sigma            | float | 5.0     | hot: run mean this many robust (MAD) sigmas above its reference  |
| pixels_hot_reference | enum  | local   | local (8-neighbour median), global (map median) or either        |
| dead_threshold       | float | 0.0     | dead: the pixel's maximum over the run never exceeds this        |
| pixels_min_frames    | int   | 10      | fewer accumulated frames: finish reports INSUFFICIENT            |

| result               | when   | kind   | type    | meaning                                                 |
|----------------------|--------|--------|---------|---------------------------------------------------------|
| pixels_saturated     | frame  | scalar | int     | pixels >= saturation_level in this frame                 |
| pixels_hot           | finish | scalar | int     | hot pixels (None when INSUFFICIENT)                      |
| pixels_dead          | finish | scalar | int     | dead pixels (None when INSUFFICIENT)                     |
| pixels_saturated_run | finish | scalar | int     | pixels that reached saturation_level at least once       |
| pixels_map           | finish | image  | uint8   | 0 ok, 1 hot, 2 dead, 3 saturated in this run             |
| pixels_mean_map      | finish | image  | float32 | per-pixel mean over the run                              |
| pixels_std_map       | finish | image  | float32 | per-pixel standard deviation over the run                |
| pixels_frames        | finish | scalar | int     | frames accumulated                                       |
| pixels_status        | finish | scalar | str     | OK or INSUFFICIENT (fewer than pixels_min_frames frames) |

Per frame only the saturated count is computed (one pass, min/max/count kernel): the
map-based classification needs the whole run and is done in ``finish`` only. It is not
done every N frames because ``process`` is pure (it sees one frame and never the
accumulator) and ``accumulate`` has no parameters and returns no published results.

The accumulator holds per-pixel sum and sum of squares (int64, exact, for integer
frames up to 16 bits; float64 otherwise) and maximum, plus the frame count (every
frame covers every pixel, so one count serves all pixels). It is updated by one
numba pass per frame and merges by addition (sums, count) and maximum.

Classification in ``finish`` (with the parameter values of the last accumulated frame):

- dead: run maximum <= dead_threshold.
- hot: ``m - reference > hot_sigma * s``. ``m`` is the pixel's run mean without its
  single largest value, ``(sum - max) / (n - 1)``: one cosmic-ray hit or saturating
  event in a run does not make a pixel hot (a hot pixel is high in every frame).
  ``s = 1.4826 * MAD`` of ``m - reference`` over the map (the robust sigma).
  ``local`` reference = the median of the 8 neighbours in the map of ``m`` (mirror
  boundary): finds single hot pixels and small clusters (no pixel with more than 3
  hot neighbours, e.g. a 2x2 block) under a beam or a gradient, as long as the image
  is smooth on the scale of a few pixels (a spot of amplitude A and width sigma leaves
  about A / (2 sigma^2) at its peak, which must stay below the threshold; look for hot
  pixels under sharp spots in a dark run). ``global`` = the median of the whole map:
  right for dark or flat-field runs, but flags a bright beam spot as hot. ``either``
  = hot by either reference.
- saturated in the run: run maximum >= saturation_level.

``pixels_map`` takes the first that applies of dead (2), hot (1), saturated (3), else 0;
the counts are each independent of the others.
"""
from __future__ import annotations

from typing import Any

import numba
import numpy as np

from tango_dqm import Analysis, Frame, Parameter, Params, Result
from tango_dqm.kernels import as_2d, min_max_count_above

OK, HOT, DEAD, SATURATED = 0, 1, 2, 3
_MAD_TO_SIGMA = 1.4826


@numba.njit(nogil=True, cache=True)
def _accumulate_int(a, s, ss, mx):  # pragma: no cover - compiled
    """s += a, ss += a*a (int64, exact), mx = max(mx, a); one pass."""
    for i in range(a.shape[0]):
        row = a[i]
        srow = s[i]
        ssrow = ss[i]
        mrow = mx[i]
        for j in range(row.shape[0]):
            v = row[j]
            iv = np.int64(v)
            srow[j] += iv
            ssrow[j] += iv * iv
            if v > mrow[j]:
                mrow[j] = v


@numba.njit(nogil=True, cache=True)
def _accumulate_float(a, s, ss, mx):  # pragma: no cover - compiled
    for i in range(a.shape[0]):
        row = a[i]
        srow = s[i]
        ssrow = ss[i]
        mrow = mx[i]
        for j in range(row.shape[0]):
            v = row[j]
            fv = np.float64(v)
            srow[j] += fv
            ssrow[j] += fv * fv
            if v > mrow[j]:
                mrow[j] = v


class PixelMap:
    """Per-pixel run accumulator: frame count, sum, sum of squares and maximum."""

    __slots__ = ("n", "sum", "sumsq", "max", "settings")

    def __init__(self, n: int = 0, s: np.ndarray | None = None, ss: np.ndarray | None = None,
                 mx: np.ndarray | None = None, settings: tuple | None = None):
        self.n, self.sum, self.sumsq, self.max, self.settings = n, s, ss, mx, settings

    def add(self, image: np.ndarray, settings: tuple) -> None:
        exact = image.dtype.kind in "iu" and image.dtype.itemsize <= 2
        if self.sum is None:
            acc_type = np.int64 if exact else np.float64
            self.sum = np.zeros(image.shape, acc_type)
            self.sumsq = np.zeros(image.shape, acc_type)
            lowest = np.iinfo(image.dtype).min if image.dtype.kind in "iu" else -np.inf
            self.max = np.full(image.shape, lowest, image.dtype)
        else:
            if image.shape != self.sum.shape:
                raise ValueError(f"pixels: frame shape changed during the run from {self.sum.shape} to "
                                 f"{image.shape}; Reset to start a new map")
            if image.dtype != self.max.dtype:
                raise ValueError(f"pixels: frame dtype changed during the run from {self.max.dtype} to "
                                 f"{image.dtype}; Reset to start a new map")
        (_accumulate_int if exact else _accumulate_float)(image, self.sum, self.sumsq, self.max)
        self.n += 1
        self.settings = settings

    def merged(self, other: "PixelMap") -> "PixelMap":
        if other.n == 0:
            return self.copy()
        if self.n == 0:
            return other.copy()
        if self.sum.shape != other.sum.shape or self.max.dtype != other.max.dtype:
            raise ValueError(f"pixels: cannot merge maps of {self.sum.shape} {self.max.dtype} and "
                             f"{other.sum.shape} {other.max.dtype}")
        return PixelMap(self.n + other.n, self.sum + other.sum, self.sumsq + other.sumsq,
                        np.maximum(self.max, other.max), other.settings)

    def copy(self) -> "PixelMap":
        c = lambda a: None if a is None else a.copy()  # noqa: E731
        return PixelMap(self.n, c(self.sum), c(self.sumsq), c(self.max), self.settings)


def _robust_sigma(residual: np.ndarray) -> float:
    r = residual[np.isfinite(residual)]
    if r.size == 0:
        return float("nan")
    med = np.median(r)
    return float(_MAD_TO_SIGMA * np.median(np.abs(r - med)))


def hot_pixels(mean: np.ndarray, hot_sigma: float, reference: str) -> np.ndarray:
    """Boolean map of hot pixels (see the module docstring for the definition)."""
    hot = np.zeros(mean.shape, bool)
    finite = np.isfinite(mean)
    if not finite.any():
        return hot
    # a tiny floor, so rounding noise on a perfectly flat map is never "far above"
    floor = 1e-9 * (abs(float(np.median(mean[finite]))) + 1.0)
    if reference in ("global", "either"):
        r = mean - np.median(mean[finite])
        hot |= r > hot_sigma * max(_robust_sigma(r), floor)
    if reference in ("local", "either"):
        from scipy.ndimage import median_filter  # deferred: finish only

        ring = np.ones((3, 3), bool)
        ring[1, 1] = False  # the 8 neighbours: the pixel itself must not pull its reference
        r = mean - median_filter(mean, footprint=ring, mode="mirror")
        hot |= r > hot_sigma * max(_robust_sigma(r), floor)
    return hot


class Pixels(Analysis):
    """Saturated pixels per frame; hot, dead and saturated-in-run pixel maps at the end of the run."""

    name = "pixels"
    version = "1"
    parameters = [
        # Identical to the roi analysis' declaration, so both share one parameter.
        Parameter("saturation_level", int, 65535, unit="counts", label="Saturation level",
                  description="pixels at or above this value count as saturated", min=0),
        Parameter("hot_sigma", float, 5.0, unit="sigma", label="Hot pixel threshold",
                  description="hot: run-mean this many robust (MAD) sigmas above its reference", min=0.0),
        Parameter("pixels_hot_reference", "enum", "local", label="Hot pixel reference",
                  description="local: median of the 8 neighbours; global: median of the mean map; either",
                  choices=("local", "global", "either")),
        Parameter("dead_threshold", float, 0.0, unit="counts", label="Dead pixel threshold",
                  description="dead: the pixel's maximum over the run never exceeds this"),
        Parameter("pixels_min_frames", int, 10, unit="frames", label="Pixel map minimum frames",
                  description="fewer accumulated frames: the map is INSUFFICIENT", min=1),
    ]
    results = [
        Result("pixels_saturated", int, unit="pixels", label="Saturated pixels in frame"),
        Result("pixels_hot", int, unit="pixels", label="Hot pixels", description="run summary", run_summary=True),
        Result("pixels_dead", int, unit="pixels", label="Dead pixels", description="run summary", run_summary=True),
        Result("pixels_saturated_run", int, unit="pixels", label="Pixels saturated in run",
               description="run summary", run_summary=True),
        Result("pixels_map", np.uint8, kind="image", label="Pixel map",
               description="0 ok, 1 hot, 2 dead, 3 saturated in this run (run summary)", archive=False, run_summary=True),
        Result("pixels_mean_map", np.float32, kind="image", unit="counts", label="Pixel mean map",
               description="run summary", archive=False, run_summary=True),
        Result("pixels_std_map", np.float32, kind="image", unit="counts", label="Pixel std map",
               description="run summary", archive=False, run_summary=True),
        Result("pixels_frames", int, unit="frames", label="Frames in pixel map", description="run summary", run_summary=True),
        Result("pixels_status", str, label="Pixel map status", description="OK or INSUFFICIENT", run_summary=True),
    ]

    def _input(self, frame: Frame, params: Params) -> np.ndarray:
        """The image to analyse: the one place where a dark frame would be subtracted and
        a mask applied (masked pixels excluded from the map) once those parameters exist."""
        image = as_2d(frame.data)
        return image.view(np.uint8) if image.dtype.kind == "b" else image

    def process(self, frame: Frame, params: Params) -> dict[str, Any]:
        image = self._input(frame, params)
        _, _, n_saturated = min_max_count_above(image, params.saturation_level)
        settings = (params.saturation_level, params.hot_sigma, params.pixels_hot_reference,
                    params.dead_threshold, params.pixels_min_frames)
        # "_pixels" is not a result: it hands the frame (a view, no copy) and the
        # parameters finish() needs to accumulate(), which sees only these results.
        return {"pixels_saturated": n_saturated, "_pixels": (image, settings)}

    def new_accumulator(self) -> PixelMap:
        return PixelMap()

    def accumulate(self, acc: PixelMap, frame_results: dict[str, Any]) -> PixelMap:
        image, settings = frame_results["_pixels"]
        acc.add(image, settings)
        return acc

    def merge(self, a: PixelMap, b: PixelMap) -> PixelMap:
        return a.merged(b)

    def finish(self, acc: PixelMap) -> dict[str, Any]:
        out: dict[str, Any] = {"pixels_frames": acc.n}
        if acc.n == 0 or acc.n < acc.settings[4]:
            out.update({"pixels_status": "INSUFFICIENT", "pixels_hot": None, "pixels_dead": None,
                        "pixels_saturated_run": None, "pixels_map": None, "pixels_mean_map": None,
                        "pixels_std_map": None})
            return out
        saturation_level, hot_sigma, reference, dead_threshold, _ = acc.settings
        n = acc.n
        mean = acc.sum / n
        var = np.maximum(acc.sumsq / n - mean * mean, 0.0)
        # Hot pixels are judged on the mean without each pixel's maximum, so one zinger or
        # saturating event in a long run does not make a pixel "hot".
        trimmed = (acc.sum - acc.max) / (n - 1) if n > 1 else mean
        hot = hot_pixels(trimmed, hot_sigma, reference)
        dead = acc.max <= dead_threshold
        saturated = acc.max >= saturation_level
        pmap = np.zeros(mean.shape, np.uint8)
        pmap[saturated] = SATURATED
        pmap[hot] = HOT
        pmap[dead] = DEAD
        out.update({
            "pixels_status": "OK",
            "pixels_hot": int(np.count_nonzero(hot)),
            "pixels_dead": int(np.count_nonzero(dead)),
            "pixels_saturated_run": int(np.count_nonzero(saturated)),
            "pixels_map": pmap,
            "pixels_mean_map": mean.astype(np.float32),
            "pixels_std_map": np.sqrt(var).astype(np.float32),
        })
        return out


__all__ = ["DEAD", "HOT", "OK", "SATURATED", "PixelMap", "Pixels", "hot_pixels"]
