"""Gain from a photomultiplier/SiPM-like charge spectrum, accumulated over the run.

Each frame is one trigger (gate) of the photodetector: a digitised waveform (1-D frame)
or an image of one channel. It contributes ONE charge value, the integral of the signal
in the integration window ``roi_gain`` minus the baseline:
``charge = sum(ROI) - gain_pedestal * ROI size``. Over many triggers with a weak light
source these charges form the classic finger spectrum: a pedestal (0 photoelectrons)
and peaks at 1, 2, ... photoelectrons spaced by the gain. (Histogramming single pixel
values above a threshold instead would lose the pedestal and the Poisson statistics
that fix the peak amplitudes, so it is not done.)

| parameter        | type  | default | meaning                                                        |
|------------------|-------|---------|----------------------------------------------------------------|
| roi_gain         | roi   | []      | integration window [offset_x, size_x, offset_y, size_y]; [] = all |
| gain_pedestal    | float | 0       | baseline per pixel/sample subtracted from the window sum, counts |
| gain_bin_width   | float | 1       | charge histogram bin width, counts (finish may merge bins)      |
| gain_min_entries | int   | 1000    | fewer charges: no fit, status INSUFFICIENT                      |

| result                 | when   | kind     | type    | meaning                                          |
|------------------------|--------|----------|---------|--------------------------------------------------|
| gain_charge            | frame  | scalar   | float   | this frame's charge                              |
| gain                   | finish | scalar   | float   | fitted gain G (1 p.e. peak - pedestal), counts; NaN unless OK |
| gain_error             | finish | scalar   | float   | 1-sigma uncertainty of G from the fit covariance |
| gain_entries           | finish | scalar   | int     | charges in the spectrum                          |
| gain_status            | finish | scalar   | str     | OK, INSUFFICIENT (< gain_min_entries) or FIT_FAILED |
| gain_mu                | finish | scalar   | float   | fitted mean number of photoelectrons per trigger |
| gain_pedestal_position | finish | scalar   | float   | fitted pedestal (0 p.e.) position q0, counts     |
| gain_pedestal_sigma    | finish | scalar   | float   | fitted pedestal width s0, counts                 |
| gain_sigma_1pe         | finish | scalar   | float   | fitted intrinsic 1 p.e. width s1, counts         |
| gain_chi2_ndf          | finish | scalar   | float   | chi2 / degrees of freedom of the fit             |
| gain_spectrum          | finish | spectrum | int64   | the charge histogram the fit used                |
| gain_spectrum_x        | finish | spectrum | float64 | bin centres of gain_spectrum, counts             |

Fit model (``scipy.optimize.curve_fit``, binned: expected counts are Gaussian
integrals over each bin, normalised to all N entries)::

    N * sum_{k=0,1,2} Poisson(k; mu) * Gauss(q; q0 + k G, sqrt(s0^2 + k s1^2))

i.e. pedestal at q0 with width s0, 1 p.e. at q0 + G with width sqrt(s0^2 + s1^2) and
2 p.e. at q0 + 2G with width sqrt(s0^2 + 2 s1^2) (sqrt(2) s1 when the pedestal noise
is negligible), weighted by Poisson probabilities. The fit window runs from
q0 - 5 s0 to q0 + min(2G + sigma_2, 2.5G), keeping the (not modelled) 3 p.e. peak out
of it. Start values come from the spectrum: q0 and s0 from the leftmost peak and its
left half-width, mu from the pedestal fraction (P0 = exp(-mu)), G from the mean charge
(mean = q0 + mu G), s1 from the variance. The fit runs three times: after the first, the window follows the
fitted peaks and the errors are Poisson errors of the previous fit's model (less biased
than sqrt(counts)). ``gain_error`` is sqrt of the G diagonal element of the covariance.
Whenever the status is not OK, ``gain`` and ``gain_error`` are NaN, never 0. OK means
the fit converged with a finite error and found a real 1 p.e. peak: G > 3 gain_error,
G > s0 (clear of the pedestal) and at least 10 expected 1 p.e. triggers; otherwise
FIT_FAILED. How well the model describes the spectrum is ``gain_chi2_ndf`` (default
Tango warning above 3, alarm above 10).

Accumulator: a sparse histogram ``{round(charge / width): count}`` (integer counts,
so merging by addition is exact and associative), kept per bin width; finish uses the
width of the most recent frame. In finish bins are merged by an integer factor chosen
from the Freedman-Diaconis rule (half of it), so the fixed parameter only sets the
finest resolution. NaN or infinite charges, and charges of 2**52 bin widths or more, are
not counted (bin indices stay exact and finish cannot overflow). Parameter bounds:
``gain_pedestal`` within +-1e12, ``gain_bin_width`` 1e-12 .. 1e12, ``gain_min_entries``
10 .. 1e12.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from tango_dqm import Analysis, Frame, FrameOutput, Parameter, Params, Result, as_2d, region_stats

_NAN = float("nan")
OK, INSUFFICIENT, FIT_FAILED = "OK", "INSUFFICIENT", "FIT_FAILED"
MAX_BIN = 2.0**52  # |charge| / gain_bin_width at or above this is not counted


# ---- spectrum and fit (finish only) ----------------------------------------------------


def dense_spectrum(sparse: dict[int, int], width: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(bin edges, counts, total entries) of a sparse ``{bin index: count}`` histogram.

    Bin k of the sparse histogram is ``[(k - 1/2) width, (k + 1/2) width)``.

    Bins are merged by an integer factor (half the Freedman-Diaconis width) and the
    far tails (outside the 0.05 % .. 99.95 % quantiles plus 10 % of that span) are left
    out of the dense array; they still count in the total.
    """
    keys = np.fromiter(sparse.keys(), np.int64, len(sparse))
    vals = np.fromiter(sparse.values(), np.int64, len(sparse))
    order = np.argsort(keys)
    keys, vals = keys[order], vals[order]
    total = int(vals.sum())
    cum = np.cumsum(vals)

    def quantile_key(q: float) -> int:
        return int(keys[min(int(np.searchsorted(cum, q * total, side="left")), keys.size - 1)])

    lo_k, hi_k = quantile_key(0.0005), quantile_key(0.9995)
    pad = max(1, (hi_k - lo_k) // 10)
    lo_k, hi_k = lo_k - pad, hi_k + pad
    iqr = (quantile_key(0.75) - quantile_key(0.25)) * width
    factor = max(1, int(iqr * total ** (-1.0 / 3.0) / width)) if iqr > 0 else 1  # FD / 2
    factor = max(factor, -(-(hi_k - lo_k + 1) // 100_000))  # at most ~1e5 bins
    first = lo_k // factor
    nbins = hi_k // factor - first + 1
    coarse = keys // factor - first
    sel = (coarse >= 0) & (coarse < nbins)  # whole coarse bins only
    counts = np.bincount(coarse[sel], weights=vals[sel], minlength=nbins).astype(np.int64)
    edges = ((np.arange(nbins + 1, dtype=np.float64) + first) * factor - 0.5) * width
    return edges, counts, total


def _ndtr(x):
    from scipy.special import ndtr

    return ndtr(x)


def spectrum_model(edges: np.ndarray, n_total: float, mu, q0, s0, gain, s1) -> np.ndarray:
    """Expected counts per bin of the pedestal + 1 p.e. + 2 p.e. model."""
    out = np.zeros(edges.size - 1)
    weight = math.exp(-mu)
    for k in range(3):
        if k:
            weight *= mu / k
        sigma = math.sqrt(s0 * s0 + k * s1 * s1)
        cdf = _ndtr((edges - (q0 + k * gain)) / sigma)
        out += weight * np.diff(cdf)
    return n_total * out


def start_values(edges: np.ndarray, counts: np.ndarray, total: int) -> tuple[float, ...] | None:
    """(mu, q0, s0, G, s1) from the spectrum shape and moments, or None if there is no peak."""
    centres = 0.5 * (edges[:-1] + edges[1:])
    w = edges[1] - edges[0]
    if counts.sum() == 0:
        return None
    smooth = np.convolve(counts, np.ones(3) / 3.0, mode="same")
    i = int(np.argmax(smooth >= 0.1 * smooth.max()))  # leftmost significant bin
    while i + 1 < smooth.size and smooth[i + 1] >= smooth[i]:  # climb to the pedestal peak
        i += 1
    q0, h = centres[i], smooth[i]
    j = i
    while j > 0 and smooth[j] > h / 2:
        j -= 1
    if smooth[j] <= h / 2 and smooth[j + 1] > smooth[j]:
        x_half = centres[j] + (h / 2 - smooth[j]) / (smooth[j + 1] - smooth[j]) * w
    else:
        x_half = centres[j]
    s0 = max((q0 - x_half) / math.sqrt(2 * math.log(2)), 0.5 * w)
    n0 = 2.0 * counts[:i].sum() + counts[i]  # the pedestal's left half is free of photoelectrons
    p0 = min(max(n0 / total, 1e-3), 0.999)
    mu = -math.log(p0)
    n = counts.sum()
    mean = float((counts * centres).sum() / n)
    var = float((counts * (centres - mean) ** 2).sum() / n)
    gain = (mean - q0) / mu
    if not (math.isfinite(gain) and gain > 0):
        return None
    s1_sq = (var - s0 * s0) / mu - gain * gain
    s1 = min(max(math.sqrt(s1_sq) if s1_sq > 0 else 0.0, 0.1 * gain), gain)
    return mu, q0, s0, gain, s1


def _fit_window(centres: np.ndarray, q0: float, s0: float, gain: float, s1: float) -> tuple[int, int]:
    """Bin range [i0, i1) of the fit: pedestal - 5 s0 .. just above the 2 p.e. peak."""
    sigma2 = math.sqrt(s0 * s0 + 2 * s1 * s1)
    upper = q0 + min(2 * gain + sigma2, 2.5 * gain)  # keeps 3 p.e. (not modelled) out
    idx = np.flatnonzero((centres >= q0 - 5 * s0) & (centres <= upper))
    return (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)


def fit_spectrum(edges: np.ndarray, counts: np.ndarray, total: int) -> dict[str, float] | None:
    """Fit the model; None if the fit fails. Keys: mu, q0, s0, gain, s1, gain_error, chi2_ndf.

    Three passes: the first from the start values with errors sqrt(counts); then the
    window is moved to the fitted peaks and the errors taken from the fitted model.
    """
    from scipy.optimize import curve_fit

    start = start_values(edges, counts, total)
    if start is None:
        return None
    p = np.asarray(start, dtype=np.float64)
    centres = 0.5 * (edges[:-1] + edges[1:])
    span = edges[-1] - edges[0]
    tiny = 1e-6 * span
    previous_model: tuple[np.ndarray, np.ndarray] | None = None  # (edges, expected counts)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                i0, i1 = _fit_window(centres, *p[1:])
                if i1 - i0 < 10:
                    return None
                e = edges[i0: i1 + 1]
                y = counts[i0:i1].astype(np.float64)

                def model(_x, mu_, q0_, s0_, g_, s1_, e=e):
                    return spectrum_model(e, total, mu_, q0_, s0_, g_, s1_)

                x = np.arange(y.size, dtype=np.float64)
                if previous_model is None:
                    sigma = np.sqrt(np.maximum(y, 1.0))
                else:  # Poisson errors from the previous pass's model (less biased than sqrt(y))
                    sigma = np.sqrt(np.maximum(spectrum_model(e, total, *p), 1.0))
                lower = [1e-6, e[0] - span, tiny, tiny, 0.0]
                upper = [50.0, e[-1], span, 2 * span, 2 * span]
                p0 = np.clip(p, np.add(lower, tiny), np.subtract(upper, tiny))
                p, cov = curve_fit(model, x, y, p0=p0, sigma=sigma, absolute_sigma=True,
                                   bounds=(lower, upper), max_nfev=2000)
                previous_model = (e, model(x, *p))
    except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
        return None
    mu, q0, s0, gain, s1 = (float(v) for v in p)
    err = float(math.sqrt(cov[3, 3])) if cov[3, 3] >= 0 else _NAN
    if not (all(math.isfinite(v) for v in p) and math.isfinite(err) and err > 0):
        return None
    # A converged fit is a gain measurement only if the 1 p.e. peak is really there:
    # significant, clear of the pedestal, and made of more than a handful of triggers.
    if gain < 3 * err or gain < s0 or total * mu * math.exp(-mu) < 10:
        return None
    if previous_model is None:  # no fit pass ran
        return None
    resid = (y - previous_model[1]) / sigma
    ndf = max(y.size - 5, 1)
    return {"mu": mu, "q0": q0, "s0": s0, "gain": gain, "s1": s1, "gain_error": err,
            "chi2_ndf": float(resid @ resid / ndf)}


# ---- the analysis ------------------------------------------------------------------------


class Gain(Analysis):
    """Per-trigger charge; run charge spectrum fitted for the photodetector gain."""

    name = "gain"
    version = "1"
    parameters = [
        Parameter("roi_gain", "roi", [], label="Gain integration window", unit="pixels", format="%d",
                  description="[offset_x, size_x, offset_y, size_y]; [] = full frame"),
        Parameter("gain_pedestal", float, 0.0, unit="counts", label="Gain baseline", format="%.6g",
                  description="baseline per pixel/sample, subtracted from the window sum", min=-1e12, max=1e12),
        Parameter("gain_bin_width", float, 1.0, unit="counts", label="Charge bin width", format="%.6g",
                  description="finest charge histogram bin; finish merges bins as statistics allow",
                  min=1e-12, max=1e12),
        Parameter("gain_min_entries", int, 1000, label="Gain minimum entries", unit="entries", format="%d",
                  description="fewer charges: no fit (INSUFFICIENT)", min=10, max=10**12),
    ]
    results = [
        Result("gain_charge", float, unit="counts", label="Charge", format="%.6g",
               description="window sum minus gain_pedestal per pixel/sample, this frame"),
        Result("gain", float, unit="counts", label="Gain", format="%.6g",
               description="run summary: charge per photoelectron; NaN unless gain_status is OK", run_summary=True),
        Result("gain_error", float, unit="counts", label="Gain error", format="%.3g",
               description="run summary: fit uncertainty of gain", run_summary=True),
        Result("gain_entries", int, label="Gain entries", unit="entries", format="%d",
               description="run summary: charges in the spectrum", run_summary=True),
        Result("gain_status", str, label="Gain status", description="OK, INSUFFICIENT or FIT_FAILED",
               run_summary=True),
        Result("gain_mu", float, unit="p.e.", label="Mean photoelectrons", format="%.4g",
               description="run summary: mean photoelectrons per trigger (Poisson mean)", run_summary=True),
        Result("gain_pedestal_position", float, unit="counts", label="Pedestal position", format="%.6g",
               description="run summary: fitted charge of zero photoelectrons", run_summary=True),
        Result("gain_pedestal_sigma", float, unit="counts", label="Pedestal width", format="%.4g",
               description="run summary: fitted width of the pedestal peak", run_summary=True),
        Result("gain_sigma_1pe", float, unit="counts", label="1 p.e. width", format="%.4g",
               description="run summary: fitted width of the one-photoelectron peak", run_summary=True),
        Result("gain_chi2_ndf", float, label="Gain fit chi2/ndf", format="%.3f", dimensionless=True,
               description="run summary: goodness of the spectrum fit",
               warning=(None, 3.0), alarm=(None, 10.0), run_summary=True),
        Result("gain_spectrum", np.int64, kind="spectrum", label="Charge spectrum", unit="entries", format="%d",
               description="run summary: charges per bin", archive=False, run_summary=True, axis="gain_spectrum_x"),
        Result("gain_spectrum_x", np.float64, kind="spectrum", unit="counts", label="Charge bin centres",
               format="%.6g", description="run summary: x axis of gain_spectrum", archive=False, run_summary=True),
    ]

    def _input(self, frame: Frame, params: Params) -> np.ndarray:
        """The integration window: the one place where a dark frame would be subtracted
        and a mask applied (masked pixels excluded from the sum) once those parameters exist."""
        roi = params.roi_gain
        if roi is None:
            return frame.data
        image = as_2d(frame.data)
        roi.check_fits(image.shape, "roi_gain")  # RoiError names the rule
        return image[roi.slices()]

    def process(self, frame: Frame, params: Params, context: Any = None) -> FrameOutput:
        stats = region_stats(self._input(frame, params))
        return FrameOutput({"gain_charge": stats.sum - params.gain_pedestal * stats.count})

    # Accumulator: {"hists": {bin_width: {bin index: count}}, "last": (width, min_entries) or None}

    def new_accumulator(self) -> dict[str, Any]:
        return {"hists": {}, "last": None}

    def accumulate(self, acc: dict[str, Any], output: FrameOutput, params: Params) -> dict[str, Any]:
        # the settings finish() needs come from the frame's own parameters
        width, min_entries = params.gain_bin_width, params.gain_min_entries
        acc["last"] = (width, min_entries)
        hist = acc["hists"].setdefault(width, {})
        position = output.results["gain_charge"] / width
        # NaN, inf and charges beyond MAX_BIN bin widths are not counted: bin indices stay exact
        # in float64 and their differences fit int64, so finish() cannot overflow.
        if abs(position) < MAX_BIN:
            k = math.floor(position + 0.5)  # bins centred on multiples of width
            hist[k] = hist.get(k, 0) + 1
        return acc

    def merge(self, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        hists = {w: dict(h) for w, h in a["hists"].items()}
        for w, h in b["hists"].items():
            into = hists.setdefault(w, {})
            for k, c in h.items():
                into[k] = into.get(k, 0) + c
        return {"hists": hists, "last": b["last"] if b["last"] is not None else a["last"]}

    def finish(self, acc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"gain": _NAN, "gain_error": _NAN, "gain_entries": 0, "gain_status": INSUFFICIENT,
                               "gain_mu": _NAN, "gain_pedestal_position": _NAN, "gain_pedestal_sigma": _NAN,
                               "gain_sigma_1pe": _NAN, "gain_chi2_ndf": _NAN,
                               "gain_spectrum": np.zeros(0, np.int64), "gain_spectrum_x": np.zeros(0)}
        if acc["last"] is None:
            return out
        width, min_entries = acc["last"]
        sparse = acc["hists"].get(width, {})
        if not sparse:
            return out
        try:
            edges, counts, total = dense_spectrum(sparse, width)
        except (OverflowError, ValueError, FloatingPointError):  # e.g. an accumulator merged from elsewhere
            out["gain_status"] = FIT_FAILED
            return out
        out.update({"gain_entries": total, "gain_spectrum": counts,
                    "gain_spectrum_x": 0.5 * (edges[:-1] + edges[1:])})
        if total < min_entries:
            return out
        try:
            fit = fit_spectrum(edges, counts, total)
        except (OverflowError, ValueError, FloatingPointError, ZeroDivisionError):
            fit = None
        if fit is None:
            out["gain_status"] = FIT_FAILED
            return out
        out.update({"gain": fit["gain"], "gain_error": fit["gain_error"], "gain_status": OK,
                    "gain_mu": fit["mu"], "gain_pedestal_position": fit["q0"],
                    "gain_pedestal_sigma": fit["s0"], "gain_sigma_1pe": fit["s1"],
                    "gain_chi2_ndf": fit["chi2_ndf"]})
        return out


__all__ = ["FIT_FAILED", "Gain", "INSUFFICIENT", "OK", "dense_spectrum", "fit_spectrum", "spectrum_model",
           "start_values"]
