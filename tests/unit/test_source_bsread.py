"""bsread source: a real ``bsread.sender.Sender`` on 127.0.0.1, read directly and through the engine.

Malformed messages are written on the sender's own socket in the bsread wire format
(main header, data header, value and timestamp per channel), built here by hand.
"""
from __future__ import annotations

import hashlib
import json
import struct
import threading
import time

import bitshuffle
import numpy as np
import pytest
from bsread import PUB, PUSH
from bsread.sender import Sender

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.frames import BadInput, Frame, SeriesEnd
from tango_dqm.sources import SourceError, open_source
from tests.helpers import frames_for_test, free_port

ROI = [30, 15, 10, 10]
REC = "tests.unit.plugins:FrameRecorder"

pytestmark = pytest.mark.timeout(60)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def make_sender(port: int, mode=PUSH, compression=None) -> Sender:
    sender = Sender(port=port, mode=mode, block=True, address="tcp://127.0.0.1", data_compression=compression,
                    queue_size=1000)  # a PUB drops beyond its queue; keep the SUB test about the join only
    sender.open()
    return sender


def send_raw(sender: Sender, pulse_id: int, channels: list[tuple[dict, bytes]], main: bytes | None = None) -> None:
    """One bsread message written by hand: main header, data header, (value, timestamp) per channel."""
    data_header = json.dumps({"htype": "bsr_d-1.1", "channels": [c for c, _ in channels]}).encode()
    if main is None:
        main = json.dumps({"htype": "bsr_m-1.1", "pulse_id": pulse_id, "hash": hashlib.md5(data_header).hexdigest(),
                           "global_timestamp": {"sec": 1700000000, "ns": 5}}).encode()
    parts = [main, data_header]
    for _, value in channels:
        parts += [value, struct.pack("<qq", 1700000000, 5)]
    sender.stream.socket.send_multipart(parts)


def bs_bslz4(frame: np.ndarray) -> bytes:
    """bsread's bitshuffle_lz4 value: uint64 BE size, uint32 BE block bytes, bitshuffle LZ4 blocks."""
    block = 8192 // frame.itemsize
    return struct.pack(">qi", frame.nbytes, block * frame.itemsize) + \
        bitshuffle.compress_lz4(np.ascontiguousarray(frame), block).tobytes()


def collect(src, n_items: int, timeout: float = 10.0, live: bool = False) -> list:
    stop = threading.Event()
    got = []
    deadline = time.monotonic() + timeout
    for item in src.items(stop, live):
        if item is not None:
            got.append(item)
        if len(got) >= n_items or isinstance(item, SeriesEnd) or time.monotonic() > deadline:
            stop.set()
    return got


def opened(uri: str):
    src = open_source(uri)
    src.open()
    return src


def test_hostile_messages_are_bad_input_checked_before_allocation():
    """Pulse ids beyond int64, deep JSON, shapes beyond 2 GiB, lz4 sizes the shape does not need."""
    port = free_port()
    sender = make_sender(port)
    src = opened(f"bsread://127.0.0.1:{port}?channel=img")
    good = frames_for_test(1, shape=(16, 24))[0]
    img = {"name": "img", "type": "uint16", "shape": [24, 16], "encoding": "little"}
    try:
        send_raw(sender, 0, [(img, good.tobytes())], main=json.dumps(
            {"htype": "bsr_m-1.1", "pulse_id": 2**63, "hash": "h"}).encode())                    # id beyond int64
        send_raw(sender, 0, [(img, good.tobytes())], main=b"[" * 100_000 + b"]" * 100_000)     # nested 100000 deep
        send_raw(sender, 2, [(dict(img, shape=[2**32, 2**32]), good.tobytes())])               # product overflows
        send_raw(sender, 3, [(dict(img, compression="lz4"), struct.pack("<I", 2**31) + bytes(12))])  # 2 GiB lz4
        send_raw(sender, 4, [(dict(img, shape=[32768, 32768], compression="lz4"),
                              struct.pack("<I", 2**31) + bytes(12))])                           # 2 GiB from 12 bytes
        send_raw(sender, 5, [(img, good.tobytes())], main=json.dumps(
            {"htype": "bsr_m-1.1", "pulse_id": 5, "hash": "x", "global_timestamp": {"sec": "now", "ns": [1]}}).encode())
        got = collect(src, 6)
    finally:
        src.close()
        sender.close()
    kinds = [g.kind if isinstance(g, BadInput) else g.frame_id for g in got]
    assert kinds == ["bad_header", "json_too_deep", "frame_too_large", "bad_decoded_size", "bad_decoded_size", 5]
    np.testing.assert_array_equal(got[5].data, good)  # an unusable timestamp falls back to the receive time
    assert abs(got[5].timestamp - time.time()) < 60


def test_uri_needs_host_and_channel():
    with pytest.raises(SourceError, match="host"):
        open_source("bsread://:9999?channel=img")  # never the PSI dispatcher
    with pytest.raises(SourceError, match="channel"):
        open_source("bsread://127.0.0.1:9999")
    with pytest.raises(SourceError, match="mode"):
        open_source("bsread://127.0.0.1:9999?channel=a&mode=pub")


@pytest.mark.parametrize("compression", [None, "bitshuffle_lz4", "lz4"])
def test_frames_meta_and_non_square_shape(compression):
    port = free_port()
    sender = make_sender(port, compression=compression)
    src = opened(f"bsread://127.0.0.1:{port}?channel=img")
    frames = frames_for_test(4, shape=(48, 80))  # 48 rows, 80 columns
    try:
        for i, f in enumerate(frames):
            sender.send(data={"img": f, "energy": 8.5 + i, "counter": np.int32(i), "label": "run-7"},
                        pulse_id=5000 + i, timestamp=(1700000000, 250_000_000))
        # bsread puts the fastest dimension first: [columns, rows]
        assert sender.channels["img"].metadata["shape"] == [80, 48]
        got = collect(src, 4)
    finally:
        src.close()
        sender.close()
    assert [type(g) for g in got] == [Frame] * 4
    for i, (frame, sent) in enumerate(zip(got, frames)):
        assert frame.frame_id == 5000 + i
        assert frame.data.shape == (48, 80) and frame.data.dtype == np.uint16
        np.testing.assert_array_equal(frame.data, sent)
        assert frame.meta == {"energy": 8.5 + i, "counter": i, "label": "run-7"}
        assert frame.timestamp == pytest.approx(1700000000.25)


def test_header_change_shape_and_dtype_without_restart():
    port = free_port()
    sender = make_sender(port, compression="bitshuffle_lz4")
    src = opened(f"bsread://127.0.0.1:{port}?channel=img")
    sent = [frames_for_test(1, shape=(48, 80))[0],
            np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20),
            np.arange(7 * 9, dtype=np.int32).reshape(7, 9) - 20,
            np.arange(12, dtype=">u2").reshape(3, 4),  # big-endian channel encoding
            frames_for_test(1, shape=(48, 80), seed=5)[0]]
    try:
        for i, a in enumerate(sent):
            sender.send(data={"img": a}, pulse_id=i)
        got = collect(src, len(sent))
    finally:
        src.close()
        sender.close()
    assert all(isinstance(g, Frame) for g in got)
    for g, a in zip(got, sent):
        assert g.data.shape == a.shape and g.data.dtype == a.dtype
        np.testing.assert_array_equal(g.data, a)


def test_malformed_messages_are_bad_input_and_stream_goes_on():
    port = free_port()
    sender = make_sender(port)
    src = opened(f"bsread://127.0.0.1:{port}?channel=img")
    good = frames_for_test(3, shape=(16, 24))
    img_meta = {"name": "img", "type": "uint16", "shape": [24, 16], "compression": "bitshuffle_lz4",
                "encoding": "little"}
    try:
        sender.send(data={"img": good[0], "x": 1.0}, pulse_id=1)
        sender.send(data={"img": "not an image", "x": 1.0}, pulse_id=2)       # string channel
        sender.send(data={"other": 2.0}, pulse_id=3)                            # channel missing
        sender.send(data={"img": 7, "x": 1.0}, pulse_id=4)                      # scalar channel
        send_raw(sender, 5, [(img_meta, bs_bslz4(good[1])[:-30])])              # truncated bitshuffle
        send_raw(sender, 6, [(img_meta, b"\0" * 40)])                           # declares 0 decoded bytes
        send_raw(sender, 7, [(dict(img_meta, compression=None), b"\0" * 10)])   # wrong size
        send_raw(sender, 8, [], main=b"{not json")                              # bad main header
        send_raw(sender, 9, [(img_meta, b"")])                                  # empty value
        send_raw(sender, 10, [(dict(img_meta, compression="zstd"), b"abc")])    # unknown compression
        send_raw(sender, 11, [(img_meta, bs_bslz4(good[1]))])                   # good, hand-made
        sender.send(data={"img": good[2], "x": 3.0}, pulse_id=12)
        got = collect(src, 12)
    finally:
        src.close()
        sender.close()
    kinds = [g.kind if isinstance(g, BadInput) else g.frame_id for g in got]
    assert kinds == [1, "wrong_channel_type", "missing_channel", "wrong_channel_type", "corrupt_compressed",
                     "bad_decoded_size", "size_mismatch", "bad_json", "missing_value", "unsupported_compression",
                     11, 12]
    np.testing.assert_array_equal(got[0].data, good[0])
    np.testing.assert_array_equal(got[10].data, good[1])
    np.testing.assert_array_equal(got[11].data, good[2])
    assert got[11].meta == {"x": 3.0}
    assert "string" in got[1].detail and "pulse 2" in got[1].detail
    assert all(g.stream == "bsread" for g in got if isinstance(g, BadInput))


@pytest.mark.parametrize("compression", [None, "bitshuffle_lz4"])
def test_engine_results_gaps_and_bad_input(compression):
    port = free_port()
    sender = make_sender(port, compression=compression)
    frames = frames_for_test(20, seed=11)
    pulses = list(range(1000, 1010)) + list(range(1015, 1025))  # 5 pulses never sent

    def send():
        for i, (p, f) in enumerate(zip(pulses, frames)):
            sender.send(data={"img": f, "i": i}, pulse_id=p)
            if i == 4:
                sender.send(data={"img": "oops", "i": i}, pulse_id=p)  # same pulse again, wrong type

    engine = Engine(EngineConfig(sources=[f"bsread://127.0.0.1:{port}?channel=img&idle=0.5"],
                                 analyses=["roi", REC]))
    engine.set_parameter("roi_signal", ROI)
    engine.start()
    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 20
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    t.join(5)
    snap = engine.snapshot()
    engine.close()
    sender.close()
    assert snap.state is EngineState.CLOSE, snap.status
    c = snap.counters
    assert (c.completed, c.dropped, c.bad) == (20, 5, 1)
    assert snap.bad_kinds == {"wrong_channel_type": 1}
    assert snap.summary["recorded"] == [(p, digest(f)) for p, f in zip(pulses, frames)]
    ox, sx, oy, sy = ROI
    sums = np.array([f[oy:oy + sy, ox:ox + sx].sum(dtype=np.int64) for f in frames], dtype=float)
    assert snap.summary["run_signal_sum_mean"] == pytest.approx(sums.mean(), rel=1e-12)
    assert (snap.summary["run_signal_sum_min"], snap.summary["run_signal_sum_max"]) == (sums.min(), sums.max())
    assert snap.results["signal_sum"] == sums[-1]
    assert snap.frame_id == 1024


def test_frames_query_sets_expected_and_scan_ends():
    port = free_port()
    sender = make_sender(port)
    engine = Engine(EngineConfig(sources=[f"bsread://127.0.0.1:{port}?channel=img&frames=6"], analyses=["roi"]))
    engine.start()
    for i, f in enumerate(frames_for_test(6)):
        sender.send(data={"img": f}, pulse_id=77 + i)
    deadline = time.monotonic() + 10
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    snap = engine.snapshot()
    engine.close()
    sender.close()
    assert snap.state is EngineState.CLOSE
    assert (snap.counters.expected, snap.counters.completed, snap.counters.total) == (6, 6, 6)


def test_sub_mode_slow_joiner_loss_is_reported():
    """A late subscriber misses the first pulses: with ?start= the first frame says how many."""
    port = free_port()
    sender = make_sender(port, mode=PUB)
    frame = frames_for_test(1, shape=(8, 8))[0]
    stop_sending = threading.Event()
    sent = []

    def publish():
        pulse = 0
        while not stop_sending.is_set():
            sender.send(data={"img": frame}, pulse_id=pulse)
            sent.append(pulse)
            pulse += 1
            time.sleep(0.002)

    t = threading.Thread(target=publish)
    t.start()
    try:
        while len(sent) < 30:  # the series is well under way before anyone subscribes
            time.sleep(0.01)
        src = opened(f"bsread://127.0.0.1:{port}?channel=img&mode=sub&start=0")
        try:
            got = collect(src, 20)
        finally:
            src.close()
    finally:
        stop_sending.set()
        t.join()
        sender.close()
    frames = [g for g in got if isinstance(g, Frame)]
    assert len(frames) == 20
    first = frames[0].frame_id
    assert first >= 30
    assert frames[0].meta["dropped_before"] == first == src.dropped_before
    assert "dropped_before" not in frames[1].meta
    assert [f.frame_id for f in frames] == list(range(first, first + 20))


def test_open_fails_cleanly_on_bad_bind():
    port = free_port()
    sender = make_sender(port)  # holds the port
    try:
        src = open_source(f"bsread://127.0.0.1:{port}?channel=img&bind=1")
        with pytest.raises(SourceError, match="cannot bind"):
            src.open()
    finally:
        sender.close()


def test_backlog_reported_while_the_receive_buffer_never_runs_empty():
    port = free_port()
    sender = make_sender(port)
    src = opened(f"bsread://127.0.0.1:{port}?channel=img&hwm=4")
    frame = frames_for_test(1, shape=(16, 24))[0]
    stop = threading.Event()
    items = src.items(stop)
    try:
        for i in range(12):
            sender.send(data={"img": frame}, pulse_id=i)
        first = next(i for i in items if i is not None)
        assert isinstance(first, Frame) and src.backlog() == ""
        time.sleep(1.3)  # the consumer is busy: 11 messages wait in the buffer meanwhile
        assert "analysis slower than stream bsread" in src.backlog() and "hwm=4" in src.backlog()
        got = [first]
        for item in items:  # drain: once the socket runs empty the backlog is gone
            if item is None:
                break
            got.append(item)
        assert [g.frame_id for g in got] == list(range(12))  # PUSH/PULL: held back, nothing lost
        assert src.backlog() == ""
    finally:
        stop.set()
        items.close()
        src.close()
        sender.close()
