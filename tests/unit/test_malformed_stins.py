"""Malformed STINS messages through a real PUSH socket into a real engine: each class is counted in
badEvents under its own kind, skipped, and never changes the state or loses the valid frames around it.

The messages are built here with plain json/struct/lz4/bitshuffle, as a broken or hostile sender would.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
import time

import lz4.block
import numpy as np
import pytest

from tango_dqm import compression
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.frames import BadInput, Frame, SeriesEnd, SeriesStart
from tango_dqm.sources import open_source
from tango_dqm.sources.zmq_stins import MAX_HEADER_BYTES, decode_image, parse_header
from tests.helpers import StinsSender, free_port

pytestmark = pytest.mark.timeout(60)

SHAPE = (16, 16)
REC = "tests.unit.plugins:FrameRecorder"


class EndWaiter:
    """Engine listener: an Event set when the engine leaves RUNNING (no polling)."""

    def __init__(self) -> None:
        self.left_running = threading.Event()
        self.states: list[str] = []

    def on_state(self, state: str, status: str) -> None:
        self.states.append(state)
        if state != "RUNNING" and "RUNNING" in self.states:
            self.left_running.set()

    def on_results(self, results, frame_id) -> None:
        pass

    def on_tick(self) -> None:
        pass


def good_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4000, size=SHAPE).astype(np.uint16) for _ in range(n)]


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def image_header(frame_id, **override) -> bytes:
    msg = {"htype": "image", "frame": frame_id, "shape": list(SHAPE), "type": "uint16", "compression": "none"}
    msg.update(override)
    return json.dumps(msg).encode()


def run_stins_scan(messages: list[list[bytes]], uri_options: str = "", timeout: float = 20.0):
    """Start a scan on a fresh port, send ``messages`` (lists of parts), wait for its end; the snapshot."""
    port = free_port()
    sender = StinsSender(port)
    waiter = EndWaiter()
    engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}{uri_options}"], analyses=["roi", REC]), listener=waiter)
    try:
        engine.start()
        for parts in messages:
            sender.raw(*parts)
        assert waiter.left_running.wait(timeout), engine.status()
        return engine.snapshot()
    finally:
        engine.close()
        sender.close()


def deep_json(depth: int) -> bytes:
    return b'{"htype": "image", "frame": 1, "x": ' + b"[" * depth + b"]" * depth + b"}"


DATA = np.zeros(SHAPE, np.uint16).tobytes()

# (name, message parts, kind)
MALFORMED: list[tuple[str, list[bytes], str]] = [
    ("shape product overflows int64", [image_header(0, shape=[2**32, 2**32]), DATA], "frame_too_large"),
    ("shape beyond 2 GiB", [image_header(0, shape=[65536, 32768]), DATA], "frame_too_large"),
    ("negative shape", [image_header(0, shape=[-16, -16]), DATA], "bad_shape"),
    ("float shape", [image_header(0, shape=[16.0, 16]), DATA], "bad_shape"),
    ("shape not a list", [image_header(0, shape="16x16"), DATA], "bad_shape"),
    ("bool shape", [image_header(0, shape=[True, 16]), DATA], "bad_shape"),
    ("4-d shape", [image_header(0, shape=[1, 1, 16, 16]), DATA], "bad_shape"),
    ("lz4 declaring 2 GiB from 12 bytes", [image_header(0, shape=[32768, 32768], compression="lz4"),
                                           b"\x1f\x00\x01\x00" + bytes(8)], "bad_decoded_size"),
    ("bslz4 declaring more than the shape", [image_header(0, compression="bslz4"),
                                             struct.pack(">QI", 2**31, 8192) + bytes(64)], "bad_decoded_size"),
    ("bslz4 declaring 2 GiB shape from 76 bytes", [image_header(0, shape=[32768, 32768], compression="bslz4"),
                                                   struct.pack(">QI", 2**31, 8192) + bytes(64)], "bad_decoded_size"),
    ("JSON nested 100000 deep", [deep_json(100_000), DATA], "json_too_deep"),
    ("header part beyond 1 MiB", [b" " * (MAX_HEADER_BYTES + 1), DATA], "header_too_large"),
    ("timestamp string", [image_header(0, timestamp="yesterday"), DATA], "bad_timestamp"),
    ("timestamp null", [image_header(0, timestamp=None), DATA], "bad_timestamp"),
    ("timestamp list", [image_header(0, timestamp=[1, 2]), DATA], "bad_timestamp"),
    ("timestamp NaN", [image_header(0, timestamp=float("nan")), DATA], "bad_timestamp"),
    ("timestamp bool", [image_header(0, timestamp=True), DATA], "bad_timestamp"),
    ("timestamp beyond float", [image_header(0, timestamp=10**400), DATA], "bad_timestamp"),
    ("type list", [image_header(0, type=["uint16"]), DATA], "bad_type"),
    ("type object", [image_header(0, type={"name": "uint16"}), DATA], "bad_type"),
    ("htype list", [json.dumps({"htype": ["image"], "frame": 1}).encode(), DATA], "bad_htype"),
    ("htype object", [json.dumps({"htype": {"a": 1}}).encode()], "bad_htype"),
    ("htype missing", [json.dumps({"frame": 1}).encode()], "bad_htype"),
    ("unknown dtype", [image_header(0, type="complex128"), DATA], "unknown_type"),
    ("frame id string", [image_header("7"), DATA], "bad_frame_id"),
    ("frame id negative", [image_header(-1), DATA], "bad_frame_id"),
    ("frame id bool", [image_header(True), DATA], "bad_frame_id"),
    ("frame id float", [image_header(7.0), DATA], "bad_frame_id"),
    ("frame id beyond int64", [image_header(2**63), DATA], "bad_frame_id"),
    ("frame id null", [image_header(None), DATA], "bad_frame_id"),
    ("no data part", [image_header(0)], "missing_part"),
    ("two data parts", [image_header(0), DATA, DATA], "extra_part"),
    ("truncated raw part", [image_header(0), DATA[:-1]], "size_mismatch"),
    ("truncated bslz4 part", [image_header(0, compression="bslz4"),
                              compression.encode_bslz4(good_frames(1)[0])[:-9]], "corrupt_compressed"),
    ("unknown compression", [image_header(0, compression="zstd"), DATA], "unsupported_compression"),
    ("compression list", [image_header(0, compression=["lz4"]), DATA], "unsupported_compression"),
    ("JSON array", [b"[1, 2]", DATA], "bad_json"),
    ("not UTF-8", [b"\xff\xfe{", DATA], "bad_json"),
    ("header nimages beyond int64", [json.dumps({"htype": "header", "nimages": 2**64}).encode()], "bad_header"),
    ("header nimages string", [json.dumps({"htype": "header", "nimages": "12"}).encode()], "bad_header"),
    ("header nimages bool", [json.dumps({"htype": "header", "nimages": True}).encode()], "bad_header"),
    ("header series object", [json.dumps({"htype": "header", "series": {"a": [1]}}).encode()], "bad_header"),
    ("series_end before any header", [json.dumps({"htype": "series_end"}).encode()], "series_end_without_header"),
    ("unknown htype", [json.dumps({"htype": "dheader-1.0"}).encode()], "unknown_htype"),
]


#: the cases decided by parse_header/decode_image alone (the others need the source's series state)
DECODER_CASES = [m for m in MALFORMED if m[2] not in ("bad_header", "series_end_without_header", "unknown_htype")]


@pytest.mark.parametrize("name, parts, kind", DECODER_CASES, ids=[m[0] for m in DECODER_CASES])
def test_decoder_classifies_each_malformed_message(name, parts, kind):
    """The pure decoding path, one message at a time (fast; the engine test below sends them all)."""
    msg = parse_header(parts[0])
    if not isinstance(msg, BadInput):
        assert msg["htype"] == "image"
        msg = decode_image(msg, parts, "det", "")
    assert isinstance(msg, BadInput), msg
    assert msg.kind == kind
    assert len(msg.detail) < 400  # bounded even for huge or nested values


def test_every_malformed_class_counted_by_kind_and_valid_frames_all_analysed():
    # the stray series_end first (once a frame has started the series a series_end is honoured),
    # then valid frames before, between and after the other malformed messages
    stray = [m for m in MALFORMED if m[2] == "series_end_without_header"]
    rest = [m for m in MALFORMED if m not in stray]
    n_between = (len(rest) + 7) // 8
    frames = good_frames(n_between + 1)
    messages: list[list[bytes]] = [parts for _, parts, _ in stray]
    for i, (_, parts, _) in enumerate(rest):
        if i % 8 == 0:
            messages.append([image_header(i // 8), frames[i // 8].tobytes()])
        messages.append(parts)
    messages.append([json.dumps({"htype": "header", "series": "s1"}).encode()])
    messages.append([image_header(n_between), frames[n_between].tobytes()])
    messages.append([json.dumps({"htype": "series_end"}).encode()])
    snap = run_stins_scan(messages)
    assert snap.state is EngineState.CLOSE, snap.status
    expected: dict[str, int] = {}
    for _, _, kind in MALFORMED:
        expected[kind] = expected.get(kind, 0) + 1
    assert snap.bad_kinds == expected
    assert snap.counters.bad == sum(expected.values()) == len(MALFORMED)
    assert snap.summary["recorded"] == [(i, digest(f)) for i, f in enumerate(frames)]
    assert snap.counters.completed == len(frames) and snap.counters.dropped == 0
    assert "series end" in snap.status


def test_stray_series_end_does_not_end_the_scan():
    """A series_end before the header is ignored; the header's series then ends normally."""
    frames = good_frames(5)
    end = [json.dumps({"htype": "series_end", "series": "old"}).encode()]
    messages = [end, end, [json.dumps({"htype": "header", "series": "7"}).encode()]]
    messages += [[image_header(i), f.tobytes()] for i, f in enumerate(frames)]
    messages += [end, [image_header(99), frames[0].tobytes()]]  # after the honoured end: not part of the scan
    snap = run_stins_scan(messages)
    assert snap.state is EngineState.CLOSE
    assert snap.bad_kinds == {"series_end_without_header": 2}
    assert [fid for fid, _ in snap.summary["recorded"]] == [0, 1, 2, 3, 4]
    assert snap.counters.completed == 5 and snap.counters.dropped == 0


def test_first_frame_starts_a_series_without_header():
    """Without a header the first valid frame starts the series, so its series_end is honoured."""
    frames = good_frames(3)
    messages = [[image_header(i), f.tobytes()] for i, f in enumerate(frames)]
    messages.append([json.dumps({"htype": "series_end"}).encode()])
    snap = run_stins_scan(messages)
    assert snap.state is EngineState.CLOSE and snap.counters.completed == 3 and snap.counters.bad == 0


def test_live_mode_series_end_starts_over():
    """In Live mode each series_end needs its own started series; a second one in a row is stray."""
    port = free_port()
    src = open_source(f"zmq://127.0.0.1:{port}")
    src.open()
    sender = StinsSender(port, bind=True)
    try:
        end = json.dumps({"htype": "series_end"}).encode()
        frame = good_frames(1)[0]
        sender.raw(image_header(0), frame.tobytes())
        sender.raw(end)
        sender.raw(end)
        sender.raw(json.dumps({"htype": "header", "series": "2"}).encode())
        sender.raw(end)
        stop = threading.Event()
        got = []
        deadline = time.monotonic() + 10
        for item in src.items(stop, live=True):
            if item is not None:
                got.append(item)
            if len(got) == 5 or time.monotonic() > deadline:
                break
    finally:
        src.close()
        sender.close()
    assert [type(g).__name__ for g in got] == ["Frame", "SeriesEnd", "BadInput", "SeriesStart", "SeriesEnd"]
    assert isinstance(got[0], Frame) and got[0].frame_id == 0
    assert isinstance(got[2], BadInput) and got[2].kind == "series_end_without_header"
    assert isinstance(got[3], SeriesStart) and (got[3].series, got[3].frames) == ("2", None)
    assert isinstance(got[4], SeriesEnd) and got[4].series == "2"


def test_bad_frame_keeps_its_frame_id():
    """A bad image with a valid id says which frame was bad (so it can be told from a lost one)."""
    item = decode_image(json.loads(image_header(42)), [b"", DATA[:3]], "det", "")
    assert isinstance(item, BadInput) and item.kind == "size_mismatch" and item.frame_id == 42
    item = decode_image(json.loads(image_header(2**63)), [b"", DATA], "det", "")
    assert item.kind == "bad_frame_id" and item.frame_id is None


def test_size_checks_come_before_any_allocation():
    """A 12-byte lz4 part for a 2 GiB shape is refused by arithmetic alone: fast and with no big buffer."""
    t0 = time.perf_counter()
    with pytest.raises(compression.DecodedSizeError, match="expands at most 255x"):
        compression.decode(b"\x1f\x00\x01\x00" + bytes(8), "lz4", (32768, 32768), np.uint16)
    with pytest.raises(compression.FrameTooLarge, match="limit"):
        compression.decode(bytes(10), "bslz4", (65536, 65536), np.uint16)
    with pytest.raises(compression.DecodedSizeError, match="uncompressed bytes"):
        compression.decode(struct.pack("<I", 2**31) + bytes(8), "lz4_sized", SHAPE, np.uint16)
    assert time.perf_counter() - t0 < 0.5
    # the bound is not too tight for real data: all-zero frames compress close to it and still decode
    zeros = np.zeros((1024, 1024), np.uint16)
    packed = lz4.block.compress(zeros.tobytes(), store_size=False)
    assert zeros.nbytes / len(packed) > 250
    np.testing.assert_array_equal(compression.decode(packed, "lz4", zeros.shape, zeros.dtype), zeros)
    np.testing.assert_array_equal(compression.decode(compression.encode_bslz4(zeros), "bslz4", zeros.shape,
                                                     zeros.dtype), zeros)


def test_an_unforeseen_decoding_failure_is_bad_message_not_fault(monkeypatch):
    """Safety net: an exception no check anticipated (injected into the decoder) is counted, not a FAULT."""
    real = compression.decode

    def flaky(buffer, name, shape, dtype, *args, **kwargs):
        if bytes(buffer[:2]) == b"\xde\xad":
            raise RuntimeError("injected decoder failure")
        return real(buffer, name, shape, dtype, *args, **kwargs)

    monkeypatch.setattr("tango_dqm.sources.zmq_stins._compression.decode", flaky)
    frames = good_frames(2)
    poison = b"\xde\xad" + frames[0].tobytes()[2:]
    messages = [[image_header(0), frames[0].tobytes()], [image_header(1), poison], [image_header(2), poison],
                [image_header(3), frames[1].tobytes()], [json.dumps({"htype": "series_end"}).encode()]]
    snap = run_stins_scan(messages)
    assert snap.state is EngineState.CLOSE, snap.status
    assert snap.bad_kinds == {"bad_message": 2}
    assert [fid for fid, _ in snap.summary["recorded"]] == [0, 3]
