"""The engine with sim:// and zmq://: state machine, counters, results equal to numpy."""
from __future__ import annotations

import json
import math
import threading
import time

import h5py
import numpy as np
import pytest

from tango_dqm import Analysis, Parameter, Result
from tango_dqm.engine import Engine, EngineConfig, EngineError, EngineState
from tango_dqm.events import IdKind, IdTracker
from tango_dqm.params import ParameterError
from tango_dqm.plugin import PluginError
from tango_dqm.quality import Verdict
from tango_dqm.simulation import FrameGenerator, Scene
from tests.helpers import StinsSender, assert_counters_exact, free_port, frames_for_test

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
    assert_counters_exact(snap, total=50, completed=50, dropped=0, bad=0, duplicate=0, out_of_order=0)
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
        assert_counters_exact(e.snapshot(), total=30, completed=30)
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
    assert_counters_exact(snap, dropped=0, bad=0)
    assert "stopped" in snap.status
    e.close()


def test_commands_not_allowed_in_wrong_state():
    e = Engine(EngineConfig(["sim://?frames=0&shape=16x16&rate=50"]))
    with pytest.raises(EngineError, match="Reset is allowed in CLOSE and FAULT"):
        e.reset()
    e.start()
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="not allowed in RUNNING"):
        e.start()
    assert time.monotonic() - t0 < 1.0  # refused at once, not after waiting for the running sources
    e.stop()
    wait_state(e, EngineState.CLOSE)
    assert_counters_exact(e.snapshot(), dropped=0, bad=0)  # stopped: total is what the scan saw
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
    assert_counters_exact(e.snapshot(), dropped=0, bad=0)
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
    assert_counters_exact(snap, total=20, completed=20, dropped=0, bad=0)
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
    # ids 2..4 arrived malformed: counted bad, not also dropped; bad JSON and the unknown htype
    # are two more messages, so total is 3 + 0 + 5
    assert_counters_exact(snap, total=8, completed=3, dropped=0, bad=5)
    e.close()


def test_nan_for_disabled_roi():
    e = Engine(EngineConfig(["sim://?frames=2&shape=16x16"]))
    e.start()
    wait_state(e, EngineState.CLOSE)
    assert_counters_exact(e.snapshot(), total=2, completed=2)
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
    assert_counters_exact(e.snapshot(), total=8, completed=5, dropped=3, bad=0)
    e.close()


def test_announced_count_travels_as_a_series_start_item_and_ends_the_scan(stins_sender, stins_port):
    """The header's nimages reaches the engine through its queue (no source attribute is shared):
    the scan ends after that many frames without a series_end; a later header does not change it."""
    frames = frames_for_test(3, shape=(16, 16))
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"]))
    try:
        e.start()
        stins_sender.header(nimages=3)
        stins_sender.image(0, frames[0])
        stins_sender.header(series="again", nimages=50)  # the first announced count stays
        for i in (1, 2):
            stins_sender.image(i, frames[i])
        assert wait_state(e, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, e.status()
        assert_counters_exact(e.snapshot(), total=3, completed=3, dropped=0, expected=3)
        assert "all expected events completed" in e.status()
        assert all(s.expected_frames is None for s in e._sources)  # noqa: SLF001 - nothing written back
    finally:
        e.close()


def test_live_ignores_an_announced_count(stins_sender, stins_port):
    frames = frames_for_test(4, shape=(16, 16))
    rec = Recorder()
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"]), listener=rec)
    try:
        e.start(live=True)
        stins_sender.header(nimages=2)
        for i, f in enumerate(frames):
            stins_sender.image(i, f)
        wait_until(lambda: e.snapshot().counters.completed == 4, what="4 live frames analysed")
        c = e.snapshot().counters
        assert e.state is EngineState.RUNNING and c.expected is None and c.total == 4
        e.stop()
        assert wait_state(e, EngineState.CLOSE) is EngineState.CLOSE
    finally:
        e.close()


# ---- counting: every missing frame once, duplicates and out-of-order frames as such ----------


class Stall(Analysis):
    """Stands for a slow analysis: ``stall_first`` s on the first frame (e.g. a compile), then
    ``stall_each`` s per frame."""

    name = "stall"
    parameters = [Parameter("stall_first", float, 0.0, min=0.0, max=10.0),
                  Parameter("stall_each", float, 0.0, min=0.0, max=1.0)]
    results = [Result("stall_frame", int)]

    def __init__(self):
        self.seen = 0

    def process(self, frame, params, context):
        time.sleep(params.stall_first if self.seen == 0 else params.stall_each)  # the analysis cost itself
        self.seen += 1
        return {"stall_frame": int(frame.frame_id)}


def wait_until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout}s")
        time.sleep(0.005)


@pytest.mark.parametrize("ids, want", [
    # backwards and repeated ids: nothing is lost
    ([0, 1, 3, 2, 3, 4, 4, 5], dict(completed=6, dropped=0, duplicate=2, out_of_order=1, total=6)),
    # a gap, later filled in part: only the ids that never came are dropped
    ([0, 5, 1, 3, 6], dict(completed=5, dropped=2, duplicate=0, out_of_order=2, total=7)),
    # the first frames out of order
    ([1, 0, 2], dict(completed=3, dropped=0, duplicate=0, out_of_order=1, total=3)),
])
def test_duplicate_and_out_of_order_ids_are_not_dropped(stins_sender, stins_port, ids, want):
    frame = frames_for_test(1, shape=(8, 8))[0]
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"], ["tests.unit.plugins:FrameRecorder"]))
    e.start()
    stins_sender.header()
    for i in ids:
        stins_sender.image(i, frame)
    stins_sender.series_end()
    wait_state(e, EngineState.CLOSE)
    snap = e.snapshot()
    assert_counters_exact(snap, bad=0, **want)
    analysed = [fid for fid, _ in snap.summary["recorded"]]
    assert analysed == list(dict.fromkeys(ids))  # each id once, in arrival order
    e.close()


def test_id_tracker_window_bounds_memory_and_counts_each_gap_once():
    t = IdTracker(window=100, reorder=16)
    assert t.observe(0, "s") is IdKind.NEW
    assert t.observe(10**9, "s") is IdKind.NEW  # a huge jump is one range, not 10**9 ids in memory
    assert t.missing == 10**9 - 1 and len(t._starts) == 1
    assert t.observe(10**9 - 3) is IdKind.LATE and t.missing == 10**9 - 2
    assert t.observe(10**9 - 3) is IdKind.DUPLICATE and t.missing == 10**9 - 2
    for i in range(10**9 + 1, 10**9 + 1000, 2):  # every other id lost
        assert t.observe(i) is IdKind.NEW
    assert t.missing == 10**9 - 2 + 499
    assert len(t._starts) <= 51  # only the ranges within the window are kept
    # far below the lowest id of the numbering, or a new series: a new numbering, nothing lost
    for series, start in (("s", 5), ("t", 7)):
        assert t.observe(start, series) is IdKind.NEW and t.observe(start + 1, series) is IdKind.NEW
        assert t.observe(start, series) is IdKind.DUPLICATE
        assert t.missing == 10**9 - 2 + 499


def test_bound_source_rebinds_at_once_after_close():
    """Init = close the engine, build a new one, Start: the bound port must be free by then."""
    port = free_port()
    uri = f"zmq://127.0.0.1:{port}?bind=1"
    for _ in range(15):
        e = Engine(EngineConfig([uri]))
        e.start(live=True)  # raised "Address already in use" before close() waited for the socket
        assert e.state is EngineState.RUNNING
        t0 = time.monotonic()
        assert e.close() is True
        assert time.monotonic() - t0 < 1.0
    e = Engine(EngineConfig([uri], ["tests.unit.plugins:FrameRecorder"]))
    sender = StinsSender(port, bind=False)
    try:
        e.start()
        sender.header()
        for i, f in enumerate(frames_for_test(3, shape=(8, 8))):
            sender.image(i, f)
        sender.series_end()
        wait_state(e, EngineState.CLOSE)
    finally:
        sender.close()
    assert_counters_exact(e.snapshot(), completed=3, dropped=0, total=3)
    e.close()


def test_live_queue_overflow_counted_once(stins_sender, stins_port):
    n = 300
    e = Engine(EngineConfig([f"zmq://127.0.0.1:{stins_port}"], ["tests.unit.test_engine:Stall"], queue_size=4))
    e.set_parameter("stall_each", 0.002)
    e.start(live=True)
    frame = frames_for_test(1, shape=(8, 8))[0]
    for i in range(n):
        stins_sender.image(i, frame)
    wait_until(lambda: (lambda c: c.completed + c.dropped >= n)(e.snapshot().counters), what=f"{n} ids accounted")
    e.stop()
    wait_state(e, EngineState.CLOSE)
    snap = e.snapshot()
    c = snap.counters
    assert c.dropped > 0, "the test needs queue overflow"
    # every id 0..n-1 reached the source: each is either analysed or dropped, once
    assert_counters_exact(snap, total=n, bad=0, duplicate=0)
    assert c.completed + c.dropped == n
    e.close()


def _write_replay_file(path, n_frames: int, n_gaps: int):
    ids = np.delete(np.arange(n_frames + n_gaps), np.arange(7, n_frames + n_gaps, (n_frames + n_gaps) // n_gaps))
    assert len(ids) == n_frames
    frames = np.stack(frames_for_test(n_frames, shape=(8, 8)))
    with h5py.File(path, "w") as f:
        f.create_dataset("/entry/data/data", data=frames, chunks=(16, 8, 8))
        f.create_dataset("/entry/data/frame_id", data=ids.astype(np.int64))
    return ids


@pytest.mark.parametrize("query", ["&rate=400", "", "&block=1"])
def test_replay_with_id_gaps_analyses_every_frame(tmp_path, query):
    path = tmp_path / "gaps.h5"
    ids = _write_replay_file(path, 270, 30)
    runs = []
    for queue_size in (2, 64):
        e = Engine(EngineConfig([f"hdf5://{path}?ids=/entry/data/frame_id{query}"],
                                ["tests.unit.plugins:FrameRecorder"], queue_size=queue_size))
        e.start()
        wait_state(e, EngineState.CLOSE, timeout=30)
        snap = e.snapshot()
        # stopped before at analysed + dropped = 270: the last frames were never analysed
        assert_counters_exact(snap, completed=270, dropped=30, bad=0, total=300, duplicate=0, out_of_order=0)
        assert [fid for fid, _ in snap.summary["recorded"]] == ids.tolist()
        assert "all expected events completed" not in snap.status  # 30 were lost
        runs.append(snap.summary["recorded"])
        e.close()
    assert runs[0] == runs[1]  # deterministic whatever the queueing


def test_event_rate_after_a_stall_stays_at_the_source_rate():
    """A slow first frame (like a kernel compile) fills the queue; the backlog analysed fast
    afterwards arrived at the source's rate, so eventRate must not read above it."""
    rate = 100.0
    e = Engine(EngineConfig([f"sim://?frames=0&shape=16x16&rate={rate:g}"], ["tests.unit.test_engine:Stall"],
                            queue_size=64))
    e.set_parameter("stall_first", 0.5)
    e.start(live=True)
    wait_until(lambda: e.snapshot().counters.completed > 0, what="first frame analysed")
    readings = []
    t_end = time.monotonic() + 3.0
    while time.monotonic() < t_end:
        readings.append(e.snapshot().counters.event_rate)
        time.sleep(0.02)  # sampling period of the reading, not a wait for a condition
    e.stop()
    wait_state(e, EngineState.CLOSE)
    assert max(readings) <= rate * 1.03, max(readings)
    assert readings[-1] >= rate * 0.9  # and it does measure the rate
    assert_counters_exact(e.snapshot(), bad=0, duplicate=0)
    e.close()


def test_id_tracker_partner_ids_before_the_first_series_are_one_numbering():
    """Partner frames (no series) may arrive before the primary's first frame names the series:
    their gaps must stay open to be filled, not be counted lost by a spurious new numbering."""
    t = IdTracker()
    for fid in (0, 1, 2, 3, 4, 6):
        t.observe(fid, None)
    assert t.missing == 1
    assert t.observe(0, "") is IdKind.DUPLICATE  # the primary's frame 0: seen on the partner
    assert t.observe(5, "") is IdKind.LATE and t.missing == 0
    assert t.observe(7, "other") is IdKind.NEW  # a named series that changes still starts over
    assert t.missing == 0


# ---- parallel analysis (analysis threads): results independent of their number -------------------

STANDARD_SET = ["roi", "profile", "pixels", "histogram"]


def _datasets(group: h5py.Group, prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, item in group.items():
        if isinstance(item, h5py.Group):
            out.update(_datasets(item, f"{prefix}{name}/"))
        else:
            out[f"{prefix}{name}"] = item[()]
    return out


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_parallel_analysis_gives_identical_results(tmp_path, threads):
    """Per-frame results (published and in the results file) and the run summary are bit-for-bit
    those of one thread: process runs ahead on the pool, accumulation stays in frame order."""
    def scan(n_threads: int, out: str):
        rec = Recorder()
        e = Engine(EngineConfig(["sim://?frames=40&shape=48x64&seed=5"], STANDARD_SET, queue_size=8,
                                output_directory=out, output_name="r.h5", analysis_threads=n_threads), rec)
        assert e.analysis_threads == n_threads
        e.set_parameter("roi_signal", [10, 20, 10, 20])
        e.start()
        wait_state(e, EngineState.CLOSE)
        e.publisher.flush()
        snap = e.snapshot()
        assert (e.frames_run_ahead > 0) is (n_threads > 1)  # the pool did analyse (sim:// outruns it)
        e.close()
        with h5py.File(f"{out}/r.h5", "r") as f:
            results = _datasets(f["entry/results"])
        return rec.results, snap.summary, results, snap.counters

    ref_events, ref_summary, ref_file, _ = scan(1, str(tmp_path / "one"))
    events, summary, file, counters = scan(threads, str(tmp_path / "many"))
    assert counters.completed == 40 and counters.dropped == 0
    # the publisher coalesces results when busy (timing), so compare the frames both published
    got_by_id, want_by_id = dict(events), dict(ref_events)
    common = sorted(got_by_id.keys() & want_by_id.keys())
    assert 39 in common  # the last frame is always published
    for fid in common:
        got, want = got_by_id[fid], want_by_id[fid]
        assert "net_signal" in got.keys() & want.keys()  # arrays are published at most every 0.5 s (timing)
        for k in got.keys() & want.keys():
            np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=f"{k} frame {fid}")
    assert ref_file.keys() == file.keys() and len(ref_file) > 5
    clock = {k for k in ref_file if k.rsplit("/", 1)[-1] in ("date", "time", "timestamp", "arrival_time")}
    for k in ref_file.keys() - clock:
        np.testing.assert_array_equal(file[k], ref_file[k], err_msg=k)
    assert summary.keys() == ref_summary.keys()
    for k in ref_summary:
        np.testing.assert_array_equal(np.asarray(summary[k]), np.asarray(ref_summary[k]), err_msg=k)


def test_parallel_analysis_failure_on_frame_k_faults_naming_it():
    e = Engine(EngineConfig(["sim://?frames=60&shape=16x16"], ["roi", "tests.unit.plugins:FailOnFrame3"],
                            analysis_threads=4))
    e.set_parameter("fail_frame", 17)
    e.start()
    wait_state(e, EngineState.FAULT)
    assert "fail_on_3" in e.status() and "frame 17" in e.status()
    snap = e.snapshot()
    # every frame before k handled in order, none after it (their process ran ahead, discarded)
    assert snap.counters.completed == 17 and snap.frame_id == 16
    e.reset()
    e.close()
    _wait_no_analysis_threads()


class SlowProcess(Analysis):
    """process sleeps (releasing the GIL, like a nogil kernel), so frames stay in flight on the pool."""

    name = "slow"
    parameters = [Parameter("slow_s", float, 0.02, min=0.0)]
    results = [Result("slow_id", float)]

    def process(self, frame, params, context):
        time.sleep(params.slow_s)
        return {"slow_id": float(frame.frame_id)}

    def new_accumulator(self):
        return []

    def accumulate(self, acc, output, params):
        acc.append(output.results["slow_id"])
        return acc

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {"slow_in_order": acc == sorted(acc) and acc == list(map(float, range(len(acc))))}


def _analysis_threads() -> list:
    import threading
    return [t for t in threading.enumerate() if t.name.startswith("dqm-analysis")]


def _wait_no_analysis_threads(timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _analysis_threads():
        assert time.monotonic() < deadline, f"analysis threads left: {_analysis_threads()}"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["stop", "close"])
def test_stop_or_close_with_frames_in_flight_leaves_no_thread(how):
    e = Engine(EngineConfig(["sim://?frames=0&shape=16x16"], ["roi", "tests.unit.test_engine:SlowProcess"],
                            queue_size=16, analysis_threads=3))
    rec_before = len(_analysis_threads())
    e.start()
    deadline = time.monotonic() + 10
    while e.snapshot().counters.completed < 5:  # running, with frames queued behind the slow ones
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert len(_analysis_threads()) == rec_before + 3
    if how == "stop":
        e.stop()
        wait_state(e, EngineState.CLOSE)
        snap = e.snapshot()
        assert snap.summary["slow_in_order"] is True  # every frame taken was accumulated in order
        assert_counters_exact(snap, dropped=0, bad=0)
        e.close()
    else:
        assert e.close()
    _wait_no_analysis_threads()


def test_analysis_threads_config_checked():
    with pytest.raises(EngineError, match="AnalysisThreads"):
        Engine(EngineConfig(["sim://?frames=1"], analysis_threads=-1))
    e = Engine(EngineConfig(["sim://?frames=1"]))
    assert e.analysis_threads >= 1  # 0: one per core
    e.close()


def test_a_new_engine_never_reuses_the_last_scan_id(tmp_path):
    """Init builds a new Engine; a Start in the same second must not collide with the last results file."""
    ids = []
    for _ in range(2):
        e = Engine(EngineConfig(["sim://?frames=2&shape=8x8&rate=0"], output_directory=str(tmp_path)))
        ids.append(e.start())
        wait_state(e, EngineState.CLOSE)
        assert e.snapshot().state is EngineState.CLOSE
        e.close()
    assert ids[0] != ids[1]
    assert len(list(tmp_path.glob("scan_*.h5"))) == 2


def test_parameter_change_with_frames_in_flight_applies_from_the_frame_it_names(tmp_path):
    """Frames analysed ahead with the old value are analysed again when the value changed before
    they are handled: every frame from the change's applied_at_frame on has the new value."""
    e = Engine(EngineConfig(["sim://?frames=0&shape=16x16&seed=2"], ["tests.unit.plugins:Scale",
                                                                     "tests.unit.test_engine:SlowProcess"],
                            queue_size=16, output_directory=str(tmp_path), output_name="r.h5",
                            analysis_threads=3))
    e.set_parameter("slow_s", 0.01)
    e.start()
    deadline = time.monotonic() + 10
    while e.snapshot().counters.completed < 5 or e.frames_run_ahead < 3:  # the pool is busy ahead
        assert time.monotonic() < deadline
        time.sleep(0.005)
    e.set_parameter("scale", 2.0)
    while e.snapshot().counters.completed < 20:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    e.stop()
    wait_state(e, EngineState.CLOSE)
    if e.products is not None:
        e.products.worker.wait_idle(30)
    applied = e.params.changes[-1].applied_at_frame
    e.close()
    with h5py.File(tmp_path / "r.h5", "r") as f:
        ids, got = f["entry/results/frame_id"][()], f["entry/results/scaled_mean"][()]
    gen = FrameGenerator(Scene(shape=(16, 16), seed=2))
    assert applied is not None and ids[0] < applied <= ids[-1]
    for fid, value in zip(ids, got):
        scale = 2.0 if fid >= applied else 1.0
        assert value == float(gen.render(int(fid)).mean()) * scale, fid


def test_interim_judgement_runs_off_the_engine_thread_and_never_overrides_the_final_one():
    """Accumulated checks are judged during the run on a thread of their own (a pixel map's
    finish takes ~1 s per MPix): the scan goes on and ends while one is still running, and its
    late verdict is dropped in favour of the run's final judgement."""
    from tests.unit import plugins

    plugins.INTERIM_STARTED.clear()
    plugins.INTERIM_RELEASE.clear()
    closed = threading.Event()

    class Listener:
        def on_state(self, state, status):
            if state == "CLOSE":
                closed.set()

        def on_results(self, results, frame_id):
            pass

    check = {"type": "channels", "result": "gate_map", "dead_below": 0.5, "max_bad_warning": 0, "max_bad_error": 0}
    e = Engine(EngineConfig(["sim://?frames=40&shape=8x8&rate=400"], ["tests.unit.plugins:InterimGate"],
                            checks=[check], reference_interval=0.0), Listener())
    try:
        e.start()
        assert plugins.INTERIM_STARTED.wait(30)  # an interim judgement is running (and blocked)
        assert closed.wait(60), e.status  # the scan ended meanwhile: the engine never waited for it
        interim = e._interim
        assert interim is not None and interim.is_alive()
        plugins.INTERIM_RELEASE.set()
        interim.join(30)
        assert not interim.is_alive()
        result = next(r for r in e.snapshot().quality.checks if r.name == "gate_map_channels")
        assert result.verdict is Verdict.OK, result  # the final map (all live), not the interim (all dead)
        assert e.snapshot().counters.completed == 40
    finally:
        plugins.INTERIM_RELEASE.set()
        e.close()


def test_latest_gives_one_result_as_the_snapshot_has_it():
    from tests.helpers import run_scan

    e = Engine(EngineConfig(["sim://?frames=12&shape=64x64"], ["roi", "tango_dqm.analysis.pixels:Pixels"]))
    assert e.latest("frame_max") is None  # nothing analysed yet
    snap = run_scan(e, {"pixels_min_frames": 1})
    assert snap.state is EngineState.CLOSE, snap.status
    assert e.latest("frame_max") == snap.results["frame_max"]
    assert e.latest("pixels_frames") == snap.summary["pixels_frames"] == 12  # a run-summary result
    np.testing.assert_array_equal(e.latest("pixels_map"), snap.summary["pixels_map"])
    assert e.latest("no_such_result") is None


class FailingAccumulate(Analysis):
    """accumulate raises on frame 3 (after its results went out)."""

    name = "failing_acc"
    results = [Result("fa_id", float)]

    def process(self, frame, params, context):
        return {"fa_id": float(frame.frame_id)}

    def new_accumulator(self):
        return 0

    def accumulate(self, acc, output, params):
        if output.results["fa_id"] == 3.0:
            raise ValueError("accumulator overflow")
        return acc + 1

    def merge(self, a, b):
        return a + b

    def finish(self, acc):
        return {}


def _accumulation_threads() -> int:
    return sum(t.name == "dqm-accumulate" for t in threading.enumerate())


@pytest.mark.parametrize("threads", [1, 2])
def test_accumulate_failure_faults_naming_the_frame(threads):
    """accumulate runs on the accumulation thread: its failure still faults the engine, naming the frame."""
    e = Engine(EngineConfig(["sim://?frames=40&shape=16x16&rate=200"], ["tests.unit.test_engine:FailingAccumulate"],
                            analysis_threads=threads))
    before = _accumulation_threads()
    try:
        e.start()
        assert wait_state(e, EngineState.FAULT, EngineState.CLOSE) is EngineState.FAULT
        status = e.status()
        assert "analysis accumulate failed on frame 3: ValueError: accumulator overflow" in status
        assert "run Reset" in status
        e.reset()
        assert wait_state(e, EngineState.ON, EngineState.CLOSE) is not EngineState.FAULT
    finally:
        e.close()
    deadline = time.monotonic() + 5
    while _accumulation_threads() > before:
        assert time.monotonic() < deadline, "accumulation thread left after close"
        time.sleep(0.01)
