"""Shared pieces of the benchmarks: demo frames and configuration, a STINS sender process,
the bare zero-copy receive loop (the baseline), an engine listener that waits on events,
and the figures each benchmark reports to the summary table of ``python -m benchmarks``."""
from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (1024, 1024)
ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.json"
STANDARD_SET = ["roi", "profile", "pixels", "histogram"]


@dataclass
class Figure:
    """One line of the summary: a figure, its baseline measured in the same run, and its goal."""

    what: str
    value: float
    unit: str = "frames/s"
    baseline: float | None = None
    baseline_what: str = ""
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measured

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_frames(n: int = 4, shape: tuple[int, int] = SHAPE) -> list[np.ndarray]:
    """Frames like the demo's simulator sends: background, noise, a drifting spot, hot and dead pixels."""
    from tango_dqm.simulation import FrameGenerator, Scene

    gen = FrameGenerator(Scene(shape=shape, dtype="uint16", seed=1, background=100.0, noise=5.0,
                               spot_x=512, spot_y=512, sigma=25.0, amplitude=3000.0, drift_x=1.0,
                               hot_pixels=5, dead_pixels=3))
    return [gen.render(i) for i in range(n)]


def demo_monitor() -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, str]]]:
    """The DataQualityMonitor of config/demo.json: (device properties, parameter values set
    through memorized attributes, other attribute properties such as alarm limits)."""
    config = json.loads(DEMO_CONFIG.read_text())
    servers = config["servers"]["DataQualityMonitor"]
    devices = next(iter(next(iter(servers.values())).values()))
    device = next(iter(devices.values()))
    props = {k: list(v) for k, v in device["properties"].items()}
    params: dict[str, Any] = {}
    attr_props: dict[str, dict[str, str]] = {}
    for name, values in device.get("attribute_properties", {}).items():
        for key, value in values.items():
            if key == "__value":
                params[name] = json.loads(value[0])
            else:
                attr_props.setdefault(name, {})[key] = value[0]
    return props, params, attr_props


def demo_engine_parameters() -> dict[str, Any]:
    """Every parameter value of the demo monitor (ROIs from properties, scalars memorized)."""
    props, params, _ = demo_monitor()
    values = {k: json.loads(v[0]) for k, v in props.items() if k.startswith("roi_")}
    values.update(params)
    return values


def stins_sender(port: int, frames: int, ready=None, shape: tuple[int, int] = SHAPE, cpu=None) -> None:
    """Push ``frames`` pre-built STINS frames as fast as the receiver takes them (a process).
    ``cpu`` (a shared double): set to this process' CPU seconds from the first frame sent to
    the last one delivered (its zmq I/O thread and the kernel's TCP work included)."""
    import zmq

    pool = demo_frames(4, shape)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 64)
    sock.bind(f"tcp://127.0.0.1:{port}")
    if ready is not None:
        ready.set()
    sock.send_json({"htype": "header", "series": "bench", "nimages": frames})
    cpu0 = time.process_time()
    for i in range(frames):
        meta = json.dumps({"htype": "image", "frame": i, "shape": list(shape), "type": "uint16",
                           "compression": "none", "timestamp": time.time()}).encode()
        sock.send_multipart([meta, pool[i % len(pool)]], copy=False)
    sock.send_json({"htype": "series_end"})
    sock.close(linger=-1)
    ctx.term()
    if cpu is not None:
        cpu.value = time.process_time() - cpu0


#: the sender's CPU ms per frame in the last run started by start_sender (once it has ended)
SENDER_CPU: dict[str, Any] = {}


def start_sender(port: int, frames: int):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # a clean process: no inherited threads or sockets
    ready = ctx.Event()
    cpu = SENDER_CPU["value"] = ctx.Value("d", float("nan"))
    SENDER_CPU["frames"] = frames
    proc = ctx.Process(target=stins_sender, args=(port, frames, ready, SHAPE, cpu), daemon=True)
    proc.start()
    if not ready.wait(60):
        proc.kill()
        raise RuntimeError("the sender process did not start")
    return proc


def sender_cpu_ms() -> float:
    """The last sender's CPU ms per frame (NaN if it has not ended)."""
    v = SENDER_CPU.get("value")
    return float("nan") if v is None else v.value / SENDER_CPU["frames"] * 1e3


def bare_loop(frames: int) -> float:
    """Baseline: receive the sender's stream zero-copy and wrap each frame in numpy, nothing else.
    Frames/s from the first to the last frame (its CPU ms per frame: ``LAST_RUN["bare_cpu_ms"]``)."""
    import zmq

    port = free_port()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(f"tcp://127.0.0.1:{port}")
    proc = start_sender(port, frames)
    n, t0, t1, c0, c1 = 0, 0.0, 0.0, 0.0, 0.0
    try:
        while True:
            parts = sock.recv_multipart(copy=False)
            msg = json.loads(parts[0].bytes)
            if msg["htype"] == "image":
                np.frombuffer(parts[1].buffer, dtype=msg["type"]).reshape(msg["shape"])
                t1 = time.perf_counter()
                if n == 0:
                    t0, c0 = t1, time.process_time()
                c1 = time.process_time()
                n += 1
            elif msg["htype"] == "series_end":
                break
    finally:
        sock.close(0)
        ctx.term()
        proc.join(30)
    LAST_RUN["bare_cpu_ms"] = (c1 - c0) / (n - 1) * 1e3
    return (n - 1) / (t1 - t0)


class RunWaiter:
    """Engine listener: times the first and last result, and sets an event when the run ends.
    Nothing polls, so the benchmark takes no GIL time from what it measures."""

    def __init__(self, last_frame: int):
        self.last_frame = last_frame
        self.first: float | None = None
        self.last: float | None = None
        self.ended = threading.Event()
        self.final_state = ""
        # this process' CPU seconds (every thread) at the first and last result: CPU per frame
        # is the figure that survives a loaded machine best (the sender is another process)
        self.cpu_first = self.cpu_last = 0.0

    def on_state(self, state: str, status: str) -> None:
        if state in ("CLOSE", "FAULT"):
            self.final_state = f"{state}: {status}"
            self.ended.set()

    def on_results(self, results: dict[str, Any], frame_id: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.cpu_first = time.process_time()
        if frame_id == self.last_frame:
            self.last = now
            self.cpu_last = time.process_time()

    def on_tick(self) -> None:
        pass


def engine_run(analyses: list[str], params: dict[str, Any], frames: int, output_directory: str = "",
               analysis_threads: int = 0, report_interval: float = 10.0, stats: dict | None = None) -> float:
    """The engine on the same stream as :func:`bare_loop`: frames/s from the first to the last result
    (``stats``, if given, gets the live report pages drawn during the run)."""
    from tango_dqm.engine import Engine, EngineConfig

    port = free_port()
    waiter = RunWaiter(frames - 1)
    engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}"], analyses, output_directory=output_directory,
                                 analysis_threads=analysis_threads, report_interval=report_interval), waiter)
    try:
        for name, value in params.items():
            engine.set_parameter(name, value)
        engine.start()
        proc = start_sender(port, frames)
        if not waiter.ended.wait(600):
            raise RuntimeError("the engine run did not end within 600 s")
        snap = engine.snapshot()
        if stats is not None and engine.products is not None:
            stats["live_pages"] = engine.products.worker.live_pages
        if engine.products is not None:
            engine.products.worker.wait_idle(120)  # the run's report, before the directory goes
    finally:
        engine.close()
    proc.join(30)
    if snap.counters.completed != frames or waiter.first is None or waiter.last is None:
        raise RuntimeError(f"engine completed {snap.counters.completed}/{frames}: {waiter.final_state}")
    LAST_RUN["cpu_ms_per_frame"] = (waiter.cpu_last - waiter.cpu_first) / (frames - 1) * 1e3
    return (frames - 1) / (waiter.last - waiter.first)


#: figures of the last engine_run besides its rate: "cpu_ms_per_frame" (this process, all threads)
LAST_RUN: dict[str, float] = {}


def warm_up(analyses: list[str], params: dict[str, Any]) -> None:
    """Compile (or load from numba's cache) every kernel once, outside the timed runs."""
    from tango_dqm import Frame, Params, load_analysis
    from tango_dqm.plugin import Runner, instantiate

    frame = demo_frames(1)[0]
    for spec in analyses:
        a = instantiate(load_analysis(spec))
        p = Params({d.name: d.validate(params.get(d.name, d.default), SHAPE) for d in a.parameters})
        acc = a.new_accumulator()
        acc = a.accumulate(acc, Runner(a).process(Frame(frame, 0), p), p)  # plugin API v2
        a.finish(acc)
