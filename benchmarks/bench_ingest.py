"""Ingest benchmarks: each source side by side with its bare baseline, same data, same run.

Run: ``python -m benchmarks.bench_ingest`` (or ``python benchmarks/bench_ingest.py``);
``--quick`` for fewer frames. Frames are 1024x1024 uint16 (Poisson noise around 100, so
bitshuffle+LZ4 compresses about 2.5x, like real detector data).

1. bsread: a sender process streams bsread messages (PUSH, pre-encoded with bsread's own
   serializer so the sender is never the bottleneck); the same stream is read in turn by a
   bare ``bsread.Source`` receive loop (copy=True as bsread defaults, and copy=False; for
   bitshuffle_lz4 also with bitshuffle's OpenMP capped to 1 thread as the source does) and by
   ``BsreadSource.items()``; raw and bitshuffle_lz4.
2. HDF5: one file per compression (none, bslz4), plus one of small 64x80 frames, read by
   bare h5py loops (frame by frame, and in the source's blocks: whole chunks of about
   1 MiB) and by ``Hdf5ReplaySource.items()``; page cache warm.
3. STINS bslz4 through the engine with bitshuffle's OpenMP capped at 1 thread (the
   default, TANGO_DQM_BITSHUFFLE_THREADS=1) and left at OpenMP's default, alternated.

Each figure is the best of ``--repeat`` alternated runs (the machine may be shared).
Ratios are source / best bare baseline: 1.00 means no overhead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import socket
import struct
import sys
import tempfile
import threading
import time

import numpy as np

SHAPE = (1024, 1024)
DTYPE = np.uint16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frames(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.poisson(100, size=SHAPE).astype(DTYPE) for _ in range(n)]


# ---- senders (separate processes) ------------------------------------------------------------


def _bsread_sender(port: int, compression: str | None, ready, stop) -> None:
    import zmq
    from bsread.data.helpers import get_value_bytes

    frames = _frames()
    values = [get_value_bytes(f, compression) for f in frames]  # bsread's own serializer
    channel = {"name": "image", "type": "uint16", "shape": list(SHAPE[::-1]), "encoding": "little"}
    if compression:
        channel["compression"] = compression
    data_header = json.dumps({"htype": "bsr_d-1.1", "channels": [channel]}).encode()
    digest = hashlib.md5(data_header).hexdigest()
    ts = struct.pack("<qq", int(time.time()), 0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 20)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    pulse = 0
    while not stop.is_set():
        main = json.dumps({"htype": "bsr_m-1.1", "pulse_id": pulse, "hash": digest,
                           "global_timestamp": {"sec": int(time.time()), "ns": 0}}).encode()
        try:
            sock.send_multipart([main, data_header, values[pulse % len(values)], ts], copy=False)
            pulse += 1
        except zmq.Again:
            pass
    sock.close(0)
    ctx.term()


def _stins_sender(port: int, n: int, ready) -> None:
    import zmq
    import bitshuffle

    parts = [struct.pack(">QI", f.nbytes, 8192) + bitshuffle.compress_lz4(f, 4096).tobytes() for f in _frames()]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    sock.send_json({"htype": "header", "series": "bench", "nimages": n})
    for i in range(n):
        msg = {"htype": "image", "frame": i, "shape": list(SHAPE), "type": "uint16", "compression": "bslz4"}
        sock.send_multipart([json.dumps(msg).encode(), parts[i % len(parts)]], copy=False)
    sock.send_json({"htype": "series_end"})
    sock.close(linger=10000)
    ctx.term()


# ---- receivers ---------------------------------------------------------------------------------


def _in_thread(fn, *args):
    """Run fn in a fresh thread (fresh OpenMP per-thread settings), return its result."""
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn(*args)))
    t.start()
    t.join()
    return out["r"]


def _rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def _bare_bsread(port: int, n: int, copy: bool, omp_cap: int = 0) -> float:
    import bsread

    if omp_cap:  # the same cap the source applies, for a like-for-like bslz4 baseline
        from tango_dqm.compression import limit_threads

        limit_threads(omp_cap)
    src = bsread.Source(host="127.0.0.1", port=port, mode=bsread.PULL, receive_timeout=1000, copy=copy)
    src.connect()
    times: list[float] = []
    try:
        while len(times) < n:
            m = src.receive()
            if m is None:
                continue
            value = m.data.data["image"].value
            assert value.shape == SHAPE
            times.append(time.perf_counter())
    finally:
        src.disconnect()
    return _rate(times)


def _source_bsread(port: int, n: int) -> float:
    from tango_dqm.frames import Frame
    from tango_dqm.sources import open_source

    src = open_source(f"bsread://127.0.0.1:{port}?channel=image")
    src.open()
    times: list[float] = []
    stop = threading.Event()
    try:
        for item in src.items(stop):
            if isinstance(item, Frame):
                assert item.data.shape == SHAPE
                times.append(time.perf_counter())
                if len(times) >= n:
                    stop.set()
    finally:
        src.close()
    return _rate(times)


def bench_bsread(n: int, repeat: int) -> list[tuple[str, float, float]]:
    ctx = mp.get_context("spawn")
    rows = []
    for compression in (None, "bitshuffle_lz4"):
        port = _free_port()
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=_bsread_sender, args=(port, compression, ready, stop), daemon=True)
        proc.start()
        ready.wait(30)
        runs = {"bare copy=True": (_bare_bsread, port, n, True), "bare copy=False": (_bare_bsread, port, n, False)}
        if compression:
            runs["bare copy=False, OpenMP cap 1"] = (_bare_bsread, port, n, False, 1)
        runs["BsreadSource"] = (_source_bsread, port, n)
        best = dict.fromkeys(runs, 0.0)
        try:
            for _ in range(repeat):
                for key, call in runs.items():
                    best[key] = max(best[key], _in_thread(*call))
        finally:
            stop.set()
            proc.join(10)
        bare = max(v for k, v in best.items() if k.startswith("bare"))
        name = compression or "raw"
        for key, value in best.items():
            rows.append((f"bsread {name:<14} {key}", value, value / bare if bare else float("nan")))
    return rows


def _bare_h5(path: str, per_frame: bool) -> float:
    import h5py
    import hdf5plugin  # noqa: F401

    from tango_dqm.sources.hdf5_replay import block_frames

    with h5py.File(path, "r") as f:
        ds = f["/entry/data/data"]
        n = ds.shape[0]
        t0 = time.perf_counter()
        if per_frame:
            for i in range(n):
                ds[i]
        else:
            step = block_frames(ds)
            for i in range(0, n, step):
                ds[i:i + step]
        return n / (time.perf_counter() - t0)


def _source_h5(path: str) -> float:
    from tango_dqm.frames import Frame
    from tango_dqm.sources import open_source

    src = open_source(f"hdf5://{path}")
    src.open()
    count = 0
    t0 = time.perf_counter()
    try:
        for item in src.items(threading.Event()):
            if isinstance(item, Frame):
                count += 1
    finally:
        src.close()
    return count / (time.perf_counter() - t0)


def bench_hdf5(n: int, repeat: int, folder: str) -> list[tuple[str, float, float]]:
    import h5py
    import hdf5plugin

    rows = []
    small = np.random.default_rng(1).integers(0, 1000, size=(64, 80), dtype=DTYPE)
    cases = (("none", _frames(), n, {}),
             ("bslz4", _frames(), n, dict(hdf5plugin.Bitshuffle(cname="lz4"))),
             ("none 64x80", [small], 50 * n, {}))
    for name, frames, count, opts in cases:
        path = os.path.join(folder, f"bench_{name.replace(' ', '_')}.h5")
        shape = frames[0].shape
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("/entry/data/data", shape=(count, *shape), dtype=DTYPE, chunks=(1, *shape), **opts)
            for i in range(0, count, 100):
                k = min(100, count - i)
                ds[i:i + k] = np.stack([frames[(i + j) % len(frames)] for j in range(k)])
        _bare_h5(path, False)  # warm the page cache
        best = {"bare h5py per frame": 0.0, "bare h5py blocks": 0.0, "Hdf5ReplaySource": 0.0}
        for _ in range(repeat):
            best["bare h5py per frame"] = max(best["bare h5py per frame"], _bare_h5(path, True))
            best["bare h5py blocks"] = max(best["bare h5py blocks"], _bare_h5(path, False))
            best["Hdf5ReplaySource"] = max(best["Hdf5ReplaySource"], _source_h5(path))
        bare = max(best["bare h5py per frame"], best["bare h5py blocks"])
        for key, value in best.items():
            rows.append((f"hdf5   {name:<14} {key}", value, value / bare))
        os.unlink(path)
    return rows


def _engine_stins(n: int, cap: str) -> float:
    from benchmarks.common import RunWaiter
    from tango_dqm.engine import Engine, EngineConfig

    ctx = mp.get_context("spawn")
    port = _free_port()
    ready = ctx.Event()
    proc = ctx.Process(target=_stins_sender, args=(port, n, ready), daemon=True)
    proc.start()
    ready.wait(30)
    os.environ["TANGO_DQM_BITSHUFFLE_THREADS"] = cap  # read by each new decoding thread
    waiter = RunWaiter(n - 1)  # waits on the engine's listener: no polling loop competing for the GIL
    engine = Engine(EngineConfig(sources=[f"zmq://127.0.0.1:{port}"], analyses=["roi"]), waiter)
    engine.set_parameter("roi_signal", [100, 400, 100, 400])
    engine.start()
    waiter.ended.wait(600)
    engine.close()
    proc.join(10)
    if waiter.first is None or waiter.last is None or waiter.last <= waiter.first:
        return 0.0
    return (n - 1) / (waiter.last - waiter.first)


def bench_openmp(n: int, repeat: int) -> list[tuple[str, float, float]]:
    saved = os.environ.get("TANGO_DQM_BITSHUFFLE_THREADS")
    best = {"1": 0.0, "0": 0.0}
    try:
        for _ in range(repeat):
            for cap in ("1", "0"):
                best[cap] = max(best[cap], _engine_stins(n, cap))
    finally:
        if saved is None:
            os.environ.pop("TANGO_DQM_BITSHUFFLE_THREADS", None)
        else:
            os.environ["TANGO_DQM_BITSHUFFLE_THREADS"] = saved
    default = best["0"] or float("nan")
    return [("engine STINS bslz4 + roi, OpenMP default (cap 0)", best["0"], 1.0),
            ("engine STINS bslz4 + roi, capped at 1 thread", best["1"], best["1"] / default)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer frames (smoke run)")
    parser.add_argument("--repeat", type=int, default=0, help="alternated runs per figure (best is kept)")
    args = parser.parse_args(argv)
    n_stream = 60 if args.quick else 400
    n_file = 20 if args.quick else 150
    repeat = args.repeat or (1 if args.quick else 3)
    t0 = time.perf_counter()
    print(f"ingest benchmark: {SHAPE[0]}x{SHAPE[1]} uint16, {os.cpu_count()} CPUs, best of {repeat}; "
          "ratio = this / best bare baseline")
    rows: list[tuple[str, float, float]] = []
    rows += bench_bsread(n_stream, repeat)
    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as folder:
        rows += bench_hdf5(n_file, repeat, folder)
    rows += bench_openmp(n_stream, repeat)
    width = max(len(r[0]) for r in rows)
    for name, rate, ratio in rows:
        print(f"  {name:<{width}}  {rate:8.0f} frames/s   ratio {ratio:5.2f}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
