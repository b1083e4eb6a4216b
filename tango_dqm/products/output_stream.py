"""Per-frame results as a bsread stream, for feedback loops and other consumers at a facility.

``ResultStream`` publishes, for every processed frame, one bsread message whose pulse id is
the frame id, with one channel per per-frame scalar result (``float64``, ``int64`` or
``bool`` as declared) and per spectrum result (a 1-D ``float64`` / ``int64`` array). Images,
status texts and run-summary results are not streamed. Any bsread client reads it, e.g.::

    from bsread import PULL, SUB, source
    with source(host="127.0.0.1", port=9100, mode=SUB) as s:   # mode=PULL for a "push" stream
        m = s.receive(); m.data.pulse_id, m.data.data["mean_intensity"].value

As PSI's psen_processing and cam_server do, the socket, the channel declarations and the
data header (JSON plus its md5, sent with every message) come from ``bsread.sender.Sender``.
The header is built once at ``open`` and rebuilt only when a spectrum changes length (its
channel shape is taken from its first value; ``header_changes`` counts the rebuilds), so
receivers re-parse it only then. ``send`` writes the parts itself, in the bsread wire format
(main header, data header, then value and timestamp per channel), because ``Sender.send``
either re-derives every channel and re-hashes the header for each message (``data=`` dict)
or serialises each value through a type dispatch, and with ``block=False`` it silently
swallows a refused part, so drops could not be counted.

Never blocking the engine: the whole message goes out in one ``send_multipart`` with
``zmq.NOBLOCK``. ZeroMQ accepts or refuses a multipart message as a whole (the high-water
mark is checked at its first part), so a refused send loses exactly that message, counted
in ``dropped``; nothing is queued beyond the socket's ``queue_size`` messages. In "push"
mode a send is refused while no consumer is connected or the consumer's queue is full. In
"pub" mode ZeroMQ never refuses: a subscriber that falls ``queue_size`` messages behind
loses messages without the sender being told (so ``dropped`` stays 0), and the other
subscribers are not slowed.

Binding: ``Sender`` binds ``f"{address}:{port}"`` and its default address is ``"tcp://*"``
(every interface). ``ResultStream`` always passes ``address=f"tcp://{host}"`` with
``host="127.0.0.1"`` by default, so the stream is reachable from this machine only; give
``host="*"`` (or an interface's address) to serve other hosts.
"""
from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..plugin import Result

log = logging.getLogger(__name__)

MODES = ("push", "pub")

_SCALAR_TYPES = {"f": ("float64", struct.Struct("<d"), float),
                 "i": ("int64", struct.Struct("<q"), int),
                 "u": ("int64", struct.Struct("<q"), int),
                 "b": ("bool", struct.Struct("<?"), bool)}
_ARRAY_TYPES = {"f": ("float64", "<f8"), "i": ("int64", "<i8"), "u": ("int64", "<i8"), "b": ("bool", "|b1")}


class _Channel:
    __slots__ = ("name", "result", "spectrum", "type", "pack", "convert", "np_dtype", "length", "warned")

    def __init__(self, name: str, result: str, spectrum: bool, kind: str):
        self.name, self.result, self.spectrum = name, result, spectrum
        self.warned = False
        self.length: int | None = None
        self.np_dtype: str | None = None  # spectra: numpy dtype of the packed array
        self.pack: struct.Struct | None = None  # scalars: packing and conversion of the value
        self.convert: Callable[[Any], Any] | None = None
        if spectrum:
            self.type, self.np_dtype = _ARRAY_TYPES[kind]
        else:
            self.type, self.pack, self.convert = _SCALAR_TYPES[kind]

    def metadata(self) -> dict[str, Any]:
        shape = [self.length if self.length is not None else 1] if self.spectrum else [1]
        return {"type": self.type, "shape": shape, "encoding": "little"}


def _declarations(results: Any) -> list[Result]:
    """Accept {name: Result}, the engine's {name: (analysis, Result)}, or a list of Result."""
    items = results.values() if isinstance(results, Mapping) else (results or [])
    out = []
    for item in items:
        r = item if isinstance(item, Result) else tuple(item)[-1]
        if not isinstance(r, Result):
            raise TypeError(f"expected a Result declaration, got {item!r}")
        out.append(r)
    return out


def _parse_address(address_or_port: int | str, host: str) -> tuple[str, int]:
    if isinstance(address_or_port, (int, np.integer)):
        return host, int(address_or_port)
    text = str(address_or_port).strip()
    if text.isdigit():
        return host, int(text)
    rest = text.split("://", 1)[-1]
    h, sep, p = rest.rpartition(":")
    if not sep or not p.isdigit() or not h:
        raise ValueError(f"output stream address must be a port or tcp://host:port, got {address_or_port!r}")
    return h, int(p)


class ResultStream:
    """Publishes per-frame scalar and spectrum results as a bsread stream (see the module doc).

    ``address_or_port``: a port (bound on ``host``) or ``"tcp://host:port"``. ``results``:
    the result declarations. ``mode``: "pub" (any number of SUB clients; the default) or
    "push" (one PULL consumer gets every message, load-balanced among several). ``prefix``
    is prepended to every channel name (e.g. ``"SARES11-DQM:"``). Call ``open``, then
    ``send`` from one thread (the engine's), ``close`` at the end; ``dropped`` and ``sent``
    count messages.
    """

    def __init__(self, address_or_port: int | str, results: Any, mode: str = "pub", host: str = "127.0.0.1",
                 queue_size: int = 100, prefix: str = "", linger_ms: int = 500):
        if mode not in MODES:
            raise ValueError(f"output stream mode must be one of {MODES}, got {mode!r}")
        self.host, self.port = _parse_address(address_or_port, host)
        if not 0 < self.port < 65536:
            raise ValueError(f"output stream port must be 1..65535, got {self.port}")
        self.mode = mode
        self.queue_size = int(queue_size)
        self.linger_ms = int(linger_ms)
        self.channels: list[_Channel] = []
        self.skipped: list[str] = []  # declared results that are not streamed (images, texts, run summaries)
        seen: set[str] = set()
        for r in _declarations(results):
            kind = r.dtype.kind
            per_frame = not r.run_summary and r.kind in ("scalar", "spectrum")
            if not per_frame or kind not in _SCALAR_TYPES or r.name in seen:
                self.skipped.append(r.name)
                continue
            seen.add(r.name)
            self.channels.append(_Channel(prefix + r.name, r.name, r.kind == "spectrum", kind))
        self.dropped = 0        # messages refused by the socket (no consumer, or its queue full)
        self.sent = 0           # messages handed to ZeroMQ
        self.errors = 0         # values that could not be converted (sent as "no value")
        self.header_changes = 0  # data headers rebuilt after a spectrum changed length
        self._sender: Any = None  # a bsread.sender.Sender while open (bsread has no type hints)
        self._socket = None
        self._header: bytes = b""
        self._hash = ""
        self._lock = threading.Lock()
        self._send_warned = False

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._socket is not None

    # ---- life cycle -------------------------------------------------------------------

    def open(self) -> "ResultStream":
        """Bind the socket (raises RuntimeError if the port is taken)."""
        import zmq
        from bsread import PUB, PUSH
        from bsread.sender import Sender

        with self._lock:
            if self._socket is not None:
                return self
            sender = Sender(queue_size=self.queue_size, port=self.port, address=f"tcp://{self.host}",
                            mode=PUSH if self.mode == "push" else PUB, block=False)
            for ch in self.channels:
                sender.add_channel(ch.name, metadata=ch.metadata())
            try:
                sender.open()  # binds f"tcp://{host}:{port}", builds the data header and its hash
            except RuntimeError as exc:
                raise RuntimeError(f"result stream: cannot bind {self.address}: {exc.__cause__ or exc} "
                                   "(port taken, or host not an address of this machine)") from exc
            sock = sender.stream.socket
            sock.setsockopt(zmq.LINGER, self.linger_ms)
            self._sender, self._socket = sender, sock
            self._load_header()
            self._zmq_again, self._zmq_error = zmq.Again, zmq.ZMQError
            self._flags = zmq.NOBLOCK
        log.info("result stream (%s) on %s: %d channels; not streamed: %s", self.mode, self.address,
                 len(self.channels), ", ".join(self.skipped) or "none")
        return self

    def close(self) -> None:
        with self._lock:
            sender, self._sender, self._socket = self._sender, None, None
        if sender is not None:
            try:
                sender.close()
            except Exception:  # noqa: BLE001 - closing must not fail the caller
                log.exception("closing the result stream on %s failed", self.address)

    def __enter__(self) -> "ResultStream":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- sending ------------------------------------------------------------------------

    def _load_header(self) -> None:
        self._header = self._sender.data_header_bytes
        self._hash = self._sender.main_header["hash"]

    def _set_length(self, ch: _Channel, length: int) -> None:
        if ch.length is not None:
            self.header_changes += 1
            log.info("result stream: %s changed length %d -> %d; new data header", ch.name, ch.length, length)
        ch.length = length
        self._sender.add_channel(ch.name, metadata=ch.metadata())  # rebuilds header and hash (stream open)
        self._load_header()

    def send(self, frame_id: int, results: Mapping[str, Any], timestamp: float | None = None) -> bool:
        """Publish one frame's results; True if ZeroMQ took the message, False if it was dropped.

        Missing results and ``None`` go out as bsread's "no value" (empty parts); NaN is sent
        as is. ``timestamp`` (epoch seconds; 0 or None: now) is the message's global timestamp.
        Never blocks and never raises for a value or a refused send: a message the socket
        refuses is counted in ``dropped``, a value that does not convert in ``errors``.
        """
        with self._lock:
            if self._socket is None:
                return False
            if not timestamp or not np.isfinite(timestamp):  # Frame.timestamp is 0.0 when unknown
                timestamp = time.time()
            sec = int(timestamp)
            ns = int((timestamp - sec) * 1e9)
            ts = struct.pack("<qq", sec, ns)
            values: list[bytes] = []
            for ch in self.channels:
                v = results.get(ch.result)
                data = b""
                if v is not None:
                    try:
                        if ch.spectrum:
                            a = np.asarray(v, dtype=ch.np_dtype)
                            if a.ndim != 1:
                                raise ValueError(f"expected a 1-D array, got shape {a.shape}")
                            if a.shape[0] != ch.length:
                                self._set_length(ch, a.shape[0])
                            data = a.tobytes()
                        else:
                            data = ch.pack.pack(ch.convert(v))
                    except (TypeError, ValueError, OverflowError, struct.error) as exc:
                        self.errors += 1
                        if not ch.warned:
                            ch.warned = True
                            log.warning("result stream: %s = %r cannot be sent as %s (%s); sent as no value",
                                        ch.name, v, ch.type, exc)
                        data = b""
                values.append(data)
            main = (f'{{"htype":"bsr_m-1.1","hash":"{self._hash}","pulse_id":{int(frame_id)},'
                    f'"global_timestamp":{{"sec":{sec},"ns":{ns}}}}}').encode()
            parts = [main, self._header]
            for data in values:
                parts.append(data)
                parts.append(ts if data else b"")
            try:
                self._socket.send_multipart(parts, self._flags, copy=True)
            except self._zmq_error as exc:
                self.dropped += 1
                if not isinstance(exc, self._zmq_again) and not self._send_warned:
                    self._send_warned = True  # e.g. the context was terminated; keep the engine going
                    log.warning("result stream on %s: send failed: %s (counted as dropped)", self.address, exc)
                return False
            self.sent += 1
            return True

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "header_changes": self.header_changes}


__all__ = ["MODES", "ResultStream"]
