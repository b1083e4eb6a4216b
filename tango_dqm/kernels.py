"""Fast one-pass frame statistics for analyses (part of the public plugin API).

The kernels are numba-compiled with ``nogil=True``, so the engine thread analyses
while the source thread receives on the other core. Integer frames up to 16 bits
are summed exactly in int64; other types use float64 with a second pass for the
variance (no cancellation for large means).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numba
import numpy as np

if TYPE_CHECKING:
    from .frames import Frame


def _numba_cache_dir() -> None:
    """Kernels use ``cache=True`` (compiled once per machine, loaded at Init). numba caches next
    to the code, else in the user's cache directory, and refuses to import when it finds neither
    writable (a read-only install under a service account): then use a private temporary directory.
    It must be ours and closed to others, since numba's cache index is unpickled when loaded."""
    here = Path(__file__).resolve().parent
    target = here / "__pycache__" if (here / "__pycache__").is_dir() else here
    if numba.config.CACHE_DIR or os.access(target, os.W_OK):  # type: ignore[attr-defined]  # set at runtime
        return
    path = Path(tempfile.gettempdir()) / f"tango-dqm-numba-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077 or not path.is_dir() or path.is_symlink():
            path = Path(tempfile.mkdtemp(prefix="tango-dqm-numba-"))
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="tango-dqm-numba-"))
    numba.config.CACHE_DIR = str(path)  # type: ignore[attr-defined]  # numba's config is set at runtime


_numba_cache_dir()


class RegionStats(NamedTuple):
    """Sum, mean, population standard deviation, min and max of a region."""

    sum: float
    mean: float
    std: float
    min: float
    max: float
    count: int  # type: ignore[assignment]  # the public field shadows tuple.count, which nobody calls


@numba.njit(nogil=True, cache=True)
def _int_moments(a, cols):  # pragma: no cover - compiled
    """Sum, sum of squares (int64, exact), min and max of ``a[:, :cols]``.

    Row by row, min/max in one loop and the sums in another: each loop vectorises on its
    own (the narrow min/max lanes are not held back by the int64 sums), and the row is
    in cache for the second."""
    s = 0
    ss = 0
    mn = a[0, 0]
    mx = a[0, 0]
    for i in range(a.shape[0]):
        row = a[i]
        rmn = row[0]
        rmx = row[0]
        for j in range(cols):
            v = row[j]
            rmn = min(rmn, v)
            rmx = max(rmx, v)
        rs = 0
        rss = 0
        for j in range(cols):
            iv = np.int64(row[j])
            rs += iv
            rss += iv * iv
        s += rs
        ss += rss
        mn = min(mn, rmn)
        mx = max(mx, rmx)
    return s, ss, mn, mx


@numba.njit(nogil=True, cache=True)
def _float_moments(a):  # pragma: no cover - compiled
    s = 0.0
    mn = a[0, 0]
    mx = a[0, 0]
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j]
            s += v
            if v < mn:
                mn = v
            if v > mx:
                mx = v
    mean = s / (a.shape[0] * a.shape[1])
    d2 = 0.0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            d = a[i, j] - mean
            d2 += d * d
    return s, d2, mn, mx


@numba.njit(nogil=True, cache=True)
def _min_max_count_ge(a, cols, level, carry):  # pragma: no cover - compiled
    """Min, max and number of values >= level of ``a[:, :cols]``: a row is counted only when
    its own maximum reaches the level (rare: saturation; a NaN maximum counts), so the
    common pass is a min/max one.

    Integers take each row's min/max apart (narrow lanes). Floats (``carry``) carry min/max
    on from the rows before: ``min(m, NaN)`` keeps m, so a NaN is never the minimum unless
    it is the first value, as in one loop over the frame."""
    mn = a[0, 0]
    mx = a[0, 0]
    n = 0
    for i in range(a.shape[0]):
        row = a[i]
        top = row[0]
        if carry:
            for j in range(cols):
                v = row[j]
                mn = min(mn, v)
                mx = max(mx, v)
                top = max(top, v)
        else:
            low = row[0]
            for j in range(cols):
                v = row[j]
                low = min(low, v)
                top = max(top, v)
            mn = min(mn, low)
            mx = max(mx, top)
        if not top < level:
            for j in range(cols):
                if row[j] >= level:
                    n += 1
    return mn, mx, n


def row_view(a: np.ndarray) -> tuple[np.ndarray, int]:
    """``(view, cols)`` of a 2-D array: a read-only C-contiguous view whose rows start where
    ``a``'s do and whose first ``cols`` columns are ``a``'s, without a copy. For numba kernels
    over ROIs: loop ``for j in range(cols)`` over ``view[i]``, never past ``cols``.

    A region of a frame (rows of contiguous pixels, a pitch apart) is seen as the rows of
    the frame that hold it, cut at ``cols``: numba then knows its inner stride and
    vectorises (a strided 'A' array runs scalar, ~4x slower). Other layouts (a column step,
    reversed rows) are made contiguous, which numpy does at memory speed."""
    item = a.itemsize
    rows, cols = a.shape
    if not a.flags.c_contiguous:
        pitch = a.strides[0] // item
        if a.strides[1] == item and a.strides[0] % item == 0 and (rows == 1 or pitch >= cols):
            # the last row's tail beyond ``cols`` is never read (it may lie past the buffer)
            view = np.lib.stride_tricks.as_strided(a, shape=(rows, max(pitch, cols)), strides=(a.strides[0], item),
                                                   writeable=False)
            return view, cols
        a = np.ascontiguousarray(a)
    view = a.view()
    view.flags.writeable = False  # one compiled signature for read-only and writable frames
    return view, cols


def as_2d(a: np.ndarray) -> np.ndarray:
    """A 2-D view of a frame: rows of a waveform, or stacked leading axes (no copy when possible)."""
    if a.ndim == 2:
        return a
    if a.ndim == 1:
        return a.reshape(1, -1)
    return a.reshape(-1, a.shape[-1])


def region_stats(region: np.ndarray) -> RegionStats:
    """Statistics of a (possibly non-contiguous) 1-D or 2-D region in one pass."""
    a = as_2d(region)
    n = a.shape[0] * a.shape[1]
    if n == 0:
        nan = float("nan")
        return RegionStats(0.0, nan, nan, nan, nan, 0)
    if a.dtype.kind in "iub" and a.dtype.itemsize <= 2:
        s, ss, mn, mx = _int_moments(*row_view(a))
        s, ss = int(s), int(ss)
        var = (n * ss - s * s) / (n * n)  # exact integer numerator
        return RegionStats(float(s), s / n, math.sqrt(max(var, 0.0)), float(mn), float(mx), n)
    s, d2, mn, mx = _float_moments(a.astype(np.float64, copy=False))
    return RegionStats(float(s), s / n, math.sqrt(d2 / n), float(mn), float(mx), n)


def min_max_count_above(data: np.ndarray, level: float) -> tuple[float, float, int]:
    """Minimum, maximum and number of values ``>= level`` in one pass."""
    a = as_2d(data)
    if a.size == 0:
        return float("nan"), float("nan"), 0
    if a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        if level > info.max:  # nothing can reach it: the one pass for min and max, its count unused
            mn, mx, _ = _min_max_count_ge(*row_view(a), a.dtype.type(info.max), False)
            return float(mn), float(mx), 0
        level = max(level, info.min)
        mn, mx, n = _min_max_count_ge(*row_view(a), a.dtype.type(math.ceil(level)), False)
    else:
        mn, mx, n = _min_max_count_ge(*row_view(a), a.dtype.type(level), True)
    return float(mn), float(mx), int(n)


def frame_min_max_count(frame: "Frame", level: float) -> tuple[float, float, int]:
    """:func:`min_max_count_above` of the whole frame, computed once per frame and level however
    many analyses ask (roi's frame extrema and saturated pixels, pixels' saturated count)."""
    key = ("min_max_count_above", level)
    out = frame.cache.get(key)
    if out is None:
        out = frame.cache[key] = min_max_count_above(frame.data, level)
    return out
