"""Frames: the unit of data that sources produce and analyses consume.

Also the limits every source applies to what a message may declare, checked before
anything is allocated: a frame id is an integer in ``0..INT64_MAX`` (it is written to the
results file as int64 and read back through DevLong64 counters) and a frame decodes to at
most ``MAX_FRAME_BYTES``.
"""
from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np


@dataclass(slots=True)
class Frame:
    """One detector frame.

    ``data`` is usually a zero-copy view on the receive buffer: analyses must not
    modify it. ``frame_id`` is the detector frame number (or PSI pulse id); results
    depend only on ``frame_id`` and ``data``, never on ``timestamp``.
    """

    data: np.ndarray
    frame_id: int
    timestamp: float = 0.0
    stream: str = "default"
    series: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    #: with several streams: every frame of this event by stream name (this one included)
    event: dict[str, "Frame"] = field(default_factory=dict)
    #: per-frame values several analyses need, computed once (see kernels.frame_min_max_count)
    cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def stream_frame(self, name: str) -> "Frame | None":
        """The frame of stream ``name`` in this event (None if it did not arrive in time)."""
        if name == self.stream:
            return self
        return self.event.get(name)


@dataclass(slots=True)
class SeriesStart:
    """Marker a source emits when a series (scan) begins during the run, e.g. a STINS header.

    ``frames`` is the number of frames the series announces (None: not announced). It travels
    through the engine's queue in order with the frames, so no source state is shared."""

    stream: str = "default"
    series: str = ""
    frames: int | None = None


@dataclass(slots=True)
class SeriesEnd:
    """Marker a source emits when its series (scan) ends."""

    stream: str = "default"
    series: str = ""


@dataclass(slots=True)
class BadInput:
    """Marker for a malformed message: counted in ``badEvents`` and skipped."""

    kind: str
    detail: str
    stream: str = "default"
    #: the frame id the message declared, when it was a valid one (the frame is known to be bad, not lost)
    frame_id: int | None = None


#: largest frame id (and announced frame count) accepted: int64, as stored and counted
INT64_MAX = 2**63 - 1
#: largest decoded frame accepted from a stream (bytes); far above any detector, far below overflow
MAX_FRAME_BYTES = 2 * 1024**3


def is_count(value: Any) -> TypeGuard[int]:
    """True for an int (not bool) in ``0..INT64_MAX``: a valid frame id or frame count."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX


def check_shape(shape: Any, itemsize: int, max_dims: int = 3,
                max_bytes: int = MAX_FRAME_BYTES) -> tuple[str, str] | None:
    """``(kind, reason)`` when ``shape`` (as decoded from JSON) is not a usable frame shape, else None.

    Kinds: ``bad_shape`` (not a list of 1..max_dims positive integers) and
    ``frame_too_large``. The size is computed with Python integers, so ``[2**32, 2**32]``
    is refused as too large instead of overflowing numpy's int64 to a small number.
    """
    if (not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= max_dims
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        return "bad_shape", f"shape must be a list of 1 to {max_dims} positive integers, got {short(shape)}"
    nbytes = math.prod(shape) * itemsize
    if nbytes > max_bytes:
        return "frame_too_large", f"shape {short(shape)} needs {nbytes} bytes, more than the limit of {max_bytes}"
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 4, 40, 40, 40


def short(value: Any) -> str:
    """A bounded repr of a decoded (possibly huge or deeply nested) value, for messages and logs."""
    return _REPR.repr(value)
