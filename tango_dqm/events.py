"""Event building: frames of several streams with the same id form one event.

The first stream is the primary one (usually the detector image): an event is analysed
as its primary frame, with every partner frame in ``frame.event``. A scan waits for all
streams up to ``timeout`` seconds (of the clock the caller passes: the engine passes arrival
times), then analyses what arrived as a partial event (counted); an event whose primary frame
never arrived cannot be analysed and is counted as orphaned (the engine drops it once).
An event is counted once whatever arrives late: a primary frame arriving after its event was
given up as orphaned is analysed at once as a partial event (and no longer orphaned); a partner
frame arriving after its event was analysed without it is skipped (``late_partners``). The ids
of such unfinished events are remembered within ``window`` ids of the newest, bounding memory.
Live mode does not wait: each primary frame goes with the latest frame of every other stream.
Id gaps, duplicates and out-of-order frames are judged by IdTracker, on arrival, never in the
order events become ready.
"""
from __future__ import annotations

import bisect
import enum
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from .frames import Frame


class IdKind(enum.Enum):
    """How a frame id relates to the ids seen before it (see IdTracker)."""

    NEW = "new"              # above the highest id seen
    LATE = "late"            # below the highest, filling an id that was missing (out of order)
    DUPLICATE = "duplicate"  # seen before, or too old to tell


class IdTracker:
    """Counts the ids missing from one id sequence, against the highest id seen (not the last).

    An id above the highest makes the ids skipped in between missing; an id that fills a
    missing one is LATE (counted out of order, no longer missing); an id seen before is a
    DUPLICATE. Missing ids are kept as ranges, and only those within ``window`` of the highest
    can still be filled, so memory stays bounded on a 12-hour run with any loss pattern;
    an id older than that is reported as DUPLICATE (it cannot be told apart).

    A new numbering starts (the ids missing so far stay counted) when the series name changes
    (a new STINS header) or an id falls more than ``reorder`` below the lowest id of the
    numbering (e.g. the next file of a watched directory, numbered from its own start).
    """

    def __init__(self, window: int = 100_000, reorder: int = 16):
        self.window = window
        self.reorder = reorder
        self.series: str | None = None
        self.highest: int | None = None
        self.lowest: int | None = None
        self.missing = 0
        #: the ids the last observe() made missing, (first, last) inclusive, or None
        self.gap: tuple[int, int] | None = None
        self.numberings = 0  # numberings started so far (the first one included)
        self._starts: list[int] = []  # sorted, disjoint missing ranges [start, end)
        self._ends: list[int] = []

    def observe(self, fid: int, series: str | None = None) -> IdKind:
        self.gap = None
        if series is not None and series != self.series:
            # The first series named only labels the numbering: ids seen before it (partner
            # streams' frames, which carry no series) belong to it, their gaps stay open to fill.
            if self.series is not None:
                self.highest = None
            self.series = series
        if self.lowest is not None and fid < self.lowest - self.reorder:
            self.highest = None
        if self.highest is None or self.lowest is None:  # a new numbering
            self.numberings += 1
            self.highest = self.lowest = fid
            self._starts.clear()
            self._ends.clear()
            return IdKind.NEW
        if fid > self.highest:
            if fid > self.highest + 1:
                self._starts.append(self.highest + 1)
                self._ends.append(fid)
                self.missing += fid - self.highest - 1
                self.gap = (self.highest + 1, fid - 1)
            self.highest = fid
            self._prune()
            return IdKind.NEW
        floor = self.highest - self.window
        if fid < floor:
            return IdKind.DUPLICATE
        if fid < self.lowest:  # the first frames arrived out of order: ids below the first seen
            if fid + 1 < self.lowest:
                self._starts.insert(0, fid + 1)
                self._ends.insert(0, self.lowest)
                self.missing += self.lowest - fid - 1
                self.gap = (fid + 1, self.lowest - 1)
            self.lowest = fid
            return IdKind.LATE
        i = bisect.bisect_right(self._starts, fid) - 1
        if i < 0 or fid >= self._ends[i]:
            return IdKind.DUPLICATE
        start, end = self._starts[i], self._ends[i]
        self.missing -= 1
        if start == fid and end == fid + 1:
            del self._starts[i], self._ends[i]
        elif start == fid:
            self._starts[i] = fid + 1
        elif end == fid + 1:
            self._ends[i] = fid
        else:
            self._ends[i] = fid
            self._starts.insert(i + 1, fid + 1)
            self._ends.insert(i + 1, end)
        return IdKind.LATE

    def _prune(self) -> None:
        floor = self.highest - self.window  # type: ignore[operator]
        k = bisect.bisect_right(self._ends, floor)
        if k:  # ranges wholly below the window stay counted as missing, for good
            del self._starts[:k], self._ends[:k]
        if self._starts and self._starts[0] < floor:
            self._starts[0] = floor
        self.lowest = max(self.lowest, floor)  # type: ignore[type-var]


@dataclass
class BuiltEvent:
    """An event ready for analysis: its primary frame and when its first frame arrived."""

    frame: Frame
    t_recv: float
    complete: bool


class EventBuilder:
    """Groups frames by id across ``streams`` (see the module doc)."""

    def __init__(self, streams: Sequence[str], timeout: float = 1.0, live: bool = False, window: int = 100_000):
        if len(set(streams)) != len(streams):
            raise ValueError(f"stream names must be unique, got {list(streams)}")
        self.streams = list(streams)
        self.primary = self.streams[0]
        self.timeout = timeout
        self.live = live
        self._pending: dict[int, tuple[float, dict[str, Frame]]] = {}
        self._bad_primary: set[int] = set()  # pending ids whose primary frame came malformed
        self._latest: dict[str, Frame] = {}
        self.window = window
        # ids of events built without every stream: True analysed (partial), False orphaned
        self._unfinished: OrderedDict[int, bool] = OrderedDict()
        self.partial = 0  # analysed with a partner missing
        self.orphaned = 0  # never analysed: the primary frame did not arrive (yet)
        self.late_partners = 0  # partner frames skipped: their event was analysed without them

    def add(self, frame: Frame, t_recv: float, now: float) -> list[BuiltEvent]:
        """Take one frame; return the events now ready (complete ones and expired partial ones)."""
        if self.live:
            self._latest[frame.stream] = frame
            if frame.stream != self.primary:
                return []
            frame.event = dict(self._latest)
            return [BuiltEvent(frame, t_recv, len(frame.event) == len(self.streams))]
        built = self._unfinished.get(frame.frame_id)
        if built is not None:
            return self._late(frame, built, t_recv) + self.expire(now)
        t0, frames = self._pending.setdefault(frame.frame_id, (t_recv, {}))
        frames[frame.stream] = frame
        ready = []
        if len(frames) == len(self.streams):
            del self._pending[frame.frame_id]
            self._bad_primary.discard(frame.frame_id)
            ready.append(self._build(frames, t0, complete=True))
        return [e for e in ready if e is not None] + self.expire(now)

    def new_numbering(self) -> None:
        """Ids start again (a new series): an unfinished event of the old numbering is not a new one's."""
        self._unfinished.clear()

    def _late(self, frame: Frame, analysed: bool, t_recv: float) -> list[BuiltEvent]:
        """A frame of an event already built without it (see the module doc)."""
        if frame.stream != self.primary:
            if analysed:
                self.late_partners += 1
            return []  # an orphaned event's partner: the event waits for its primary frame only
        # the orphan's primary frame after all: analysed now, as partial (its partners were let go)
        self._unfinished[frame.frame_id] = True
        self.orphaned -= 1
        self.partial += 1
        frame.event = {self.primary: frame}
        return [BuiltEvent(frame, t_recv, False)]

    def add_bad(self, stream: str, frame_id: int, t_recv: float, now: float) -> list[BuiltEvent]:
        """A malformed frame with a readable id: if it was the primary one, its event is counted
        bad (by the caller), not also orphaned when its partner frames arrive."""
        if not self.live and stream == self.primary:
            self._pending.setdefault(frame_id, (t_recv, {}))
            self._bad_primary.add(frame_id)
        return self.expire(now)

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
            if fid in self._bad_primary:
                self._bad_primary.discard(fid)
                if self.primary not in frames:
                    continue  # counted bad, not orphaned
            event = self._build(frames, t0, complete=False)
            if event is not None:
                out.append(event)
        return out

    def _build(self, frames: dict[str, Frame], t0: float, complete: bool) -> BuiltEvent | None:
        primary = frames.get(self.primary)
        if not complete:
            fid = next(iter(frames.values())).frame_id
            self._unfinished[fid] = primary is not None
            while len(self._unfinished) > self.window or next(iter(self._unfinished)) < fid - self.window:
                self._unfinished.popitem(last=False)
        if primary is None:
            self.orphaned += 1
            return None
        if not complete:
            self.partial += 1
        primary.event = dict(frames)
        return BuiltEvent(primary, t0, complete)
