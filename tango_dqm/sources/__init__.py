"""Stream readers, one module per protocol; ``open_source`` picks one by URI scheme."""
from __future__ import annotations

from .base import Source, SourceError, SourceItem, SourceSpec
from .bsread_source import BsreadSource
from .hdf5_replay import Hdf5ReplaySource
from .partition import PartitionedSource, parse_partition
from .sim import SimSource
from .watch_dir import WatchDirSource
from .zmq_stins import ZmqStinsSource

SCHEMES: dict[str, type[Source]] = {cls.scheme: cls for cls in (SimSource, ZmqStinsSource, BsreadSource,
                                                                Hdf5ReplaySource, WatchDirSource)}


def open_source(entry: str) -> Source:
    """Create (not yet open) the source for a ``Sources`` entry (``name=uri`` or ``uri``)."""
    spec = SourceSpec.parse(entry)
    try:
        cls = SCHEMES[spec.scheme]
    except KeyError:
        raise SourceError(f"source {spec.uri!r}: unknown scheme {spec.scheme!r}; known: {sorted(SCHEMES)}") from None
    inner, share = parse_partition(spec)  # partition=K/N: a scale-out worker's share
    if share is None:
        return cls(spec)
    return PartitionedSource(cls(inner), *share)  # type: ignore[return-value]


__all__ = ["SCHEMES", "Source", "SourceError", "SourceItem", "SourceSpec", "open_source"]
