"""Frames: the unit of data that sources produce and analyses consume."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

    def stream_frame(self, name: str) -> "Frame | None":
        """The frame of stream ``name`` in this event (None if it did not arrive in time)."""
        if name == self.stream:
            return self
        return self.event.get(name)


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
    #: the frame id when the message names a valid one: the id is then accounted as bad, not as a gap
    frame_id: int | None = None
