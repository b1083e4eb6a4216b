"""The quality checks: each judges one result (or the stream) and gives a CheckResult."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .statistics import chi2_two_histograms, ks_two_histograms
from .verdicts import Range, Verdict


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

@dataclass(frozen=True)
class Evidence:
    """What the monitor knows when it judges: every check reads its part (one signature, ``check(evidence)``).

    ``accumulated``: run-accumulated results by name (reference and channel checks); the rest describes the
    stream (staleness) and the frame accounting (loss) at time ``now``.
    """

    now: float = 0.0
    last_frame_time: float | None = None
    running: bool = True
    run_start: float | None = None
    last_frame_id: int | None = None
    loss_counts: tuple[int, int, int, int] = (0, 0, 0, 0)  # completed, lost, bad, total
    lost_ranges: Sequence[Sequence[int]] = ()  # inclusive [first, last] id pairs
    lost_ranges_dropped: int = 0
    lost_known: int | None = None
    accumulated: Mapping[str, Any] = field(default_factory=dict)
    frames: int | None = None


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def _bad(where: str, field_name: str, why: str) -> ValueError:
    return ValueError(f"{where}: field {field_name!r}: {why}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _optional_number(where: str, field_name: str, v: Any) -> float | None:
    """A finite number, or None for null."""
    return None if v is None else _number(where, field_name, v, optional=True)


def _number(where: str, field_name: str, v: Any, *, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> float:
    """A finite number within the bounds (``optional``: the message says null is allowed too)."""
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
    lo = _optional_number(where, field_name, v[0])
    hi = _optional_number(where, field_name, v[1])
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

    def check(self, evidence: Evidence) -> CheckResult:
        """The one evaluation signature; a range check judges the values it was fed."""
        return self.evaluate()

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

    def check(self, evidence: Evidence) -> CheckResult:
        """The one evaluation signature."""
        e = evidence
        return self.evaluate(e.now, e.last_frame_time, e.running, e.run_start, e.last_frame_id)

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

    def check(self, evidence: Evidence) -> CheckResult:
        """The one evaluation signature: lists at most ``max_ranges_listed`` lost ranges, counts the rest."""
        shown = [(a, b) for a, b in evidence.lost_ranges[: self.max_ranges_listed]]
        more = len(evidence.lost_ranges) - len(shown) + evidence.lost_ranges_dropped
        return self.evaluate(*evidence.loss_counts, ranges=shown, known=evidence.lost_known, more_ranges=more)

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

    def check(self, evidence: Evidence) -> CheckResult:
        """The one evaluation signature: the accumulated histogram named ``result``."""
        return self.evaluate(evidence.accumulated.get(self.result))

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
        self.dead_below = _optional_number(where, "dead_below", self.dead_below)
        self.noisy_above = _optional_number(where, "noisy_above", self.noisy_above)
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

    def check(self, evidence: Evidence) -> CheckResult:
        """The one evaluation signature: the accumulated map named ``result`` over ``frames``."""
        return self.evaluate(evidence.accumulated.get(self.result), evidence.frames)

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
