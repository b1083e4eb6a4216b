"""Two-sample tests of histograms (chi-square and Kolmogorov-Smirnov) used by reference checks."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special, stats


# ---- reference comparison -------------------------------------------------------------------


def chi2_two_histograms(h1: Any, h2: Any) -> tuple[float, int, float]:
    """Two-sample chi-square test of two histograms of unweighted counts with any totals.

    ``chi2 = sum_i (N2*n1_i - N1*n2_i)**2 / (N1*N2*(n1_i + n2_i))`` over bins not empty in
    both, ``ndf = (non-empty bins) - 1`` (the Pearson statistic of the 2 x k table; ROOT's
    ``Chi2Test("UU")``). Returns ``(chi2, ndf, p)``, ``p = chi2.sf(chi2, ndf)``.
    """
    a = np.asarray(h1, dtype=np.float64).ravel()
    b = np.asarray(h2, dtype=np.float64).ravel()
    n1, n2 = a.sum(), b.sum()
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both histograms need entries")
    used = (a + b) > 0
    a, b = a[used], b[used]
    ndf = int(used.sum()) - 1
    stat = float(np.sum((n2 * a - n1 * b) ** 2 / (a + b)) / (n1 * n2))
    p = float(stats.chi2.sf(stat, ndf)) if ndf > 0 else 1.0
    return stat, ndf, p


_KS_EXACT_MAX_N = 10_000  # kstwo.sf takes up to ~25 ms here, and far longer for larger n


def ks_two_histograms(h1: Any, h2: Any) -> tuple[float, float, float]:
    """Kolmogorov-Smirnov test of two binned 1-D distributions (same binning).

    ``D = max |C1 - C2|`` of the cumulative counts normalised to 1 (the unbinned
    two-sample D evaluated at the bin edges, so never larger: binning makes the test
    conservative), effective ``n = N1*N2/(N1+N2)``; ``p = kstwo.sf(D, round(n))`` as
    ``scipy.stats.ks_2samp(method="asymp")`` does, or Kolmogorov's limit
    ``kolmogorov(sqrt(n)*D)`` above n = 10000. Returns ``(D, n_eff, p)``.
    """
    a = np.asarray(h1, dtype=np.float64).ravel()
    b = np.asarray(h2, dtype=np.float64).ravel()
    n1, n2 = a.sum(), b.sum()
    if n1 <= 0 or n2 <= 0:
        raise ValueError("both histograms need entries")
    d = float(np.max(np.abs(np.cumsum(a) / n1 - np.cumsum(b) / n2)))
    en = n1 * n2 / (n1 + n2)
    n = max(1, int(round(en)))
    if n <= _KS_EXACT_MAX_N:
        p = float(stats.kstwo.sf(d, n))
    else:
        p = float(special.kolmogorov(math.sqrt(en) * d))
    return d, float(en), min(1.0, max(0.0, p))
