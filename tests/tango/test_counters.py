"""Counters and event building through the device: each loss once, duplicates apart, bound ports after Init."""
from __future__ import annotations

import numpy as np
import pytest
import tango

from tests.helpers import PeersConnected, StinsSender, free_port, frames_for_test
from tests.tango.test_monitor import context, wait_for

pytestmark = pytest.mark.timeout(120)


def counters(p) -> dict[str, int]:
    names = ("totalEvents", "completedEvents", "droppedEvents", "badEvents", "partialEvents",
             "duplicateEvents", "outOfOrderEvents")
    return {a.name: a.value for a in p.read_attributes(names)}


def test_bind_source_start_right_after_init_and_duplicates_counted():
    port = free_port()
    with context([f"zmq://127.0.0.1:{port}?bind=1"]) as p:
        for _ in range(3):
            p.Live()  # binds the port
            p.Init()  # closes the engine: its socket must be closed before Init returns
            p.Start()  # "Address already in use" before the fix
            assert p.state() == tango.DevState.RUNNING, p.status()
            p.Stop()
            wait_for(p, tango.DevState.CLOSE)
            p.Init()
        p.Start()
        sender = StinsSender(port, bind=False)
        try:
            sender.header()
            frame = frames_for_test(1, shape=(8, 8))[0]
            for i in (0, 1, 3, 2, 2, 4):
                sender.image(i, frame)
            sender.series_end()
            wait_for(p, tango.DevState.CLOSE)
        finally:
            sender.close()
        c = counters(p)
        assert c == {"totalEvents": 5, "completedEvents": 5, "droppedEvents": 0, "badEvents": 0,
                     "partialEvents": 0, "duplicateEvents": 1, "outOfOrderEvents": 1}, c


def test_event_timeout_property_sets_partial_wait():
    det_port, i0_port = free_port(), free_port()
    sources = [f"det=zmq://127.0.0.1:{det_port}", f"i0=zmq://127.0.0.1:{i0_port}"]
    det, mon = StinsSender(det_port), StinsSender(i0_port)
    try:
        with context(sources, EventTimeout=0.2) as p:
            with PeersConnected(det, mon):
                p.Start()
            frames = frames_for_test(10, shape=(8, 8))
            for i, f in enumerate(frames):
                det.image(i, f)
                if i not in (2, 6):
                    mon.image(i, np.array([1.0]))
            det.series_end()
            mon.series_end()
            wait_for(p, tango.DevState.CLOSE)
            c = counters(p)
            assert (c["totalEvents"], c["completedEvents"], c["partialEvents"], c["droppedEvents"]) == (10, 10, 2, 0)
    finally:
        det.close()
        mon.close()


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_bad_event_timeout_is_a_clear_fault(value):
    with context(["sim://?frames=5", "i0=sim://?frames=5"], EventTimeout=value) as p:
        assert p.state() == tango.DevState.FAULT
        assert "EventTimeout" in p.status()
