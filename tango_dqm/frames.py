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
