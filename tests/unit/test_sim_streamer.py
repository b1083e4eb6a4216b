"""The simulator's streaming loop (tango_dqm.sim_streamer) over a real ZeroMQ PUSH -> PULL pair."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from tango_dqm.sim_streamer import (MAX_PIXELS, BindError, InvalidValue, Series, SimulatorSettings, bind_push,
                                    scene_of)
from tango_dqm.simulation import FrameGenerator
from tests.helpers import free_port

TIMEOUT_MS = 20000


@pytest.fixture
def pair():
    """A bound PUSH socket and a connected PULL socket on 127.0.0.1."""
    push = bind_push("127.0.0.1", 0, 4)
    pull = zmq.Context.instance().socket(zmq.PULL)
    pull.connect(push.getsockopt_string(zmq.LAST_ENDPOINT))
    yield push, pull
    pull.close(0)
    push.close(0)


def settings(**values) -> SimulatorSettings:
    s = SimulatorSettings()
    for name, value in {"frame_width": 24, "frame_height": 16, "rate": 0.0, "nframes": 5, "noise": 3.0,
                        **values}.items():
        s.write(name, value)
    return s


def receive(pull: zmq.Socket) -> tuple[dict, bytes | None]:
    assert pull.poll(TIMEOUT_MS), "nothing received"
    parts = pull.recv_multipart()
    return json.loads(parts[0]), (parts[1] if len(parts) > 1 else None)


def image(msg: dict, data: bytes | None) -> np.ndarray:
    assert data is not None
    return np.frombuffer(data, dtype=msg["type"]).reshape(msg["shape"])


def start(series: Series) -> threading.Thread:
    thread = threading.Thread(target=series.run, daemon=True)
    thread.start()
    return thread


def test_a_series_is_header_frames_and_series_end_exactly_as_the_generator_renders(pair):
    push, pull = pair
    s = settings(amplitude=500.0, seed=7)
    series = Series("3", False, 5, push, s, source="test/sim/1")
    thread = start(series)
    header, _ = receive(pull)
    assert header == {"htype": "header", "series": "3", "nimages": 5, "shape": [16, 24], "type": "uint16",
                      "source": "test/sim/1"}
    gen = FrameGenerator(s.current()[1])
    for i in range(5):
        msg, data = receive(pull)
        assert (msg["htype"], msg["frame"], msg["series"], msg["compression"]) == ("image", i, "3", "none")
        np.testing.assert_array_equal(image(msg, data), gen.render(i))
    end, _ = receive(pull)
    assert end == {"htype": "series_end", "series": "3", "frames_sent": 5, "frames_unsent": 0}
    thread.join(TIMEOUT_MS / 1000)
    assert not thread.is_alive() and (series.sent, series.unsent, series.error, series.waiting) == (5, 0, "", False)


def test_a_series_may_start_at_any_frame_id_and_reports_where_the_next_continues(pair):
    push, pull = pair
    s = settings()
    series = Series("2", False, 3, push, s, first=7)
    assert series.next_frame is None
    thread = start(series)
    receive(pull)  # header
    gen = FrameGenerator(s.current()[1])
    for i in (7, 8, 9):
        msg, data = receive(pull)
        assert msg["frame"] == i
        np.testing.assert_array_equal(image(msg, data), gen.render(i))
    assert receive(pull)[0]["htype"] == "series_end"
    thread.join(TIMEOUT_MS / 1000)
    assert (series.sent, series.next_frame) == (3, 10)
    with pytest.raises(InvalidValue, match="first_frame must be an integer in \\[-1,"):
        s.write("first_frame", -2)


def test_live_runs_until_stop_and_a_scene_change_applies_from_one_frame_on(pair):
    push, pull = pair
    s = settings()
    series = Series("1", True, 1, push, s)
    thread = start(series)
    header, _ = receive(pull)
    assert "nimages" not in header  # live: no end announced
    old = FrameGenerator(s.current()[1])
    first, _ = receive(pull)
    s.write("amplitude", 4000.0)  # spot only: same noise pool, so the generator is kept
    new = FrameGenerator(s.current()[1])
    kinds = []
    while "new" not in kinds:
        msg, data = receive(pull)
        frame = image(msg, data)
        same_old = np.array_equal(frame, old.render(msg["frame"]))
        same_new = np.array_equal(frame, new.render(msg["frame"]))
        assert same_old != same_new, f"frame {msg['frame']} renders neither scene (or both)"
        kinds.append("new" if same_new else "old")
    assert kinds == sorted(kinds, reverse=True)  # old ... old new: never back to the old scene
    series.stop.set()
    thread.join(TIMEOUT_MS / 1000)
    assert not thread.is_alive()
    while True:  # the rest of the frames, then series_end counting every frame sent
        msg, _ = receive(pull)
        if msg["htype"] == "series_end":
            break
    assert msg["frames_sent"] == series.sent and series.sent >= len(kinds) + 1 and series.error == ""


def test_stop_before_a_receiver_connects_ends_the_series_before_it_began():
    push = bind_push("127.0.0.1", 0, 4)
    try:
        series = Series("1", False, 5, push, settings())
        thread = start(series)
        series.stop.set()
        thread.join(TIMEOUT_MS / 1000)
        assert not thread.is_alive() and series.waiting and series.sent == 0 and series.error == ""
        assert series.abandon()  # sends finished: the owner closes the socket
    finally:
        push.close(0)


def test_a_failing_render_ends_the_series_with_the_reason(pair):
    push, pull = pair
    s = settings()
    s._values["frame_width"] = -3  # noqa: SLF001 - a scene the rules would refuse, to make render fail
    series = Series("1", False, 2, push, s)
    series.run()
    assert series.error.startswith("streaming series 1 failed after 0 frames:") and "run Reset" in series.error


def test_settings_refuse_bad_values_and_keep_the_old_one():
    s = SimulatorSettings()
    s.write("frame_height", 16384)
    with pytest.raises(InvalidValue, match="frame_width \\* frame_height must be <="):
        s.write("frame_width", MAX_PIXELS // 16384 + 1)
    with pytest.raises(InvalidValue, match="rate must be >= 0 Hz"):
        s.write("rate", -1)
    with pytest.raises(InvalidValue, match="dtype must be one of"):
        s.write("dtype", 9)
    assert (s.get("frame_width"), s.get("rate"), s.get("dtype"), s.version) == (512, 10.0, "uint16", 1)
    assert s.write("dtype", 3) == "float32" and s.version == 2
    assert scene_of({**s._values, "spot_x": -1.0}).spot_x is None  # noqa: SLF001 - negative: image centre


def test_binding_a_used_port_says_what_to_change():
    port = free_port()
    first = bind_push("127.0.0.1", port, 4)
    try:
        with pytest.raises(BindError, match=f"cannot bind the PUSH socket to tcp://127.0.0.1:{port}.*Port property"):
            bind_push("127.0.0.1", port, 4)
    finally:
        first.close(0)
