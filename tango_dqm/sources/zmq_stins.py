"""``zmq://host:port[?mode=pull|sub][&bind=1][&hwm=N]``: STINS-style ZeroMQ streams (MAX IV streaming-receiver).

Messages (multipart):
  ``{"htype": "header", "series": ..., "nimages": N?}``      start of a series
  ``{"htype": "image", "frame": n, "shape": [rows, cols], "type": "uint16",
    "compression": "none", "timestamp": t?}`` + one raw C-order part      one frame
  ``{"htype": "series_end"}``                                end of the series
Uncompressed image data is wrapped zero-copy (``np.frombuffer`` over the ZeroMQ buffer).

``"compression"`` may also be ``"bslz4"`` (bitshuffle + LZ4 as Dectris/STINS send it: the
12-byte header, uint64 BE size and uint32 BE block size in bytes, then the
``bitshuffle.compress_lz4`` blocks) or ``"lz4"`` (one LZ4 block, no header); see
:mod:`tango_dqm.sources.compression`.

Options (anything else is refused when the ``Sources`` entry is parsed, i.e. at Init):

- ``mode``: ``pull`` (default, from a PUSH sender) or ``sub`` (from a PUB sender).
- ``bind=1``: bind instead of connecting.
- ``hwm=N`` (1..100000, default 16): the socket's receive high-water mark, the most
  messages ZeroMQ buffers for this source. With PULL a full buffer holds the sender back
  (nothing is lost); with SUB ZeroMQ drops what does not fit, and the engine counts the
  missing frame ids as dropped. Frames buffered by one monitor are therefore bounded by
  ``QueueSize + sum over sources of (hwm + 2)`` (see docs/operations.md). While the buffer
  has not run empty for a second, :meth:`ZmqStinsSource.backlog` says so and the engine
  shows it in Status.

Malformed messages are yielded as BadInput (counted in ``badEvents`` by kind, skipped, the
stream goes on); each is checked before anything is allocated for it:

=============================  =============================================================
``header_too_large``           first part longer than ``MAX_HEADER_BYTES``
``bad_json``                   first part not JSON (or not UTF-8), or not a JSON object
``json_too_deep``              JSON nested beyond Python's recursion limit
``bad_htype``                  ``htype`` missing or not a string
``unknown_htype``              ``htype`` not header, image or series_end
``bad_header``                 header whose ``nimages``/``frames`` is not an integer in
                               0..INT64_MAX or whose ``series`` is not a string/integer
``missing_part``/``extra_part`` image message without exactly one data part
``bad_frame_id``               ``frame`` not an integer in 0..INT64_MAX (bool, float, string...)
``bad_type``/``unknown_type``  ``type`` not a string / not a known dtype
``bad_shape``                  ``shape`` not a list of 1..3 positive integers
``frame_too_large``            shape x dtype beyond ``MAX_FRAME_BYTES`` (2 GiB)
``bad_timestamp``              ``timestamp`` present but not a finite number
``unsupported_compression``    unknown ``compression``
``size_mismatch``              uncompressed part of the wrong length (e.g. truncated)
``bad_decoded_size``           compressed part declaring a size the shape does not need,
                               or more than LZ4 can produce from it
``corrupt_compressed``         compressed part that does not decode
``series_end_without_header``  see below
``bad_message``                anything else that fails to decode (logged with its traceback)
=============================  =============================================================

Series rule: a series *starts* with a valid header or, without one, with its first valid
frame. A ``series_end`` is honoured only for a started series; a stray one (before any
header or frame, or a second one in a row) is counted as ``series_end_without_header``
and ignored, so it cannot end the scan and lose the frames that follow. In a scan the
source ends after an honoured ``series_end``; in Live mode the next series starts over.
A header with bad fields is counted as ``bad_header`` and otherwise ignored.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from . import compression as _compression
from ..frames import BadInput, Frame, SeriesEnd, SeriesStart, check_shape, is_count, short
from .base import BacklogMeter, Source, SourceError, SourceItem, SourceSpec

log = logging.getLogger(__name__)

#: dtypes a STINS image may declare
DTYPES = {name: np.dtype(name) for name in
          ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")}
POLL_MS = 100
#: longest JSON part accepted; real headers are a few hundred bytes
MAX_HEADER_BYTES = 1024 * 1024
DEFAULT_HWM = 16
MAX_HWM = 100_000
OPTIONS = frozenset({"mode", "bind", "hwm"})


def _nbytes(part: Any) -> int:
    return part.buffer.nbytes if hasattr(part, "buffer") else len(part)


def parse_header(part: Any) -> dict[str, Any] | BadInput:
    """Decode the JSON part of a message, or describe why it is malformed."""
    size = _nbytes(part)
    if size > MAX_HEADER_BYTES:
        return BadInput("header_too_large", f"first part is {size} bytes, more than the {MAX_HEADER_BYTES} "
                        "accepted for a JSON header")
    try:
        msg = json.loads(bytes(part.buffer if hasattr(part, "buffer") else part))
    except RecursionError:
        return BadInput("json_too_deep", "first part is JSON nested too deeply to decode")
    except (ValueError, UnicodeDecodeError) as exc:
        return BadInput("bad_json", f"first part is not JSON: {exc}")
    if not isinstance(msg, dict):
        return BadInput("bad_json", f"first part is JSON {type(msg).__name__}, not an object")
    if not isinstance(msg.get("htype"), str):
        return BadInput("bad_htype", f"'htype' must be a string, got {short(msg.get('htype'))}")
    return msg


def decode_image(msg: dict[str, Any], parts: list[Any], stream: str, series: str) -> Frame | BadInput:
    """Build a Frame from an ``image`` message and its data part (zero-copy when uncompressed)."""
    frame_id = msg.get("frame")
    if not is_count(frame_id):
        return BadInput("bad_frame_id", f"image 'frame' must be an integer from 0 to 2**63-1, got {short(frame_id)}",
                        stream)
    if len(parts) < 2:
        return BadInput("missing_part", f"image message for frame {frame_id} has no data part", stream, frame_id)
    if len(parts) > 2:
        return BadInput("extra_part", f"image message for frame {frame_id} has {len(parts)} parts, expected 2",
                        stream, frame_id)
    type_name = msg.get("type")
    if not isinstance(type_name, str):
        return BadInput("bad_type", f"frame {frame_id}: 'type' must be a string, got {short(type_name)}",
                        stream, frame_id)
    dtype = DTYPES.get(type_name)
    if dtype is None:
        return BadInput("unknown_type", f"frame {frame_id}: unknown type {short(type_name)}; known: "
                        f"{', '.join(DTYPES)}", stream, frame_id)
    shape: Any = msg.get("shape")  # decoded JSON: checked next
    problem = check_shape(shape, dtype.itemsize)
    if problem is not None:
        return BadInput(problem[0], f"frame {frame_id}: {problem[1]}", stream, frame_id)
    timestamp = _timestamp(msg)
    if timestamp is None:
        return BadInput("bad_timestamp", f"frame {frame_id}: 'timestamp' must be a finite number, "
                        f"got {short(msg.get('timestamp'))}", stream, frame_id)
    try:
        compression = _compression.canonical(msg.get("compression", "none"))
    except _compression.UnsupportedCompression:
        return BadInput("unsupported_compression", f"frame {frame_id}: compression "
                        f"{short(msg.get('compression'))}; supported: none, bslz4, lz4", stream, frame_id)
    buf = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
    try:
        data = _compression.decode(buf, compression, shape, dtype)
    except _compression.CompressionError as exc:
        return BadInput(exc.kind, f"frame {frame_id}: {exc}", stream, frame_id)
    return Frame(data, frame_id, timestamp, stream, series)


def _timestamp(msg: dict[str, Any]) -> float | None:
    """The message's timestamp (the receive time when absent); None when it is not a finite number."""
    if "timestamp" not in msg:
        return time.time()
    value = msg["timestamp"]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        value = float(value)  # an int beyond float range raises
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def check_header(msg: dict[str, Any]) -> str | None:
    """Why a ``header`` message is unusable, or None."""
    for key in ("nimages", "frames"):
        if key in msg and msg[key] is not None and not is_count(msg[key]):
            return f"header '{key}' must be an integer from 0 to 2**63-1, got {short(msg[key])}"
    series = msg.get("series", "")
    if not isinstance(series, (str, int)) or isinstance(series, bool):
        return f"header 'series' must be a string or integer, got {short(series)}"
    if len(str(series)) > 256:
        return f"header 'series' is {len(str(series))} characters long, more than 256"
    return None


class ZmqStinsSource(Source):
    """PULL (default) or SUB socket receiving STINS messages (see the module docstring)."""

    scheme = "zmq"
    options = OPTIONS

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        if not spec.host or not spec.port:
            raise SourceError(f"source {spec.uri!r}: needs host and port (1-65535), e.g. zmq://127.0.0.1:9999")
        self.mode = spec.q("mode", "pull").lower()
        if self.mode not in ("pull", "sub"):
            raise SourceError(f"source {spec.uri!r}: option mode must be pull or sub, got {self.mode!r}")
        self.bind = spec.q_bool("bind", False)
        self.rcvhwm = self.buffer_limit = spec.q_int("hwm", DEFAULT_HWM, lo=1, hi=MAX_HWM)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._meter = BacklogMeter()
        self._traced = False

    def open(self) -> None:
        # A bound socket gets its own context: terminating it in close() returns only once the
        # port is released (socket close is asynchronous), so the next engine can bind it at once.
        self._ctx = zmq.Context() if self.bind else zmq.Context.instance()
        sock = self._ctx.socket(zmq.PULL if self.mode == "pull" else zmq.SUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.rcvhwm)  # before connect/bind: it applies to new pipes only
            if self.mode == "sub":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
        except zmq.ZMQError as exc:
            sock.close(0)
            raise SourceError(f"source {self.spec.uri!r}: cannot set socket options (hwm={self.rcvhwm}): "
                              f"{exc}") from None
        address = f"tcp://{self.spec.host}:{self.spec.port}"
        try:
            sock.bind(address) if self.bind else sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._term()
            raise SourceError(f"source {self.spec.uri!r}: cannot {'bind' if self.bind else 'connect'} "
                              f"{address}: {exc}") from None
        self._sock = sock

    def backlog(self) -> str:
        if not self._meter.outrun:
            return ""
        effect = "sender held back" if self.mode == "pull" else "ZeroMQ drops what does not fit"
        return (f"analysis slower than stream {self.name}: its receive buffer (hwm={self.rcvhwm}) "
                f"has not run empty for {self._meter.after:g} s, {effect}")

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        sock = self._sock
        assert sock is not None, "open() first"
        series = ""
        started = False  # a series started: valid header or first valid frame (see the module docstring)
        meter = self._meter
        meter.start()
        try:
            while not stop.is_set():
                if not sock.poll(0):
                    meter.empty()
                    if not sock.poll(POLL_MS):
                        yield None
                        continue
                parts = sock.recv_multipart(copy=False)
                msg = parse_header(parts[0])
                if isinstance(msg, BadInput):
                    msg.stream = self.name
                    yield msg
                    continue
                htype = msg["htype"]
                if htype == "image":
                    try:
                        item = decode_image(msg, parts, self.name, series)
                    except Exception as exc:  # noqa: BLE001 - a message the checks above missed: bad, not FAULT
                        if not self._traced:  # the traceback once; the engine counts and logs the kind
                            self._traced = True
                            log.warning("undecodable image message on stream %s", self.name, exc_info=True)
                        item = BadInput("bad_message", f"{type(exc).__name__}: {exc}", self.name)
                    started = started or isinstance(item, Frame)
                    yield item
                elif htype == "header":
                    problem = check_header(msg)
                    if problem is not None:
                        yield BadInput("bad_header", problem, self.name)
                        continue
                    series, started = str(msg.get("series", "")), True
                    total = msg.get("nimages", msg.get("frames"))
                    announced = total if isinstance(total, int) and not isinstance(total, bool) and total > 0 else None
                    yield SeriesStart(self.name, series, announced)
                elif htype == "series_end":
                    if not started:
                        yield BadInput("series_end_without_header", "series_end before any header or frame of a "
                                       "series: ignored, the scan goes on", self.name)
                        continue
                    yield SeriesEnd(self.name, series)
                    if not live:
                        return
                    series, started = "", False
                else:
                    yield BadInput("unknown_htype", f"unknown htype {short(htype)}", self.name)
        finally:
            meter.stop()

    def close(self) -> None:
        self._meter.stop()
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._term()

    def _term(self) -> None:
        if self.bind and self._ctx is not None:
            self._ctx.term()  # linger 0: returns as soon as the socket's port is released
        self._ctx = None
