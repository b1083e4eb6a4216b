"""``zmq://host:port[?mode=pull|sub][&bind=1]``: STINS-style ZeroMQ streams (MAX IV streaming-receiver).

Messages (multipart):
  ``{"htype": "header", "series": ..., "nimages": N?}``      start of a series
  ``{"htype": "image", "frame": n, "shape": [rows, cols], "type": "uint16",
    "compression": "none"}`` + one raw C-order part           one frame
  ``{"htype": "series_end"}``                                end of the series
Uncompressed image data is wrapped zero-copy (``np.frombuffer`` over the ZeroMQ buffer).

``"compression"`` may also be ``"bslz4"`` (bitshuffle + LZ4 as Dectris/STINS send it: the
12-byte header, uint64 BE size and uint32 BE block size in bytes, then the
``bitshuffle.compress_lz4`` blocks) or ``"lz4"`` (one LZ4 block, no header); see
:mod:`tango_dqm.compression`. A corrupt compressed part gives
``BadInput("corrupt_compressed")``; an unknown compression ``"unsupported_compression"``.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import zmq

from .. import compression as _compression
from ..frames import BadInput, Frame, SeriesEnd
from .base import Source, SourceError, SourceItem, SourceSpec

#: dtypes a STINS image may declare
DTYPES = {name: np.dtype(name) for name in
          ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")}
POLL_MS = 100


def parse_header(part: Any) -> dict[str, Any] | BadInput:
    """Decode the JSON part of a message, or describe why it is malformed."""
    try:
        msg = json.loads(bytes(part.buffer if hasattr(part, "buffer") else part))
    except (ValueError, UnicodeDecodeError) as exc:
        return BadInput("bad_json", f"first part is not JSON: {exc}")
    if not isinstance(msg, dict) or not isinstance(msg.get("htype"), str):
        return BadInput("bad_json", "first part is not a JSON object with an 'htype'")
    return msg


def decode_image(msg: dict[str, Any], parts: list[Any], stream: str, series: str) -> Frame | BadInput:
    """Build a Frame from an ``image`` message and its data part (zero-copy)."""
    if len(parts) < 2:
        return BadInput("missing_part", f"image message for frame {msg.get('frame')} has no data part", stream)
    if len(parts) > 2:
        return BadInput("extra_part", f"image message has {len(parts)} parts, expected 2", stream)
    frame_id = msg.get("frame")
    if not isinstance(frame_id, int) or isinstance(frame_id, bool) or frame_id < 0:
        return BadInput("bad_frame_id", f"image 'frame' must be a non-negative integer, got {frame_id!r}", stream)
    dtype = DTYPES.get(msg.get("type"))  # type: ignore[arg-type]
    if dtype is None:
        return BadInput("unknown_type", f"frame {frame_id}: unknown type {msg.get('type')!r}", stream)
    shape = msg.get("shape")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        return BadInput("bad_shape", f"frame {frame_id}: shape must be 1-3 positive integers, got {shape!r}", stream)
    try:
        compression = _compression.canonical(msg.get("compression", "none"))
    except _compression.UnsupportedCompression:
        return BadInput("unsupported_compression", f"frame {frame_id}: compression {msg.get('compression')!r}; "
                        f"supported: none, bslz4, lz4", stream)
    buf = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
    if compression == "none":
        expected = int(np.prod(shape)) * dtype.itemsize
        if buf.nbytes != expected:
            return BadInput("size_mismatch",
                            f"frame {frame_id}: {buf.nbytes} bytes for shape {shape} {dtype.name}, expected {expected}",
                            stream)
        data = np.frombuffer(buf, dtype=dtype).reshape(shape)
    else:
        try:
            data = _compression.decode(buf, compression, shape, dtype)
        except _compression.CompressionError as exc:
            return BadInput("corrupt_compressed", f"frame {frame_id}: {exc}", stream)
    return Frame(data, frame_id, float(msg.get("timestamp", time.time())), stream, series)


class ZmqStinsSource(Source):
    """PULL (default) or SUB socket receiving STINS messages."""

    scheme = "zmq"

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        if not spec.host or spec.port is None:
            raise SourceError(f"source {spec.uri!r}: needs host and port, e.g. zmq://127.0.0.1:9999")
        self.mode = spec.q("mode", "pull").lower()
        if self.mode not in ("pull", "sub"):
            raise SourceError(f"source {spec.uri!r}: mode must be pull or sub, got {self.mode!r}")
        self.bind = spec.q_bool("bind", False)
        self.rcvhwm = spec.q_int("hwm", 1000)
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None

    def open(self) -> None:
        # A bound socket gets its own context: terminating it in close() returns only once the
        # port is released (socket close is asynchronous), so the next engine can bind it at once.
        self._ctx = zmq.Context() if self.bind else zmq.Context.instance()
        sock = self._ctx.socket(zmq.PULL if self.mode == "pull" else zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        if self.mode == "sub":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        address = f"tcp://{self.spec.host}:{self.spec.port}"
        try:
            sock.bind(address) if self.bind else sock.connect(address)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._term()
            raise SourceError(f"source {self.spec.uri!r}: cannot {'bind' if self.bind else 'connect'} "
                              f"{address}: {exc}") from None
        self._sock = sock

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        sock = self._sock
        assert sock is not None, "open() first"
        series = ""
        while not stop.is_set():
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
                item = decode_image(msg, parts, self.name, series)
                fid = msg.get("frame")
                if isinstance(item, BadInput) and isinstance(fid, int) and not isinstance(fid, bool) and fid >= 0:
                    item.frame_id = fid  # the engine accounts this id as bad, not also as a gap
                yield item
            elif htype == "header":
                series = str(msg.get("series", ""))
                total = msg.get("nimages", msg.get("frames"))
                if isinstance(total, int) and total > 0 and not live:
                    self.expected_frames = total
            elif htype == "series_end":
                yield SeriesEnd(self.name, series)
                if not live:
                    return
            else:
                yield BadInput("unknown_htype", f"unknown htype {htype!r}", self.name)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._term()

    def _term(self) -> None:
        if self.bind and self._ctx is not None:
            self._ctx.term()  # linger 0: returns as soon as the socket's port is released
        self._ctx = None
