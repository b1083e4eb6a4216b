"""The engine with sim:// and zmq://: state machine, counters, results equal to numpy."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineError, EngineState
from tango_dqm.params import ParameterError
from tango_dqm.plugin import PluginError
from tango_dqm.simulation import FrameGenerator, Scene
from tests.helpers import frames_for_test

SIG, BKG = [30, 15, 10, 10], [0, 20, 40, 20]


class Recorder:
    def __init__(self):
        self.states: list[str] = []
        self.results: list[tuple[int, dict]] = []

    def on_state(self, state, status):
        self.states.append(state)

    def on_results(self, results, frame_id):
        self.results.append((frame_id, results))


def wait_state(engine: Engine, *states: EngineState, timeout: float = 20.0) -> EngineState:
    deadline = time.monotonic() + timeout
    while engine.state not in states:
        if time.monotonic() > deadline:
            raise AssertionError(f"still {engine.state} after {timeout}s: {engine.status()}")
        time.sleep(0.005)
    return engine.state


def expected_roi(frame: np.ndarray, sig=SIG, bkg=BKG, saturation=65535) -> dict[str, float]:
    """Independent numpy computation of the roi analysis."""
    def region(r):
        ox, sx, oy, sy = r
        return frame[oy:oy + sy, ox:ox + sx].astype(np.float64)
    s, b = region(sig), region(bkg)
    out = {}
    for prefix, a in (("signal", s), ("background", b)):
        out.update({f"{prefix}_sum": a.sum(), f"{prefix}_mean": a.mean(), f"{prefix}_std": a.std(),
                    f"{prefix}_min": a.min(), f"{prefix}_max": a.max()})
    out["net_signal"] = s.sum() - b.mean() * s.size
    out["frame_min"], out["frame_max"] = float(frame.min()), float(frame.max())
    out["saturated_pixels"] = int((frame >= saturation).sum())
    return out


def assert_results_equal(got: dict, want: dict) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key


def test_sim_scan_runs_on_running_close_reset():
    rec = Recorder()
    e = Engine(EngineConfig(["sim://?frames=50&shape=64x80&seed=3"]), rec)
    e.set_parameter("roi_signal", SIG)
    e.set_parameter("roi_background", BKG)
    assert e.state is EngineState.ON
    e.start()
    assert wait_state(e, EngineState.CLOSE) is EngineState.CLOSE
    snap = e.snapshot()
    assert (snap.counters.total, snap.counters.completed, snap.counters.dropped, snap.counters.bad) == (50, 50, 0, 0)
    # last frame's results equal numpy on the same (deterministic) frame
    frame = FrameGenerator(Scene(shape=(64, 80), seed=3)).render(49)
    assert snap.frame_id == 49
    assert_results_equal(snap.results, expected_roi(frame))
    assert snap.summary["run_signal_sum_mean"] > 0
    e.publisher.flush()
    assert rec.states == ["RUNNING", "CLOSE"]
    e.reset()
    assert e.state is EngineState.ON and e.snapshot().results == {}
    e.close()


def test_results_depend_only_on_frame_data_and_ids():
    runs = []
    for _ in range(2):
        rec = Recorder()
        e = Engine(EngineConfig(["sim://?frames=30&shape=32x32&seed=7"]), rec)
        e.set_parameter("roi_signal", [4, 8, 4, 8])
        e.start()
        wait_state(e, EngineState.CLOSE)
        runs.append(e.snapshot().summary)
        e.close()
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)


def test_stop_drains_and_closes_a_live_run():
    e = Engine(EngineConfig(["sim://?frames=0&shape=32x32&rate=200"]))
    e.start(live=True)
    time.sleep(0.3)
    e.stop()
    wait_state(e, EngineState.CLOSE)
    snap = e.snapshot()
    assert snap.counters.completed > 10
    assert "stopped" in snap.status
    e.close()


def test_commands_not_allowed_in_wrong_state():
    e = Engine(EngineConfig(["sim://?frames=0&shape=16x16&rate=50"]))
    with pytest.raises(EngineError, match="Reset is allowed in CLOSE and FAULT"):
        e.reset()
    e.start()
    with pytest.raises(EngineError, match="not allowed in RUNNING"):
        e.start()
    e.stop()
    wait_state(e, EngineState.CLOSE)
    e.close()


def test_roi_outside_image_refused_and_old_value_kept():
    e = Engine(EngineConfig(["sim://?frames=5&shape=32x48"]))
    e.set_parameter("roi_signal", [0, 10, 0, 10])
    with pytest.raises(ParameterError, match="offset_x \\+ size_x must be <= image width"):
        e.set_parameter("roi_signal", [40, 10, 0, 10])
    assert e.params.get("roi_signal").as_list() == [0, 10, 0, 10]
    e.close()



def test_plugin_failure_faults_with_name_and_reset_recovers():
    e = Engine(EngineConfig(["sim://?frames=20&shape=16x16"], ["roi", "tests.unit.plugins:FailOnFrame3"]))
    e.start()
    wait_state(e, EngineState.FAULT)
    status = e.status()
    assert "fail_on_3" in status and "frame 3" in status and "Reset" in status
    snap = e.snapshot()
    # no frame half-way: frames 0..2 completed, frame 3 in neither counters nor accumulators
    assert snap.counters.completed == 3 and snap.frame_id == 2
    e.reset()
    assert e.state is EngineState.ON
    e.close()


def test_unknown_plugin_and_bad_source_are_clear():
    with pytest.raises(PluginError, match="unknown analysis 'nope'"):
        Engine(EngineConfig(["sim://"], ["nope"]))
    with pytest.raises(Exception, match="unknown scheme 'foo'"):
        Engine(EngineConfig(["foo://bar"]))


def test_parameter_change_applies_from_next_frame_and_is_logged():
    e = Engine(EngineConfig(["sim://?frames=0&shape=32x32&rate=100"]))
    e.set_parameter("roi_signal", [0, 4, 0, 4])
    e.start()
    time.sleep(0.2)
    e.set_parameter("roi_signal", [0, 8, 0, 8])
    time.sleep(0.2)
    e.stop()
    wait_state(e, EngineState.CLOSE)
    change = e.params.changes[-1]
    assert change.value == [0, 8, 0, 8]
    assert change.applied_at_frame is not None and change.applied_at_frame > 0
    e.close()


def test_zmq_scan_equals_numpy_and_series_end_closes(stins_sender, stins_port):
    frames = frames_for_test(20)
    e = Engine(EngineConfig([f"det=zmq://127.0.0.1:{stins_port}"]))
    e.set_parameter("roi_signal", SIG)
    e.set_parameter("roi_background", BKG)
    e.start()
    stins_sender.header(series="42")  # no frame count announced: only series_end can close
    seen = []
    for i, f in enumerate(frames):
        stins_sender.image(i, f)
    stins_sender.series_end()
    wait_state(e, EngineState.CLOSE)
    snap = e.snapshot()
    assert snap.counters.completed == 20 and snap.counters.bad == 0 and snap.counters.total == 20
    assert_results_equal(snap.results, expected_roi(frames[-1]))
    # run summary over every frame equals numpy over the same frames
    sums = [expected_roi(f)["signal_sum"] for f in frames]
    assert snap.summary["run_signal_sum_mean"] == pytest.approx(np.mean(sums), rel=1e-12)
    assert snap.summary["run_signal_sum_max"] == max(sums)
    assert "series end" in snap.status
    del seen
    e.close()


def test_zmq_malformed_messages_counted_and_skipped(stins_sender, stins_port):
    frames = frames_for_test(4, shape=(16, 16))
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"]))
    e.set_parameter("roi_signal", [0, 4, 0, 4])
    e.start()
    stins_sender.header()
    stins_sender.image(0, frames[0])
    stins_sender.raw(b"{not json")                                                # bad JSON
    stins_sender.image(1, frames[1][:8])                                         # consistent, fine
    stins_sender.raw(json.dumps({"htype": "image", "frame": 2, "shape": [16, 16], "type": "uint16"}).encode(),
                     frames[2][:8].tobytes())                                    # wrong byte count
    stins_sender.image(3, frames[2], type="complex7")                            # unknown type
    stins_sender.raw(json.dumps({"htype": "image", "frame": 4, "shape": [16, 16], "type": "uint16"}).encode())
    stins_sender.raw(json.dumps({"htype": "bogus"}).encode())                    # unknown htype
    stins_sender.image(5, frames[3])
    stins_sender.series_end()
    wait_state(e, EngineState.CLOSE)
    snap = e.snapshot()
    assert snap.counters.bad == 5
    assert snap.bad_kinds == {"bad_json": 1, "size_mismatch": 1, "unknown_type": 1, "missing_part": 1,
                              "unknown_htype": 1}
    assert snap.counters.completed == 3  # frames 0, 1 and 5
    assert snap.frame_id == 5
    assert snap.results["signal_sum"] == float(frames[3][0:4, 0:4].sum())
    # ids 2..4 never arrived as good frames: counted as dropped, not hidden
    assert snap.counters.dropped == 3
    e.close()


def test_nan_for_disabled_roi():
    e = Engine(EngineConfig(["sim://?frames=2&shape=16x16"]))
    e.start()
    wait_state(e, EngineState.CLOSE)
    r = e.snapshot().results
    assert math.isnan(r["signal_sum"]) and math.isnan(r["net_signal"])
    assert r["frame_max"] >= r["frame_min"]
    e.close()


def test_frames_announced_but_never_sent_are_dropped(stins_sender, stins_port):
    frames = frames_for_test(5, shape=(16, 16))
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"]))
    e.start()
    stins_sender.header(nimages=8)
    for i, f in enumerate(frames):  # frames 5, 6, 7 never come
        stins_sender.image(i, f)
    stins_sender.series_end()
    wait_state(e, EngineState.CLOSE)
    c = e.snapshot().counters
    assert (c.total, c.completed, c.dropped) == (8, 5, 3)
    e.close()
