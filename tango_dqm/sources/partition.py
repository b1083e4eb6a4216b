"""``partition=K/N``: a scale-out worker's share of a stream every worker receives whole.

On a PUB/SUB stream (``zmq://...?mode=sub``, ``bsread://...?mode=sub``), and on ``sim://`` and
``hdf5://`` (tests, replays), each of N workers keeps the frames with ``frame_id % N == K``.
A PUSH stream needs none: ZeroMQ hands each frame to one worker. Malformed messages with a
readable id follow their id; those without one are kept by partition 0 only, so each is
counted once over the workers. Ends of series reach every worker.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from ..frames import BadInput, Frame
from .base import Source, SourceError, SourceItem, SourceSpec

OPTION = "partition"
_FORM = re.compile(r"(\d{1,6})/(\d{1,6})")
#: schemes whose every worker receives every frame (PULL streams are shared by ZeroMQ already)
SCHEMES = ("zmq", "bsread", "sim", "hdf5")


def parse_partition(spec: SourceSpec) -> tuple[SourceSpec, tuple[int, int] | None]:
    """The spec without its partition option, and (K, N); SourceError naming the rule."""
    raw = spec.query.get(OPTION)
    if raw is None:
        return spec, None
    m = _FORM.fullmatch(raw)
    k, n = (int(m.group(1)), int(m.group(2))) if m else (-1, 0)
    if not m or n < 1 or not 0 <= k < n:
        raise SourceError(f"source {spec.uri!r}: option partition must be K/N with 0 <= K < N, e.g. "
                          f"partition=0/3, got {raw!r}")
    if spec.scheme not in SCHEMES:
        raise SourceError(f"source {spec.uri!r}: partition applies to {', '.join(s + '://' for s in SCHEMES)} "
                          f"streams, not {spec.scheme}://")
    if spec.scheme in ("zmq", "bsread") and spec.query.get("mode", "pull").lower() != "sub":
        raise SourceError(f"source {spec.uri!r}: partition needs mode=sub (every worker receives every frame); "
                          "on a PUSH stream ZeroMQ already gives each frame to one worker: drop partition")
    query = {key: v for key, v in spec.query.items() if key != OPTION}
    return replace(spec, query=query), (k, n)


class PartitionedSource:
    """A source keeping only its share of the frame ids; everything else is the inner source's."""

    def __init__(self, inner: Source, k: int, n: int):
        self.inner, self.k, self.n = inner, k, n
        self.spec = inner.spec  # its URI is the one written, partition included (Status, provenance)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def mine(self, item: SourceItem) -> bool:
        if isinstance(item, Frame):
            return item.frame_id % self.n == self.k
        if isinstance(item, BadInput):
            fid = item.frame_id
            if isinstance(fid, int) and not isinstance(fid, bool) and fid >= 0:
                return fid % self.n == self.k
            return self.k == 0
        return True

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        for item in self.inner.items(stop, live):
            yield item if item is None or self.mine(item) else None


__all__ = ["OPTION", "PartitionedSource", "parse_partition"]
