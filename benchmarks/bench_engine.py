"""Engine throughput: zmq:// source + roi analysis vs a bare pyzmq receive loop, same stream, same run.

    python -m benchmarks.bench_engine [--frames 2000] [--repeat 2]

A sender process pushes pre-built 1024x1024 uint16 STINS frames as fast as it can;
the baseline receives them zero-copy and wraps them in numpy (no analysis); the
engine receives, queues and runs the roi analysis on every frame. Printed as frames/s
and the ratio engine/baseline (1.0 = analysis is free).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import time

import numpy as np
import zmq

SHAPE = (1024, 1024)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sender(port: int, frames: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.bind(f"tcp://127.0.0.1:{port}")
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 4000, size=SHAPE, dtype=np.uint16) for _ in range(4)]
    sock.send_json({"htype": "header", "series": "bench", "nimages": frames})
    for i in range(frames):
        meta = json.dumps({"htype": "image", "frame": i, "shape": list(SHAPE), "type": "uint16",
                           "compression": "none"}).encode()
        sock.send_multipart([meta, pool[i % 4]], copy=False)
    sock.send_json({"htype": "series_end"})
    sock.close(linger=-1)
    ctx.term()


def bare_loop(port: int, frames: int) -> float:
    """Baseline: receive zero-copy and wrap in numpy, nothing else."""
    proc = mp.Process(target=_sender, args=(port, frames), daemon=True)
    proc.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(f"tcp://127.0.0.1:{port}")
    n, t0 = 0, None
    while True:
        parts = sock.recv_multipart(copy=False)
        msg = json.loads(parts[0].bytes)
        if msg["htype"] == "image":
            if t0 is None:
                t0 = time.perf_counter()
            np.frombuffer(parts[1].buffer, dtype=msg["type"]).reshape(msg["shape"])
            n += 1
        elif msg["htype"] == "series_end":
            break
    dt = time.perf_counter() - t0
    sock.close(0)
    ctx.term()
    proc.join(10)
    return (n - 1) / dt


def engine_loop(port: int, frames: int) -> float:
    from tango_dqm.engine import Engine, EngineConfig, EngineState

    first: list[float] = []

    class FirstFrame:
        def on_state(self, state, status):
            pass

        def on_results(self, results, frame_id):
            if not first:
                first.append(time.perf_counter())

    engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}"], ["roi"]), FirstFrame())
    engine.set_parameter("roi_signal", [256, 512, 256, 512])
    engine.set_parameter("roi_background", [0, 128, 0, 128])
    engine.start()
    proc = mp.Process(target=_sender, args=(port, frames), daemon=True)
    proc.start()
    while engine.state is EngineState.RUNNING:
        time.sleep(0.001)
    t_end = time.perf_counter()
    snap = engine.snapshot()
    engine.close()
    proc.join(10)
    if snap.counters.completed != frames:
        raise RuntimeError(f"engine completed {snap.counters.completed}/{frames}: {snap.status}")
    return (frames - 1) / (t_end - first[0])


def warm_up() -> None:
    """Compile the numba kernels once, outside the timed runs."""
    from tango_dqm.kernels import min_max_count_above, region_stats

    a = np.zeros((8, 8), np.uint16)
    region_stats(a)
    min_max_count_above(a, 1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    warm_up()
    bare, eng = [], []
    for _ in range(args.repeat):  # interleaved, so machine load hits both alike
        bare.append(bare_loop(_free_port(), args.frames))
        eng.append(engine_loop(_free_port(), args.frames))
    b, e = max(bare), max(eng)
    print(f"engine throughput, zmq:// + roi, {SHAPE[0]}x{SHAPE[1]} uint16, {args.frames} frames, best of {args.repeat}")
    print(f"  bare pyzmq receive loop   {b:8.0f} frames/s")
    print(f"  engine (zmq:// + roi)     {e:8.0f} frames/s")
    print(f"  ratio engine/bare         {e / b:8.2f}")
    return {"bare": b, "engine": e, "ratio": e / b}


if __name__ == "__main__":
    main()
