"""Source interface and URI parsing shared by all stream readers."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from ..frames import BadInput, Frame, SeriesEnd

SourceItem = Frame | SeriesEnd | BadInput | None


class SourceError(RuntimeError):
    """A source cannot be opened or has failed for good (puts the engine in FAULT)."""


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``Sources`` entry: ``name=uri`` or ``uri`` (name defaults to the scheme)."""

    name: str
    uri: str
    scheme: str
    host: str
    port: int | None
    path: str
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: str, default_name: str | None = None) -> "SourceSpec":
        entry = entry.strip()
        name = None
        head, sep, tail = entry.partition("=")
        if sep and "://" not in head:
            name, entry = head.strip(), tail.strip()
        parts = urlsplit(entry)
        if not parts.scheme:
            raise SourceError(f"source {entry!r}: expected a URI like sim://?frames=100 or zmq://127.0.0.1:9999")
        try:
            port = parts.port
        except ValueError as exc:
            raise SourceError(f"source {entry!r}: bad port: {exc}") from None
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        return cls(name or default_name or parts.scheme, entry, parts.scheme, parts.hostname or "",
                   port, parts.path, query)

    def q(self, key: str, default: str) -> str:
        return self.query.get(key, default)

    def q_int(self, key: str, default: int) -> int:
        try:
            return int(self.query.get(key, default))
        except ValueError:
            raise SourceError(f"source {self.uri!r}: {key} must be an integer, got {self.query[key]!r}") from None

    def q_float(self, key: str, default: float) -> float:
        try:
            return float(self.query.get(key, default))
        except ValueError:
            raise SourceError(f"source {self.uri!r}: {key} must be a number, got {self.query[key]!r}") from None

    def q_bool(self, key: str, default: bool) -> bool:
        raw = self.query.get(key)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes", "on", ""):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SourceError(f"source {self.uri!r}: {key} must be a boolean, got {raw!r}")


class Source:
    """A stream of frames. Subclasses set ``scheme`` and implement ``items``.

    ``items`` yields Frames, a SeriesEnd when the series (scan) ends, BadInput for
    malformed messages, and None when idle so the caller can check ``stop``. It must
    return soon after ``stop`` is set (poll with a timeout of about 0.1 s).
    """

    scheme: ClassVar[str] = ""
    #: number of frames the series will hold, when the source knows it
    expected_frames: int | None = None
    #: image shape (rows, cols) when known before the first frame
    image_shape: tuple[int, ...] | None = None
    #: pixel dtype (numpy name) when known before the first frame (the engine warms its kernels for it)
    image_dtype: str | None = None

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.name = spec.name

    def open(self) -> None:
        """Acquire resources (sockets, files). Raise SourceError on failure."""

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; safe to call more than once."""
