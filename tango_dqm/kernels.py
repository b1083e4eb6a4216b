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
def _int_moments(a):  # pragma: no cover - compiled
    s = 0
    ss = 0
    mn = a[0, 0]
    mx = a[0, 0]
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(row.shape[0]):
            v = row[j]
            iv = np.int64(v)
            s += iv
            ss += iv * iv
            if v < mn:
                mn = v
            if v > mx:
                mx = v
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
def _min_max_count_ge(a, level):  # pragma: no cover - compiled
    mn = a[0, 0]
    mx = a[0, 0]
    n = 0
    for i in range(a.shape[0]):
        row = a[i]
        for j in range(row.shape[0]):
            v = row[j]
            if v < mn:
                mn = v
            if v > mx:
                mx = v
            if v >= level:
                n += 1
    return mn, mx, n


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
        s, ss, mn, mx = _int_moments(a)
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
        if level > info.max:
            mn, mx = _int_moments(a)[2:] if a.dtype.itemsize <= 2 else (a.min(), a.max())
            return float(mn), float(mx), 0
        level = max(level, info.min)
        mn, mx, n = _min_max_count_ge(a, a.dtype.type(math.ceil(level)))
    else:
        mn, mx, n = _min_max_count_ge(a, a.dtype.type(level))
    return float(mn), float(mx), int(n)


def frame_min_max_count(frame: "Frame", level: float) -> tuple[float, float, int]:
    """:func:`min_max_count_above` of the whole frame, computed once per frame and level however
    many analyses ask (roi's frame extrema and saturated pixels, pixels' saturated count)."""
    key = ("min_max_count_above", level)
    out = frame.cache.get(key)
    if out is None:
        out = frame.cache[key] = min_max_count_above(frame.data, level)
    return out
