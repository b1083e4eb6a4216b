"""DetectorSimulator device: STINS messages checked by an independent pyzmq PULL receiver."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import tango
import zmq
from tango.test_context import DeviceTestContext

from tango_dqm.devices.simulator import DetectorSimulator
from tango_dqm.simulation import FrameGenerator, Scene

pytestmark = pytest.mark.timeout(60)


class Receiver:
    """A plain PULL socket decoding STINS messages: (json dict, numpy array or None)."""

    def __init__(self, endpoint: str):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def recv(self, timeout: float = 5.0) -> tuple[dict, np.ndarray | None] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        parts = self.sock.recv_multipart()
        msg = json.loads(parts[0])
        data = None
        if msg["htype"] == "image":
            assert len(parts) == 2, "an image message has exactly one data part"
            data = np.frombuffer(parts[1], dtype=msg["type"]).reshape(msg["shape"])
        else:
            assert len(parts) == 1
        return msg, data

    def until_series_end(self, timeout: float = 10.0) -> list[tuple[dict, np.ndarray | None]]:
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.recv(0.5)
            if item is None:
                continue
            out.append(item)
            if item[0]["htype"] == "series_end":
                return out
        raise AssertionError(f"no series_end within {timeout} s ({len(out)} messages)")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def wait_state(dev, state, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while dev.State() != state:
        assert time.monotonic() < deadline, f"state {dev.State()} != {state}: {dev.Status()}"
        time.sleep(0.02)


def centroid_x(frame: np.ndarray, background: float) -> float:
    signal = frame.astype(np.float64) - background  # not clipped: clipped noise biases towards the centre
    return float((signal.sum(axis=0) * np.arange(frame.shape[1])).sum() / signal.sum())


SMALL = {"frame_width": 80, "frame_height": 64, "background": 10.0, "noise": 2.0,
         "spot_sigma": 3.0, "amplitude": 3000.0, "seed": 7}


def configure(dev, **values) -> None:
    for name, value in values.items():
        setattr(dev, name, value)  # attribute syntax: enum labels such as "uint16" are accepted


def scene_for(values: dict, **extra) -> Scene:
    v = {**values, **extra}
    return Scene(shape=(v["frame_height"], v["frame_width"]), dtype=v.get("dtype", "uint16"), seed=v["seed"],
                 background=v["background"], noise=v["noise"], spot_x=v.get("spot_x"), spot_y=v.get("spot_y"),
                 sigma=v["spot_sigma"], amplitude=v["amplitude"], drift_x=v.get("drift_x", 0.0),
                 drift_y=v.get("drift_y", 0.0), hot_pixels=v.get("hot_pixels", 0),
                 dead_pixels=v.get("dead_pixels", 0))


@pytest.fixture
def sim():
    with DeviceTestContext(DetectorSimulator, properties={"Port": 0}, process=True, host="127.0.0.1") as dev:
        yield dev


@pytest.fixture
def receiver(sim):
    rx = Receiver(sim.endpoint)
    yield rx
    rx.close()


def test_start_sends_exactly_nframes_equal_to_the_scene(sim, receiver):
    values = {**SMALL, "dtype": "uint32", "spot_x": 30.0, "spot_y": 20.0, "drift_x": 0.5,
              "hot_pixels": 3, "dead_pixels": 2}
    configure(sim, **values, rate=0.0, nframes=25)
    assert sim.endpoint.startswith("tcp://127.0.0.1:")
    assert sim.State() == tango.DevState.ON

    series = sim.Start()
    messages = receiver.until_series_end()
    header, images, end = messages[0][0], messages[1:-1], messages[-1][0]
    assert header["htype"] == "header" and header["series"] == series and header["nimages"] == 25
    assert header["shape"] == [64, 80] and header["type"] == "uint32"
    assert end == {"htype": "series_end", "series": series, "frames_sent": 25, "frames_unsent": 0}
    assert [m["frame"] for m, _ in images] == list(range(25))
    gen = FrameGenerator(scene_for(values, dtype="uint32"))
    for msg, data in images:
        assert msg["htype"] == "image" and msg["compression"] == "none"
        assert data.dtype == np.uint32
        np.testing.assert_array_equal(data, gen.render(msg["frame"]))
    assert receiver.recv(0.3) is None, "nothing after series_end"
    wait_state(sim, tango.DevState.ON)
    assert sim.frames_sent == 25 and sim.frames_unsent == 0
    assert "25 frames sent" in sim.Status()


def test_live_runs_until_stop_then_sends_series_end(sim, receiver):
    configure(sim, **SMALL, rate=200.0, nframes=3)
    sim.Live()
    assert sim.State() == tango.DevState.RUNNING
    header, _ = receiver.recv()
    assert header["htype"] == "header" and "nimages" not in header
    ids = []
    while len(ids) < 20:  # well past nframes: Live ignores it
        msg, _ = receiver.recv()
        ids.append(msg["frame"])
    assert sim.State() == tango.DevState.RUNNING
    sim.Stop()
    rest = receiver.until_series_end()
    ids += [m["frame"] for m, _ in rest[:-1]]
    assert ids == list(range(len(ids)))
    wait_state(sim, tango.DevState.ON, timeout=2.0)
    assert sim.frames_sent == len(ids) == rest[-1][0]["frames_sent"]


def test_live_rate_is_paced(sim, receiver):
    configure(sim, **SMALL, rate=50.0)
    sim.Live()
    receiver.recv()  # header
    receiver.recv()  # frame 0: the schedule starts here
    t0 = time.monotonic()
    for _ in range(25):
        receiver.recv()
    elapsed = time.monotonic() - t0
    sim.Stop()
    receiver.until_series_end()
    assert 0.45 < elapsed < 1.0, f"25 frames at 50 Hz took {elapsed:.3f} s"


def test_scene_change_during_live_moves_the_centroid(sim, receiver):
    values = {**SMALL, "spot_x": 20.0, "spot_y": 32.0}
    configure(sim, **values, rate=100.0)
    sim.Live()
    assert receiver.recv()[0]["htype"] == "header"
    for _ in range(5):
        msg, data = receiver.recv()
        assert centroid_x(data, 10.0) == pytest.approx(20.0, abs=0.5)

    sim.spot_x = 60.0
    moved = FrameGenerator(scene_for(values, spot_x=60.0))
    deadline = time.monotonic() + 3.0
    while True:  # frames already queued show the old spot; then the new one
        msg, data = receiver.recv()
        if centroid_x(data, 10.0) > 40.0:
            break
        assert time.monotonic() < deadline, "the spot did not move"
    for _ in range(5):  # and it stays there, rendered exactly as the new scene
        assert centroid_x(data, 10.0) == pytest.approx(60.0, abs=0.5)
        np.testing.assert_array_equal(data, moved.render(msg["frame"]))
        msg, data = receiver.recv()
    sim.Stop()
    receiver.until_series_end()
    wait_state(sim, tango.DevState.ON)


INVALID = [
    ("frame_width", -5, "frame_width must be an integer in [1, 16384]"),
    ("frame_height", 0, "frame_height must be an integer in [1, 16384]"),
    ("rate", -1.0, "rate must be >= 0 Hz"),
    ("noise", -2.0, "noise must be >= 0"),
    ("spot_sigma", 0.0, "spot_sigma must be > 0"),
    ("nframes", 0, "nframes must be an integer in [1,"),
    ("seed", -1, "seed must be an integer in [0,"),
    ("hot_pixels", 10**6, "hot_pixels + dead_pixels must be <= the frame's"),
]


def test_invalid_writes_are_refused_with_the_rule_and_the_old_value_kept(sim):
    for name, bad, rule in INVALID:
        old = sim.read_attribute(name).value
        with pytest.raises(tango.DevFailed) as info:
            sim.write_attribute(name, bad)
        desc = info.value.args[0].desc
        assert rule in desc and "the previous value" in desc and "is kept" in desc, desc
        assert sim.read_attribute(name).value == old, name
    sim.frame_height = 2048
    with pytest.raises(tango.DevFailed, match=r"frame_width \* frame_height must be <= 16777216 pixels"):
        sim.frame_width = 16384
    assert sim.frame_width == 512
    with pytest.raises(tango.DevFailed, match="NaN or INF"):  # refused by Tango itself
        sim.amplitude = float("nan")
    assert sim.amplitude == 1000.0
    with pytest.raises(tango.DevFailed, match="above the maximun authorized"):  # Tango's enum range check
        sim.write_attribute("dtype", 9)
    with pytest.raises(AttributeError, match="Invalid enum value"):  # refused by the client
        sim.dtype = "int7"
    assert sim.dtype.name == "uint16"


def test_dtype_enum_accepts_labels_and_shape_is_locked_while_running(sim, receiver):
    sim.dtype = "float32"
    assert sim.dtype.name == "float32"
    configure(sim, **SMALL, rate=100.0)
    sim.Live()
    wait_state(sim, tango.DevState.RUNNING)
    for name, value in (("frame_width", 32), ("frame_height", 32), ("dtype", "uint8")):
        with pytest.raises(tango.DevFailed, match=f"{name} cannot change while RUNNING"):
            setattr(sim, name, value)
    with pytest.raises(tango.DevFailed, match="run Stop and wait for state ON"):
        sim.Start()
    sim.noise = 3.0  # scene values may change live
    sim.Stop()
    messages = receiver.until_series_end()
    assert all(m["shape"] == [64, 80] and m["type"] == "float32" for m, _ in messages if m["htype"] == "image")
    wait_state(sim, tango.DevState.ON)
    sim.frame_width = 32
    assert sim.frame_width == 32 and sim.dtype.name == "float32"


def test_state_change_events_on_running_on(sim, receiver):
    events: list[tango.DevState] = []
    eid = sim.subscribe_event("State", tango.EventType.CHANGE_EVENT,
                              lambda ev: events.append(ev.attr_value.value) if not ev.err else None)
    try:
        configure(sim, **SMALL, rate=50.0, nframes=10)
        sim.Start()
        receiver.until_series_end()
        wait_state(sim, tango.DevState.ON)
        deadline = time.monotonic() + 3.0
        while len(events) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sim.unsubscribe_event(eid)
    assert events == [tango.DevState.ON, tango.DevState.RUNNING, tango.DevState.ON]


def test_stop_is_responsive_without_a_receiver(sim):
    configure(sim, frame_width=64, frame_height=64, rate=0.0, nframes=10)
    sim.Start()
    assert sim.State() == tango.DevState.RUNNING
    time.sleep(0.3)  # blocked on back-pressure: nobody is connected
    assert "waiting for a receiver" in sim.Status() and sim.endpoint in sim.Status()
    t0 = time.monotonic()
    sim.Stop()
    wait_state(sim, tango.DevState.ON, timeout=2.0)
    assert time.monotonic() - t0 < 1.0
    assert sim.frames_sent == 0
    sim.Stop()  # idle: nothing to do, no error
    assert sim.State() == tango.DevState.ON


def test_init_while_live_ends_the_series_and_the_device_works_again(sim, receiver):
    configure(sim, **SMALL, rate=100.0, nframes=5)
    sim.Live()
    for _ in range(5):
        receiver.recv()
    sim.Init()
    assert sim.State() == tango.DevState.ON
    assert receiver.until_series_end(3.0)[-1][0]["htype"] == "series_end"
    assert sim.frame_width == 80, "attribute values survive Init"
    rx = Receiver(sim.endpoint)  # Port 0: Init picked a new port
    try:
        sim.Start()
        assert len(rx.until_series_end()) == 5 + 2
        wait_state(sim, tango.DevState.ON)
    finally:
        rx.close()


def test_unsent_frames_are_counted_at_a_fixed_rate():
    """A receiver that stops reading: at rate > 0 the schedule holds and frames are dropped."""
    with DeviceTestContext(DetectorSimulator, properties={"SendHighWaterMark": 1}, process=True,
                           host="127.0.0.1") as sim:
        ctx = zmq.Context()
        rx = ctx.socket(zmq.PULL)
        rx.setsockopt(zmq.RCVHWM, 1)
        rx.setsockopt(zmq.RCVBUF, 4096)
        rx.setsockopt(zmq.LINGER, 0)
        rx.connect(sim.endpoint)
        try:
            configure(sim, frame_width=512, frame_height=512, rate=200.0)
            sim.Live()
            assert rx.poll(5000)
            rx.recv_multipart()  # the header: the series has started; now stop reading
            deadline = time.monotonic() + 5.0
            while sim.frames_unsent < 20:
                assert time.monotonic() < deadline, f"unsent={sim.frames_unsent} sent={sim.frames_sent}"
                time.sleep(0.05)
            sim.Stop()
            wait_state(sim, tango.DevState.ON, timeout=3.0)
        finally:
            rx.close(0)
            ctx.term()


def test_memorized_values_are_restored_at_startup():
    with DeviceTestContext(DetectorSimulator, process=True, host="127.0.0.1",
                           memorized={"frame_width": "96", "spot_x": "12.5", "dtype": "0"}) as sim:
        assert sim.frame_width == 96 and sim.spot_x == 12.5 and sim.dtype.name == "uint8"


def test_port_in_use_is_a_fault_and_reset_recovers():
    # the port is held by another process: the test context forks, so a socket of this
    # process would be inherited by the device server and never be released
    blocker = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
                               "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # runs until killed
    try:
        port = int(blocker.stdout.readline())
        with DeviceTestContext(DetectorSimulator, properties={"Port": port}, process=True,
                               host="127.0.0.1") as sim:
            assert sim.State() == tango.DevState.FAULT
            assert "Port property" in sim.Status() and str(port) in sim.Status()
            with pytest.raises(tango.DevFailed, match="refused in FAULT"):
                sim.Start()
            with pytest.raises(tango.DevFailed, match="cannot bind"):
                sim.Reset()
            assert sim.State() == tango.DevState.FAULT
            blocker.kill()  # frees the port
            blocker.wait(5)
            sim.Reset()
            assert sim.State() == tango.DevState.ON
            assert sim.endpoint == f"tcp://127.0.0.1:{port}"
    finally:
        blocker.kill()
        blocker.wait()
