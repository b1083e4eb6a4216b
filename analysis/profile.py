"""Beam profile: x/y projections of a ROI, centroid, RMS width, FWHM and an optional Gaussian fit.

| parameter    | type | default | meaning                                                          |
|--------------|------|---------|------------------------------------------------------------------|
| roi_profile  | roi  | []      | region [offset_x, size_x, offset_y, size_y]; [] = the full frame  |
| profile_fit  | bool | False   | also fit a Gaussian + offset to each projection (costs ~1 ms)     |
| saturation_level | int | 65535 | pixels >= this are excluded (shared with roi and pixels)        |

| result (per frame)          | kind     | type    | meaning                                                  |
|-----------------------------|----------|---------|----------------------------------------------------------|
| profile_x                   | spectrum | float64 | column sums of the cleaned ROI (onto x), length size_x    |
| profile_y                   | spectrum | float64 | row sums of the cleaned ROI (onto y), length size_y       |
| profile_axis_x / _y         | spectrum | float64 | full-image pixel coordinates of profile_x / _y (x axis)   |
| profile_centroid_x / _y     | scalar   | float   | centre of mass, full-image pixel coordinates             |
| profile_rms_x / _y          | scalar   | float   | RMS width (second central moment), pixels                 |
| profile_fwhm_x / _y         | scalar   | float   | full width at half maximum, pixels (linear interpolation) |
| profile_fit_amplitude_x/_y  | scalar   | float   | Gaussian fit: peak height above the offset, counts        |
| profile_fit_mean_x / _y     | scalar   | float   | Gaussian fit: centre, full-image pixel coordinates        |
| profile_fit_sigma_x / _y    | scalar   | float   | Gaussian fit: sigma, pixels                               |
| profile_fit_offset_x / _y   | scalar   | float   | Gaussian fit: constant offset, counts                     |

| result (run, from finish)       | kind     | type    | meaning                                          |
|---------------------------------|----------|---------|--------------------------------------------------|
| profile_run_x / profile_run_y   | spectrum | float64 | run-mean projections                             |
| profile_run_axis_x / _y         | spectrum | float64 | pixel coordinates of profile_run_x / _y          |
| profile_run_centroid_x / _y     | scalar   | float   | centroid of the run-mean projections             |
| profile_run_rms_x / _y          | scalar   | float   | RMS width of the run-mean projections            |
| profile_run_fwhm_x / _y         | scalar   | float   | FWHM of the run-mean projections                 |
| profile_run_frames              | scalar   | int     | frames summed into the run-mean projections      |

Definitions (see docs/analyses.md for the reasoning and the limits). Pixels whose raw
value is >= ``saturation_level`` (or NaN), and masked pixels, are replaced in the
projections by the mean of their valid 8 neighbours. In each projection ``p``: the peak
is the maximum of its 3-point median; the background ``b`` is the median of the points
further than 2 first-guess FWHM from the peak (else 1.5, else 1; the minimum if too few);
FWHM = distance between the two points where ``p - b`` crosses half of its value at the
peak, linearly interpolated, walking outwards from the peak; centroid and RMS are the
first and second moments of ``q = p - b`` within +-3 FWHM of the peak (all of ``p``
without a FWHM). A crossing that does not happen inside the ROI gives NaN, as does a
flat projection. For a Gaussian spot FWHM = 2.3548 sigma and RMS = sigma.

The Gaussian fit ``a exp(-(x - m)^2 / (2 s^2)) + c`` uses ``scipy.optimize.curve_fit``
on the cleaned projection with start values from the robust estimates (a = peak - b,
m = centroid, s = FWHM / 2.3548, c = b). A fit that does not converge gives NaN values,
never an exception. With ``profile_fit`` off the fit results are NaN.

The run accumulator sums the projections (exactly, in float64) per region; if the
ROI changes during a run, finish reports the region of the most recent frame.
Accumulators merge by addition.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numba
import numpy as np

from tango_dqm import DARK, MASK, Analysis, Frame, FrameOutput, Parameter, Params, Result, as_2d, corrected, row_view

_NAN = float("nan")
_AXES = ("x", "y")
_FIT = ("amplitude", "mean", "sigma", "offset")
_TEXT = {"centroid": "centre of mass, full-image pixels", "rms": "RMS width", "fwhm": "full width at half maximum",
         "amplitude": "peak height above the offset", "mean": "centre, full-image pixels", "sigma": "width (sigma)",
         "offset": "constant offset"}
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_NO_MASK = row_view(np.zeros((1, 1), np.uint8))[0]


# ---- kernels -------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, inline="always")
def _excluded(raw, mask, use_mask, use_level, level, i, j):  # pragma: no cover - compiled
    if use_mask and mask[i, j] != 0:
        return True
    return use_level and not raw[i, j] < level  # NaN is excluded too


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def _project_clean(raw, val, mask, use_mask, use_level, level, raw_int, cols, px, py):  # pragma: no cover - compiled
    """Column sums into ``px`` and row sums into ``py`` of ``val`` in one pass over the
    frame, each excluded pixel (``raw`` at or above ``level`` or NaN, or ``mask`` nonzero)
    replaced by the mean of the valid pixels among its 8 neighbours. Without a valid
    neighbour a masked pixel counts 0 and a saturated one keeps its value (a saturated
    area is at least that bright). Returns the number of excluded pixels.

    Each row is first only tested (a vectorised compare); rows without an excluded pixel,
    nearly all of them, are summed on the fast path while still in cache."""
    rows = val.shape[0]  # and the first ``cols`` columns of each row (views from row_view)
    n_bad = 0
    for i in range(rows):
        row = val[i]
        rrow = raw[i]
        mrow = mask[i] if use_mask else mask[0]  # (the no-mask placeholder has one row)
        nb = 0
        if use_level:
            if raw_int:  # the row's maximum (narrow lanes) says whether any pixel reaches the level
                top = rrow[0]
                for j in range(cols):
                    top = max(top, rrow[j])
                nb += top >= level
            else:  # floats: NaN is excluded too, which a maximum would not tell
                for j in range(cols):
                    nb += not rrow[j] < level
        if use_mask:
            for j in range(cols):
                nb += mrow[j] != 0
        s = 0.0
        if nb == 0:
            for j in range(cols):
                v = np.float64(row[j])
                px[j] += v
                s += v
        else:
            # the test on this row's own 1-D views: with the 2-D indexing of _excluded here,
            # LLVM compiled the loop ~30x slower (47 -> 1.5 us for a 1024-pixel row)
            for j in range(cols):
                if (use_mask and mrow[j] != 0) or (use_level and not rrow[j] < level):
                    n_bad += 1
                    t = 0.0
                    c = 0
                    for ii in range(max(i - 1, 0), min(i + 2, rows)):
                        for jj in range(max(j - 1, 0), min(j + 2, cols)):
                            if (ii != i or jj != j) and not _excluded(raw, mask, use_mask, use_level, level, ii, jj):
                                t += np.float64(val[ii, jj])
                                c += 1
                    if c:
                        v = t / c
                    elif use_mask and mrow[j] != 0:
                        v = 0.0
                    else:
                        v = np.float64(row[j])
                else:
                    v = np.float64(row[j])
                px[j] += v
                s += v
        py[i] = s
    return n_bad


@numba.njit(nogil=True, cache=True)
def _fwhm(p, imax, bg):  # pragma: no cover - compiled
    """Width where ``p - bg`` crosses half of ``p[imax] - bg``, walking outwards from
    ``imax``, linearly interpolated; NaN when a side does not cross inside ``p``."""
    n = p.shape[0]
    half = 0.5 * (p[imax] - bg)
    if not half > 0.0:
        return np.nan
    i = imax
    while i > 0 and p[i - 1] - bg >= half:
        i -= 1
    if i == 0:
        return np.nan
    lo = p[i - 1] - bg
    hi = p[i] - bg
    left = (i - 1) + (half - lo) / (hi - lo)
    i = imax
    while i < n - 1 and p[i + 1] - bg >= half:
        i += 1
    if i == n - 1:
        return np.nan
    hi = p[i] - bg
    lo = p[i + 1] - bg
    right = i + (hi - half) / (hi - lo)
    return right - left


@numba.njit(nogil=True, cache=True)
def _axis_stats(p):  # pragma: no cover - compiled
    """Background, peak index, centroid, RMS and FWHM (indices relative to the start of ``p``)."""
    n = p.shape[0]
    nan = np.nan
    mn = p[0]
    mx = p[0]
    for i in range(n):
        if p[i] < mn:
            mn = p[i]
        if p[i] > mx:
            mx = p[i]
    if not mx > mn:  # flat (or NaN) projection: nothing to measure
        return nan, 0, nan, nan, nan
    # The peak: the maximum of the 3-point median of p (a one-column spike, i.e. a hot
    # pixel the exclusion did not catch, is no peak), refined to p's maximum next to it.
    imed = 0
    best = -np.inf
    for i in range(n):
        if 0 < i < n - 1:
            a, b, c = p[i - 1], p[i], p[i + 1]
            v = max(min(a, b), min(max(a, b), c))
        else:
            v = p[i]
        if v > best:
            best = v
            imed = i
    imax = imed
    for i in range(max(imed - 1, 0), min(imed + 2, n)):
        if p[i] > p[imax]:
            imax = i
    # Background: the median of the points far from the peak (beyond 2, else 1.5, else 1
    # first-guess FWHM), at least max(3, n/10) of them; else the minimum.
    w0 = _fwhm(p, imax, mn)
    if not w0 > 0.0:
        w0 = n / 4.0
    bg = mn
    far = np.empty(n)
    for k in (2.0, 1.5, 1.0):
        m = 0
        for i in range(n):
            if abs(i - imax) > k * w0:
                far[m] = p[i]
                m += 1
        if m >= max(3, n // 10):
            bg = np.median(far[:m])
            break
    fwhm = _fwhm(p, imax, bg)
    # Moments inside +-3 FWHM of the peak (all of a Gaussian: +-7 sigma): far-away hot
    # pixels and background errors get no lever arm. The whole projection without a FWHM.
    lo, hi = 0, n
    if fwhm > 0.0:
        lo = max(0, int(math.floor(imax - 3.0 * fwhm)))
        hi = min(n, int(math.ceil(imax + 3.0 * fwhm)) + 1)
    total = 0.0
    first = 0.0
    for i in range(lo, hi):
        q = p[i] - bg
        total += q
        first += i * q
    if not total > 0.0:
        return bg, imax, nan, nan, fwhm
    c = first / total
    second = 0.0
    for i in range(lo, hi):
        d = i - c
        second += d * d * (p[i] - bg)
    rms = math.sqrt(second / total) if second > 0.0 else nan
    return bg, imax, c, rms, fwhm


# ---- helpers -------------------------------------------------------------------------


def _gauss(x, amplitude, mean, sigma, offset):
    return amplitude * np.exp(-0.5 * ((x - mean) / sigma) ** 2) + offset


class AxisStats(NamedTuple):
    """Statistics of one projection; positions relative to its first element."""

    background: float
    peak: int
    centroid: float
    rms: float
    fwhm: float


def axis_stats(p: np.ndarray) -> AxisStats:
    """Background, peak index, centroid, RMS and FWHM of a projection (see the module docstring)."""
    if p.size == 0:
        return AxisStats(_NAN, 0, _NAN, _NAN, _NAN)
    bg, imax, c, rms, fwhm = _axis_stats(np.ascontiguousarray(p, dtype=np.float64))
    return AxisStats(float(bg), int(imax), float(c), float(rms), float(fwhm))


def gaussian_fit(p: np.ndarray, offset: int, centroid: float, rms: float, fwhm: float = _NAN,
                 background: float = _NAN) -> tuple[float, float, float, float]:
    """Fit ``a exp(-(x-m)^2/2s^2) + c`` to projection ``p``; x in full-image pixels. NaNs on failure.

    Starts from the robust estimates: m = centroid, s = FWHM / 2.3548 (RMS when the FWHM is
    unknown), c = the background (the minimum when unknown), a = the peak above c.
    """
    nan4 = (_NAN, _NAN, _NAN, _NAN)
    width = fwhm / _FWHM_PER_SIGMA if math.isfinite(fwhm) and fwhm > 0 else rms
    if p.size < 5 or not (math.isfinite(centroid) and math.isfinite(width) and width > 0):
        return nan4
    from scipy.optimize import curve_fit  # deferred: only needed when fitting

    x = np.arange(p.size, dtype=np.float64) + offset
    lo = background if math.isfinite(background) else float(p.min())
    p0 = (float(p.max()) - lo, centroid, width, lo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning (no covariance) is not a failure
            popt, _ = curve_fit(_gauss, x, p, p0=p0, maxfev=400)
    except (RuntimeError, ValueError, FloatingPointError, TypeError):
        return nan4
    a, m, s, c = (float(v) for v in popt)
    if not all(math.isfinite(v) for v in (a, m, s, c)) or s == 0.0:
        return nan4
    return a, m, abs(s), c


def project(region: np.ndarray, raw: np.ndarray | None = None, mask: np.ndarray | None = None,
            saturation_level: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(column sums, row sums) of a 2-D region as float64, in one pass (exact for integer data).

    Pixels whose ``raw`` value (the region itself when None) is at or above
    ``saturation_level`` or not finite, and pixels where ``mask`` is nonzero, are replaced by
    the mean of their valid neighbours (see ``_project_clean``).
    """
    if region.dtype.kind == "b":
        region = region.view(np.uint8)
    raw = region if raw is None else (raw.view(np.uint8) if raw.dtype.kind == "b" else raw)
    if raw.shape != region.shape or (mask is not None and mask.shape != region.shape):
        raise ValueError(f"profile: raw {raw.shape}, mask {None if mask is None else mask.shape} and region "
                         f"{region.shape} differ")
    px = np.zeros(region.shape[1], np.float64)
    py = np.zeros(region.shape[0], np.float64)
    m = _NO_MASK if mask is None else (mask.view(np.uint8) if mask.dtype.kind == "b" else mask)
    # the level in the raw dtype, so the per-pixel test is a plain compare of that type
    if raw.dtype.kind in "iu":
        info = np.iinfo(raw.dtype)
        use_level = not saturation_level > info.max
        level = raw.dtype.type(min(max(math.ceil(saturation_level), info.min), info.max)) if use_level \
            else raw.dtype.type(info.max)
    else:
        use_level = True  # NaN and inf are excluded even without a finite level
        level = raw.dtype.type(saturation_level)
    # row views: a ROI's rows seen as contiguous rows, so the kernel's loops vectorise
    raw_rows, cols = row_view(raw)
    mask_rows = row_view(m)[0] if mask is not None else _NO_MASK
    _project_clean(raw_rows, row_view(region)[0], mask_rows, mask is not None, use_level, level,
                   raw.dtype.kind in "iu", cols, px, py)
    return px, py


def projection_stats(p: np.ndarray, offset: int) -> tuple[float, float, float]:
    """Centroid (full-image pixels), RMS width and FWHM of one projection."""
    st = axis_stats(p)
    return st.centroid + offset, st.rms, st.fwhm


# ---- the analysis ----------------------------------------------------------------------


class Profile(Analysis):
    """Projections of a ROI onto x and y with centroid, RMS, FWHM and optional Gaussian fits."""

    name = "profile"
    version = "1"
    parameters = [
        Parameter("roi_profile", "roi", [], label="Profile ROI", unit="pixels", format="%d",
                  description="[offset_x, size_x, offset_y, size_y]; [] = full frame"),
        Parameter("profile_fit", bool, False, label="Profile Gaussian fit",
                  description="fit a Gaussian + offset to each projection (costs ~1 ms per frame)"),
        # Identical to the roi analysis' declaration, so all share one parameter.
        Parameter("saturation_level", int, 65535, unit="counts", label="Saturation level", format="%d",
                  description="pixels at or above this value count as saturated", min=0),
        MASK,
        DARK,
    ]
    results = [
        Result("profile_x", np.float64, kind="spectrum", unit="counts", label="Projection on x", format="%.6g",
               description="column sums of the cleaned ROI", archive=False, axis="profile_axis_x"),
        Result("profile_y", np.float64, kind="spectrum", unit="counts", label="Projection on y", format="%.6g",
               description="row sums of the cleaned ROI", archive=False, axis="profile_axis_y"),
        *[Result(f"profile_axis_{ax}", np.float64, kind="spectrum", unit="px", label=f"Profile {ax} pixel",
                 format="%.0f", description=f"full-image pixel {ax} coordinate of each point of profile_{ax}",
                 archive=False) for ax in _AXES],
        *[Result(f"profile_{what}_{ax}", float, unit="px", label=f"Profile {what} {ax}", format="%.3f",
                 description=f"{_TEXT[what]} of profile_{ax} (NaN when undefined)")
          for what in ("centroid", "rms", "fwhm") for ax in _AXES],
        *[Result(f"profile_fit_{what}_{ax}", float, unit="counts" if what in ("amplitude", "offset") else "px",
                 label=f"Profile fit {what} {ax}", format="%.4g",
                 description=f"Gaussian fit of profile_{ax}: {_TEXT[what]} (NaN when off or not converged)")
          for what in _FIT for ax in _AXES],
        Result("profile_run_x", np.float64, kind="spectrum", unit="counts", label="Run-mean projection on x",
               format="%.6g", description="run summary: mean of profile_x over the run", archive=False,
               run_summary=True, axis="profile_run_axis_x"),
        Result("profile_run_y", np.float64, kind="spectrum", unit="counts", label="Run-mean projection on y",
               format="%.6g", description="run summary: mean of profile_y over the run", archive=False,
               run_summary=True, axis="profile_run_axis_y"),
        *[Result(f"profile_run_axis_{ax}", np.float64, kind="spectrum", unit="px", label=f"Run profile {ax} pixel",
                 format="%.0f", description=f"run summary: full-image pixel {ax} coordinate of profile_run_{ax}",
                 archive=False, run_summary=True) for ax in _AXES],
        *[Result(f"profile_run_{what}_{ax}", float, unit="px", label=f"Run profile {what} {ax}", format="%.3f",
                 description=f"run summary: {_TEXT[what]} of profile_run_{ax}", run_summary=True)
          for what in ("centroid", "rms", "fwhm") for ax in _AXES],
        Result("profile_run_frames", int, unit="frames", label="Profile frames in run", format="%d",
               description="run summary: frames summed into the run-mean projections", run_summary=True),
    ]

    def _input(self, frame: Frame, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                           tuple[int, int, int, int]]:
        """The region to analyse (dark-subtracted), its raw values (for the saturation test),
        its mask (None: no mask) and its (offset_x, size_x, offset_y, size_y) in the frame."""
        image = as_2d(frame.data)
        roi = params.roi_profile
        if roi is None:
            slices, key = None, (0, image.shape[1], 0, image.shape[0])
        else:
            roi.check_fits(image.shape, "roi_profile")  # RoiError names the rule
            slices, key = roi.slices(), (roi.offset_x, roi.size_x, roi.offset_y, roi.size_y)
        mask = params.get("mask")
        if mask is not None:
            if mask.shape != image.shape[-2:]:
                raise ValueError(f"mask shape {mask.shape} does not match the frame shape {image.shape[-2:]}")
            mask = mask if slices is None else mask[slices]
        raw = image if slices is None else image[slices]
        return corrected(image, params, slices), raw, mask, key

    def prepare(self, params: Params) -> dict[tuple[int, int], np.ndarray]:
        """A cache of pixel-coordinate axes, {(offset, size): axis}: depends on nothing else."""
        return {}

    prepare_parameters = ("roi_profile",)

    @staticmethod
    def _axis(context: dict[tuple[int, int], np.ndarray], offset: int, size: int) -> np.ndarray:
        axis = context.get((offset, size))
        if axis is None:
            axis = np.arange(offset, offset + size, dtype=np.float64)
            axis.flags.writeable = False  # published by every frame of this region: shared, never modified
            if len(context) > 64:  # full-frame regions follow the image shape: keep the cache small
                context.clear()
            context[(offset, size)] = axis
        return axis

    def process(self, frame: Frame, params: Params, context: Any = None) -> FrameOutput:
        region, raw, mask, key = self._input(frame, params)
        ox, sx, oy, sy = key
        px, py = project(region, raw, mask, params.saturation_level)
        axes = {} if context is None else context
        out: dict[str, Any] = {"profile_x": px, "profile_y": py,
                               "profile_axis_x": self._axis(axes, ox, px.size),
                               "profile_axis_y": self._axis(axes, oy, py.size)}
        for ax, p, off in (("x", px, ox), ("y", py, oy)):
            st = axis_stats(p)
            c = st.centroid + off
            out[f"profile_centroid_{ax}"] = c
            out[f"profile_rms_{ax}"] = st.rms
            out[f"profile_fwhm_{ax}"] = st.fwhm
            fit = gaussian_fit(p, off, c, st.rms, st.fwhm, st.background) if params.profile_fit else (_NAN,) * 4
            for what, v in zip(_FIT, fit):
                out[f"profile_fit_{what}_{ax}"] = v
        # private: which region these projections belong to, for accumulate()
        return FrameOutput(out, key)

    # Accumulator: {"sums": {region: [frames, sum_x, sum_y]}, "last": region or None}

    def new_accumulator(self) -> dict[str, Any]:
        return {"sums": {}, "last": None}

    def accumulate(self, acc: dict[str, Any], output: FrameOutput, params: Params) -> dict[str, Any]:
        key, r = output.private, output.results
        entry = acc["sums"].get(key)
        if entry is None:  # copies: the frame's results are published and must stay untouched
            acc["sums"][key] = [1, r["profile_x"].copy(), r["profile_y"].copy()]
        else:
            entry[0] += 1
            entry[1] += r["profile_x"]
            entry[2] += r["profile_y"]
        acc["last"] = key
        return acc

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        sums = {k: [n, sx.copy(), sy.copy()] for k, (n, sx, sy) in a["sums"].items()}
        for k, (n, sx, sy) in b["sums"].items():
            if k in sums:
                sums[k][0] += n
                sums[k][1] += sx
                sums[k][2] += sy
            else:
                sums[k] = [n, sx.copy(), sy.copy()]
        return {"sums": sums, "last": b["last"] if b["last"] is not None else a["last"]}

    def finish(self, acc: dict[str, Any]) -> dict[str, Any]:
        key = acc["last"]
        if key is None:
            out: dict[str, Any] = {"profile_run_x": np.zeros(0), "profile_run_y": np.zeros(0),
                                   "profile_run_axis_x": np.zeros(0), "profile_run_axis_y": np.zeros(0),
                                   "profile_run_frames": 0}
            for what in ("centroid", "rms", "fwhm"):
                for ax in _AXES:
                    out[f"profile_run_{what}_{ax}"] = _NAN
            return out
        n, sx, sy = acc["sums"][key]
        mx, my = sx / n, sy / n
        out = {"profile_run_x": mx, "profile_run_y": my, "profile_run_frames": int(n),
               "profile_run_axis_x": np.arange(key[0], key[0] + mx.size, dtype=np.float64),
               "profile_run_axis_y": np.arange(key[2], key[2] + my.size, dtype=np.float64)}
        for ax, p, off in (("x", mx, key[0]), ("y", my, key[2])):
            c, rms, fwhm = projection_stats(p, off)
            out[f"profile_run_centroid_{ax}"] = c
            out[f"profile_run_rms_{ax}"] = rms
            out[f"profile_run_fwhm_{ax}"] = fwhm
        return out


__all__ = ["AxisStats", "Profile", "axis_stats", "gaussian_fit", "project", "projection_stats"]
