"""``bsread://host:port?mode=pull|sub&channel=NAME``: PSI bsread streams through the ``bsread`` package.

URI form::

    bsread://HOST:PORT?channel=NAME[&mode=pull|sub][&bind=1][&frames=N][&idle=SECONDS]
                       [&start=PULSE_ID][&hwm=N][&series=NAME]

- ``channel`` (required): the array channel that becomes ``Frame.data``. bsread gives
  shapes fastest dimension first (``[width, height]``); the frame is the numpy array of
  shape ``(height, width)``, i.e. the channel's shape reversed, as bsread itself does.
- Every other channel of the message goes into ``frame.meta`` as ``{name: value}``
  (scalars as Python numbers, strings as str, arrays as numpy arrays, None when empty).
- ``frame_id`` is the message's ``pulse_id``; ``timestamp`` its global timestamp.
- ``mode``: ``pull`` (default, from a PUSH sender) or ``sub`` (from a PUB sender);
  ``bind=1`` binds instead of connecting. A host is always required: the source never
  lets bsread fall back to querying a PSI dispatcher.
- ``frames=N``: the scan has N events (``expected_frames``); otherwise unknown.
- ``idle=SECONDS``: in a scan, the series ends (SeriesEnd) after this long without a
  message, once at least one message has arrived. bsread streams have no end marker, so
  without ``frames`` or ``idle`` a scan runs until Stop.
- ``hwm`` (1..100000, default 16): the ZeroMQ high-water mark, the most messages buffered
  for this source (bsread's own default is 100). With PULL a full buffer holds the sender
  back; with SUB ZeroMQ drops what does not fit and the pulse-id gaps are counted as
  dropped. While the buffer has not run empty for a second, ``backlog()`` says so and
  the engine shows it in Status. Any other option is refused when the entry is parsed.

The data header is re-read whenever its hash changes, so a sender may change the image
shape, dtype, compression or channel set at any time without a restart. Images are
decoded by :mod:`tango_dqm.compression` (``none`` zero-copy over the ZeroMQ buffer,
``bitshuffle_lz4`` and ``lz4`` validated before decoding); other channels by bsread's
own readers.

Malformed input is yielded as BadInput and the stream goes on: ``bad_json`` (main
header), ``bad_header`` (no or bad pulse_id), ``bad_data_header``, ``missing_part``,
``missing_channel`` (the image channel is not in the message), ``wrong_channel_type``
(the image channel is a string, bool or scalar), ``missing_value`` (empty image part),
``unsupported_compression``, ``size_mismatch``, ``corrupt_compressed``, ``bad_decoded_size``
(a compressed value declaring a size the shape does not need, or more than LZ4 can produce),
``frame_too_large`` (the channel's shape needs more than 2 GiB), ``bad_message`` (anything
else that fails to decode). A pulse id must be an integer from 0 to 2**63-1.

Lost messages: pulse-id gaps between received messages are counted as dropped by the
engine. In SUB mode a late subscriber (ZeroMQ's slow joiner) also misses the messages
published before its subscription took effect; nothing in the stream tells how many.
With ``start=PULSE_ID`` (the pulse id the series starts at) the first received frame
carries ``frame.meta["dropped_before"] = first_pulse_id - start`` and the source keeps the
number in ``dropped_before``; without it, the first received pulse id is logged (INFO)
so the loss at the start is visible, and the very first frame is always delivered
(nothing is discarded to synchronise).
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

from .. import compression as _compression
from ..frames import BadInput, Frame, SeriesEnd, check_shape, is_count, short
from .base import BacklogMeter, Source, SourceError, SourceItem, SourceSpec

log = logging.getLogger(__name__)

POLL_MS = 100
DEFAULT_HWM = 16
MAX_HEADER_BYTES = 1024 * 1024
MAX_HWM = 100_000
OPTIONS = frozenset({"channel", "mode", "bind", "frames", "idle", "start", "hwm", "series"})

#: bsread channel types an image channel may have -> numpy type code
NUMERIC_TYPES = {"int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4",
                 "int64": "i8", "uint64": "u8", "float32": "f4", "float64": "f8"}
#: bsread compression names -> tango_dqm.compression names
COMPRESSIONS = {None: "none", "none": "none", "bitshuffle_lz4": "bslz4", "lz4": "lz4_sized"}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers, so meta is easy to log and serialise."""
    if isinstance(value, np.generic):
        return value.item()
    return value


class _ImageChannel:
    """How to decode the image channel of the current data header (or why it cannot be)."""

    __slots__ = ("name", "dtype", "shape", "compression", "problem")

    def __init__(self, channel: dict[str, Any]):
        self.name = channel["name"]
        self.dtype: np.dtype | None = None
        self.shape: tuple[int, ...] = ()
        self.compression = "none"
        self.problem: BadInput | None = None
        ctype = str(channel.get("type", "float64")).lower()
        shape = channel.get("shape", [1])
        if ctype not in NUMERIC_TYPES:
            self.problem = BadInput("wrong_channel_type", f"image channel {self.name!r} has type {ctype!r}, "
                                    f"expected one of {sorted(NUMERIC_TYPES)}")
            return
        if (not isinstance(shape, list) or not shape
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            self.problem = BadInput("wrong_channel_type", f"image channel {self.name!r} has shape {short(shape)}, "
                                    "expected a list of positive integers")
            return
        too_big = check_shape(shape, np.dtype(NUMERIC_TYPES[ctype]).itemsize, max_dims=len(shape))
        if too_big is not None:
            self.problem = BadInput(too_big[0], f"image channel {self.name!r}: {too_big[1]}")
            return
        if shape == [1]:
            self.problem = BadInput("wrong_channel_type", f"image channel {self.name!r} is a scalar "
                                    "(shape [1]), expected an array")
            return
        comp = channel.get("compression")
        if not (comp is None or isinstance(comp, str)) or comp not in COMPRESSIONS:
            self.problem = BadInput("unsupported_compression", f"image channel {self.name!r} has compression "
                                    f"{comp!r}, supported: none, bitshuffle_lz4, lz4")
            return
        self.compression = COMPRESSIONS[comp]
        self.dtype = np.dtype((">" if channel.get("encoding") == "big" else "<") + NUMERIC_TYPES[ctype])
        self.shape = tuple(shape[::-1])  # bsread: fastest dimension first; numpy: slowest first

    def decode(self, raw: Any, pulse_id: int) -> np.ndarray | BadInput:
        assert self.dtype is not None
        try:
            return _compression.decode(raw, self.compression, self.shape, self.dtype)
        except _compression.CompressionError as exc:
            return BadInput(exc.kind, f"pulse {pulse_id}, channel {self.name!r}: {exc}", frame_id=pulse_id)


def _timestamp(ts: Any) -> float:
    """The message's global timestamp in seconds; the receive time when it is absent or unusable."""
    if isinstance(ts, dict):
        sec, ns = ts.get("sec", ts.get("epoch")), ts.get("ns", 0) or 0
        if (isinstance(sec, (int, float)) and isinstance(ns, (int, float))
                and not isinstance(sec, bool) and not isinstance(ns, bool)):
            try:
                value = float(sec) + float(ns) * 1e-9
            except OverflowError:  # an integer beyond float range
                value = math.nan
            if math.isfinite(value):
                return value
    return time.time()


class BsreadHandler:
    """An mflow receive handler for bsread messages yielding Frame / BadInput / None.

    It replaces bsread's ``handlers.compact.Handler`` (passed as ``bsread.Source.receive(
    handler=...)``) so the image is decoded by :mod:`tango_dqm.compression` and every
    malformed message becomes a BadInput with a kind, instead of a logged warning and a
    ``None`` value. It never raises: mflow would log the exception and report "no message".
    """

    def __init__(self, image_channel: str, stream: str, series: str = ""):
        self.image_channel = image_channel
        self.stream = stream
        self.series = series
        self._hash: Any = None
        self._channels: list[tuple[str, Any]] = []  # (name, reader or _ImageChannel)
        self.format_changes = 0

    def receive(self, receiver: Any) -> Frame | BadInput | None:
        try:
            item = self._receive(receiver)
        except Exception as exc:  # noqa: BLE001 - any decoding failure is bad input, never a crash
            item = BadInput("bad_message", f"{type(exc).__name__}: {exc}")
        if isinstance(item, BadInput):
            item.stream = self.stream
        return item

    def _read_data_header(self, header: dict[str, Any], raw: Any) -> BadInput | None:
        from bsread.data.helpers import get_channel_reader, get_value_reader  # noqa: PLC0415

        text = get_value_reader("string", header.get("dh_compression"), value_name="data_header")(raw)
        if not text:
            return BadInput("bad_data_header", f"pulse {header['pulse_id']}: data header cannot be decoded "
                            f"(dh_compression {header.get('dh_compression')!r})")
        try:
            data_header = json.loads(text)
            channels = data_header["channels"]
            if not isinstance(channels, list) or not channels:
                raise ValueError("no channels")
            defs: list[tuple[str, Any]] = []
            for channel in channels:
                name = channel["name"]
                if name == self.image_channel:
                    defs.append((name, _ImageChannel(dict(channel))))
                else:
                    ch = dict(channel)
                    ch["encoding"] = ">" if ch.get("encoding") == "big" else "<"
                    defs.append((name, get_channel_reader(ch)))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # e.g. a non-string type
            return BadInput("bad_data_header", f"pulse {header['pulse_id']}: bad data header: "
                            f"{type(exc).__name__}: {exc}")
        self._channels = defs
        self._hash = header.get("hash")
        self.format_changes += 1
        return None

    def _receive(self, receiver: Any) -> Frame | BadInput | None:
        raw = receiver.next()
        if raw is None:  # receive timeout
            return None
        if len(raw) > MAX_HEADER_BYTES:
            return BadInput("header_too_large", f"main header is {len(raw)} bytes, more than {MAX_HEADER_BYTES}")
        try:
            header = json.loads(bytes(raw))
        except RecursionError:
            return BadInput("json_too_deep", "main header is JSON nested too deeply to decode")
        except (ValueError, UnicodeDecodeError) as exc:
            return BadInput("bad_json", f"main header is not JSON: {exc}")
        if not isinstance(header, dict):
            return BadInput("bad_json", "main header is not a JSON object")
        pulse_id = header.get("pulse_id")
        if not is_count(pulse_id):
            return BadInput("bad_header", f"main header pulse_id must be an integer from 0 to 2**63-1, "
                            f"got {short(pulse_id)}")
        if not receiver.has_more():
            return BadInput("missing_part", f"pulse {pulse_id}: message has no data header")
        dh_raw = receiver.next()
        if header.get("hash") != self._hash or self._hash is None:
            problem = self._read_data_header(header, dh_raw)
            if problem is not None:
                self._hash = None
                return problem
        image_raw: Any = None
        image_def: _ImageChannel | None = None
        meta: dict[str, Any] = {}
        received = 0
        for name, reader in self._channels:
            if not receiver.has_more():
                break
            value_raw = receiver.next()
            if receiver.has_more():
                receiver.next()  # the channel's timestamp part
            received += 1
            if isinstance(reader, _ImageChannel):
                image_def, image_raw = reader, value_raw
            else:
                meta[name] = _plain(reader(value_raw)) if value_raw else None
        if received < len(self._channels):
            return BadInput("missing_part", f"pulse {pulse_id}: {received} of {len(self._channels)} channel "
                            "parts received")
        if image_def is None:
            return BadInput("missing_channel", f"pulse {pulse_id}: channel {self.image_channel!r} is not in the "
                            f"message; channels: {[n for n, _ in self._channels]}")
        if image_def.problem is not None:
            return BadInput(image_def.problem.kind, f"pulse {pulse_id}: {image_def.problem.detail}")
        if not image_raw:
            return BadInput("missing_value", f"pulse {pulse_id}: channel {self.image_channel!r} has no value")
        data = image_def.decode(image_raw, pulse_id)
        if isinstance(data, BadInput):
            return data
        return Frame(data, pulse_id, _timestamp(header.get("global_timestamp")), self.stream, self.series, meta)


class BsreadSource(Source):
    """PULL or SUB receiver of a bsread stream (see the module docstring for the URI)."""

    scheme = "bsread"
    options = OPTIONS

    def __init__(self, spec: SourceSpec):
        super().__init__(spec)
        if not spec.host or not spec.port:
            raise SourceError(f"source {spec.uri!r}: needs host and port (1-65535), "
                              "e.g. bsread://127.0.0.1:9999?channel=image "
                              "(a host is required: the PSI dispatcher is never queried)")
        self.channel = spec.q("channel", "")
        if not self.channel:
            raise SourceError(f"source {spec.uri!r}: needs ?channel=NAME, the image channel to analyse")
        self.mode = spec.q("mode", "pull").lower()
        if self.mode not in ("pull", "sub"):
            raise SourceError(f"source {spec.uri!r}: mode must be pull or sub, got {self.mode!r}")
        self.bind = spec.q_bool("bind", False)
        self.hwm = self.buffer_limit = spec.q_int("hwm", DEFAULT_HWM, lo=1, hi=MAX_HWM)
        self.idle = spec.q_float("idle", 0.0, lo=0.0)
        frames = spec.q_int("frames", 0, lo=0, hi=2**63 - 1)
        self.start_pulse = spec.q_int("start", -1, lo=0, hi=2**63 - 1) if "start" in spec.query else None
        self.expected_frames = frames or None
        self.series = spec.q("series", "")
        #: messages missed before the first received one (known only with ?start=)
        self.dropped_before: int | None = None
        self.first_pulse_id: int | None = None
        self._src: Any = None
        self._handler: BsreadHandler | None = None
        self._meter = BacklogMeter()

    def backlog(self) -> str:
        if not self._meter.outrun:
            return ""
        effect = "sender held back" if self.mode == "pull" else "ZeroMQ drops what does not fit"
        return (f"analysis slower than stream {self.name}: its receive buffer (hwm={self.hwm}) "
                f"has not run empty for {self._meter.after:g} s, {effect}")

    def open(self) -> None:
        import bsread  # noqa: PLC0415 - heavy import, only when used

        host = self.spec.host
        if self.bind and host in ("*", "0.0.0.0"):
            host = "*"
        try:
            src = bsread.Source(host=host, port=self.spec.port,
                                mode=bsread.SUB if self.mode == "sub" else bsread.PULL,
                                conn_type=bsread.BIND if self.bind else bsread.CONNECT,
                                receive_timeout=POLL_MS, queue_size=self.hwm, copy=False)
            src.connect()
        except Exception as exc:  # noqa: BLE001 - mflow raises RuntimeError, zmq ZMQError
            raise SourceError(f"source {self.spec.uri!r}: cannot {'bind' if self.bind else 'connect'} "
                              f"tcp://{host}:{self.spec.port}: {exc}") from None
        self._src = src
        self._handler = BsreadHandler(self.channel, self.name, self.series)

    def items(self, stop: threading.Event, live: bool = False) -> Iterator[SourceItem]:
        src, handler = self._src, self._handler
        assert src is not None and handler is not None, "open() first"
        _compression.limit_threads()  # bsread's own readers may run bitshuffle in this thread too
        receive = handler.receive
        sock = src.stream.socket
        meter = self._meter
        meter.start()
        try:
            yield from self._receive_loop(src, sock, receive, meter, stop, live)
        finally:
            meter.stop()

    def _receive_loop(self, src: Any, sock: Any, receive: Any, meter: BacklogMeter, stop: threading.Event,
                      live: bool) -> Iterator[SourceItem]:
        last = time.monotonic()
        got_any = False
        while not stop.is_set():
            if not sock.poll(0):
                meter.empty()
            message = src.receive(handler=receive)
            if message is None or message.data is None:
                if (self.idle and got_any and not live and time.monotonic() - last >= self.idle):
                    yield SeriesEnd(self.name, self.series)
                    return
                yield None
                continue
            last = time.monotonic()
            got_any = True
            item = message.data
            if isinstance(item, Frame) and self.first_pulse_id is None:
                self._first_frame(item)
            yield item

    def _first_frame(self, frame: Frame) -> None:
        self.first_pulse_id = frame.frame_id
        if self.start_pulse is not None:
            self.dropped_before = max(0, frame.frame_id - self.start_pulse)
            frame.meta["dropped_before"] = self.dropped_before
            if self.dropped_before:
                log.warning("stream %s: first pulse received is %d, %d after the series start %d: "
                            "%d messages missed (slow joiner in SUB mode, or sender started early)",
                            self.name, frame.frame_id, self.dropped_before, self.start_pulse, self.dropped_before)
        else:
            log.info("stream %s (%s mode): first pulse received is %d; messages sent before it are not counted",
                     self.name, self.mode, frame.frame_id)

    def close(self) -> None:
        self._meter.stop()
        if self._src is not None:
            src, self._src = self._src, None
            try:
                src.disconnect()
            except Exception:  # noqa: BLE001 - closing must not fail
                log.debug("bsread disconnect failed", exc_info=True)
