"""The QualityMonitor: the checks of one device, fed every frame, the worst verdict winning."""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import Check, CheckResult, Evidence, ChannelCheck, LossCheck, RangeCheck, ReferenceCheck, StalenessCheck
from .configuration import CHECK_TYPES, _check_unique, checks_from_config
from .verdicts import Range, Verdict, worst


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

    @property
    def accumulated_results(self) -> frozenset[str]:
        """The results the run-accumulated checks judge (the engine finishes only their analyses)."""
        return frozenset(c.result for c in self._accumulated)

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
        evidence = Evidence(accumulated=accumulated, frames=frames)
        for c in self._accumulated:  # computed outside the lock: update() is never held up
            out.append(c.check(evidence))
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
            evidence = Evidence(now=now, last_frame_time=self._last_frame_time, running=self._running,
                                run_start=self._run_start, last_frame_id=self._last_frame_id,
                                loss_counts=self._loss_counts, lost_ranges=self._lost_ranges,
                                lost_ranges_dropped=self._lost_ranges_dropped, lost_known=self._lost_known)
            for c in self._checks:
                if isinstance(c, (RangeCheck, StalenessCheck, LossCheck)):
                    results.append(c.check(evidence))
                else:  # accumulated checks are judged by evaluate_references; their last result stands
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
