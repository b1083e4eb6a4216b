"""Pixel health: saturated pixels per frame; hot and dead pixels from a run-accumulated map.

| parameter            | type  | default | meaning                                                         |
|----------------------|-------|---------|-----------------------------------------------------------------|
| saturation_level     | int   | 65535   | pixels >= this count as saturated (shared with roi and profile)  |
| hot_sigma            | float | 5.0     | hot: run mean this many of its standard errors above its reference |
| hot_ratio            | float | 2.0     | hot: and at least this many times its reference                  |
| pixels_hot_reference | enum  | local   | local (8-neighbour median), global (map median) or either        |
| dead_threshold       | float | 0.0     | dead: run maximum never above this while the neighbourhood's is  |
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
accumulator) and ``accumulate`` returns no published results.

The accumulator holds per pixel: sum and sum of squares (int64, exact, for integer frames
up to 16 bits; float64 otherwise), the two largest values, and the sum and sum of squares
of the residual against the mean of the 4 direct neighbours (float64), plus the frame
count. It is updated by one numba pass per batch of frames (held back, see ``BATCH``) and
merges by addition and top-two.

Classification in ``finish`` (with the parameter values of the last accumulated frame),
see docs/analyses.md for the reasoning and the limits:

- ``m``: run mean without the pixel's two largest values (up to two zingers per run
  never make a pixel hot; a hot pixel is high in every frame).
- noise ``V``: median over the 24 pixels around of the residual variance / 1.25 (a beam
  that drifts or changes intensity is not noise; a hot pixel does not inflate its own).
- reference ``R``: median of ``m`` over the 8 neighbours (``local``) or over the map
  (``global``); ``either``: hot by either.
- hot: ``m - R > hot_sigma * sqrt(V (1 + pi/16) / k)`` and ``m - R >= (hot_ratio - 1) |R|``
  (significance keeps shot noise out, the ratio keeps beam curvature out).
- dead: run maximum <= dead_threshold while the median of the run maxima of the 24
  pixels around exceeds it.
- saturated in the run: run maximum >= saturation_level.

``pixels_map`` takes the first that applies of dead (2), hot (1), saturated (3), else 0;
the counts are each independent of the others.
"""
from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numba
import numpy as np

from tango_dqm import (Analysis, Frame, FrameOutput, Parameter, Params, Result, as_2d, frame_min_max_count,
                       min_max_count_above)

OK, HOT, DEAD, SATURATED = 0, 1, 2, 3


@numba.njit(nogil=True, cache=True, inline="always")
def _neighbour_mean(a, i, j):  # pragma: no cover - compiled
    """Mean of the (up to 4) direct neighbours of a[i, j] inside the frame."""
    t = 0.0
    c = 0
    if i > 0:
        t += np.float64(a[i - 1, j])
        c += 1
    if i < a.shape[0] - 1:
        t += np.float64(a[i + 1, j])
        c += 1
    if j > 0:
        t += np.float64(a[i, j - 1])
        c += 1
    if j < a.shape[1] - 1:
        t += np.float64(a[i, j + 1])
        c += 1
    return t / c if c else np.float64(a[i, j])


#: at most this many frames held back and accumulated in one pass: each pixel's accumulators
#: (36 bytes) are then read and written once per batch, not once per frame, and the kernel's
#: inner loops run over rows that stay in cache (about half the cost per frame of one frame at
#: a time). The kernel's tuple always has BATCH entries (padded): one numba signature per dtype.
#: Batching never changes the maps (same operations per pixel, in the same order), so the batch
#: may follow the frame rate: one frame at a time while frames come slower than 3 one-frame
#: accumulations take (no frame is then held back), full batches when throughput matters.
BATCH = 16
#: at most this many bytes of frames held back (large frames: smaller batches)
BATCH_BYTES = 64 << 20


@numba.njit(nogil=True, cache=True, inline="always")
def _add_int(v, mean, j, s, ss, mx, mx2, rs, rss):  # pragma: no cover - compiled
    """One pixel of one integer frame into its accumulator rows (value v, neighbour mean)."""
    iv = np.int64(v)
    s[j] += iv
    ss[j] += iv * iv
    hi = max(mx[j], v)  # the top two without branches (vectorises): same as "if v > mx ... elif"
    mx2[j] = max(mx2[j], min(mx[j], v))
    mx[j] = hi
    r = np.float64(v) - mean
    rs[j] += r
    rss[j] += r * r


@numba.njit(nogil=True, cache=True)
def _accumulate_int(frames, count, s, ss, mx, mx2, rs, rss):  # pragma: no cover - compiled
    """For each of the first ``count`` frames, in order: s += a, ss += a*a (int64, exact), the
    two largest values (mx >= mx2), and the moments of the residual against the 4-neighbour
    mean (rs, rss, float64).

    One pass over the accumulators for the whole batch, row by row: a row of them stays in
    cache while the batch's frames are added. Inside the frame each row is three simple loops
    (sums, top two, residual) that LLVM vectorises; the border pixels take the general path.
    Every pixel sees the same operations in the same order as frame-by-frame accumulation
    (integer data: the neighbour sums are exact), so the maps are bit-for-bit the same."""
    rows, cols = s.shape
    for i in range(rows):
        s_i, ss_i, mx_i, mx2_i, rs_i, rss_i = s[i], ss[i], mx[i], mx2[i], rs[i], rss[i]
        inner = 0 < i < rows - 1 and cols > 2
        for k in range(count):
            a = frames[k]
            row = a[i]
            if not inner:  # first and last rows, narrow frames
                for j in range(cols):
                    _add_int(row[j], _neighbour_mean(a, i, j), j, s_i, ss_i, mx_i, mx2_i, rs_i, rss_i)
                continue
            up = a[i - 1]
            down = a[i + 1]
            for j in (0, cols - 1):
                _add_int(row[j], _neighbour_mean(a, i, j), j, s_i, ss_i, mx_i, mx2_i, rs_i, rss_i)
            for j in range(1, cols - 1):
                iv = np.int64(row[j])
                s_i[j] += iv
                ss_i[j] += iv * iv
            for j in range(1, cols - 1):
                v = row[j]
                m = mx_i[j]
                mx2_i[j] = max(mx2_i[j], min(m, v))
                mx_i[j] = max(m, v)
            for j in range(1, cols - 1):
                # 4 v - (the 4 neighbours) in int32, then / 4: exactly v - t / 4 (multiples of 1/4
                # are exact in float64), with narrower lanes than int64 sums (~8% faster)
                d = np.int32(4) * np.int32(row[j]) - (np.int32(up[j]) + np.int32(down[j]) + np.int32(row[j - 1])
                                                      + np.int32(row[j + 1]))
                r = np.float64(d) * 0.25
                rs_i[j] += r
                rss_i[j] += r * r


@numba.njit(nogil=True, cache=True)
def _accumulate_float(frames, count, s, ss, mx, mx2, rs, rss):  # pragma: no cover - compiled
    """The same for other dtypes, in float64; the top two by comparisons (a NaN never enters)."""
    rows, cols = s.shape
    for i in range(rows):
        for k in range(count):
            a = frames[k]
            for j in range(cols):
                v = a[i, j]
                fv = np.float64(v)
                s[i, j] += fv
                ss[i, j] += fv * fv
                if v > mx[i, j]:
                    mx2[i, j] = mx[i, j]
                    mx[i, j] = v
                elif v > mx2[i, j]:
                    mx2[i, j] = v
                r = fv - _neighbour_mean(a, i, j)
                rs[i, j] += r
                rss[i, j] += r * r


def _read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view: one numba signature for read-only and writable frames."""
    view = a.view()
    view.flags.writeable = False
    return view


class _Maps(NamedTuple):
    """The per-pixel arrays of a PixelMap, in the order the accumulation kernels take them."""

    sum: np.ndarray
    sumsq: np.ndarray
    max: np.ndarray
    max2: np.ndarray
    rsum: np.ndarray
    rsumsq: np.ndarray


class _Pace:
    """How many frames the pixel map may hold back now: 1 while frames come slower than three
    one-frame accumulations take (the map then holds no frame back), a full batch otherwise.
    Timing, kept by the analysis beside (not in) the accumulator: it never changes a map.

    The test uses what one frame costs alone (a whole pass over the maps), not a batch's cost
    per frame: with the latter, a batch's cheap frames switched the pace back to one frame,
    whose expensive pass switched it to batches again, every other accumulation."""

    __slots__ = ("last", "interval", "single")

    def __init__(self) -> None:
        self.last: float | None = None
        self.interval: float | None = None  # seconds between frames, moving average
        self.single: float | None = None  # seconds of the last one-frame accumulation

    def batch(self) -> int:
        now = time.perf_counter()
        if self.last is not None:
            dt = now - self.last
            self.interval = dt if self.interval is None else 0.8 * self.interval + 0.2 * dt
        self.last = now
        if self.interval is None or self.single is None or self.interval > 3.0 * self.single:
            return 1
        return BATCH

    def took(self, flushed: tuple[float, int] | None) -> None:
        """``flushed``: (seconds, frames) of the accumulation an add ran, or None."""
        if flushed is not None and flushed[1] == 1:
            self.single = flushed[0]


class PixelMap:
    """Per-pixel run accumulator: frame count, sum, sum of squares, the largest and second
    largest value, and the sum and sum of squares of the residual against the 4-neighbour
    mean (the pixel's noise without the beam's own motion or intensity changes).

    Frames added are held back (views, not copies: frames are immutable) and accumulated a
    batch at a time; reading any map, ``merged`` and ``copy`` accumulate what is held first,
    so the maps always include every frame added."""

    __slots__ = ("n", "_sum", "_sumsq", "_max", "_max2", "_rsum", "_rsumsq", "settings", "_pending", "_batch")

    def __init__(self, n: int = 0, s: np.ndarray | None = None, ss: np.ndarray | None = None,
                 mx: np.ndarray | None = None, settings: tuple | None = None,
                 rs: np.ndarray | None = None, rss: np.ndarray | None = None, mx2: np.ndarray | None = None):
        self.n, self._sum, self._sumsq, self._max, self.settings = n, s, ss, mx, settings
        self._rsum, self._rsumsq, self._max2 = rs, rss, mx2
        self._pending: list[np.ndarray] = []
        self._batch = BATCH  # the most held back for this frame size

    def _maps(self) -> "PixelMap":
        self.flush()
        return self

    @property
    def maps(self) -> _Maps:
        """The per-pixel arrays (every frame added included), all made at the first frame;
        ValueError before it."""
        self.flush()
        if (self._sum is None or self._sumsq is None or self._max is None or self._max2 is None
                or self._rsum is None or self._rsumsq is None):
            raise ValueError("pixels: the map holds no frame yet")
        return _Maps(self._sum, self._sumsq, self._max, self._max2, self._rsum, self._rsumsq)

    sum = property(lambda self: self._maps()._sum)
    sumsq = property(lambda self: self._maps()._sumsq)
    max = property(lambda self: self._maps()._max)
    max2 = property(lambda self: self._maps()._max2)
    rsum = property(lambda self: self._maps()._rsum)
    rsumsq = property(lambda self: self._maps()._rsumsq)

    def add(self, image: np.ndarray, settings: tuple, batch: int = BATCH) -> tuple[float, int] | None:
        """Add one frame, held back until ``batch`` frames are (it must not change afterwards).

        Returns (seconds, frames) of the accumulation this add ran, None when it ran none."""
        first = self._pending[0] if self._pending else None
        if self._sum is None and first is None:
            self._batch = max(1, min(BATCH, BATCH_BYTES // max(1, image.nbytes)))
        else:
            if first is None:
                assert self._sum is not None and self._max is not None  # a flushed map has its arrays
                shape, dtype = self._sum.shape, self._max.dtype
            else:
                shape, dtype = first.shape, first.dtype
            if image.shape != shape:
                raise ValueError(f"pixels: frame shape changed during the run from {shape} to "
                                 f"{image.shape}; Reset to start a new map")
            if image.dtype != dtype:
                raise ValueError(f"pixels: frame dtype changed during the run from {dtype} to "
                                 f"{image.dtype}; Reset to start a new map")
        self._pending.append(_read_only(np.ascontiguousarray(image)))
        self.n += 1
        self.settings = settings
        if len(self._pending) >= min(batch, self._batch):
            return self.flush()
        return None

    def flush(self) -> tuple[float, int] | None:
        """Accumulate the frames held back; (seconds, frames) it took (None: nothing held)."""
        pending = self._pending
        if not pending:
            return None
        image = pending[0]
        exact = image.dtype.kind in "iu" and image.dtype.itemsize <= 2
        if self._sum is None:
            acc_type = np.int64 if exact else np.float64
            self._sum = np.zeros(image.shape, acc_type)
            self._sumsq = np.zeros(image.shape, acc_type)
            lowest = np.iinfo(image.dtype).min if image.dtype.kind in "iu" else -np.inf
            self._max = np.full(image.shape, lowest, image.dtype)
            self._max2 = np.full(image.shape, lowest, image.dtype)
            self._rsum = np.zeros(image.shape, np.float64)
            self._rsumsq = np.zeros(image.shape, np.float64)
        pending = [f if not f.flags.writeable else _read_only(f) for f in pending]  # e.g. from the wire
        image = pending[0]
        frames = tuple(pending) + (image,) * (BATCH - len(pending))  # padding is never read
        self._pending = []
        t0 = time.perf_counter()
        (_accumulate_int if exact else _accumulate_float)(frames, len(pending), self._sum, self._sumsq,
                                                          self._max, self._max2, self._rsum, self._rsumsq)
        return time.perf_counter() - t0, len(pending)

    def merged(self, other: "PixelMap") -> "PixelMap":
        self.flush()
        other.flush()
        if other.n == 0:
            return self.copy()
        if self.n == 0:
            return other.copy()
        # both flushed and non-empty: their arrays exist
        assert self._sum is not None and self._sumsq is not None and self._max is not None
        assert self._max2 is not None and self._rsum is not None and self._rsumsq is not None
        assert other._sum is not None and other._sumsq is not None and other._max is not None
        assert other._max2 is not None and other._rsum is not None and other._rsumsq is not None
        if self._sum.shape != other._sum.shape or self._max.dtype != other._max.dtype:
            raise ValueError(f"pixels: cannot merge maps of {self._sum.shape} {self._max.dtype} and "
                             f"{other._sum.shape} {other._max.dtype}")
        # second largest of the union of two top-two pairs
        mx2 = np.maximum(np.minimum(self._max, other._max), np.maximum(self._max2, other._max2))
        out = PixelMap(self.n + other.n, self._sum + other._sum, self._sumsq + other._sumsq,
                       np.maximum(self._max, other._max), other.settings,
                       self._rsum + other._rsum, self._rsumsq + other._rsumsq, mx2)
        out._batch = self._batch  # the frame size's bound
        return out

    def copy(self) -> "PixelMap":
        self.flush()
        c = lambda a: None if a is None else a.copy()  # noqa: E731
        out = PixelMap(self.n, c(self._sum), c(self._sumsq), c(self._max), self.settings, c(self._rsum),
                       c(self._rsumsq), c(self._max2))
        out._batch = self._batch
        return out


def _ring(size: int) -> np.ndarray:
    ring = np.ones((size, size), bool)
    ring[size // 2, size // 2] = False  # the pixel itself must not pull its own reference
    return ring


def run_moments(acc: "PixelMap") -> tuple[np.ndarray, np.ndarray, int]:
    """(trimmed mean, noise variance per frame, frames behind the mean) of every pixel.

    The mean is trimmed: each pixel's two largest values are left out, so up to two zingers
    or saturating events in a run do not move it (a hot pixel is high in every frame). With
    3 frames only the largest is left out, with fewer nothing. The noise variance is the sample variance of
    the pixel's residual against the mean of its 4 direct neighbours, divided by 1.25 (the
    neighbour mean's share for independent noise): unlike the pixel's own variance over the
    run, it does not count a beam that moves or changes intensity as noise.
    """
    n = acc.n
    s = acc.sum.astype(np.float64)
    if n >= 4:
        k = n - 2
        m = (s - acc.max.astype(np.float64) - acc.max2.astype(np.float64)) / k
    elif n == 3:
        k = n - 1
        m = (s - acc.max.astype(np.float64)) / k
    else:
        k = n
        m = s / n
    if n > 1:
        var_r = (acc.rsumsq - acc.rsum * acc.rsum / n) / (n - 1)
    else:
        var_r = np.zeros_like(m)
    return m, np.maximum(var_r, 0.0) / 1.25, k


def hot_pixels(mean: np.ndarray, noise_var: np.ndarray, frames: int, hot_sigma: float, hot_ratio: float,
               reference: str) -> np.ndarray:
    """Boolean map of hot pixels (see the module docstring for the definition).

    ``mean`` is the per-pixel (trimmed) run mean over ``frames`` frames and ``noise_var``
    the per-pixel noise variance of one frame. A pixel is hot when its mean is both
    significantly (``hot_sigma`` standard errors) and substantially (``hot_ratio`` times)
    above its reference.
    """
    from scipy.ndimage import median_filter  # deferred: finish only

    hot = np.zeros(mean.shape, bool)
    finite = np.isfinite(mean) & np.isfinite(noise_var)
    if not finite.any() or frames < 1:
        return hot
    # The expected noise: the median over the 24 pixels around (a hot pixel inflates the
    # residual variance of its own 4 neighbours, and its own variance scales with its gain).
    var = median_filter(np.where(finite, noise_var, 0.0), footprint=_ring(5), mode="mirror")
    # a tiny floor, so rounding noise on a noiseless flat map is never "significant"
    floor = (1e-9 * (abs(float(np.median(mean[finite]))) + 1.0)) ** 2
    refs = []
    if reference in ("global", "either"):
        refs.append((np.full(mean.shape, np.median(mean[finite])), 0.0))
    if reference in ("local", "either"):
        # median of the 8 neighbours: its variance is about (pi/2) var / 8 (a hot neighbour
        # or two do not move it)
        refs.append((median_filter(mean, footprint=_ring(3), mode="mirror"), math.pi / 16))
    with np.errstate(invalid="ignore"):
        for ref, ref_share in refs:
            se = np.sqrt(var * (1.0 + ref_share) / frames + floor)
            excess = mean - ref
            hot |= finite & (excess > hot_sigma * se) & (excess >= (hot_ratio - 1.0) * np.abs(ref))
    return hot


def dead_pixels(run_max: np.ndarray, dead_threshold: float) -> np.ndarray:
    """Pixels whose run maximum never exceeds ``dead_threshold`` while more than half of
    their 5x5 neighbourhood (the 24 pixels around them) does."""
    from scipy.ndimage import median_filter

    low = run_max <= dead_threshold
    if not low.any():
        return low
    alive = median_filter(run_max.astype(np.float64), footprint=_ring(5), mode="mirror") > dead_threshold
    return low & alive


class Pixels(Analysis):
    """Saturated pixels per frame; hot, dead and saturated-in-run pixel maps at the end of the run."""

    wire_types = (PixelMap,)  # the accumulator, for scale-out workers (held-back frames travel with it)
    name = "pixels"
    version = "1"
    parameters = [
        # Identical to the roi analysis' declaration, so both share one parameter.
        Parameter("saturation_level", int, 65535, unit="counts", label="Saturation level", format="%d",
                  description="pixels at or above this value count as saturated", min=0),
        Parameter("hot_sigma", float, 5.0, unit="sigma", label="Hot pixel threshold", format="%.3g",
                  description="hot: run mean this many of its own standard errors above its reference",
                  min=0.0, max=1e6),
        Parameter("hot_ratio", float, 2.0, label="Hot pixel ratio", dimensionless=True, format="%.3g",
                  description="hot: run mean also at least this many times its reference", min=1.0, max=1e6),
        Parameter("pixels_hot_reference", "enum", "local", label="Hot pixel reference",
                  description="local: median of the 8 neighbours; global: median of the mean map; either",
                  choices=("local", "global", "either")),
        Parameter("dead_threshold", float, 0.0, unit="counts", label="Dead pixel threshold", format="%.6g",
                  description="dead: the pixel's maximum over the run never exceeds this, while its "
                              "neighbourhood's does", min=-1e12, max=1e12),
        Parameter("pixels_min_frames", int, 10, unit="frames", label="Pixel map minimum frames", format="%d",
                  description="fewer accumulated frames: the map is INSUFFICIENT", min=1),
    ]
    results = [
        Result("pixels_saturated", int, unit="pixels", label="Saturated pixels in frame", format="%d",
               description="pixels of this frame at or above saturation_level", point="max"),
        Result("pixels_hot", int, unit="pixels", label="Hot pixels", format="%d",
               description="run summary: pixels far above their reference (hot_sigma, hot_ratio)", run_summary=True),
        Result("pixels_dead", int, unit="pixels", label="Dead pixels", format="%d",
               description="run summary: pixels never above dead_threshold while their neighbourhood is",
               run_summary=True),
        Result("pixels_saturated_run", int, unit="pixels", label="Pixels saturated in run", format="%d",
               description="run summary: pixels whose run maximum reached saturation_level", run_summary=True),
        Result("pixels_map", np.uint8, kind="image", label="Pixel map", dimensionless=True, format="%d",
               description="run summary: 0 ok, 1 hot, 2 dead, 3 saturated in this run", archive=False,
               run_summary=True),
        Result("pixels_mean_map", np.float32, kind="image", unit="counts", label="Pixel mean map", format="%.4g",
               description="run summary: mean of every pixel over the run", archive=False, run_summary=True),
        Result("pixels_std_map", np.float32, kind="image", unit="counts", label="Pixel std map", format="%.4g",
               description="run summary: standard deviation of every pixel over the run", archive=False,
               run_summary=True),
        Result("pixels_frames", int, unit="frames", label="Frames in pixel map", format="%d",
               description="run summary: frames accumulated into the maps", run_summary=True),
        Result("pixels_status", str, label="Pixel map status", description="OK or INSUFFICIENT", run_summary=True),
    ]

    def _input(self, frame: Frame, params: Params) -> np.ndarray:
        """The image to analyse: the one place where a dark frame would be subtracted and
        a mask applied (masked pixels excluded from the map) once those parameters exist."""
        image = as_2d(frame.data)
        return image.view(np.uint8) if image.dtype.kind == "b" else image

    def process(self, frame: Frame, params: Params, context: Any = None) -> FrameOutput:
        image = self._input(frame, params)
        if image.dtype == frame.data.dtype:  # the frame's own values: roi's pass serves both
            _, _, n_saturated = frame_min_max_count(frame, params.saturation_level)
        else:  # booleans counted as 0/1
            _, _, n_saturated = min_max_count_above(image, params.saturation_level)
        # private: the frame (a view, no copy) for the per-pixel maps
        return FrameOutput({"pixels_saturated": n_saturated}, image)

    def new_accumulator(self) -> PixelMap:
        return PixelMap()

    def accumulate(self, acc: PixelMap, output: FrameOutput, params: Params) -> PixelMap:
        # the parameters finish() classifies with: those of the last accumulated frame
        settings = (params.saturation_level, params.hot_sigma, params.pixels_hot_reference,
                    params.dead_threshold, params.pixels_min_frames, params.hot_ratio)
        pace = self.__dict__.get("_pace")
        if pace is None or acc.n == 0:  # a new map (maybe another frame size): measure anew
            pace = self._pace = _Pace()
        pace.took(acc.add(output.private, settings, pace.batch()))
        return acc

    def merge(self, a: PixelMap, b: PixelMap) -> PixelMap:
        return a.merged(b)

    def finish(self, acc: PixelMap) -> dict[str, Any]:
        out: dict[str, Any] = {"pixels_frames": acc.n}
        if acc.n == 0 or acc.settings is None or acc.n < acc.settings[4]:
            out.update({"pixels_status": "INSUFFICIENT", "pixels_hot": None, "pixels_dead": None,
                        "pixels_saturated_run": None, "pixels_map": None, "pixels_mean_map": None,
                        "pixels_std_map": None})
            return out
        saturation_level, hot_sigma, reference, dead_threshold, _, hot_ratio = acc.settings
        n = acc.n
        mean = acc.sum / n
        var = np.maximum(acc.sumsq / n - mean * mean, 0.0)
        # judged on the trimmed moments: one zinger in a run does not make a pixel hot
        t_mean, t_var, k = run_moments(acc)
        hot = hot_pixels(t_mean, t_var, k, hot_sigma, hot_ratio, reference)
        dead = dead_pixels(acc.max, dead_threshold)
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


__all__ = ["DEAD", "HOT", "OK", "SATURATED", "PixelMap", "Pixels", "dead_pixels", "hot_pixels", "run_moments"]
