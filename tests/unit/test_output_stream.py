"""Output stream: per-frame results as bsread, read back by a real ``bsread.source.Source``.

The receiver is bsread's own client (``Source(host="127.0.0.1", port=..., mode=PULL|SUB)``),
so these tests prove the wire format, not only a round trip through our own code.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import zmq
from bsread import PULL, SUB
from bsread.source import Source

from tango_dqm.output_stream import ResultStream
from tango_dqm.plugin import Result
from tests.helpers import free_port

pytestmark = pytest.mark.timeout(60)

N_SCALARS = 15
SPEC_A, SPEC_B = 256, 1024

# The engine's result_decl: name -> (analysis, Result)
DECL = {f"s{i}": ("stats", Result(f"s{i}", float, unit="counts")) for i in range(N_SCALARS - 2)}
DECL["saturated"] = ("pixels", Result("saturated", int, unit="pixels"))
DECL["beam_ok"] = ("pixels", Result("beam_ok", bool))
DECL["profile_x"] = ("profile", Result("profile_x", float, kind="spectrum"))
DECL["hist_counts"] = ("histogram", Result("hist_counts", np.int64, kind="spectrum"))
DECL["last_image"] = ("pixels", Result("last_image", np.uint16, kind="image"))         # not streamed
DECL["status_text"] = ("stats", Result("status_text", str))                            # not streamed
DECL["run_mean"] = ("stats", Result("run_mean", float, run_summary=True))               # not streamed
STREAMED = [n for n in DECL if n not in ("last_image", "status_text", "run_mean")]


def frame_results(i: int, rng: np.random.Generator) -> dict:
    r = {f"s{k}": float(rng.normal(k, 1)) for k in range(N_SCALARS - 2)}
    r["s3"] = float("nan") if i % 5 == 0 else r["s3"]   # NaN is a value
    if i % 7 == 0:
        del r["s4"]                                       # a missing result
    r["saturated"] = int(rng.integers(0, 1 << 40))
    r["beam_ok"] = bool(i % 2)
    r["profile_x"] = rng.random(SPEC_A)
    r["hist_counts"] = rng.integers(0, 1000, SPEC_B)
    r["last_image"] = np.zeros((8, 8), np.uint16)
    r["status_text"] = "fine"
    return r


def receive(src: Source, n: int, timeout: float = 10.0, first_id: int | None = None) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        m = src.receive()
        if m is None:
            continue
        if first_id is not None and m.data.pulse_id < first_id:
            continue
        got.append(m.data)
    return got


def wait_connected(stream: ResultStream, timeout: float = 5.0) -> None:
    """A PUSH socket can send once a consumer's pipe is attached."""
    assert stream._socket.poll(int(timeout * 1000), zmq.POLLOUT), "consumer did not connect"


def check_message(msg, fid: int, sent: dict, ts: float) -> None:
    assert msg.pulse_id == fid
    assert msg.global_timestamp == int(ts)
    assert abs(msg.global_timestamp_offset - (ts - int(ts)) * 1e9) < 1e3
    assert list(msg.data) == STREAMED
    for name in STREAMED:
        v = msg.data[name].value
        if name not in sent:
            assert v is None, name
        elif name in ("profile_x", "hist_counts"):
            assert isinstance(v, np.ndarray) and v.shape == np.shape(sent[name]), name
            np.testing.assert_array_equal(v, sent[name])
            assert v.dtype == (np.float64 if name == "profile_x" else np.int64)
        elif name == "saturated":
            assert v.dtype == np.int64 and int(v) == sent[name]
        elif name == "beam_ok":
            assert v.dtype == np.bool_ and bool(v) == sent[name]
        elif math.isnan(sent[name]):
            assert math.isnan(v), name
        else:
            assert v.dtype == np.float64 and float(v) == sent[name], name  # exact: no loss
        if name in sent:
            assert msg.data[name].timestamp == int(ts)


def test_push_stream_received_by_bsread_source():
    port = free_port()
    rng = np.random.default_rng(3)
    with ResultStream(port, DECL, mode="push") as out:
        assert out.skipped == ["last_image", "status_text", "run_mean"]
        assert out._socket.getsockopt_string(zmq.LAST_ENDPOINT) == f"tcp://127.0.0.1:{port}"
        with Source(host="127.0.0.1", port=port, mode=PULL, receive_timeout=200) as src:
            wait_connected(out)
            sent = []
            for i in range(200):
                fid, ts, r = 1000 + 3 * i, 1.7e9 + i * 0.01 + 0.5, frame_results(i, rng)
                assert out.send(fid, r, timestamp=ts)
                sent.append((fid, ts, r))
            got = receive(src, len(sent))
        assert len(got) == len(sent) and out.sent == 200 and out.dropped == 0 and out.errors == 0
        for msg, (fid, ts, r) in zip(got, sent):
            check_message(msg, fid, r, ts)
        assert out.header_changes == 0  # spectra kept their lengths: one header for the whole stream
        assert len({m.hash for m in got[1:]}) == 1


def test_pub_stream_received_by_subscriber():
    port = free_port()
    rng = np.random.default_rng(4)
    out = ResultStream(f"tcp://127.0.0.1:{port}", DECL, mode="pub").open()
    try:
        assert out.address == f"tcp://127.0.0.1:{port}"
        with Source(host="127.0.0.1", port=port, mode=SUB, receive_timeout=100) as src:
            # a subscription takes a moment to reach the publisher: send until one arrives
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                out.send(1, frame_results(1, rng))
                if src.receive() is not None:
                    break
            else:
                pytest.fail("subscriber never received a message")
            # PUB drops silently beyond the subscriber's queue (queue_size=100 each side, minus the
            # messages of the handshake above): stay well below it, the reader may not run meanwhile
            sent = [(10 + i, 1.7e9 + i, frame_results(i, rng)) for i in range(50)]
            for fid, ts, r in sent:
                assert out.send(fid, r, timestamp=ts)  # a PUB socket never refuses
            got = receive(src, len(sent), first_id=10)
        assert [m.pulse_id for m in got] == [fid for fid, _, _ in sent]
        for msg, (fid, ts, r) in zip(got, sent):
            check_message(msg, fid, r, ts)
        assert out.dropped == 0
    finally:
        out.close()
    assert not out.is_open and out.send(5, {}) is False


def test_push_without_consumer_drops_without_blocking():
    out = ResultStream(free_port(), DECL, mode="push", queue_size=4).open()
    try:
        r = frame_results(1, np.random.default_rng(0))
        t0 = time.perf_counter()
        results = [out.send(i, r) for i in range(1000)]
        elapsed = time.perf_counter() - t0
        assert not any(results) and out.dropped == 1000 and out.sent == 0
        assert elapsed < 2.0, f"1000 refused sends took {elapsed:.2f} s"
    finally:
        out.close()


def test_slow_consumer_loses_whole_messages_only():
    """A consumer that stops reading: sends are refused (counted), never blocked, never cut in half."""
    port = free_port()
    decl = {"a": Result("a", float), "big": Result("big", float, kind="spectrum")}
    big = np.arange(50_000, dtype=np.float64)  # 400 kB per message fills the queues quickly
    with ResultStream(port, decl, mode="push", queue_size=2) as out:
        with Source(host="127.0.0.1", port=port, mode=PULL, receive_timeout=500, queue_size=2) as src:
            wait_connected(out)
            worst = 0.0
            for i in range(2000):
                t0 = time.perf_counter()
                out.send(i, {"a": float(i), "big": big})
                worst = max(worst, time.perf_counter() - t0)
            assert out.dropped > 0 and out.sent > 0 and out.sent + out.dropped == 2000
            assert worst < 0.5, f"a send blocked for {worst:.3f} s"
            got = receive(src, out.sent, timeout=20)
        assert len(got) == out.sent
        ids = [m.pulse_id for m in got]
        assert ids == sorted(ids) and ids[0] == 0
        for m in got:  # every delivered message is complete and consistent
            assert m.data["a"].value == m.pulse_id
            np.testing.assert_array_equal(m.data["big"].value, big)


def test_spectrum_length_change_rebuilds_header():
    port = free_port()
    decl = [Result("x", float, kind="spectrum"), Result("n", int)]
    with ResultStream(port, decl, mode="push", prefix="DQM:") as out:
        with Source(host="127.0.0.1", port=port, mode=PULL, receive_timeout=200) as src:
            wait_connected(out)
            out.send(1, {"x": np.ones(10), "n": 1})
            out.send(2, {"x": np.ones(10), "n": 2})
            out.send(3, {"x": np.arange(4.0), "n": 3})
            out.send(4, {"n": 4})                          # spectrum missing
            out.send(5, {"x": np.arange(4.0), "n": float("nan")})  # NaN int: not representable
            got = receive(src, 5)
    assert [m.pulse_id for m in got] == [1, 2, 3, 4, 5]
    assert list(got[0].data) == ["DQM:x", "DQM:n"]
    assert got[1].data["DQM:x"].value.shape == (10,)
    np.testing.assert_array_equal(got[2].data["DQM:x"].value, np.arange(4.0))
    assert got[3].data["DQM:x"].value is None and got[3].data["DQM:n"].value == 4
    assert got[4].data["DQM:n"].value is None
    assert got[0].hash == got[1].hash != got[2].hash == got[3].hash
    assert out.header_changes == 1 and out.errors == 1


def test_arguments():
    with pytest.raises(ValueError, match="mode"):
        ResultStream(9999, DECL, mode="req")
    with pytest.raises(ValueError, match="address"):
        ResultStream("tcp://nohostport", DECL)
    assert ResultStream("9123", DECL).address == "tcp://127.0.0.1:9123"
    port = free_port()
    with ResultStream(port, DECL), pytest.raises(RuntimeError, match="cannot bind"):
        ResultStream(port, DECL).open()  # port taken


def test_send_cost_per_frame(record_property):
    """~15 scalars + 2 spectra per frame: the send must stay far below a frame period."""
    port = free_port()
    rng = np.random.default_rng(5)
    frames = [frame_results(i, rng) for i in range(50)]
    with ResultStream(port, DECL, mode="pub") as out:
        with Source(host="127.0.0.1", port=port, mode=SUB, receive_timeout=100):
            n = 5000
            for i in range(200):  # warm up
                out.send(i, frames[i % 50])
            t0 = time.perf_counter()
            for i in range(n):
                out.send(i, frames[i % 50])
            per_frame_us = (time.perf_counter() - t0) / n * 1e6
    record_property("send_us_per_frame", per_frame_us)
    print(f"\nResultStream.send: {per_frame_us:.1f} us per frame ({len(out.channels)} channels)")
    assert per_frame_us < 2000
