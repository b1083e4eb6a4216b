"""Several streams: frames with the same id form one event; partial events are counted."""
from __future__ import annotations

import time

import h5py
import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.events import EventBuilder
from tango_dqm.frames import Frame
from tests.helpers import PeersConnected, StinsSender, assert_counters_exact, free_port, frames_for_test
from tests.unit.test_engine import wait_state


def f(stream: str, fid: int, value: float = 0.0) -> Frame:
    return Frame(np.full((2, 2), value), fid, stream=stream)


def test_complete_partial_and_orphaned_events():
    b = EventBuilder(["det", "i0"], timeout=1.0)
    assert b.add(f("det", 0), 0.0, 0.0) == []
    [e] = b.add(f("i0", 0, 5.0), 0.1, 0.1)
    assert e.complete and e.frame.stream == "det" and e.frame.stream_frame("i0").data[0, 0] == 5.0
    assert b.add(f("det", 1), 0.2, 0.2) == []          # i0 frame 1 never comes
    assert b.add(f("i0", 2), 0.3, 0.3) == []           # det frame 2 never comes
    [late] = b.expire(1.25)                             # frame 1 waited > 1 s
    assert late.frame.frame_id == 1 and not late.complete and late.frame.stream_frame("i0") is None
    assert b.flush() == [] and (b.partial, b.orphaned) == (1, 1)


def test_live_mode_takes_latest_partner():
    b = EventBuilder(["det", "i0"], live=True)
    assert b.add(f("i0", 7, 2.0), 0, 0) == []
    [e] = b.add(f("det", 100), 0, 0)
    assert e.frame.stream_frame("i0").frame_id == 7


def test_duplicate_stream_names_refused():
    with pytest.raises(ValueError, match="unique"):
        EventBuilder(["a", "a"])


@pytest.mark.timeout(60)
def test_two_zmq_streams_normalised_net_signal_and_partial_events(tmp_path):
    det_port, i0_port = free_port(), free_port()
    frames = frames_for_test(12)
    i0 = [float(10 + i) for i in range(12)]
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["roi"], event_timeout=0.3, output_directory=str(tmp_path)))
    e.set_parameter("roi_signal", [30, 15, 10, 10])
    e.set_parameter("roi_normalisation", "i0")
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    try:
        with PeersConnected(det, mon):
            e.start()
        for i, frame in enumerate(frames):
            det.image(i, frame)
            if i != 5:  # the monitor misses frame 5
                mon.image(i, np.array([i0[i]], dtype=np.float64))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    snap = e.snapshot()
    assert_counters_exact(snap, total=12, completed=12, partial=1, orphaned=0, dropped=0, bad=0)
    # the partial event (frame 5) is analysed last, once its wait is over: NaN, nothing to divide by
    assert snap.frame_id == 5 and np.isnan(snap.results["net_signal_normalised"])
    assert snap.results["net_signal"] == frames[5][10:20, 30:45].astype(float).sum()
    # every event's results, in the results file
    with h5py.File(e.output_file, "r") as h5:
        ids = h5["entry/results/frame_id"][...].tolist()
        normalised = dict(zip(ids, h5["entry/results/net_signal_normalised"][...].tolist()))
    assert sorted(ids) == list(range(12))
    for i in range(12):
        want = frames[i][10:20, 30:45].astype(float).sum() / i0[i]
        assert np.isnan(normalised[i]) if i == 5 else normalised[i] == pytest.approx(want)
    assert "1 partial" in snap.status
    e.close()


@pytest.mark.timeout(60)
def test_partial_and_reordered_partner_events_are_not_gaps():
    """50 events, 5 partial (ready a timeout later), partner frames in reverse order in blocks
    of 10, one event without its primary frame: the gap check runs on event ids, so nothing
    is dropped but the orphan, once."""
    det_port, i0_port = free_port(), free_port()
    frames = frames_for_test(50, shape=(8, 8))
    partial, orphan = {3, 17, 18, 31, 44}, 25
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["roi", "tests.unit.plugins:FrameRecorder"], event_timeout=0.2))
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    try:
        with PeersConnected(det, mon):
            e.start()
        for block in range(0, 50, 10):
            for i in range(block, block + 10):
                if i != orphan:
                    det.image(i, frames[i])
            for i in reversed(range(block, block + 10)):
                if i not in partial:
                    mon.image(i, np.array([1.0 + i]))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    snap = e.snapshot()
    assert_counters_exact(snap, total=50, completed=49, partial=5, orphaned=1, dropped=1, bad=0, duplicate=0)
    assert sorted(fid for fid, _ in snap.summary["recorded"]) == [i for i in range(50) if i != orphan]
    assert snap.counters.out_of_order == 40  # i0 frames behind a higher id: all but the first sent of each block
    e.close()


def test_duplicate_partner_frame_is_not_a_second_event():
    det_port, i0_port = free_port(), free_port()
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["tests.unit.plugins:FrameRecorder"], event_timeout=0.2))
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    frame = frames_for_test(1, shape=(8, 8))[0]
    try:
        with PeersConnected(det, mon):
            e.start()
        for i in range(4):
            det.image(i, frame)
            mon.image(i, np.array([1.0]))
        det.image(2, frame)  # repeated after the event was analysed
        mon.image(1, np.array([1.0]))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    snap = e.snapshot()
    assert_counters_exact(snap, total=4, completed=4, partial=0, dropped=0, duplicate=2)
    assert sorted(fid for fid, _ in snap.summary["recorded"]) == [0, 1, 2, 3]
    e.close()


def test_malformed_primary_frame_is_bad_once_not_also_orphaned():
    det_port, i0_port = free_port(), free_port()
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["tests.unit.plugins:FrameRecorder"], event_timeout=0.2))
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    frame = frames_for_test(1, shape=(8, 8))[0]
    try:
        with PeersConnected(det, mon):
            e.start()
        for i in range(6):
            det.image(i, frame, **({"type": "complex7"} if i == 3 else {}))
            mon.image(i, np.array([1.0]))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    snap = e.snapshot()
    assert_counters_exact(snap, total=6, completed=5, bad=1, dropped=0, orphaned=0, partial=0)
    assert snap.bad_kinds == {"unknown_type": 1}
    e.close()


def test_busy_analysis_does_not_expire_events_whose_partners_are_queued():
    """The first frame takes 1 s (like a kernel compile) with a 0.2 s event timeout: the partner
    frames are queued meanwhile, so no event is partial or orphaned."""
    det_port, i0_port = free_port(), free_port()
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["tests.unit.test_engine:Stall"], event_timeout=0.2))
    e.set_parameter("stall_first", 1.0)
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    frame = frames_for_test(1, shape=(8, 8))[0]
    try:
        with PeersConnected(det, mon):
            e.start()
        for i in range(10):
            det.image(i, frame)
            mon.image(i, np.array([1.0]))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    assert_counters_exact(e.snapshot(), total=10, completed=10, partial=0, orphaned=0, dropped=0)
    e.close()


def test_late_frames_never_count_an_event_twice():
    """A primary frame after its event was given up (orphaned) is analysed once, as partial, and
    no longer orphaned; a partner frame after its event was analysed without it is skipped."""
    b = EventBuilder(["det", "i0"], timeout=1.0)
    assert b.add(f("i0", 5), 0.0, 0.0) == [] and b.expire(1.5) == [] and b.orphaned == 1
    [late] = b.add(f("det", 5), 2.0, 2.0)           # the orphan's primary frame after all
    assert (late.frame.frame_id, late.complete) == (5, False) and late.frame.stream_frame("i0") is None
    assert (b.orphaned, b.partial) == (0, 1)
    assert b.add(f("i0", 5), 2.1, 2.1) == []         # and nothing more for id 5
    assert b.add(f("det", 6), 3.0, 3.0) == []
    [partial] = b.expire(4.5)
    assert partial.frame.frame_id == 6 and b.partial == 2
    assert b.add(f("i0", 6), 5.0, 5.0) == [] and b.flush() == []  # a late partner: not an orphan
    assert (b.orphaned, b.partial, b.late_partners) == (0, 2, 2)  # i0 5 and i0 6
    b.new_numbering()  # ids start again (next series): id 5 is a new event
    assert b.add(f("i0", 5), 6.0, 6.0) == [] and b.flush() == [] and b.orphaned == 1


def wait_counter(engine: Engine, name: str, value: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while getattr(engine.snapshot().counters, name) != value:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not {value} after {timeout}s: {engine.snapshot().counters}")
        time.sleep(0.005)


@pytest.mark.timeout(60)
def test_late_primary_and_late_partner_frames_in_the_engine():
    """Over real sockets: det frame 5 arrives after its event timed out (orphaned), i0 frame 7 after
    its event was analysed as partial. Each event is counted once: total == completed, nothing lost."""
    det_port, i0_port = free_port(), free_port()
    frames = frames_for_test(10, shape=(8, 8))
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"],
                            ["roi", "tests.unit.plugins:FrameRecorder"], event_timeout=0.2))
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    try:
        with PeersConnected(det, mon):
            e.start()
        for i in range(10):
            if i != 5:
                det.image(i, frames[i])
            if i != 7:
                mon.image(i, np.array([1.0 + i]))
        wait_counter(e, "orphaned", 1)  # event 5 given up: no det frame within 0.2 s
        wait_counter(e, "partial", 1)   # event 7 analysed without its i0 frame
        det.image(5, frames[5])
        mon.image(7, np.array([8.0]))
        det.series_end()
        mon.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        det.close()
        mon.close()
    snap = e.snapshot()
    assert_counters_exact(snap, total=10, completed=10, partial=2, orphaned=0, dropped=0, bad=0, duplicate=0)
    recorded = sorted(fid for fid, _ in snap.summary["recorded"])
    assert recorded == list(range(10)), recorded  # frame 5 analysed once, none twice
    e.close()
