"""Scan points in the engine: which frames make a point, per-point values equal to numpy over
those frames, the /entry/points table, EndPoint timeouts, refusals."""
from __future__ import annotations

import math
import threading

import h5py
import numpy as np
import pytest

from tango_dqm import Result
from tango_dqm.engine import Engine, EngineConfig, EngineError, EngineState
from tango_dqm.plugin import PluginError, validate_analysis
from tests.helpers import PeersConnected, StinsSender, free_port, frames_for_test

ROI = [30, 15, 10, 10]  # the bright block of frames_for_test: [offset_x, size_x, offset_y, size_y]


def roi_of(frame: np.ndarray) -> np.ndarray:
    x, sx, y, sy = ROI
    return frame[y:y + sy, x:x + sx].astype(np.float64)


class Live:
    """An engine in Live mode on a STINS stream the test sends frame by frame."""

    def __init__(self, tmp_path, point_frames: int = 0):
        port = free_port()
        self.sender = StinsSender(port)
        self.engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}"], ["roi"], output_directory=str(tmp_path),
                                          analysis_threads=1))
        self.engine.set_parameter("roi_signal", ROI)
        self.engine.point_frames = point_frames
        self.analysed = threading.Condition()
        self.frames = frames_for_test(40)
        self.next_id = 0
        with PeersConnected(self.sender):
            self.engine.start(live=True)
        self.sender.header("1")

    def send(self, n: int) -> list[int]:
        ids = list(range(self.next_id, self.next_id + n))
        for i in ids:
            self.sender.image(i, self.frames[i])
        self.next_id += n
        return ids

    def wait_completed(self, n: int, timeout: float = 30.0) -> None:
        """Until n events were analysed (the engine signals each latch and frame via its lock)."""
        import time

        deadline = time.monotonic() + timeout
        while self.engine.snapshot().counters.completed < n:
            assert time.monotonic() < deadline, self.engine.snapshot().counters
            self.engine.wait_point(10**9, 0.02)  # a condition wait: returns at once when a point latches

    def close(self) -> None:
        self.engine.close()
        self.sender.close()


@pytest.fixture
def live(tmp_path):
    made = []

    def make(point_frames: int = 0) -> Live:
        made.append(Live(tmp_path, point_frames))
        return made[-1]

    yield make
    for run in made:
        run.close()


def expected(frames: list[np.ndarray], ids: list[int]) -> dict[str, float]:
    """The per-point values computed independently with numpy over the point's frames."""
    rois = [roi_of(frames[i]) for i in ids]
    sums = np.array([r.sum() for r in rois])
    return {"signal_sum": float(np.sum(sums)), "signal_mean": float(np.mean([r.mean() for r in rois])),
            "signal_max": float(np.max([r.max() for r in rois])), "signal_min": float(np.min([r.min() for r in rois])),
            "signal_std": float(np.mean([r.std() for r in rois])),
            "frame_max": float(np.max([frames[i].max() for i in ids]))}


def test_points_of_m_frames_hold_numpy_values_and_land_in_the_results_file(live):
    run = live(point_frames=4)
    e = run.engine
    records = []
    sent = []
    for k in range(3):
        number = e.start_point()
        assert number == k + 1 and not e.point_ready
        if k == 1:  # EndPoint before the frames come: the point waits for its 4 frames
            e.end_point(30.0)
            sent.append(run.send(4))
        else:
            sent.append(run.send(4))
            run.wait_completed(4 * (k + 1))
            e.end_point(30.0)
        rec = e.wait_point(number, 30.0)
        assert rec is not None and rec.number == number and e.point_ready and e.point_number == number
        records.append(rec)
    run.send(2)  # after the last point: no point takes them
    run.wait_completed(14)
    assert e.point_timeouts == 0
    for rec, ids in zip(records, sent):
        assert rec.ended == "complete" and rec.frames == 4
        assert (rec.first_frame, rec.last_frame) == (ids[0], ids[-1])
        for name, value in expected(run.frames, ids).items():
            assert rec.values[name] == pytest.approx(value, rel=1e-12), name
    assert records[0].values["signal_sum"] != records[1].values["signal_sum"]  # the points differ
    e.stop()
    assert e.wait_point(99, 0.5) is None
    path = e.output_file
    for _ in range(600):
        if e.state is EngineState.CLOSE:
            break
        e.wait_point(10**9, 0.05)
    assert e.state is EngineState.CLOSE, e.status()
    with h5py.File(path, "r") as f:
        pts = f["entry/points"]
        assert list(pts["point"][()]) == [1, 2, 3]
        assert list(pts["frames"][()]) == [4, 4, 4]
        assert list(pts["first_frame"][()]) == [ids[0] for ids in sent]
        assert [x.decode() for x in pts["ended"][()]] == ["complete"] * 3
        assert pts["signal_sum"].attrs["aggregate"] == "sum"
        assert pts["signal_mean"].attrs["aggregate"] == "mean"
        for i, ids in enumerate(sent):
            assert pts["signal_sum"][i] == pytest.approx(expected(run.frames, ids)["signal_sum"], rel=1e-12)


def test_open_ended_point_takes_the_frames_that_arrived_before_endpoint(live):
    run = live(point_frames=0)
    e = run.engine
    run.send(2)  # before StartPoint: not in the point
    run.wait_completed(2)
    n = e.start_point()
    ids = run.send(5)
    run.wait_completed(7)
    e.end_point(30.0)
    run.send(3)  # after EndPoint
    rec = e.wait_point(n, 30.0)
    assert rec is not None and rec.ended == "complete"
    assert (rec.frames, rec.first_frame, rec.last_frame) == (5, ids[0], ids[-1])
    assert rec.values["signal_sum"] == pytest.approx(expected(run.frames, ids)["signal_sum"], rel=1e-12)


def test_endpoint_timeout_latches_what_arrived_and_is_counted(live):
    run = live(point_frames=5)
    e = run.engine
    n = e.start_point()
    ids = run.send(3)
    run.wait_completed(3)
    e.end_point(0.3)
    rec = e.wait_point(n, 30.0)
    assert rec is not None and rec.ended == "timeout" and rec.timed_out and rec.frames == 3
    assert e.point_timeouts == 1
    assert rec.values["signal_mean"] == pytest.approx(expected(run.frames, ids)["signal_mean"], rel=1e-12)
    assert rec.as_dict()["timed_out"] is True


def test_a_point_without_frames_reads_nan_and_the_scan_end_latches_an_open_point(live):
    run = live(point_frames=0)
    e = run.engine
    n = e.start_point()
    e.end_point(5.0)
    rec = e.wait_point(n, 30.0)
    assert rec.frames == 0 and math.isnan(rec.values["signal_sum"]) and rec.as_dict()["values"]["signal_sum"] is None
    n = e.start_point()
    ids = run.send(2)
    run.wait_completed(2)
    e.stop()  # the run ends inside point 2
    rec = e.wait_point(n, 30.0)
    assert rec is not None and rec.ended == "scan end" and rec.frames == 2 and rec.first_frame == ids[0]
    assert e.end_point(1.0) == n  # the EndPoint that follows is accepted once
    with pytest.raises(EngineError, match="StartPoint first"):
        e.end_point(1.0)


def test_point_commands_refuse_with_the_rule(live):
    run = live()
    e = run.engine
    with pytest.raises(EngineError, match="StartPoint first"):
        e.end_point(1.0)
    e.start_point()
    with pytest.raises(EngineError, match="point 1 is still open; EndPoint first"):
        e.start_point()
    for bad in (0, -1, float("nan"), float("inf"), 3601, "soon"):
        with pytest.raises(EngineError, match="EndPoint timeout must be"):
            e.end_point(bad)
    for bad in (-1, 1.5, True, 2**31, "4"):
        with pytest.raises(EngineError, match="pointFrames must be"):
            e.point_frames = bad
    assert e.point_frames == 0  # the old value stays
    e.stop()


def test_startpoint_needs_a_running_engine():
    e = Engine(EngineConfig(["sim://?frames=5&shape=16x16"], ["roi"]))
    try:
        with pytest.raises(EngineError, match=r"StartPoint needs a running scan or live run \(RUNNING\), not ON"):
            e.start_point()
        assert e.point_number == 0 and not e.point_ready
    finally:
        e.close()


def test_result_point_aggregates_and_their_rules():
    assert Result("a", float).point_aggregate == "mean"
    assert Result("a", int).point_aggregate == "mean"
    assert Result("a", str).point_aggregate == "last"
    assert Result("a", bool).point_aggregate == "last"
    assert Result("a", float, point="sum").point_aggregate == "sum"
    with pytest.raises(ValueError, match="point must be one of mean, sum, last, min, max"):
        Result("a", float, point="median")

    from tango_dqm import Analysis

    class TextMean(Analysis):
        name = "textmean"
        results = [Result("text_status", str, label="Status", description="a text", point="mean")]

    with pytest.raises(PluginError, match='can only be point="last"'):
        validate_analysis(TextMean)

    class PointPrefix(Analysis):
        name = "pointprefix"
        results = [Result("point_x", float, unit="px", label="x", description="x", format="%.1f")]

    with pytest.raises(PluginError, match="reserved for the device's per-point results"):
        validate_analysis(PointPrefix)


def test_builtin_analyses_declare_point_aggregates():
    from tango_dqm.analysis.roi import RoiStats

    decl = {r.name: r.point_aggregate for r in RoiStats.results}
    assert decl["signal_sum"] == "sum" and decl["net_signal"] == "sum"
    assert decl["signal_mean"] == "mean" and decl["signal_max"] == "max" and decl["frame_min"] == "min"
