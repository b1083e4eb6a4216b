"""Source interface and URI parsing shared by all stream readers."""
from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from ..frames import BadInput, Frame, SeriesEnd, SeriesStart

SourceItem = Frame | SeriesStart | SeriesEnd | BadInput | None

_INTEGER = re.compile(r"[+-]?[0-9]+")


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
        try:
            parts = urlsplit(entry)
        except ValueError as exc:  # e.g. "Invalid IPv6 URL"
            raise SourceError(f"source {entry!r}: not a valid URI: {exc}") from None
        if not parts.scheme:
            raise SourceError(f"source {entry!r}: expected a URI like sim://?frames=100 or zmq://127.0.0.1:9999")
        try:
            port = parts.port
        except ValueError as exc:
            raise SourceError(f"source {entry!r}: bad port: {exc}") from None
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            twice = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
            raise SourceError(f"source {entry!r}: option {', '.join(twice)} given more than once")
        return cls(name or default_name or parts.scheme, entry, parts.scheme, parts.hostname or "",
                   port, parts.path, query)

    def q(self, key: str, default: str) -> str:
        return self.query.get(key, default)

    def q_int(self, key: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
        """An integer option; with ``lo``/``hi`` it must lie in that range (SourceError naming the rule)."""
        rule = ("an integer" if lo is None and hi is None else f"an integer >= {lo}" if hi is None
                else f"an integer <= {hi}" if lo is None else f"an integer from {lo} to {hi}")
        raw = self.query.get(key)
        if raw is None:
            return default
        # ASCII digits only: int() would also take "1_000", " 5" and non-ASCII digits
        value = int(raw) if _INTEGER.fullmatch(raw) else None
        if value is None or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SourceError(f"source {self.uri!r}: option {key} must be {rule}, got {raw!r}")
        return value

    def check_options(self, known: Iterable[str]) -> None:
        """Refuse options the source does not know (a typo must not be silently ignored)."""
        known = set(known)
        unknown = sorted(k for k in self.query if k not in known)
        if unknown:
            raise SourceError(f"source {self.uri!r}: unknown option {', '.join(unknown)}; "
                              f"{self.scheme}:// knows {', '.join(sorted(known))}")

    def q_float(self, key: str, default: float, lo: float | None = None, hi: float | None = None) -> float:
        """A finite number option; with ``lo``/``hi`` it must lie in that range."""
        rule = ("a finite number" if lo is None and hi is None else f"a number >= {lo}" if hi is None
                else f"a number <= {hi}" if lo is None else f"a number from {lo} to {hi}")
        raw = self.query.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
            raise SourceError(f"source {self.uri!r}: option {key} must be {rule}, got {raw!r}")
        return value

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

    ``items`` yields Frames, a SeriesStart when a series announced on the stream begins (with
    its frame count, when announced), a SeriesEnd when the series (scan) ends, BadInput for
    malformed messages, and None when idle so the caller can check ``stop``. It must
    return soon after ``stop`` is set (poll with a timeout of about 0.1 s).
    """

    scheme: ClassVar[str] = ""
    #: URI options the source accepts; others are refused when the spec is parsed (None: not checked)
    options: ClassVar[frozenset[str] | None] = None
    #: number of frames the series will hold, when known before the scan starts (from the URI or
    #: the file; constant while it runs). A count announced later comes as a SeriesStart item.
    expected_frames: int | None = None
    #: image shape (rows, cols) when known before the first frame
    image_shape: tuple[int, ...] | None = None
    #: most messages the source's receive buffer holds (its ZeroMQ RCVHWM), None when not a socket
    buffer_limit: int | None = None
    #: pixel dtype (numpy name) when known before the first frame (the engine warms its kernels for it)
    image_dtype: str | None = None

    def __init__(self, spec: SourceSpec):
        self.spec = spec
        self.name = spec.name
        if self.options is not None:
            spec.check_options(self.options)

    def backlog(self) -> str:
        """Why the source is being outrun by the analysis right now, or "" when it keeps up.

        The engine shows it in Status while RUNNING. Sources with a receive buffer report
        when it has not run empty for a while (see :class:`BacklogMeter`).
        """
        return ""

    def open(self) -> None:
        """Acquire resources (sockets, files). Raise SourceError on failure."""

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; safe to call more than once."""


class BacklogMeter:
    """Tells whether a receive buffer has stayed non-empty for ``after`` seconds.

    The source calls ``empty()`` whenever it finds its socket without a waiting message.
    If that has not happened for ``after`` seconds while receiving, messages arrive faster
    than the engine takes them: the buffer is at (or heading for) its high-water mark.
    """

    def __init__(self, after: float = 1.0):
        self.after = after
        self._empty_at: float | None = None

    def start(self) -> None:
        self._empty_at = time.monotonic()

    def empty(self) -> None:
        self._empty_at = time.monotonic()

    def stop(self) -> None:
        self._empty_at = None

    @property
    def outrun(self) -> bool:
        t = self._empty_at
        return t is not None and time.monotonic() - t > self.after
