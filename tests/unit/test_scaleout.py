"""Scale-out in one process: workers (engines with a Reducer endpoint) on real ZeroMQ sockets,
merged by a ReducerEngine, give the same summary, counters and results file as one engine."""
from __future__ import annotations


import json
import time

import pytest
import zmq

from tango_dqm.engine import Engine, EngineConfig, EngineError, EngineState
from tango_dqm.scaleout.message import WorkerMessage, pack
from tango_dqm.scaleout.reducer import ReducerConfig, ReducerEngine
from tango_dqm.scaleout.wire import Registry
from tango_dqm.scaleout.worker import check_endpoint
from tests.helpers import StinsSender, assert_counters_exact, free_port, frames_for_test
from tests.scaleout_helpers import (ANALYSES, PARAMS, EngineControl, assert_same_files, assert_same_values, per_frame,
                                    wait_state)

N = 600
SIM = "sim://?frames=600&shape=64x80&seed=3&zingers=0.5"


def single_run(source: str, out, send=None) -> Engine:
    e = Engine(EngineConfig([source], ANALYSES, output_directory=str(out), analysis_threads=1))
    for k, v in PARAMS.items():
        e.set_parameter(k, v)
    e.start()
    if send is not None:
        send()
    wait_state(e, EngineState.CLOSE, EngineState.FAULT)
    return e


def scale_out(sources: list[str], out, **reducer_kw) -> tuple[ReducerEngine, dict[str, Engine]]:
    control = EngineControl()
    names = [f"test/worker/{k}" for k in range(len(sources))]
    reducer = ReducerEngine(ReducerConfig(analyses=ANALYSES, workers=names, output_directory=str(out / "reducer"),
                                          **reducer_kw), control)
    for name, source in zip(names, sources):
        w = Engine(EngineConfig([source], ANALYSES,
                                reducer=reducer.endpoint, worker_name=name, analysis_threads=1))
        for k, v in PARAMS.items():
            w.set_parameter(k, v)
        control.engines[name] = w
    for k, v in PARAMS.items():
        reducer.set_parameter(k, v)
    return reducer, control.engines


def close_all(*engines) -> None:
    for e in engines:
        e.close()


def test_partitioned_sim_run_over_three_workers_equals_one_engine(tmp_path):
    single = single_run(SIM, tmp_path / "single")
    reducer, workers = scale_out([f"{SIM}&partition={k}/3" for k in range(3)], tmp_path)
    try:
        reducer.start()
        assert wait_state(reducer, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, reducer.status()
        want, got = single.snapshot(), reducer.snapshot()
        assert_counters_exact(got, total=N, completed=N, dropped=0, bad=0, duplicate=0, out_of_order=0)
        assert [w.snapshot().counters.completed for w in workers.values()] == [200, 200, 200]
        # a worker's own counters: its share, no loss (the other ids are other workers')
        assert all(w.snapshot().counters.dropped == 0 for w in workers.values())
        assert_same_values(got.summary, want.summary)
        assert_same_files(reducer.output_file, single.output_file)
        assert got.quality.verdict == want.quality.verdict
        assert got.coverage == want.coverage
        assert got.verdict_report == want.verdict_report
        assert "finished, complete" in reducer.status()
    finally:
        close_all(reducer, single, *workers.values())


def test_round_robin_push_stream_over_three_workers_equals_one_engine(tmp_path):
    frames = frames_for_test(N, shape=(64, 80), seed=7)
    port = free_port()

    def send_all(sender: StinsSender) -> None:
        sender.header(nimages=N)
        for i, f in enumerate(frames):
            sender.image(i, f)
        sender.series_end()

    sender = StinsSender(port)
    try:
        single = single_run(f"zmq://127.0.0.1:{port}", tmp_path / "single", send=lambda: send_all(sender))
        reducer, workers = scale_out([f"zmq://127.0.0.1:{port}"] * 3, tmp_path)
        monitor = sender.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            reducer.start()
            for _ in range(3):  # every worker connected: ZeroMQ then deals the frames round robin
                assert monitor.poll(20000), "a worker did not connect"
                monitor.recv_multipart()
            send_all(sender)
            assert wait_state(reducer, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, reducer.status()
            shares = [w.snapshot().counters.completed for w in workers.values()]
            assert sum(shares) == N and min(shares) > 0, shares
            want, got = single.snapshot(), reducer.snapshot()
            assert_counters_exact(got, total=N, completed=N, dropped=0, bad=0, duplicate=0, out_of_order=0)
            assert_same_values(got.summary, want.summary)
            assert_same_files(reducer.output_file, single.output_file)
            assert got.quality.verdict == want.quality.verdict
        finally:
            sender.sock.disable_monitor()
            monitor.close()
            close_all(reducer, single, *workers.values())
    finally:
        sender.close()


def analyse(ids, scene_source: str = SIM):
    """Per-frame results and accumulators of the given frame ids of the sim scene, by direct plugin calls
    (independent of the engine and of the reducer)."""
    from tango_dqm.frames import Frame
    from tango_dqm.params import ParameterStore
    from tango_dqm.plugin import Runner, instantiate, load_analysis
    from tango_dqm.simulation import FrameGenerator
    from tango_dqm.sources import open_source

    gen = FrameGenerator(open_source(scene_source).scene)
    analyses = [instantiate(load_analysis(a)) for a in ANALYSES]
    decl = {p.name: p for a in analyses for p in a.parameters}
    store = ParameterStore(list(decl.values()))
    store.image_shape = (64, 80)
    for k, v in PARAMS.items():
        store.set(k, v)
    params = store.snapshot_with_version()[0]
    runners = [Runner(a) for a in analyses]
    accs = [a.new_accumulator() for a in analyses]
    batch = []
    for i in ids:
        frame = Frame(gen.render(i), i, 1.0e9 + i, "sim")
        outs = [r.process(frame, params) for r in runners]
        accs = [a.accumulate(acc, o, params) for a, acc, o in zip(analyses, accs, outs)]
        merged = {}
        for o in outs:
            merged.update(o.results)
        batch.append((i, 1.0e9 + i, merged))
    summary = {}
    for a, acc in zip(analyses, accs):
        summary.update(a.finish(acc))
    return batch, accs, summary, analyses


class KilledWorker:
    """A worker that reports frames 2, 5, 8 (covered by accumulators), then 11 and 14 without
    accumulators, then dies: a real PUSH socket sending what a worker sends."""

    def __init__(self, endpoint: str, name: str):
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.connect(endpoint)
        self.name = name
        batch, accs, _, analyses = analyse([2, 5, 8])
        self.registry = Registry.for_analyses(analyses)
        late, _, _, _ = analyse([11, 14])
        counters = {"completed": 3, "dropped": 0, "bad": 0, "duplicate": 0, "out_of_order": 0}

        def msg(seq, frames, accumulators=None):
            return WorkerMessage(name, "scan_killed", seq, "RUNNING", counters, N, False, False, ANALYSES, "",
                                 frames, accumulators)
        # frame 2 alone, then 5 and 8 with the accumulators of all three (sent twice: idempotent), then 11, 14
        self.messages = [msg(1, batch[:1]), msg(2, batch[1:], accs), msg(2, batch[1:], accs), msg(3, late)]

    def start(self) -> str:
        for m in self.messages:  # before Start returns: the reducer keeps them until it knows the scan id
            self.sock.send_multipart(pack(m, self.registry))
        self.sock.send_multipart([b"not json", b"", b""])  # malformed: ignored and counted, nothing else
        self.sock.send(b'{"v": 1}')
        return "scan_killed"

    def close(self) -> None:
        self.sock.close(linger=1000)


def test_a_killed_worker_is_named_its_unreported_frames_lost_and_a_restarted_one_rejoins(tmp_path):
    reducer, workers = scale_out([f"{SIM}&partition={k}/3" for k in range(3)], tmp_path, worker_timeout=1.0)
    name = "test/worker/2"
    killed = KilledWorker(reducer.endpoint, name)
    control = reducer.control
    restarted = control.engines.pop(name)
    original = control.start
    control.start = lambda w, live: killed.start() if w == name else original(w, live)
    try:
        reducer.start()
        assert wait_state(reducer, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, reducer.status()
        reported = sorted([i for i in range(N) if i % 3 != 2] + [2, 5, 8])
        snap = reducer.snapshot()
        # lost == total - frames reported; 11 and 14 arrived at the worker but were never covered
        assert_counters_exact(snap, total=N, completed=len(reported), dropped=N - len(reported), bad=0)
        assert per_frame(reducer.output_file)["frame_id"].tolist() == reported
        status = reducer.status()
        assert f"worker {name} lost after frame 8" in status and "rejoins at the next Start" in status
        assert "2 malformed worker messages ignored" in status
        loss = [r for r in snap.quality.checks if r.check_type == "loss"][0]
        assert loss.value == pytest.approx((N - len(reported)) / N)
        assert snap.quality.verdict.name == "ERROR"
        # the summary is exactly that of the frames reported, accumulated in one go
        _, _, want, _ = analyse(reported)
        assert_same_values(snap.summary, want)

        # restarted: the worker is back (a real one) and rejoins at the next scan, which is complete
        control.start = original
        control.engines[name] = restarted
        reducer.reset()
        assert reducer.state is EngineState.ON
        reducer.start()
        assert wait_state(reducer, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, reducer.status()
        assert_counters_exact(reducer.snapshot(), total=N, completed=N, dropped=0, bad=0)
        assert "worker" not in reducer.status()  # no worker is named: none lost, none refused
    finally:
        killed.close()
        close_all(reducer, restarted, *workers.values())


def test_a_worker_that_cannot_reach_its_reducer_is_a_fault_saying_how_to_recover():
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    w = Engine(EngineConfig([SIM], ["roi"], reducer=endpoint, worker_name="w"))
    try:
        with pytest.raises(EngineError, match="cannot reach the reducer"):
            w.start()
        assert w.state is EngineState.FAULT
        status = w.status()
        assert f"cannot reach the reducer at {endpoint} (Reducer property)" in status
        assert "Start the DataQualityReducer server" in status and "Reset" in status
    finally:
        w.close()


@pytest.mark.parametrize("endpoint", ["", "127.0.0.1:5000", "tcp://*:5000", "tcp://host", "tcp://h:0", "ipc://x"])
def test_a_bad_reducer_endpoint_is_refused_at_init(endpoint):
    with pytest.raises((EngineError, ValueError), match="tcp://host:port"):
        if endpoint:
            Engine(EngineConfig([SIM], ["roi"], reducer=endpoint))
        else:
            check_endpoint(endpoint)


def test_reducer_configuration_is_checked():
    with pytest.raises(EngineError, match="Workers"):
        ReducerEngine(ReducerConfig(analyses=["roi"]), EngineControl())
    with pytest.raises(EngineError, match="twice"):
        ReducerEngine(ReducerConfig(analyses=["roi"], workers=["a/b/c", "A/B/C"]), EngineControl())
    port = free_port()
    first = ReducerEngine(ReducerConfig(analyses=["roi"], workers=["a/b/c"], endpoint=f"tcp://127.0.0.1:{port}"),
                          EngineControl())
    try:
        assert first.endpoint == f"tcp://127.0.0.1:{port}"
        assert "reducer of 1 workers" in first.status()
        with pytest.raises(EngineError, match="cannot bind"):
            ReducerEngine(ReducerConfig(analyses=["roi"], workers=["a/b/c"], endpoint=f"tcp://127.0.0.1:{port}"),
                          EngineControl())
    finally:
        first.close()


def test_a_reducer_whose_workers_all_fail_to_start_is_a_fault_naming_them():
    control = EngineControl()
    reducer = ReducerEngine(ReducerConfig(analyses=["roi"], workers=["x/y/1"]), control)

    def refuse(worker, live):
        raise RuntimeError(f"{worker} is not exported")
    control.start = refuse
    try:
        with pytest.raises(EngineError, match="no worker started"):
            reducer.start()
        assert reducer.state is EngineState.FAULT
        assert "x/y/1: x/y/1 is not exported" in reducer.status()
    finally:
        reducer.close()


@pytest.mark.parametrize("uri, rule", [
    ("sim://?partition=3/3", "0 <= K < N"), ("sim://?partition=1", "K/N"), ("sim://?partition=-1/2", "K/N"),
    ("zmq://127.0.0.1:5000?partition=0/2", "needs mode=sub"), ("watch:///tmp?partition=0/2", "not watch://"),
    ("bsread://127.0.0.1:5000?mode=pull&channel=X&partition=0/2", "needs mode=sub"),
])
def test_partition_is_validated_at_init(uri, rule):
    with pytest.raises(Exception, match=rule):  # SourceError at Init
        Engine(EngineConfig([uri], ["roi"]))


def test_partition_keeps_every_nth_id_and_ends_of_series():
    import threading

    from tango_dqm.frames import SeriesEnd
    from tango_dqm.sources import open_source
    src = open_source("sim://?frames=10&shape=8x8&partition=1/3")
    src.open()
    try:
        items = [i for i in src.items(threading.Event()) if i is not None]
    finally:
        src.close()
    assert [i.frame_id for i in items[:-1]] == [1, 4, 7] and isinstance(items[-1], SeriesEnd)
    for ok in ("zmq://127.0.0.1:5000?mode=sub&partition=0/2", "hdf5:///x.h5?partition=1/2",
               "bsread://127.0.0.1:5000?mode=sub&channel=X&partition=1/2"):
        open_source(ok)  # accepted (files are opened at Start)


def test_a_worker_whose_reducer_goes_away_mid_scan_is_a_fault_saying_so(tmp_path):
    reducer, workers = scale_out(["sim://?frames=0&shape=64x80&rate=200"], tmp_path)
    (w,) = workers.values()
    try:
        reducer.start(live=True)
        deadline = time.monotonic() + 30
        while reducer.snapshot().counters.completed < 5:  # reports arrive
            assert time.monotonic() < deadline, reducer.status()
            time.sleep(0.02)
        reducer.close()  # the reducer's socket is gone (as when its server is killed)
        assert wait_state(w, EngineState.FAULT, timeout=30) is EngineState.FAULT
        status = w.status()
        assert "cannot reach the reducer" in status and "the connection was lost" in status, status
        assert "Reset and Start from the reducer" in status
    finally:
        close_all(reducer, w)


def test_a_pub_sub_stream_shared_by_partition_equals_one_subscriber(tmp_path):
    """Two workers with partition=K/2 on a STINS PUB stream, and one plain monitor on the same stream."""
    frames = frames_for_test(200, shape=(64, 80), seed=9)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.XPUB)  # XPUB: the test sees each subscription arrive, so nothing is sent too early
    pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's, not only the first of a topic
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    uri = f"zmq://127.0.0.1:{port}?mode=sub"
    single = Engine(EngineConfig([uri], ANALYSES, output_directory=str(tmp_path / "single"), analysis_threads=1))
    reducer, workers = scale_out([f"{uri}&partition={k}/2" for k in range(2)], tmp_path)
    try:
        for k, v in PARAMS.items():
            single.set_parameter(k, v)
        single.start()
        reducer.start()
        for _ in range(3):
            assert pub.poll(20000), "a subscriber did not subscribe"
            pub.recv()
        pub.send_multipart([json.dumps({"htype": "header", "series": "1", "nimages": len(frames)}).encode()])
        for i, f in enumerate(frames):
            pub.send_multipart([json.dumps({"htype": "image", "frame": i, "shape": list(f.shape), "type": "uint16",
                                            "compression": "none"}).encode(), f])
        pub.send_multipart([b'{"htype": "series_end"}'])
        assert wait_state(reducer, EngineState.CLOSE, EngineState.FAULT) is EngineState.CLOSE, reducer.status()
        wait_state(single, EngineState.CLOSE)
        assert [w.snapshot().counters.completed for w in workers.values()] == [100, 100]
        got, want = reducer.snapshot(), single.snapshot()
        assert_counters_exact(got, total=200, completed=200, dropped=0, bad=0)
        assert_same_values(got.summary, want.summary)
        assert_same_files(reducer.output_file, single.output_file)
    finally:
        close_all(reducer, single, *workers.values())
        pub.close(linger=0)
