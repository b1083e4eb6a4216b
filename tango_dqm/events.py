"""Event building: frames of several streams with the same id form one event.

The first stream is the primary one (usually the detector image): an event is analysed
as its primary frame, with every partner frame in ``frame.event``. A scan waits for all
streams up to ``timeout`` seconds, then analyses what arrived as a partial event (counted);
an event whose primary frame never arrived cannot be analysed and is counted as dropped.
Live mode does not wait: each primary frame goes with the latest frame of every other stream.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .frames import Frame


@dataclass
class BuiltEvent:
    """An event ready for analysis: its primary frame and when its first frame arrived."""

    frame: Frame
    t_recv: float
    complete: bool


class EventBuilder:
    """Groups frames by id across ``streams`` (see the module doc)."""

    def __init__(self, streams: Sequence[str], timeout: float = 1.0, live: bool = False):
        if len(set(streams)) != len(streams):
            raise ValueError(f"stream names must be unique, got {list(streams)}")
        self.streams = list(streams)
        self.primary = self.streams[0]
        self.timeout = timeout
        self.live = live
        self._pending: dict[int, tuple[float, dict[str, Frame]]] = {}
        self._latest: dict[str, Frame] = {}
        self.partial = 0  # analysed with a partner missing
        self.orphaned = 0  # never analysed: the primary frame did not arrive

    def add(self, frame: Frame, t_recv: float, now: float) -> list[BuiltEvent]:
        """Take one frame; return the events now ready (complete ones and expired partial ones)."""
        if self.live:
            self._latest[frame.stream] = frame
            if frame.stream != self.primary:
                return []
            frame.event = dict(self._latest)
            return [BuiltEvent(frame, t_recv, len(frame.event) == len(self.streams))]
        t0, frames = self._pending.setdefault(frame.frame_id, (t_recv, {}))
        frames[frame.stream] = frame
        ready = []
        if len(frames) == len(self.streams):
            del self._pending[frame.frame_id]
            ready.append(self._build(frames, t0, complete=True))
        return [e for e in ready if e is not None] + self.expire(now)

    def expire(self, now: float) -> list[BuiltEvent]:
        """Events waiting longer than the timeout, as partial events (oldest first)."""
        old = [fid for fid, (t0, _) in self._pending.items() if now - t0 > self.timeout]
        return self._take(sorted(old))

    def flush(self) -> list[BuiltEvent]:
        """Everything still waiting (end of the scan), as partial events."""
        return self._take(sorted(self._pending))

    def _take(self, ids: list[int]) -> list[BuiltEvent]:
        out = []
        for fid in ids:
            t0, frames = self._pending.pop(fid)
            event = self._build(frames, t0, complete=False)
            if event is not None:
                out.append(event)
        return out

    def _build(self, frames: dict[str, Frame], t0: float, complete: bool) -> BuiltEvent | None:
        primary = frames.get(self.primary)
        if primary is None:
            self.orphaned += 1
            return None
        if not complete:
            self.partial += 1
        primary.event = dict(frames)
        return BuiltEvent(primary, t0, complete)
