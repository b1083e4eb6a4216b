"""Compressed STINS frames (bslz4, lz4) and the decoder behind them.

The compressed parts are built here with bitshuffle / lz4 and struct directly (not with
tango_dqm.compression), as a Dectris/STINS sender would, and the results are checked
against numpy on the frames that were sent.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import struct
import threading
import time

import bitshuffle
import bitshuffle.ext
import lz4.block
import numpy as np
import pytest

from tango_dqm import compression
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.frames import BadInput, Frame, SeriesEnd
from tango_dqm.sources import open_source
from tests.helpers import StinsSender, frames_for_test, free_port

ROI = [30, 15, 10, 10]  # offset_x, size_x, offset_y, size_y: the bright block of frames_for_test


def bslz4(frame: np.ndarray, block_elements: int = 0) -> bytes:
    """Dectris/STINS bslz4: uint64 BE size, uint32 BE block size in bytes, bitshuffle LZ4 blocks."""
    block = block_elements or 8192 // frame.itemsize
    body = bitshuffle.compress_lz4(np.ascontiguousarray(frame), block).tobytes()
    return struct.pack(">QI", frame.nbytes, block * frame.itemsize) + body


def send_compressed(sender: StinsSender, frame_id: int, frame: np.ndarray, part: bytes, compression: str) -> None:
    msg = {"htype": "image", "frame": frame_id, "shape": list(frame.shape), "type": frame.dtype.name,
           "compression": compression}
    sender.raw(json.dumps(msg).encode(), part)


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def run_engine(uri: str, send, timeout: float = 20.0):
    engine = Engine(EngineConfig(sources=[uri], analyses=["roi", "tests.unit.plugins:FrameRecorder"]))
    engine.set_parameter("roi_signal", ROI)
    engine.start()
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    thread.join(5)
    snap = engine.snapshot()
    engine.close()
    assert snap.state is EngineState.CLOSE, snap.status
    return snap


def roi_sums(frames):
    ox, sx, oy, sy = ROI
    return np.array([f[oy:oy + sy, ox:ox + sx].sum(dtype=np.int64) for f in frames], dtype=np.float64)


# ---- decoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape, dtype", [((64, 80), np.uint16), ((33, 17), np.uint32), ((5,), np.uint8),
                                          ((16, 24), np.float32), ((1024, 1024), np.uint16)])
def test_bslz4_decodes_what_bitshuffle_encoded(shape, dtype):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 3000, size=shape).astype(dtype)
    out = compression.decode(bslz4(frame), "bslz4", shape, dtype)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, frame)
    # bsread's name for the same format, from a read-only zmq-like buffer
    out2 = compression.decode(memoryview(bslz4(frame, 256)), "bitshuffle_lz4", shape, dtype)
    np.testing.assert_array_equal(out2, frame)


def test_lz4_variants_decode():
    frame = frames_for_test(1)[0]
    raw = lz4.block.compress(frame.tobytes(), store_size=False)
    np.testing.assert_array_equal(compression.decode(raw, "lz4", frame.shape, frame.dtype), frame)
    sized = struct.pack("<I", frame.nbytes) + raw  # bsread's lz4
    np.testing.assert_array_equal(compression.decode(sized, "lz4_sized", frame.shape, frame.dtype), frame)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:len(b) // 2], "truncated|past the end"),
    (lambda b: b[:11], "shorter than its 12-byte header"),
    (lambda b: b + b"\0\0\0", "trailing bytes"),
    (lambda b: struct.pack(">QI", 999, 8192) + b[12:], "uncompressed bytes"),
    (lambda b: b[:8] + struct.pack(">I", 12) + b[12:], "block size"),
    (lambda b: b[:12] + struct.pack(">I", 10_000_000) + b[16:], "past the end"),
    (lambda b: b[:12] + b[12:16] + bytes(len(b) - 16), "decoding failed|account for"),
])
def test_corrupt_bslz4_raises_clear_error(damage, match):
    frame = frames_for_test(1)[0]
    bad = damage(bslz4(frame))
    with pytest.raises(compression.CompressionError, match=match):
        compression.decode(bad, "bslz4", frame.shape, frame.dtype)


def test_random_damage_never_crashes():
    """Random truncations and byte flips either decode or raise CompressionError (no segfault)."""
    frame = frames_for_test(1)[0]
    good = bslz4(frame)
    rng = np.random.default_rng(0)
    errors = 0
    for _ in range(500):
        b = bytearray(good)
        if rng.random() < 0.5:
            b = b[:int(rng.integers(0, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(12, len(b)))] ^= 0xFF
        try:
            out = compression.decode(bytes(b), "bslz4", frame.shape, frame.dtype)
            assert out.shape == frame.shape
        except compression.CompressionError:
            errors += 1
    assert errors > 100  # truncations are always caught


def test_unknown_compression_is_refused():
    with pytest.raises(compression.UnsupportedCompression, match="zstd"):
        compression.decode(b"xx", "zstd", (1,), "u1")


def test_thread_cap_limits_bitshuffle_openmp_in_each_decoding_thread(monkeypatch):
    lib = ctypes.CDLL(bitshuffle.ext.__file__)  # the OpenMP runtime bitshuffle uses
    frame = frames_for_test(1)[0]
    seen = {}

    def worker(key):
        seen[key + "_before"] = lib.omp_get_max_threads()
        compression.decode(bslz4(frame), "bslz4", frame.shape, frame.dtype)
        seen[key] = lib.omp_get_max_threads()

    monkeypatch.setenv("TANGO_DQM_BITSHUFFLE_THREADS", "1")
    t = threading.Thread(target=worker, args=("capped",))
    t.start()
    t.join()
    monkeypatch.setenv("TANGO_DQM_BITSHUFFLE_THREADS", "0")  # 0: leave OpenMP alone
    t = threading.Thread(target=worker, args=("free",))
    t.start()
    t.join()
    assert seen["capped"] == 1
    assert seen["free"] == seen["free_before"] == seen["capped_before"]


# ---- STINS source ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_compressed_frames_direct(stins_sender, stins_port):
    frames = frames_for_test(6)
    src = open_source(f"zmq://127.0.0.1:{stins_port}")
    src.open()
    try:
        stins_sender.header(nimages=len(frames))
        stins_sender.image(0, frames[0])
        send_compressed(stins_sender, 1, frames[1], bslz4(frames[1]), "bslz4")
        send_compressed(stins_sender, 2, frames[2], lz4.block.compress(frames[2].tobytes(), store_size=False), "lz4")
        send_compressed(stins_sender, 3, frames[3], bslz4(frames[3])[:-40], "bslz4")  # truncated
        send_compressed(stins_sender, 4, frames[4], bslz4(frames[4]), "zstd")
        send_compressed(stins_sender, 5, frames[5], bslz4(frames[5], 512), "bslz4")
        stins_sender.series_end()
        stop = threading.Event()
        got = []
        deadline = time.monotonic() + 10
        for item in src.items(stop):
            if item is not None:
                got.append(item)
            if isinstance(item, SeriesEnd) or time.monotonic() > deadline:
                break
    finally:
        src.close()
    assert [type(i).__name__ for i in got] == ["SeriesStart", "Frame", "Frame", "Frame", "BadInput", "BadInput",
                                               "Frame", "SeriesEnd"]
    assert got[0].frames == len(frames)  # the header's announced count
    for item, i in zip([g for g in got if isinstance(g, Frame)], (0, 1, 2, 5)):
        assert item.frame_id == i
        np.testing.assert_array_equal(item.data, frames[i])
    bad = [g for g in got if isinstance(g, BadInput)]
    assert bad[0].kind == "corrupt_compressed" and "frame 3" in bad[0].detail
    assert bad[1].kind == "unsupported_compression" and "zstd" in bad[1].detail


@pytest.mark.timeout(60)
def test_bslz4_through_engine_equals_uncompressed_and_numpy():
    frames = frames_for_test(30, seed=7)

    def run(compressed: bool, corrupt: int | None = None):
        port = free_port()
        sender = StinsSender(port)

        def send():
            sender.header(nimages=len(frames))
            for i, f in enumerate(frames):
                if not compressed:
                    sender.image(i, f)
                elif i == corrupt:
                    part = bytearray(bslz4(f))
                    part[12:16] = b"\xff\xff\xff\xff"  # the first block claims 4 GiB
                    send_compressed(sender, i, f, bytes(part), "bslz4")
                else:
                    send_compressed(sender, i, f, bslz4(f), "bslz4")
            sender.series_end()

        try:
            return run_engine(f"zmq://127.0.0.1:{port}", send)
        finally:
            sender.close()

    plain = run(False)
    packed = run(True)
    sums = roi_sums(frames)
    for snap in (plain, packed):
        assert snap.counters.completed == 30 and snap.counters.bad == 0 and snap.counters.dropped == 0
        assert snap.summary["recorded"] == [(i, digest(f)) for i, f in enumerate(frames)]
        assert snap.summary["run_signal_sum_mean"] == pytest.approx(sums.mean(), rel=1e-12)
        assert snap.summary["run_signal_sum_min"] == sums.min()
        assert snap.summary["run_signal_sum_max"] == sums.max()
        assert snap.summary["run_frame_max_max"] == max(float(f.max()) for f in frames)
        assert snap.results["signal_sum"] == sums[-1]
    np.testing.assert_equal(packed.summary, plain.summary)  # NaN (disabled background ROI) == NaN

    broken = run(True, corrupt=12)
    assert broken.state is EngineState.CLOSE
    assert broken.counters.bad == 1 and broken.bad_kinds == {"corrupt_compressed": 1}
    assert broken.counters.completed == 29
    assert broken.counters.dropped == 0  # frame 12 is counted once, as bad, not also as an id gap
    assert [fid for fid, _ in broken.summary["recorded"]] == [i for i in range(30) if i != 12]
    rest = np.delete(sums, 12)
    assert broken.summary["run_signal_sum_mean"] == pytest.approx(rest.mean(), rel=1e-12)
