"""Data-quality checks and verdicts (core: numpy and scipy, never ``tango``).

Designed after CMS DQM quality tests and ATLAS ``dqm_algorithms``: a list of small,
declarative checks, each judging one result and giving a :class:`CheckResult`
(name, verdict, value, limits, message, frames); a :class:`QualityMonitor` holds the
checks of one device, is fed every frame, and combines them, the worst verdict winning.

Verdicts, in order of severity (``Verdict`` is an ``IntEnum``; the per-frame flag is
its integer value)::

    OK (0) < INSUFFICIENT (1) < WARNING (2) < ERROR (3) < STALE (4)

- ``OK``: every check has enough statistics and passes.
- ``INSUFFICIENT``: a check cannot judge yet (fewer than ``min_entries`` values, no
  reference loaded, no check configured). It is above OK, so a run is never called OK
  while part of it is unjudged, and below WARNING, so a check that is still filling up
  never hides a WARNING or ERROR found by another check.
- ``WARNING`` / ``ERROR``: a check failed its warning / error limits.
- ``STALE``: no frame for ``timeout_s`` seconds while RUNNING. It is the loudest: every
  other verdict then describes old data, and "the stream stopped while we think we are
  taking data" is what an operator must act on first. The report still lists the
  other failing checks, so an ERROR is never lost behind STALE.

Mapping onto Tango (the device does it; this module never imports ``tango``):

- A :class:`RangeCheck`'s ``warning`` and ``error`` ranges are exactly Tango's
  ``min_warning``/``max_warning`` and ``min_alarm``/``max_alarm`` attribute properties
  (error <-> alarm), with Tango's semantics: a value is outside when it is at or below
  the minimum or at or above the maximum; either side may be open (``None``).
  :meth:`RangeCheck.tango_properties` gives the property strings, and
  :meth:`RangeCheck.from_result` builds a check from a plugin ``Result``'s default
  ``warning``/``alarm`` ranges, so the attribute quality Tango computes per frame and the
  per-frame flag computed here always agree.
- :attr:`Verdict.tango_quality` names the ``AttrQuality`` for the ``verdict`` attribute
  (OK, INSUFFICIENT -> ATTR_VALID; WARNING -> ATTR_WARNING; ERROR, STALE -> ATTR_ALARM).
  Alternatively, publish ``int(verdict)`` in a DevShort attribute with
  :data:`VERDICT_ALARM_PROPERTIES` (max_warning 1, max_alarm 2): Tango then computes the
  quality itself and drives the device to ALARM through a standard attribute alarm.

Determinism: per-frame flags and range, reference and channel verdicts depend only on
frame ids and data. Staleness alone depends on the clock (it is about the live stream,
not the data); it is evaluated at read time with an explicit ``now`` and is never
written into per-frame flags.

Checks are configured from plain dicts or JSON (a Tango string-array property with one
JSON object per line works as is), see :func:`checks_from_config`.
"""
from __future__ import annotations

import bisect
import enum
import itertools
import json
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy import special, stats


class Verdict(enum.IntEnum):
    """Quality verdicts ordered by severity: the worst one wins."""

    OK = 0
    INSUFFICIENT = 1
    WARNING = 2
    ERROR = 3
    STALE = 4

    @property
    def tango_quality(self) -> str:
        """Name of the ``tango.AttrQuality`` member matching this verdict."""
        return _TANGO_QUALITY[self]


_TANGO_QUALITY = {
    Verdict.OK: "ATTR_VALID",
    Verdict.INSUFFICIENT: "ATTR_VALID",
    Verdict.WARNING: "ATTR_WARNING",
    Verdict.ERROR: "ATTR_ALARM",
    Verdict.STALE: "ATTR_ALARM",
}

#: Tango attribute properties for an integer ``verdict`` attribute holding ``int(Verdict)``:
#: WARNING (2) is above max_warning, ERROR (3) and STALE (4) above max_alarm.
VERDICT_ALARM_PROPERTIES = {"max_warning": "1", "max_alarm": "2"}


def worst(verdicts: Iterable[Verdict], default: Verdict = Verdict.OK) -> Verdict:
    """The most severe verdict ("worst case wins"); ``default`` if there is none."""
    return max(verdicts, default=default)


Range = tuple[float | None, float | None]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check. ``frames`` lists the first frame ids at the verdict's
    level (range checks), ``channels`` the bad channel indices (channel checks)."""

    name: str
    verdict: Verdict
    value: Any = None
    limits: Mapping[str, Any] = field(default_factory=dict)
    message: str = ""
    frames: tuple[int, ...] = ()
    entries: int = 0
    channels: tuple = ()
    check_type: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One human-readable line: ``ERROR name: message``."""
        return f"{self.verdict.name} {self.name}: {self.message}"


# ---- validation helpers (messages name the check and the field) ------------------------

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _bad(where: str, field_name: str, why: str) -> ValueError:
    return ValueError(f"{where}: field {field_name!r}: {why}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _number(where: str, field_name: str, v: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if not _is_number(v) or not math.isfinite(float(v)):
        raise _bad(where, field_name, f"must be a finite number{' or null' if optional else ''}, got {v!r}")
    x = float(v)
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise _bad(where, field_name, f"must be {'>' if lo_open else '>='} {lo:g}, got {x:g}")
    if hi is not None and (x >= hi if hi_open else x > hi):
        raise _bad(where, field_name, f"must be {'<' if hi_open else '<='} {hi:g}, got {x:g}")
    return x


def _integer(where: str, field_name: str, v: Any, *, lo: int = 0) -> int:
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        v = int(v)
    if not isinstance(v, (int, np.integer)) or isinstance(v, (bool, np.bool_)):
        raise _bad(where, field_name, f"must be an integer, got {v!r}")
    if v < lo:
        raise _bad(where, field_name, f"must be >= {lo}, got {v}")
    return int(v)


def _range(where: str, field_name: str, v: Any) -> Range | None:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not isinstance(v, (Sequence, np.ndarray)) or len(v) != 2:
        raise _bad(where, field_name, f"must be [min, max] (null for an open side), got {v!r}")
    lo = _number(where, field_name, v[0], optional=True)
    hi = _number(where, field_name, v[1], optional=True)
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None and not lo < hi:
        raise _bad(where, field_name, f"min must be < max (as Tango requires), got [{lo:g}, {hi:g}]")
    return (lo, hi)


def _text(where: str, field_name: str, v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _bad(where, field_name, f"must be a non-empty string, got {v!r}")
    return v.strip()


def _check_name(where: str, v: str) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise _bad(where, "name", f"must be an identifier (letters, digits, _; at most 64), got {v!r}")
    return v


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}"
    return str(x)


def _fmt_range(r: Range | None) -> str:
    if r is None:
        return "[-inf, inf]"
    lo, hi = r
    return f"[{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]"


def _outside(x: float, r: Range | None) -> bool:
    if r is None:
        return False
    lo, hi = r
    # Tango's rule (Attribute::check_alarm): a value equal to a limit is already outside.
    return (lo is not None and x <= lo) or (hi is not None and x >= hi)


def range_verdict(value: Any, warning: Range | None, error: Range | None) -> Verdict | None:
    """OK / WARNING / ERROR for one value against two ranges (None when there is no value)."""
    x = _as_scalar(value)
    if x is None:
        return None
    if _outside(x, error):
        return Verdict.ERROR
    return Verdict.WARNING if _outside(x, warning) else Verdict.OK


def _as_scalar(value: Any) -> float | None:
    """A finite-or-infinite float, or ``None`` when there is no value (None, NaN, not a number)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "biuf":
            return None
        value = value.reshape(()).item()
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# ---- range check ---------------------------------------------------------------------------


@dataclass(eq=False)
class RangeCheck:
    """A per-frame scalar result against a warning and an error range.

    Per frame: outside ``error`` -> ERROR, else outside ``warning`` -> WARNING, else OK;
    no value (missing, None, NaN) -> not evaluated. A value equal to a limit is outside,
    as Tango rules for min/max_warning and min/max_alarm; open sides are ``None``.

    Run level: fewer than ``min_entries`` evaluated frames -> INSUFFICIENT; otherwise
    ERROR if more than ``tolerance`` (a fraction) of the evaluated frames were ERROR,
    WARNING if more than ``tolerance`` were WARNING or worse, else OK. With the default
    ``tolerance=0`` one bad frame makes the run bad; the first frame ids are kept.
    """

    result: str
    warning: Range | None = None
    error: Range | None = None
    min_entries: int = 1
    tolerance: float = 0.0
    name: str = ""
    max_frames_listed: int = 10
    check_type: ClassVar[str] = "range"

    def __post_init__(self) -> None:
        where = f"range check {self.name or self.result!r}"
        self.result = _text(where, "result", self.result)
        self.name = _check_name(where, self.name or f"{self.result}_range")
        where = f"range check {self.name!r}"
        self.warning = _range(where, "warning", self.warning)
        self.error = _range(where, "error", self.error)
        if self.warning is None and self.error is None:
            raise _bad(where, "warning", "set a warning or an error range (or both)")
        if self.warning is not None and self.error is not None:
            (wlo, whi), (elo, ehi) = self.warning, self.error
            # A warning limit beyond the error limit on the same side could never warn: swapped ranges.
            if (elo is not None and wlo is not None and wlo < elo) or (ehi is not None and whi is not None
                                                                        and whi > ehi):
                raise _bad(where, "warning", f"the warning range {_fmt_range(self.warning)} must lie within the "
                                             f"error range {_fmt_range(self.error)}")
        self.min_entries = _integer(where, "min_entries", self.min_entries)
        self.tolerance = _number(where, "tolerance", self.tolerance, lo=0.0, hi=1.0, hi_open=True)
        self.max_frames_listed = _integer(where, "max_frames_listed", self.max_frames_listed)
        self.reset()

    @classmethod
    def from_result(cls, result: Any, **kwargs: Any) -> "RangeCheck | None":
        """A check from a plugin ``Result``'s default ``warning``/``alarm`` ranges (None if it has none)."""
        if getattr(result, "kind", "scalar") != "scalar" or (result.warning is None and result.alarm is None):
            return None
        return cls(result.name, warning=result.warning, error=result.alarm, **kwargs)

    def tango_properties(self) -> dict[str, str]:
        """Tango attribute properties for these limits (error <-> alarm); open sides are left out."""
        out: dict[str, str] = {}
        for prefix, r in (("warning", self.warning), ("alarm", self.error)):
            if r is not None:
                if r[0] is not None:
                    out[f"min_{prefix}"] = repr(r[0])
                if r[1] is not None:
                    out[f"max_{prefix}"] = repr(r[1])
        return out

    def to_config(self) -> dict[str, Any]:
        return {"type": "range", "name": self.name, "result": self.result,
                "warning": list(self.warning) if self.warning else None,
                "error": list(self.error) if self.error else None,
                "min_entries": self.min_entries, "tolerance": self.tolerance}

    def reset(self) -> None:
        self._entries = 0
        self._counts = [0, 0, 0, 0, 0]
        self._first_bad: list[int] = []  # WARNING or worse
        self._first_warning: list[int] = []  # exactly WARNING
        self._first_error: list[int] = []
        self._last: float | None = None
        self._last_frame: int | None = None
        self._last_verdict: Verdict | None = None
        self._min = math.inf
        self._max = -math.inf

    def judge(self, value: Any) -> Verdict | None:
        """The verdict for one value, or ``None`` when there is no value. Pure."""
        x = _as_scalar(value)
        return None if x is None else self._judge(x)

    def _judge(self, x: float) -> Verdict:
        return range_verdict(x, self.warning, self.error)  # type: ignore[return-value]

    def update(self, frame_id: int, value: Any) -> Verdict | None:
        """Judge one frame's value and record it in the run-level record."""
        x = _as_scalar(value)
        if x is None:
            return None
        v = self._judge(x)
        self._entries += 1
        self._counts[v] += 1
        self._last, self._last_frame, self._last_verdict = x, frame_id, v
        self._min = min(self._min, x)  # type: ignore[type-var]
        self._max = max(self._max, x)  # type: ignore[type-var]
        for lst, hit in ((self._first_bad, v >= Verdict.WARNING), (self._first_warning, v == Verdict.WARNING),
                         (self._first_error, v == Verdict.ERROR)):
            if hit and len(lst) < self.max_frames_listed:
                lst.append(int(frame_id))
        return v

    def evaluate(self) -> CheckResult:
        """The run-level result from everything recorded since the last reset."""
        n = self._entries
        n_err = self._counts[Verdict.ERROR]
        n_warn = self._counts[Verdict.WARNING] + n_err
        limits = {"warning": self.warning, "error": self.error, "min_entries": self.min_entries,
                  "tolerance": self.tolerance}
        details = {"counts": {v.name: self._counts[v] for v in (Verdict.OK, Verdict.WARNING, Verdict.ERROR)},
                   "min": self._min if n else None, "max": self._max if n else None,
                   "last_frame": self._last_frame,
                   "last_verdict": self._last_verdict.name if self._last_verdict is not None else None,
                   "bad_frames": tuple(self._first_bad), "warning_frames": tuple(self._first_warning),
                   "error_frames": tuple(self._first_error)}
        if n < max(self.min_entries, 1):
            msg = (f"no value yet (needs {max(self.min_entries, 1)})" if n == 0 else
                   f"{n} of {self.min_entries} values needed; last {_fmt(self._last)}")
            return CheckResult(self.name, Verdict.INSUFFICIENT, self._last, limits, msg, (), n,
                               check_type=self.check_type, details=details)
        if n_err / n > self.tolerance:
            verdict, frames = Verdict.ERROR, tuple(self._first_error)
        elif n_warn / n > self.tolerance:
            verdict, frames = Verdict.WARNING, tuple(self._first_bad)
        else:
            verdict, frames = Verdict.OK, ()
        parts = [f"last {_fmt(self._last)}, min {_fmt(self._min)}, max {_fmt(self._max)}"]
        if n_err:
            parts.append(f"outside error {_fmt_range(self.error)} on {n_err}/{n} frames "
                         f"(first {', '.join(map(str, self._first_error))})")
        if n_warn - n_err:
            parts.append(f"outside warning {_fmt_range(self.warning)} on {n_warn - n_err}/{n} frames "
                         f"(first {', '.join(map(str, self._first_warning))})")
        if not n_warn:
            parts.append(f"{n} frames within warning {_fmt_range(self.warning)}, error {_fmt_range(self.error)}")
        if self.tolerance and n_warn:
            parts.append(f"tolerance {self.tolerance:.3g}")
        return CheckResult(self.name, verdict, self._last, limits, "; ".join(parts), frames, n,
                           check_type=self.check_type, details=details)


# ---- staleness -----------------------------------------------------------------------------


@dataclass(eq=False)
class StalenessCheck:
    """STALE when no frame arrived for more than ``timeout_s`` seconds while RUNNING.

    Evaluated with explicit times (any one clock, e.g. ``time.monotonic``), so it is
    testable without sleeping. Before the first frame the age counts from ``since``
    (the start of the run).
    """

    timeout_s: float
    name: str = "staleness"
    #: extra seconds allowed before the first frame of a run (detector and stream start-up)
    grace_s: float = 5.0
    check_type: ClassVar[str] = "staleness"

    def __post_init__(self) -> None:
        where = f"staleness check {self.name!r}"
        self.name = _check_name(where, self.name)
        self.timeout_s = _number(f"staleness check {self.name!r}", "timeout_s", self.timeout_s, lo=0.0, lo_open=True)
        self.grace_s = _number(f"staleness check {self.name!r}", "grace_s", self.grace_s, lo=0.0)

    def to_config(self) -> dict[str, Any]:
        return {"type": "staleness", "name": self.name, "timeout_s": self.timeout_s, "grace_s": self.grace_s}

    def evaluate(self, now: float, last_frame_time: float | None, running: bool = True,
                 since: float | None = None, last_frame_id: int | None = None) -> CheckResult:
        limits = {"timeout_s": self.timeout_s}
        if not running:
            return CheckResult(self.name, Verdict.OK, None, limits, "not running", check_type=self.check_type)
        ref = last_frame_time if last_frame_time is not None else since
        if ref is None:
            return CheckResult(self.name, Verdict.INSUFFICIENT, None, limits,
                               "running, no frame yet and run start unknown", check_type=self.check_type)
        age = max(0.0, now - ref)
        what = (f"last frame {last_frame_id}" if last_frame_id is not None
                else "last frame" if last_frame_time is not None else "no frame since the start")
        # Before the first frame the stream is still starting: the grace period keeps the
        # monitor's and the detector's start-up from ever reading as STALE.
        timeout = self.timeout_s + (self.grace_s if last_frame_time is None else 0.0)
        if age > timeout:
            return CheckResult(self.name, Verdict.STALE, age, limits,
                               f"no frame for {age:.1f} s while RUNNING (timeout {timeout:g} s; {what})",
                               check_type=self.check_type)
        return CheckResult(self.name, Verdict.OK, age, limits,
                           f"{what} {age:.1f} s ago (timeout {timeout:g} s)", check_type=self.check_type)


# ---- lost frames ---------------------------------------------------------------------------

#: default lost fraction limits: any lost frame warns (the warning limit is below one frame
#: in a billion, and Tango's rule "at the limit is outside" needs a positive limit), 1 % is an error
LOSS_WARNING = 1e-9
LOSS_ERROR = 0.01


def format_id_ranges(ranges: Sequence[tuple[int, int]], max_items: int = 20) -> str:
    """``"40-45, 100, 201-204"`` for inclusive id ranges, at most ``max_items`` of them, then
    ``"... (N more ranges)"``: the text stays bounded however many frames were lost."""
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:max_items]]
    if len(ranges) > max_items:
        shown.append(f"... ({len(ranges) - max_items} more ranges)")
    return ", ".join(shown)


@dataclass(eq=False)
class LossCheck:
    """The fraction of a run's frames that were lost (dropped, never arrived) or bad (malformed).

    ``fraction = (lost + bad) / total`` with ``total`` the expected frame count when the
    source announces it, else every frame seen (completed + lost + bad). Tango's rule: at or
    above ``error`` -> ERROR, at or above ``warning`` -> WARNING, else OK; no frame at all ->
    INSUFFICIENT. The limits are the ``max_warning``/``max_alarm`` properties of the device's
    ``lostFraction`` attribute. With the default warning limit any lost frame warns, so a scan
    with lost frames never ends OK. The result names the lost frame ids (bounded ranges).
    Built into every engine; a ``{"type": "loss", ...}`` entry in QualityChecks overrides it.
    """

    warning: float = LOSS_WARNING
    error: float = LOSS_ERROR
    name: str = "lost_frames"
    max_ranges_listed: int = 20
    check_type: ClassVar[str] = "loss"

    def __post_init__(self) -> None:
        where = f"loss check {self.name!r}"
        self.name = _check_name(where, self.name)
        self.warning = _number(where, "warning", self.warning, lo=0.0, hi=1.0, lo_open=True)
        self.error = _number(where, "error", self.error, lo=0.0, hi=1.0, lo_open=True)
        if self.warning > self.error:
            raise _bad(where, "warning", f"must be <= error ({self.error:g}), got {self.warning:g}")
        self.max_ranges_listed = _integer(where, "max_ranges_listed", self.max_ranges_listed)

    def to_config(self) -> dict[str, Any]:
        return {"type": "loss", "name": self.name, "warning": self.warning, "error": self.error}

    def tango_properties(self) -> dict[str, str]:
        """Alarm properties of the ``lostFraction`` attribute for these limits."""
        return {"max_warning": repr(self.warning), "max_alarm": repr(self.error)}

    def evaluate(self, completed: int, lost: int, bad: int, total: int,
                 ranges: Sequence[tuple[int, int]] = (), known: int | None = None,
                 more_ranges: int = 0) -> CheckResult:
        """Judge the counts. ``ranges``: inclusive id ranges of lost frames, sorted (the first
        ones suffice); ``known``: how many lost ids they hold in all (default: counted from
        ``ranges``); ``more_ranges``: ranges beyond those given."""
        limits = {"warning": self.warning, "error": self.error}
        total = max(int(total), completed + lost + bad)
        known = sum(b - a + 1 for a, b in ranges) if known is None else known
        details = {"completed": completed, "lost": lost, "bad": bad, "total": total,
                   "lost_ranges": tuple(ranges[: self.max_ranges_listed]), "lost_ids_known": known}
        frames = tuple(itertools.islice(itertools.chain.from_iterable(range(a, b + 1) for a, b in ranges), 10))
        if total == 0:
            return CheckResult(self.name, Verdict.INSUFFICIENT, 0.0, limits, "no frame yet",
                               check_type=self.check_type, details=details)
        fraction = min(1.0, (lost + bad) / total)
        verdict = Verdict.ERROR if fraction >= self.error else Verdict.WARNING if fraction >= self.warning \
            else Verdict.OK
        msg = f"{lost + bad} of {total} frames lost or bad ({fraction:.3%}): {lost} lost, {bad} bad"
        if ranges:
            msg += f"; lost ids {format_id_ranges(ranges, self.max_ranges_listed)}"
            if more_ranges and len(ranges) <= self.max_ranges_listed:
                msg += f", ... ({more_ranges} more ranges)"
        if lost > known:
            msg += f"; {lost - known} lost with unknown ids (before the first or after the last frame received)"
        msg += f" (warning >= {self.warning:g}, error >= {self.error:g})"
        return CheckResult(self.name, verdict, fraction, limits, msg, frames, total, check_type=self.check_type,
                           details=details)


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


@dataclass(eq=False)
class ReferenceCheck:
    """An accumulated histogram (spectrum, or image flattened for chi2) against a reference.

    ``method`` ``"chi2"`` (two-sample chi-square, any totals) or ``"ks"`` (binned
    Kolmogorov-Smirnov, 1-D only). p < ``error_p`` -> ERROR, p < ``warning_p`` ->
    WARNING. Fewer than ``min_entries`` entries (sum of the accumulated histogram) or no
    reference -> INSUFFICIENT. A reference of another shape, or bins that are negative or
    not finite, -> ERROR (the comparison is wrong, not merely short of data). Bins must
    hold unweighted counts.
    """

    result: str
    method: str = "chi2"
    warning_p: float = 0.01
    error_p: float = 0.001
    min_entries: int = 1
    name: str = ""
    reference: Any = field(default=None, repr=False)
    check_type: ClassVar[str] = "reference"

    def __post_init__(self) -> None:
        where = f"reference check {self.name or self.result!r}"
        self.result = _text(where, "result", self.result)
        if self.method not in ("chi2", "ks"):
            raise _bad(where, "method", f"must be 'chi2' or 'ks', got {self.method!r}")
        self.name = _check_name(where, self.name or f"{self.result}_{self.method}")
        where = f"reference check {self.name!r}"
        self.warning_p = _number(where, "warning_p", self.warning_p, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self.error_p = _number(where, "error_p", self.error_p, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        if self.error_p > self.warning_p:
            raise _bad(where, "error_p", f"must be <= warning_p ({self.warning_p:g}), got {self.error_p:g}")
        self.min_entries = _integer(where, "min_entries", self.min_entries)
        if self.reference is not None:
            self.set_reference(self.reference)

    def set_reference(self, histogram: Any) -> None:
        """Set the reference histogram (copied, read-only). Raises ValueError if it is not counts."""
        where = f"reference check {self.name!r}"
        try:
            ref = np.array(histogram, dtype=np.float64)
        except (TypeError, ValueError):
            raise _bad(where, "reference", "must be an array of counts") from None
        if ref.ndim == 0 or ref.size == 0:
            raise _bad(where, "reference", "must be a non-empty array of counts")
        if self.method == "ks" and ref.ndim != 1:
            raise _bad(where, "reference", f"the KS test needs a 1-D histogram, got shape {ref.shape}")
        if not np.all(np.isfinite(ref)) or np.any(ref < 0) or ref.sum() <= 0:
            raise _bad(where, "reference", "must hold finite, non-negative counts with a positive total")
        ref.flags.writeable = False
        self.reference = ref

    def to_config(self) -> dict[str, Any]:
        return {"type": "reference", "name": self.name, "result": self.result, "method": self.method,
                "warning_p": self.warning_p, "error_p": self.error_p, "min_entries": self.min_entries}

    def evaluate(self, histogram: Any) -> CheckResult:
        limits = {"method": self.method, "warning_p": self.warning_p, "error_p": self.error_p,
                  "min_entries": self.min_entries}

        def result(verdict: Verdict, msg: str, value: Any = None, entries: int = 0, **details: Any) -> CheckResult:
            return CheckResult(self.name, verdict, value, limits, msg, (), entries, check_type=self.check_type,
                               details=details)

        ref = self.reference
        if ref is None:
            return result(Verdict.INSUFFICIENT, "no reference loaded")
        if histogram is None:
            return result(Verdict.INSUFFICIENT, f"no accumulated {self.result!r} yet")
        h = np.asarray(histogram, dtype=np.float64)
        if h.shape != ref.shape:
            return result(Verdict.ERROR, f"shape {h.shape} does not match the reference {ref.shape}: "
                                         "load a reference made with the same binning")
        if not np.all(np.isfinite(h)) or np.any(h < 0):
            return result(Verdict.ERROR, "histogram has negative or non-finite bins: not counts")
        n = float(h.sum())
        entries = int(round(n))
        if n <= 0 or n < self.min_entries:
            return result(Verdict.INSUFFICIENT, f"{entries} of {self.min_entries} entries needed", entries=entries)
        if self.method == "chi2":
            stat, ndf, p = chi2_two_histograms(h, ref)
            what = f"chi2 {stat:.4g}/{ndf} ndf"
            details: dict[str, Any] = {"statistic": stat, "ndf": ndf}
        else:
            d, en, p = ks_two_histograms(h, ref)
            what = f"KS D {d:.4g} (n_eff {en:.4g})"
            details = {"statistic": d, "n_eff": en}
        verdict = Verdict.ERROR if p < self.error_p else Verdict.WARNING if p < self.warning_p else Verdict.OK
        msg = (f"{what}, p = {p:.3g} (warning < {self.warning_p:g}, error < {self.error_p:g}); "
               f"{entries} entries vs reference {int(round(float(ref.sum())))}")
        return result(verdict, msg, p, entries, **details)


# ---- dead / noisy channels --------------------------------------------------------------------


@dataclass(eq=False)
class ChannelCheck:
    """Dead and noisy channels of a 1-D or 2-D map (hit counts, mean, rms ... per channel).

    Dead: value < ``dead_below``; noisy: value > ``noisy_above`` (either may be None);
    NaN channels are masked and ignored. More than ``max_bad_error`` bad channels ->
    ERROR, more than ``max_bad_warning`` -> WARNING. Before ``min_frames`` frames have
    been accumulated -> INSUFFICIENT (a nearly empty count map looks all dead).
    ``CheckResult.channels`` holds the bad indices (ints for 1-D, (row, col) for 2-D),
    sorted, at most ``max_listed`` of them; ``details`` has ``dead`` and ``noisy``.
    """

    result: str
    dead_below: float | None = None
    noisy_above: float | None = None
    max_bad_warning: int = 0
    max_bad_error: int = 0
    min_frames: int = 0
    name: str = ""
    max_listed: int = 10_000
    check_type: ClassVar[str] = "channels"

    def __post_init__(self) -> None:
        where = f"channel check {self.name or self.result!r}"
        self.result = _text(where, "result", self.result)
        self.name = _check_name(where, self.name or f"{self.result}_channels")
        where = f"channel check {self.name!r}"
        self.dead_below = _number(where, "dead_below", self.dead_below, optional=True)
        self.noisy_above = _number(where, "noisy_above", self.noisy_above, optional=True)
        if self.dead_below is None and self.noisy_above is None:
            raise _bad(where, "dead_below", "set dead_below or noisy_above (or both)")
        if self.dead_below is not None and self.noisy_above is not None and self.dead_below > self.noisy_above:
            raise _bad(where, "noisy_above", f"must be >= dead_below ({self.dead_below:g}), got {self.noisy_above:g}")
        self.max_bad_warning = _integer(where, "max_bad_warning", self.max_bad_warning)
        self.max_bad_error = _integer(where, "max_bad_error", self.max_bad_error)
        if self.max_bad_warning > self.max_bad_error:
            raise _bad(where, "max_bad_warning",
                       f"must be <= max_bad_error ({self.max_bad_error}), got {self.max_bad_warning}")
        self.min_frames = _integer(where, "min_frames", self.min_frames)
        self.max_listed = _integer(where, "max_listed", self.max_listed)

    def to_config(self) -> dict[str, Any]:
        return {"type": "channels", "name": self.name, "result": self.result, "dead_below": self.dead_below,
                "noisy_above": self.noisy_above, "max_bad_warning": self.max_bad_warning,
                "max_bad_error": self.max_bad_error, "min_frames": self.min_frames}

    def evaluate(self, channel_map: Any, frames: int | None = None) -> CheckResult:
        limits = {"dead_below": self.dead_below, "noisy_above": self.noisy_above,
                  "max_bad_warning": self.max_bad_warning, "max_bad_error": self.max_bad_error,
                  "min_frames": self.min_frames}

        def result(verdict: Verdict, msg: str, value: Any = None, channels: tuple = (), **details: Any):
            return CheckResult(self.name, verdict, value, limits, msg, (), frames or 0, channels,
                               self.check_type, details)

        if channel_map is None:
            return result(Verdict.INSUFFICIENT, f"no accumulated {self.result!r} yet")
        if frames is not None and frames < self.min_frames:
            return result(Verdict.INSUFFICIENT, f"{frames} of {self.min_frames} frames needed")
        m = np.asarray(channel_map)
        if m.ndim not in (1, 2) or m.dtype.kind not in "biuf":
            return result(Verdict.ERROR, f"expected a numeric 1-D or 2-D map, got {m.dtype} shape {m.shape}")
        with np.errstate(invalid="ignore"):
            dead = m < self.dead_below if self.dead_below is not None else np.zeros(m.shape, bool)
            noisy = m > self.noisy_above if self.noisy_above is not None else np.zeros(m.shape, bool)

        def indices(mask: np.ndarray) -> tuple:
            idx = np.argwhere(mask)[: self.max_listed]
            return tuple(int(i[0]) for i in idx) if m.ndim == 1 else tuple((int(r), int(c)) for r, c in idx)

        n_dead, n_noisy = int(dead.sum()), int(noisy.sum())
        n_bad = n_dead + n_noisy
        bad = indices(dead | noisy)
        verdict = (Verdict.ERROR if n_bad > self.max_bad_error else
                   Verdict.WARNING if n_bad > self.max_bad_warning else Verdict.OK)
        parts = [f"{n_bad} bad of {m.size} channels"]
        if self.dead_below is not None:
            parts.append(f"{n_dead} dead (< {self.dead_below:g})" + (f": {_short(indices(dead))}" if n_dead else ""))
        if self.noisy_above is not None:
            parts.append(f"{n_noisy} noisy (> {self.noisy_above:g})"
                         + (f": {_short(indices(noisy))}" if n_noisy else ""))
        parts.append(f"warning > {self.max_bad_warning}, error > {self.max_bad_error}")
        return result(verdict, "; ".join(parts), n_bad, bad, dead=indices(dead), noisy=indices(noisy),
                      n_dead=n_dead, n_noisy=n_noisy)


def _short(items: Sequence[Any], n: int = 8) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} listed)" if len(items) > n else "")


Check = RangeCheck | StalenessCheck | ReferenceCheck | ChannelCheck | LossCheck

CHECK_TYPES: dict[str, type] = {"range": RangeCheck, "staleness": StalenessCheck,
                                 "reference": ReferenceCheck, "channels": ChannelCheck, "loss": LossCheck}
_REQUIRED = {"range": ("result",), "staleness": ("timeout_s",), "reference": ("result",),
             "channels": ("result",), "loss": ()}
_FIELDS = {
    "range": ("result", "warning", "error", "min_entries", "tolerance", "name", "max_frames_listed"),
    "staleness": ("timeout_s", "name", "grace_s"),
    "loss": ("warning", "error", "name", "max_ranges_listed"),
    "reference": ("result", "method", "warning_p", "error_p", "min_entries", "name", "reference"),
    "channels": ("result", "dead_below", "noisy_above", "max_bad_warning", "max_bad_error", "min_frames",
                 "name", "max_listed"),
}


def checks_from_config(config: Any) -> list[Check]:
    """Build checks from plain data: a list of dicts, a list of JSON strings (one per line of a
    Tango string-array property), a JSON string of a list, or one dict. Each dict has ``type``
    (range, staleness, reference, channels) and the fields of that check type.

    Raises ValueError naming the check (``quality check #N``, 1-based, and its name) and the field.
    """
    if isinstance(config, (bytes, bytearray)):
        config = config.decode()
    if isinstance(config, str):
        try:
            config = json.loads(config) if config.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"quality checks: invalid JSON: {exc}") from None
    if isinstance(config, Mapping):
        config = [config]
    if not isinstance(config, (list, tuple)):
        raise ValueError(f"quality checks: expected a list of check objects, got {type(config).__name__}")
    checks: list[Check] = []
    for i, item in enumerate(config, 1):
        if isinstance(item, str):
            if not item.strip():
                continue  # an empty line of a string-array property
            try:
                item = json.loads(item)
            except json.JSONDecodeError as exc:
                raise ValueError(f"quality check #{i}: invalid JSON: {exc}") from None
        if not isinstance(item, Mapping):
            raise ValueError(f"quality check #{i}: must be an object like "
                             f'{{"type": "range", "result": ..., "warning": [min, max]}}, got {item!r}')
        typ = item.get("type")
        label = f"quality check #{i}"
        if typ not in CHECK_TYPES:
            raise ValueError(f"{label}: field 'type': must be one of {', '.join(CHECK_TYPES)}, got {typ!r}")
        what = item.get("name") or item.get("result")
        label += f" ({typ}{f' {what!r}' if isinstance(what, str) else ''})"
        unknown = sorted(set(item) - {"type"} - set(_FIELDS[typ]))
        if unknown:
            raise ValueError(f"{label}: unknown field(s) {', '.join(map(repr, unknown))}; "
                             f"allowed for {typ}: {', '.join(_FIELDS[typ])}")
        for req in _REQUIRED[typ]:
            if req not in item:
                raise ValueError(f"{label}: field {req!r} is required")
        kwargs = {k: v for k, v in item.items() if k != "type"}
        try:
            checks.append(CHECK_TYPES[typ](**kwargs))
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
    _check_unique(checks)
    return checks


def _check_unique(checks: Sequence[Check]) -> None:
    seen: set[str] = set()
    for c in checks:
        if c.name in seen:
            raise ValueError(f"quality checks: two checks are named {c.name!r}; give one a distinct 'name'")
        seen.add(c.name)
    if sum(isinstance(c, StalenessCheck) for c in checks) > 1:
        raise ValueError("quality checks: at most one staleness check")
    if sum(isinstance(c, LossCheck) for c in checks) > 1:
        raise ValueError("quality checks: at most one loss check")


# ---- the monitor ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """On what fraction of the frames of a run the per-frame verdict was evaluated."""

    evaluated: int
    completed: int
    total: int
    fraction: float

    @property
    def missing(self) -> int:
        """Frames never analysed: dropped or bad."""
        return self.total - self.completed

    def __str__(self) -> str:
        return (f"coverage {self.fraction:.1%} ({self.evaluated} of {self.total} frames evaluated; "
                f"{self.missing} dropped or bad, {self.completed - self.evaluated} without a value)")


@dataclass(frozen=True)
class QualitySnapshot:
    """A consistent, immutable view of a monitor at one time."""

    verdict: Verdict
    checks: tuple[CheckResult, ...]
    frames: int
    evaluated: int
    flag_counts: Mapping[str, int]
    last_frame_id: int | None
    running: bool

    def failing(self) -> tuple[CheckResult, ...]:
        """Checks not OK, worst first (config order within a verdict)."""
        return tuple(sorted((c for c in self.checks if c.verdict != Verdict.OK), key=lambda c: -c.verdict))

    def report(self, coverage: Coverage | None = None) -> str:
        """A header line, then one line per check that is not OK, worst first."""
        if not self.checks:
            head = f"verdict {self.verdict.name}: no quality checks configured"
        else:
            bad = self.failing()
            n_fail = sum(c.verdict >= Verdict.WARNING for c in bad)
            n_ins = len(bad) - n_fail
            head = (f"verdict {self.verdict.name}: {n_fail} of {len(self.checks)} checks failing, "
                    f"{n_ins} insufficient, {len(self.checks) - len(bad)} OK; {self.frames} frames")
        if coverage is not None:
            head += f"; {coverage}"
        return "\n".join([head] + [c.line() for c in self.failing()])


class QualityMonitor:
    """The checks of one device, fed per frame by the engine thread.

    ``update`` (engine thread) and the readers (``snapshot``, ``verdict``, ``report``,
    ``coverage``, ``flags``; any thread) share one lock; readers get immutable results.
    Call ``start`` when a run starts (clears the run record, arms staleness), ``stop`` when
    it ends, ``evaluate_references`` with the accumulated spectra/maps whenever they should
    be judged (e.g. at each array publish and at the end of the run).
    """

    def __init__(self, checks: Iterable[Check] = (), *, history: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self._checks: tuple[Check, ...] = tuple(checks)
        _check_unique(self._checks)
        for c in self._checks:
            if not isinstance(c, tuple(CHECK_TYPES.values())):
                raise TypeError(f"not a quality check: {c!r}")
        self._range = [c for c in self._checks if isinstance(c, RangeCheck)]
        self._accumulated = [c for c in self._checks if isinstance(c, (ReferenceCheck, ChannelCheck))]
        self._stale = next((c for c in self._checks if isinstance(c, StalenessCheck)), None)
        self._loss = next((c for c in self._checks if isinstance(c, LossCheck)), None)
        self._clock = clock
        self._lock = threading.Lock()
        self._history: deque[tuple[int, int]] = deque(maxlen=max(0, int(history)))
        self._generation = 0
        self._running = False
        self._run_start: float | None = None
        self._clear()

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> "QualityMonitor":
        return cls(checks_from_config(config), **kwargs)

    @property
    def checks(self) -> tuple[Check, ...]:
        return self._checks

    @property
    def has_accumulated_checks(self) -> bool:
        """Whether any check judges run-accumulated spectra or maps."""
        return bool(self._accumulated)

    def config(self) -> list[dict[str, Any]]:
        """The checks as plain dicts (for provenance; ``checks_from_config`` reads it back)."""
        return [c.to_config() for c in self._checks]

    def validate(self, declared: Mapping[str, str]) -> None:
        """Check result names against declared results (``{name: kind}``, kind scalar/spectrum/image).

        Range checks need a declared scalar; reference and channel checks, when their result is
        declared, need a spectrum or image (KS: a spectrum). Raises ValueError naming the check.
        """
        for c in self._checks:
            if isinstance(c, (StalenessCheck, LossCheck)):
                continue
            kind = declared.get(c.result)
            where = f"{c.check_type} check {c.name!r}: field 'result'"
            if isinstance(c, RangeCheck):
                if kind is None:
                    scalars = ", ".join(sorted(k for k, v in declared.items() if v == "scalar"))
                    raise ValueError(f"{where}: no analysis declares a result {c.result!r}; scalars are {scalars}")
                if kind != "scalar":
                    raise ValueError(f"{where}: {c.result!r} is a {kind}; a range check needs a scalar")
            elif kind == "scalar" or (isinstance(c, ReferenceCheck) and c.method == "ks" and kind == "image"):
                raise ValueError(f"{where}: {c.result!r} is a {kind}; a {c.check_type} check "
                                 f"needs a {'spectrum' if getattr(c, 'method', '') == 'ks' else 'spectrum or image'}")

    def range_limits(self) -> dict[str, tuple[Range | None, Range | None]]:
        """``{result: (warning, error)}`` of the range checks."""
        with self._lock:
            return {c.result: (c.warning, c.error) for c in self._range}

    def set_range_limits(self, result: str, warning: Range | None, error: Range | None) -> bool:
        """Change (or add, or with both None remove) the range check of ``result``.

        Used when an operator edits the alarm properties of a result attribute: the new
        limits apply from the next frame; the run record of the check is kept. Returns
        True if anything changed. Raises ValueError (naming the field) on invalid limits.
        """
        with self._lock:
            current = next((c for c in self._range if c.result == result), None)
            if current is not None and (current.warning, current.error) == (warning, error):
                return False
            if warning is None and error is None:
                if current is None:
                    return False
                self._range.remove(current)
                self._checks = tuple(c for c in self._checks if c is not current)
                return True
            fresh = RangeCheck(result, warning=warning, error=error,  # validates the limits
                               min_entries=current.min_entries if current else 1,
                               tolerance=current.tolerance if current else 0.0,
                               name=current.name if current else "")
            if current is None:
                self._range.append(fresh)
                self._checks = self._checks + (fresh,)
            else:
                current.warning, current.error = fresh.warning, fresh.error
            return True

    def loss_limits(self) -> tuple[float, float] | None:
        """(warning, error) fractions of the loss check, None without one."""
        with self._lock:
            return None if self._loss is None else (self._loss.warning, self._loss.error)

    def set_loss_limits(self, warning: float, error: float) -> bool:
        """Change the loss check's limits (e.g. from the ``lostFraction`` alarm properties); True if
        anything changed. Raises ValueError (naming the field) on invalid limits or without a loss check."""
        with self._lock:
            if self._loss is None:
                raise ValueError("no loss check configured")
            if (self._loss.warning, self._loss.error) == (warning, error):
                return False
            fresh = LossCheck(warning, error, name=self._loss.name)  # validates
            self._loss.warning, self._loss.error = fresh.warning, fresh.error
            return True

    # ---- run control -------------------------------------------------------------------

    def _clear(self) -> None:
        # caller holds the lock (or is __init__)
        for c in self._range:
            c.reset()
        self._history.clear()
        self._frames = 0
        self._evaluated = 0
        self._flag_counts = [0] * len(Verdict)
        self._last_frame_time: float | None = None
        self._last_frame_id: int | None = None
        self._acc_results: dict[str, CheckResult] = {}
        self._lost_ranges: list[list[int]] = []  # inclusive [first, last] ids, merged when adjacent
        self._lost_ranges_dropped = 0  # ranges not kept beyond MAX_LOST_RANGES
        self._lost_known = 0  # ids held by _lost_ranges
        self._loss_counts = (0, 0, 0, 0)  # completed, lost, bad, total
        self._generation += 1

    def start(self, now: float | None = None) -> None:
        """A run starts: clear the run record and arm the staleness check."""
        now = self._clock() if now is None else now
        with self._lock:
            self._clear()
            self._running = True
            self._run_start = now

    def stop(self) -> None:
        """The run ended (CLOSE): records stay readable, staleness no longer applies."""
        with self._lock:
            self._running = False

    def reset(self) -> None:
        """Clear everything recorded (Reset); references stay loaded."""
        with self._lock:
            self._clear()
            self._running = False
            self._run_start = None

    # ---- feeding -----------------------------------------------------------------------

    def update(self, frame_id: int, results: Mapping[str, Any], now: float | None = None) -> int:
        """Judge one frame's results with every range check; returns the per-frame flag:
        the worst range verdict on this frame, or INSUFFICIENT when no range check had a value."""
        now = self._clock() if now is None else now
        with self._lock:
            flag: Verdict | None = None
            for c in self._range:
                v = c.update(frame_id, results.get(c.result))
                if v is not None and (flag is None or v > flag):
                    flag = v
            self._frames += 1
            if flag is None:
                flag = Verdict.INSUFFICIENT
            else:
                self._evaluated += 1
            self._flag_counts[flag] += 1
            self._history.append((int(frame_id), int(flag)))
            self._last_frame_time = now
            self._last_frame_id = int(frame_id)
            return int(flag)

    #: lost-id ranges kept per run (a live run losing frames for days stays bounded)
    MAX_LOST_RANGES = 100_000

    def lost_frames(self, first: int, last: int | None = None) -> None:
        """Record frames ``first..last`` (inclusive) as lost; ids usually arrive in increasing order."""
        first = int(first)
        last = first if last is None else int(last)
        if last < first:
            return
        with self._lock:
            r = self._lost_ranges
            if r and r[-1][0] <= first <= r[-1][1] + 1:
                self._lost_known += max(0, last - r[-1][1])
                r[-1][1] = max(r[-1][1], last)
            elif len(r) < self.MAX_LOST_RANGES:
                self._lost_known += last - first + 1
                if r and first < r[-1][0]:  # out of order (rare): keep the list sorted
                    bisect.insort(r, [first, last])
                else:
                    r.append([first, last])
            else:
                self._lost_ranges_dropped += 1

    def found_frame(self, frame_id: int) -> bool:
        """A frame recorded as lost arrived after all (late, out of order): it is no longer lost.
        Returns whether it was recorded as lost."""
        fid = int(frame_id)
        with self._lock:
            r = self._lost_ranges
            i = bisect.bisect_right(r, [fid, math.inf]) - 1
            if i < 0 or not r[i][0] <= fid <= r[i][1]:
                return False
            first, last = r[i]
            self._lost_known -= 1
            if first == last:
                del r[i]
            elif fid == first:
                r[i][0] = fid + 1
            elif fid == last:
                r[i][1] = fid - 1
            else:
                r[i][1] = fid - 1
                r.insert(i + 1, [fid + 1, last])
            return True

    def set_loss_counts(self, completed: int, lost: int, bad: int, total: int) -> None:
        """The run's frame counts (from the engine's counters) the loss check judges."""
        with self._lock:
            self._loss_counts = (int(completed), int(lost), int(bad), int(total))

    def lost_ranges(self) -> np.ndarray:
        """The recorded lost frame ids as inclusive (first, last) ranges, sorted: int64 (n, 2)."""
        with self._lock:
            return np.asarray(self._lost_ranges, dtype=np.int64).reshape(-1, 2)

    def lost_fraction(self) -> float:
        """(lost + bad) / total of the run so far (0.0 before any frame)."""
        with self._lock:
            completed, lost, bad, total = self._loss_counts
        total = max(total, completed + lost + bad)
        return min(1.0, (lost + bad) / total) if total else 0.0

    def set_reference(self, key: str, histogram: Any) -> list[str]:
        """Set the reference of every reference check whose result or name is ``key``.
        Returns the names of the checks set; raises KeyError if there is none."""
        targets = [c for c in self._checks if isinstance(c, ReferenceCheck) and key in (c.result, c.name)]
        if not targets:
            raise KeyError(f"no reference check for {key!r}")
        with self._lock:
            for c in targets:
                c.set_reference(histogram)
                self._acc_results.pop(c.name, None)  # judged against the old reference
        return [c.name for c in targets]

    def set_references(self, arrays: Mapping[str, Any]) -> list[str]:
        """``set_reference`` for each array that matches a check (e.g. a loaded reference file);
        arrays matching no check are ignored. Returns the names of the checks set."""
        names: list[str] = []
        for key, array in arrays.items():
            if any(isinstance(c, ReferenceCheck) and key in (c.result, c.name) for c in self._checks):
                names += self.set_reference(key, array)
        return names

    def evaluate_references(self, accumulated: Mapping[str, Any], frames: int | None = None
                            ) -> tuple[CheckResult, ...]:
        """Judge reference and channel checks on accumulated spectra/maps (``{result: array}``);
        ``frames`` (default: frames fed so far) guards channel checks' ``min_frames``.
        The results are kept and take part in the verdict until the next call or reset."""
        with self._lock:
            generation = self._generation
            frames = self._frames if frames is None else frames
        out = []
        for c in self._accumulated:  # computed outside the lock: update() is never held up
            data = accumulated.get(c.result)
            out.append(c.evaluate(data) if isinstance(c, ReferenceCheck) else c.evaluate(data, frames))
        with self._lock:
            if generation == self._generation:
                self._acc_results.update({r.name: r for r in out})
        return tuple(out)

    def judge_summary(self, summary: Mapping[str, Any]) -> None:
        """Judge range checks on run-summary values (results ``finish`` gives once per run):
        each such check holds exactly that one value."""
        with self._lock:
            for c in self._range:
                if c.result in summary and c.judge(summary[c.result]) is not None:
                    c.reset()
                    c.update(-1, summary[c.result])

    # ---- reading (any thread) --------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> QualitySnapshot:
        now = self._clock() if now is None else now
        with self._lock:
            results: list[CheckResult] = []
            for c in self._checks:
                if isinstance(c, RangeCheck):
                    results.append(c.evaluate())
                elif isinstance(c, StalenessCheck):
                    results.append(c.evaluate(now, self._last_frame_time, self._running, self._run_start,
                                              self._last_frame_id))
                elif isinstance(c, LossCheck):
                    shown = [(a, b) for a, b in self._lost_ranges[: c.max_ranges_listed]]
                    more = len(self._lost_ranges) - len(shown) + self._lost_ranges_dropped
                    results.append(c.evaluate(*self._loss_counts, ranges=shown, known=self._lost_known,
                                              more_ranges=more))
                else:
                    results.append(self._acc_results.get(c.name) or CheckResult(
                        c.name, Verdict.INSUFFICIENT, None, {}, "not evaluated yet", check_type=c.check_type))
            verdict = worst((r.verdict for r in results), default=Verdict.INSUFFICIENT)
            return QualitySnapshot(verdict, tuple(results), self._frames, self._evaluated,
                                   {v.name: self._flag_counts[v] for v in Verdict}, self._last_frame_id,
                                   self._running)

    def verdict(self, now: float | None = None) -> Verdict:
        """The overall verdict, worst case wins (INSUFFICIENT when no check is configured)."""
        return self.snapshot(now).verdict

    def results(self, now: float | None = None) -> tuple[CheckResult, ...]:
        return self.snapshot(now).checks

    def report(self, now: float | None = None, *, completed: int | None = None, total: int | None = None) -> str:
        """Human-readable: a header line, then one line per check that is not OK.
        With ``completed`` and ``total`` the header includes the coverage."""
        cov = self.coverage(completed, total) if completed is not None and total is not None else None
        return self.snapshot(now).report(cov)

    def coverage(self, completed: int, total: int) -> Coverage:
        """Fraction of all frames of the run (``total``: completed + dropped + bad) on which the
        per-frame verdict was evaluated (a range check had a value). Without range checks every
        analysed frame counts, since it enters the accumulated checks. 0.0 when total is 0."""
        for label, v in (("completed", completed), ("total", total)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"coverage: {label} must be a non-negative integer, got {v!r}")
        completed, total = int(completed), int(total)
        total = max(total, completed)
        with self._lock:
            evaluated = self._evaluated if self._range else self._frames
        evaluated = min(evaluated, completed)
        return Coverage(evaluated, completed, total, evaluated / total if total else 0.0)

    def flags(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame ids, per-frame flags) of the last ``history`` frames, as int64 and int8 arrays."""
        with self._lock:
            items = list(self._history)
        if not items:
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        arr = np.asarray(items, dtype=np.int64)
        return arr[:, 0].copy(), arr[:, 1].astype(np.int8)


__all__ = [
    "CHECK_TYPES", "ChannelCheck", "Check", "CheckResult", "Coverage", "LossCheck", "QualityMonitor",
    "QualitySnapshot", "format_id_ranges",
    "RangeCheck", "ReferenceCheck", "range_verdict", "StalenessCheck", "VERDICT_ALARM_PROPERTIES", "Verdict",
    "checks_from_config", "chi2_two_histograms", "ks_two_histograms", "worst",
]
