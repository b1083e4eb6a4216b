"""Beam profile: x/y projections of a ROI, centroid, RMS width, FWHM and an optional Gaussian fit.

| parameter    | type | default | meaning                                                          |
|--------------|------|---------|------------------------------------------------------------------|
| roi_profile  | roi  | []      | region [offset_x, size_x, offset_y, size_y]; [] = the full frame  |
| profile_fit  | bool | False   | also fit a Gaussian + offset to each projection (costs ~1 ms)     |

| result (per frame)          | kind     | type    | meaning                                                  |
|-----------------------------|----------|---------|----------------------------------------------------------|
| profile_x                   | spectrum | float64 | column sums of the ROI (projection onto x), length size_x |
| profile_y                   | spectrum | float64 | row sums of the ROI (projection onto y), length size_y    |
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
| profile_run_centroid_x / _y     | scalar   | float   | centroid of the run-mean projections             |
| profile_run_rms_x / _y          | scalar   | float   | RMS width of the run-mean projections            |
| profile_run_fwhm_x / _y         | scalar   | float   | FWHM of the run-mean projections                 |
| profile_run_frames              | scalar   | int     | frames summed into the run-mean projections      |

Definitions. Each projection ``p`` is first background-subtracted by its own minimum
(``q = p - min(p)``); centroid, RMS and FWHM are computed from ``q``:
centroid = sum(i q_i) / sum(q_i), RMS = sqrt(sum((i - centroid)^2 q_i) / sum(q_i)),
FWHM = distance between the two points where ``q`` crosses half of its maximum,
linearly interpolated between pixels, walking outwards from the maximum. A crossing
that does not happen inside the ROI gives NaN, as does a flat projection. For a
Gaussian spot FWHM = 2.3548 sigma and RMS = sigma (if the ROI holds the whole spot).

The Gaussian fit ``a exp(-(x - m)^2 / (2 s^2)) + c`` uses ``scipy.optimize.curve_fit``
on the raw projection with start values from the moments (a = max - min, m = centroid,
s = RMS, c = min). A fit that does not converge gives NaN values, never an exception.
With ``profile_fit`` off the fit results are NaN.

The run accumulator sums the projections (exactly, in float64) per region; if the
ROI changes during a run, finish reports the region of the most recent frame.
Accumulators merge by addition.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numba
import numpy as np

from tango_dqm import Analysis, Frame, Parameter, Params, Result
from tango_dqm.corrections import DARK, MASK, corrected
from tango_dqm.kernels import as_2d

_NAN = float("nan")
_AXES = ("x", "y")
_FIT = ("amplitude", "mean", "sigma", "offset")


# ---- kernels -------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _project_int(a, px, py):  # pragma: no cover - compiled
    """Column sums into ``px`` and row sums into ``py`` (int64, exact), in one pass over ``a``."""
    for i in range(a.shape[0]):
        row = a[i]
        s = 0
        for j in range(row.shape[0]):
            v = np.int64(row[j])
            px[j] += v
            s += v
        py[i] = s


# reassoc lets the row sum vectorise; the result is still deterministic for a given build.
@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "nsz"})
def _project_float(a, px, py):  # pragma: no cover - compiled
    """Column and row sums (float64) of a float frame, in one pass."""
    for i in range(a.shape[0]):
        row = a[i]
        s = 0.0
        for j in range(row.shape[0]):
            v = np.float64(row[j])
            px[j] += v
            s += v
        py[i] = s


@numba.njit(nogil=True, cache=True)
def _axis_stats(p):  # pragma: no cover - compiled
    """Centroid, RMS and FWHM (indices relative to the start of ``p``) after min subtraction."""
    n = p.shape[0]
    nan = np.nan
    mn = p[0]
    imax = 0
    for i in range(n):
        v = p[i]
        if v < mn:
            mn = v
        if v > p[imax]:
            imax = i
    total = 0.0
    first = 0.0
    for i in range(n):
        q = p[i] - mn
        total += q
        first += i * q
    if not total > 0.0:  # flat (or NaN) projection: nothing to measure
        return nan, nan, nan
    c = first / total
    second = 0.0
    for i in range(n):
        d = i - c
        second += d * d * (p[i] - mn)
    rms = math.sqrt(second / total)
    half = 0.5 * (p[imax] - mn)
    i = imax
    while i > 0 and p[i - 1] - mn >= half:
        i -= 1
    if i == 0:
        left = nan
    else:  # q[i-1] < half <= q[i]
        lo = p[i - 1] - mn
        hi = p[i] - mn
        left = (i - 1) + (half - lo) / (hi - lo)
    i = imax
    while i < n - 1 and p[i + 1] - mn >= half:
        i += 1
    if i == n - 1:
        right = nan
    else:  # q[i] >= half > q[i+1]
        hi = p[i] - mn
        lo = p[i + 1] - mn
        right = i + (hi - half) / (hi - lo)
    return c, rms, right - left


# ---- helpers -------------------------------------------------------------------------


def _gauss(x, amplitude, mean, sigma, offset):
    return amplitude * np.exp(-0.5 * ((x - mean) / sigma) ** 2) + offset


def gaussian_fit(p: np.ndarray, offset: int, centroid: float, rms: float) -> tuple[float, float, float, float]:
    """Fit ``a exp(-(x-m)^2/2s^2) + c`` to projection ``p``; x in full-image pixels. NaNs on failure."""
    nan4 = (_NAN, _NAN, _NAN, _NAN)
    if p.size < 5 or not (math.isfinite(centroid) and math.isfinite(rms) and rms > 0):
        return nan4
    from scipy.optimize import curve_fit  # deferred: only needed when fitting

    x = np.arange(p.size, dtype=np.float64) + offset
    lo, hi = float(p.min()), float(p.max())
    p0 = (hi - lo, centroid, rms, lo)
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


def project(region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(column sums, row sums) of a 2-D region as float64, in one pass (exact for integer data)."""
    if region.dtype.kind == "b":
        region = region.view(np.uint8)
    if region.dtype.kind in "iu" and region.dtype.itemsize <= 4:
        px = np.zeros(region.shape[1], np.int64)
        py = np.zeros(region.shape[0], np.int64)
        _project_int(region, px, py)
        return px.astype(np.float64), py.astype(np.float64)
    px = np.zeros(region.shape[1], np.float64)
    py = np.zeros(region.shape[0], np.float64)
    _project_float(region, px, py)
    return px, py


def projection_stats(p: np.ndarray, offset: int) -> tuple[float, float, float]:
    """Centroid (full-image pixels), RMS width and FWHM of one projection."""
    if p.size == 0:
        return _NAN, _NAN, _NAN
    c, rms, fwhm = _axis_stats(np.ascontiguousarray(p, dtype=np.float64))
    return c + offset, rms, fwhm


# ---- the analysis ----------------------------------------------------------------------


class Profile(Analysis):
    """Projections of a ROI onto x and y with centroid, RMS, FWHM and optional Gaussian fits."""

    name = "profile"
    version = "1"
    parameters = [
        Parameter("roi_profile", "roi", [], label="Profile ROI",
                  description="[offset_x, size_x, offset_y, size_y]; [] = full frame"),
        Parameter("profile_fit", bool, False, label="Profile Gaussian fit",
                  description="fit a Gaussian + offset to each projection (costs ~1 ms per frame)"),
        MASK,
        DARK,
    ]
    results = [
        Result("profile_x", np.float64, kind="spectrum", unit="counts", label="Projection on x",
               description="column sums of the ROI", archive=False),
        Result("profile_y", np.float64, kind="spectrum", unit="counts", label="Projection on y",
               description="row sums of the ROI", archive=False),
        *[Result(f"profile_{what}_{ax}", float, unit="px", label=f"Profile {what} {ax}")
          for what in ("centroid", "rms", "fwhm") for ax in _AXES],
        *[Result(f"profile_fit_{what}_{ax}", float, unit="counts" if what in ("amplitude", "offset") else "px",
                 label=f"Profile fit {what} {ax}") for what in _FIT for ax in _AXES],
        Result("profile_run_x", np.float64, kind="spectrum", unit="counts", label="Run-mean projection on x",
               description="run summary", archive=False, run_summary=True),
        Result("profile_run_y", np.float64, kind="spectrum", unit="counts", label="Run-mean projection on y",
               description="run summary", archive=False, run_summary=True),
        *[Result(f"profile_run_{what}_{ax}", float, unit="px", label=f"Run profile {what} {ax}",
                 description="run summary", run_summary=True) for what in ("centroid", "rms", "fwhm") for ax in _AXES],
        Result("profile_run_frames", int, label="Profile frames in run", description="run summary", run_summary=True),
    ]

    def _input(self, frame: Frame, params: Params) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """The region to analyse (dark-subtracted, masked pixels 0) and its
        (offset_x, size_x, offset_y, size_y) in the frame."""
        image = as_2d(frame.data)
        roi = params.roi_profile
        if roi is None:
            return corrected(image, params, masked_value=0), (0, image.shape[1], 0, image.shape[0])
        roi.check_fits(image.shape, "roi_profile")  # RoiError names the rule
        return corrected(image, params, roi.slices(), masked_value=0), \
            (roi.offset_x, roi.size_x, roi.offset_y, roi.size_y)

    def process(self, frame: Frame, params: Params) -> dict[str, Any]:
        region, key = self._input(frame, params)
        ox, sx, oy, sy = key
        px, py = project(region)
        out: dict[str, Any] = {"profile_x": px, "profile_y": py}
        for ax, p, off in (("x", px, ox), ("y", py, oy)):
            c, rms, fwhm = projection_stats(p, off)
            out[f"profile_centroid_{ax}"] = c
            out[f"profile_rms_{ax}"] = rms
            out[f"profile_fwhm_{ax}"] = fwhm
            fit = gaussian_fit(p, off, c, rms) if params.profile_fit else (_NAN,) * 4
            for what, v in zip(_FIT, fit):
                out[f"profile_fit_{what}_{ax}"] = v
        # Not a result: tells accumulate() which region these projections belong to.
        out["_profile_region"] = key
        return out

    # Accumulator: {"sums": {region: [frames, sum_x, sum_y]}, "last": region or None}

    def new_accumulator(self) -> dict[str, Any]:
        return {"sums": {}, "last": None}

    def accumulate(self, acc: dict[str, Any], frame_results: dict[str, Any]) -> dict[str, Any]:
        key = frame_results["_profile_region"]
        entry = acc["sums"].get(key)
        if entry is None:  # copies: the frame's results are published and must stay untouched
            acc["sums"][key] = [1, frame_results["profile_x"].copy(), frame_results["profile_y"].copy()]
        else:
            entry[0] += 1
            entry[1] += frame_results["profile_x"]
            entry[2] += frame_results["profile_y"]
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
                                   "profile_run_frames": 0}
            for what in ("centroid", "rms", "fwhm"):
                for ax in _AXES:
                    out[f"profile_run_{what}_{ax}"] = _NAN
            return out
        n, sx, sy = acc["sums"][key]
        mx, my = sx / n, sy / n
        out = {"profile_run_x": mx, "profile_run_y": my, "profile_run_frames": int(n)}
        for ax, p, off in (("x", mx, key[0]), ("y", my, key[2])):
            c, rms, fwhm = projection_stats(p, off)
            out[f"profile_run_centroid_{ax}"] = c
            out[f"profile_run_rms_{ax}"] = rms
            out[f"profile_run_fwhm_{ax}"] = fwhm
        return out


__all__ = ["Profile", "gaussian_fit", "project", "projection_stats"]
