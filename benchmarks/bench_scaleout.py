"""Scale-out throughput: the aggregate rate of 2 workers against 1 worker, in the same run.

    python -m benchmarks.bench_scaleout [--frames 800] [--repeat 2] [--workers 2]

A sender process pushes pre-built 1024x1024 uint16 STINS frames (the demo's scene) on one
PUSH socket as fast as they are taken, once every worker is connected (ZeroMQ deals them
round robin). Each worker is a process running an engine with the standard analysis set
(roi + profile + pixels + histogram, the demo's parameters) and one analysis thread,
reporting to a ReducerEngine in this process (heartbeats, accumulators, per-frame results),
as DataQualityMonitor workers report to a DataQualityReducer. The aggregate rate is the
frames analysed over the time from the first to the last frame analysed by any worker; the
reducer must account every frame (completed == frames). The baseline is the same with one
worker. Runs are interleaved (1, N, 1, N ...) so machine load hits both alike; best of
``--repeat``. Goal (issue 12): 2 workers >= 1.7x one worker on a 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Any

from benchmarks.common import SHAPE, STANDARD_SET, Figure, demo_engine_parameters, demo_frames, free_port, warm_up


def sender(port: int, frames: int, peers: int, ready) -> None:
    """Push ``frames`` STINS frames once ``peers`` receivers are connected (a process)."""
    import zmq

    pool = demo_frames(4, SHAPE)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 16)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    for _ in range(peers):
        monitor.recv_multipart()
    sock.send_json({"htype": "header", "series": "bench", "nimages": frames})
    for i in range(frames):
        meta = json.dumps({"htype": "image", "frame": i, "shape": list(SHAPE), "type": "uint16",
                           "compression": "none", "timestamp": time.time()}).encode()
        sock.send_multipart([meta, pool[i % len(pool)]], copy=False)
    sock.send_json({"htype": "series_end"})
    sock.disable_monitor()
    monitor.close()
    sock.close(linger=-1)
    ctx.term()


class _Times:
    """Engine listener in a worker: wall-clock times of its first and last result."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.cpu0 = self.cpu1 = 0.0  # this process' CPU seconds at the first and last result

    def on_state(self, state: str, status: str) -> None:
        pass

    def on_results(self, results: dict[str, Any], frame_id: int) -> None:
        self.last, self.cpu1 = time.time(), time.process_time()
        if self.first is None:
            self.first, self.cpu0 = self.last, self.cpu1

    def on_tick(self) -> None:
        pass


def worker(conn, source: str, reducer: str, name: str, params: dict[str, Any]) -> None:
    """A worker process: an engine driven over a pipe (start/stop/running/times/close)."""
    from tango_dqm.engine import Engine, EngineConfig, EngineState

    times = _Times()
    engine = Engine(EngineConfig([source], STANDARD_SET, reducer=reducer, worker_name=name, analysis_threads=1),
                    times)
    for k, v in params.items():
        engine.set_parameter(k, v)
    engine.warmed.wait(300)
    conn.send("ready")
    while True:
        cmd, *args = conn.recv()
        try:
            if cmd == "start":
                times.first = times.last = None
                answer: Any = engine.start(*args)
            elif cmd == "stop":
                answer = engine.stop()
            elif cmd == "running":
                answer = "" if engine.state is EngineState.RUNNING else f"in {engine.state.value}"
            elif cmd == "times":
                answer = (times.first, times.last, engine.snapshot().counters.completed, times.cpu1 - times.cpu0)
            else:
                engine.close()
                conn.send(None)
                return
        except Exception as exc:  # noqa: BLE001 - reported to the benchmark
            answer = RuntimeError(str(exc))
        conn.send(answer)


class ProcessControl:
    """WorkerControl over the worker processes' pipes."""

    def __init__(self) -> None:
        self.pipes: dict[str, Any] = {}
        self._locks: dict[str, Any] = {}

    def add(self, name: str, conn) -> None:
        import threading
        self.pipes[name], self._locks[name] = conn, threading.Lock()

    def call(self, name: str, *cmd: Any) -> Any:
        with self._locks[name]:
            self.pipes[name].send(cmd)
            answer = self.pipes[name].recv()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def start(self, worker: str, live: bool) -> str:
        return self.call(worker, "start", live)

    def stop(self, worker: str) -> None:
        self.call(worker, "stop")

    def running(self, worker: str) -> str:
        return self.call(worker, "running")

    def reset(self, worker: str) -> None:
        pass

    def mark(self, worker: str, mark: str, reason: str) -> None:
        pass


def run(n_workers: int, frames: int, params: dict[str, Any]) -> tuple[float, float]:
    """(aggregate frames/s, cores the workers used on average) of one scale-out run."""
    from tango_dqm.engine import EngineState
    from tango_dqm.scaleout.reducer import ReducerConfig, ReducerEngine

    ctx = mp.get_context("spawn")
    port = free_port()
    control = ProcessControl()
    names = [f"bench/worker/{k}" for k in range(n_workers)]
    reducer = ReducerEngine(ReducerConfig(analyses=STANDARD_SET, workers=names, worker_timeout=30.0), control)
    procs = []
    try:
        for name in names:
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=worker, args=(theirs, f"zmq://127.0.0.1:{port}", reducer.endpoint, name, params),
                            daemon=True)
            p.start()
            procs.append(p)
            control.add(name, mine)
        for name in names:
            if not control.pipes[name].poll(300) or control.pipes[name].recv() != "ready":
                raise RuntimeError(f"worker {name} did not start")
        for k, v in params.items():
            reducer.set_parameter(k, v)
        ready = ctx.Event()
        send = ctx.Process(target=sender, args=(port, frames, n_workers, ready), daemon=True)
        send.start()
        ready.wait(60)
        reducer.start()
        deadline = time.monotonic() + 600
        while reducer.state is EngineState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)  # the reducer's own thread does the work; this only waits
        snap = reducer.snapshot()
        stamps = [control.call(n, "times") for n in names]
        send.join(60)
    finally:
        for name in names:
            try:
                control.call(name, "close")
            except Exception:  # noqa: BLE001 - a worker that died: its process is joined below
                pass
        for p in procs:
            p.join(30)
        reducer.close()
    first = min(s[0] for s in stamps if s[0] is not None)
    last = max(s[1] for s in stamps if s[1] is not None)
    analysed = sum(s[2] for s in stamps)
    if snap.counters.completed != frames or analysed != frames:
        raise RuntimeError(f"scale-out run lost frames: reducer {snap.counters.completed}, workers {analysed} "
                           f"of {frames}: {snap.status}")
    return (frames - 1) / (last - first), sum(s[3] for s in stamps) / (last - first)


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=800, help="frames per run")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    params = demo_engine_parameters()
    warm_up(STANDARD_SET, params)  # numba's cache, so each worker process loads its kernels quickly
    one, many = [], []
    for _ in range(max(1, args.repeat)):
        one.append(run(1, args.frames, params))
        many.append(run(args.workers, args.frames, params))
    (b, b_cores), (m, m_cores) = max(one), max(many)
    print(f"scale-out throughput, {SHAPE[0]}x{SHAPE[1]} uint16 STINS over one PUSH socket, standard set, "
          f"1 analysis thread per worker, reducer in this process, best of {args.repeat}")
    print(f"  {'what':<58} {'frames/s':>9} {'x 1':>7} {'cores':>6}")
    print(f"  {'1 worker + reducer [baseline]':<58} {b:9.0f} {1.0:7.2f} {b_cores:6.2f}")
    print(f"  {f'{args.workers} workers + reducer, aggregate':<58} {m:9.0f} {m / b:7.2f} {m_cores:6.2f}")
    print(f"  runs (1 worker / {args.workers}): {', '.join(f'{x:.0f}' for x, _ in one)} / "
          f"{', '.join(f'{x:.0f}' for x, _ in many)}; cores: CPU seconds of the worker processes per second "
          "(below the worker count: the workers waited for a core or for frames)")
    return [Figure(f"scale-out {args.workers} workers, aggregate", m, baseline=b, baseline_what="1 worker",
                   goal=">= 1.7x", met=m / b >= 1.7)]


if __name__ == "__main__":
    main()
