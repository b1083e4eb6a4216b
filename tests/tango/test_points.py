"""Scan points through the device: StartPoint/EndPoint, pointReady, point_<result> equal to numpy."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tango

from tests.helpers import PeersConnected, StinsSender, free_port, frames_for_test
from tests.tango.test_monitor import context

pytestmark = pytest.mark.timeout(120)
ROI = [30, 15, 10, 10]


def wait_ready(p, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while not p.pointReady:
        assert time.monotonic() < deadline, p.pointInfo
        time.sleep(0.02)


def test_points_through_the_device_equal_numpy_and_endpoint_returns_at_once():
    port = free_port()
    sender = StinsSender(port)
    frames = frames_for_test(12)
    try:
        with context([f"zmq://127.0.0.1:{port}"]) as p:
            p.roi_signal = ROI
            p.pointFrames = 3
            assert p.pointNumber == 0 and not p.pointReady
            assert p.read_attribute("point_signal_sum").quality == tango.AttrQuality.ATTR_INVALID
            with PeersConnected(sender):
                p.Live()
            sender.header("1")
            for k in range(3):
                assert p.StartPoint() == k + 1
                p.EndPoint(30.0)  # before the frames: returns at once, the point waits for its 3 frames
                assert not p.pointReady
                assert p.state() == tango.DevState.RUNNING  # the device answers meanwhile
                ids = range(3 * k, 3 * k + 3)
                for i in ids:
                    sender.image(i, frames[i])
                wait_ready(p)
                rois = [frames[i][10:20, 30:45].astype(np.float64) for i in ids]
                assert p.pointNumber == k + 1
                assert p.point_signal_sum == pytest.approx(sum(r.sum() for r in rois), rel=1e-12)
                assert p.point_signal_mean == pytest.approx(np.mean([r.mean() for r in rois]), rel=1e-12)
                assert p.point_signal_max == pytest.approx(max(r.max() for r in rois), rel=1e-12)
                info = json.loads(p.pointInfo)
                assert (info["number"], info["frames"], info["first_frame"], info["last_frame"]) == \
                    (k + 1, 3, ids[0], ids[-1])
                assert info["ended"] == "complete"
            assert p.pointTimeouts == 0

            # refusals: DevFailed naming the rule, nothing changes
            with pytest.raises(tango.DevFailed, match="EndPoint needs an open point: StartPoint first"):
                p.EndPoint(1.0)
            p.StartPoint()
            with pytest.raises(tango.DevFailed, match="point 4 is still open; EndPoint first"):
                p.StartPoint()
            with pytest.raises(tango.DevFailed, match="EndPoint timeout must be > 0"):
                p.EndPoint(-1.0)
            with pytest.raises(tango.DevFailed, match="pointFrames"):
                p.pointFrames = -2
            assert p.pointFrames == 3

            # a point whose frames never come: latched by the timeout, counted, values INVALID
            p.EndPoint(0.2)
            wait_ready(p)
            assert p.pointTimeouts == 1 and json.loads(p.pointInfo)["ended"] == "timeout"
            assert p.point_signal_sum is None  # INVALID: no value
            assert p.read_attribute("point_signal_sum").quality == tango.AttrQuality.ATTR_INVALID
            assert p.state() == tango.DevState.RUNNING and "RUNNING" in p.status()
            p.Stop()
    finally:
        sender.close()


def test_startpoint_outside_a_run_is_refused_with_the_state():
    with context(["sim://?frames=5&shape=16x16"]) as p:
        with pytest.raises(tango.DevFailed, match=r"StartPoint needs a running scan or live run \(RUNNING\), not ON"):
            p.StartPoint()
        assert p.state() == tango.DevState.ON
        names = {n.lower() for n in p.get_attribute_list()}
        assert {"point_signal_sum", "point_net_signal", "point_frame_max"} <= names
        assert "point_profile_x" not in names
