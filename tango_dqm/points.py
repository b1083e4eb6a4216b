"""Scan points: the frames of one point of a Sardana or bluesky scan, summarised per result.

A point is opened by ``Engine.start_point`` and closed by ``Engine.end_point``. Which frames
belong to it is decided by their *arrival* (the time the source thread took them off the
wire), never by when the analysis finished, so it does not depend on how busy the engine is:

- ``frames == 0`` (open-ended): the frames that arrived after StartPoint and before EndPoint.
  The point is complete once the engine has handled every frame that arrived before EndPoint.
- ``frames == M > 0``: the first M frames that arrived after StartPoint, however long they
  take (a detector triggered with M frames per point: exact, whatever the timing of EndPoint).
  Frames after the M-th, until the next StartPoint, belong to no point.

The point is latched (its values fixed, ``pointNumber`` advanced) when it is complete and
EndPoint was called, or when EndPoint's timeout passes first (counted in ``timeouts``), or
when the scan ends. Each scalar result is summarised as its ``Result.point_aggregate`` says.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .plugin import Result

#: longest EndPoint timeout accepted (s)
MAX_POINT_TIMEOUT = 3600.0
MAX_POINT_FRAMES = 2**31 - 1


@dataclass(frozen=True)
class PointRecord:
    """One latched scan point: how many frames, which ids, the summarised values."""

    number: int
    frames: int
    first_frame: int | None
    last_frame: int | None
    values: dict[str, Any]
    #: "complete" (its frames were analysed), "timeout" (EndPoint's timeout passed first) or "scan end"
    ended: str
    expected_frames: int = 0

    @property
    def timed_out(self) -> bool:
        return self.ended == "timeout"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None): the device's pointInfo."""
        return {"number": self.number, "frames": self.frames, "expected_frames": self.expected_frames,
                "first_frame": self.first_frame, "last_frame": self.last_frame, "ended": self.ended,
                "timed_out": self.timed_out,
                "values": {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in self.values.items()}}


def point_results(declarations: Mapping[str, tuple[str, Result]]) -> dict[str, Result]:
    """The results that get a per-point value: per-frame scalars, in declaration order."""
    return {name: r for name, (_, r) in declarations.items() if r.has_point}


def check_timeout(timeout: Any) -> float:
    """An EndPoint timeout in seconds: a finite number, > 0 and at most MAX_POINT_TIMEOUT."""
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"EndPoint timeout must be a number of seconds, got {timeout!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_POINT_TIMEOUT):
        raise ValueError(f"EndPoint timeout must be > 0 and at most {MAX_POINT_TIMEOUT:g} s, got {timeout!r}")
    return value


def check_frames(frames: Any) -> int:
    """Frames per point: an integer from 0 (open-ended) to MAX_POINT_FRAMES."""
    if isinstance(frames, bool) or not isinstance(frames, (int, float)) or float(frames) != int(frames):
        raise ValueError(f"pointFrames must be a whole number of frames (0: until EndPoint), got {frames!r}")
    value = int(frames)
    if not 0 <= value <= MAX_POINT_FRAMES:
        raise ValueError(f"pointFrames must be between 0 (until EndPoint) and {MAX_POINT_FRAMES}, got {value}")
    return value


@dataclass
class _Summary:
    aggregate: str
    n: int = 0
    total: float = 0.0
    value: Any = None  # last, min or max so far

    def add(self, v: Any) -> None:
        if self.aggregate in ("mean", "sum"):
            self.total += float(v)
        elif self.aggregate == "last" or self.n == 0:
            self.value = v
        elif self.aggregate == "min":
            self.value = _extreme(self.value, v, min)
        else:
            self.value = _extreme(self.value, v, max)
        self.n += 1

    def result(self) -> Any:
        if self.aggregate == "sum":
            return self.total
        if self.aggregate == "mean":
            return self.total / self.n if self.n else math.nan
        return self.value


def _extreme(a: Any, b: Any, pick) -> Any:
    # NaN wins, as numpy's min/max over the point's values would give
    if isinstance(a, float) and math.isnan(a):
        return a
    if isinstance(b, float) and math.isnan(b):
        return b
    return pick(a, b)


@dataclass
class OpenPoint:
    """The point being acquired; the engine feeds it the frames it handles, in arrival order."""

    number: int
    t_start: float
    expected_frames: int
    results: Mapping[str, Result]
    t_end: float | None = None  # EndPoint called at this (monotonic) time
    deadline: float | None = None
    frames: int = 0
    first_frame: int | None = None
    last_frame: int | None = None
    summaries: dict[str, _Summary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summaries = {n: _Summary(r.point_aggregate) for n, r in self.results.items()}

    def takes(self, t_recv: float) -> bool:
        """Does a frame that arrived at ``t_recv`` belong to this point?"""
        if t_recv < self.t_start:
            return False
        if self.expected_frames:
            return self.frames < self.expected_frames
        return self.t_end is None or t_recv < self.t_end

    def add(self, frame_id: int, results: Mapping[str, Any]) -> None:
        self.frames += 1
        if self.first_frame is None:
            self.first_frame = frame_id
        self.last_frame = frame_id
        for name, s in self.summaries.items():
            v = results.get(name)
            if v is None:
                continue  # not given for this frame (a plugin may skip a result)
            s.add(v.item() if hasattr(v, "item") else v)

    def complete(self, handled_arrival: float | None) -> bool:
        """Ended and every frame of the point analysed; ``handled_arrival``: the engine has handled
        everything that arrived before this time."""
        if self.t_end is None:
            return False
        if self.expected_frames:
            return self.frames >= self.expected_frames
        return handled_arrival is not None and handled_arrival >= self.t_end

    def latch(self, ended: str) -> PointRecord:
        # a point without frames: NaN for numbers, None (no value) for text and bool
        values = {n: s.result() if s.n else (math.nan if _numeric(self.results[n]) else None)
                  for n, s in self.summaries.items()}
        return PointRecord(self.number, self.frames, self.first_frame, self.last_frame, values, ended,
                           self.expected_frames)


def _numeric(r: Result) -> bool:
    return r.dtype.kind in "iuf"


__all__ = ["MAX_POINT_TIMEOUT", "OpenPoint", "PointRecord", "check_frames", "check_timeout", "point_results"]
