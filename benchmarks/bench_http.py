"""Cost of the HTTP access on the analysis path: server off vs on-but-idle vs an h5pyd client polling at 10 Hz.

    python -m benchmarks.bench_http [--frames 1500] [--repeat 2] [--rate 10]

The engine receives 1024x1024 uint16 STINS frames (zmq://, a sender process pushing as fast
as it can), runs roi and writes the results file (OutputDirectory), three ways, interleaved:
no HTTP server; a ResultsHttpServer in the same process nobody talks to; the same server
with an h5pyd client in another process that re-opens the live scan ``--rate`` times a
second and reads the frame count and the last 100 rows of signal_sum. Printed as frames/s
and the ratios to "off" (1.00 = no cost), with the polls made, their mean latency and the CPU
the server's threads used while polling (a figure that does not depend on the machine's load).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import Figure, free_port, start_sender, warm_up


def _poller(url: str, rate: float, stop, ready, out) -> None:
    """A user's script: re-open the live file and read its newest rows, ``rate`` times a second."""
    import h5pyd

    polls, errors, spent = 0, 0, 0.0
    period = 1.0 / rate
    cpu0, wall0 = time.process_time(), time.monotonic()
    next_t = time.monotonic()
    while not stop.is_set():
        t = time.monotonic()
        try:
            with h5pyd.File("/", "r", endpoint=url.rstrip("/"), username="none", password="none", retries=1) as f:
                n = f["entry/results/frame_id"].shape[0]
                if n:
                    f["entry/results/signal_sum"][max(0, n - 100):n]
            polls += 1
            spent += time.monotonic() - t
            ready.set()
        except (OSError, KeyError):  # no scan yet, or between scans
            errors += 1
        next_t += period
        stop.wait(max(0.0, next_t - time.monotonic()))
    out.put((polls, errors, spent, (time.process_time() - cpu0) / (time.monotonic() - wall0)))


def server_cpu_seconds() -> float:
    """CPU time of the HTTP server's threads in this process (uvicorn's loop and the request workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for t in threading.enumerate():
        if t.name.startswith("dqm-http") or "AnyIO worker" in t.name:
            try:
                fields = Path(f"/proc/self/task/{t.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended, or no /proc
                continue
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


# polls, failed, seconds polling, server CPU, reused, client CPU
PollStats = tuple[int, int, float, float, float, float]


def engine_run(port: int, frames: int, mode: str, rate: float) -> tuple[float, PollStats | None]:
    from tango_dqm.engine import Engine, EngineConfig, EngineState
    from tango_dqm.http import ResultsHttpServer

    first: list[float] = []

    class FirstFrame:
        def on_state(self, state, status):
            pass

        def on_results(self, results, frame_id):
            if not first:
                first.append(time.perf_counter())

    out_dir = tempfile.mkdtemp(prefix="dqm-bench-http-")
    engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}"], ["roi"], output_directory=out_dir), FirstFrame())
    engine.set_parameter("roi_signal", [256, 512, 256, 512])
    engine.set_parameter("roi_background", [0, 128, 0, 128])
    server = None
    poller = stop = results = None
    if mode != "off":
        server = ResultsHttpServer("127.0.0.1", 0, out_dir, lambda: engine.products.current)
        server.start()
    engine.start()
    if mode == "polling":
        ctx = mp.get_context("spawn")
        stop, ready, results = ctx.Event(), ctx.Event(), ctx.Queue()
        poller = ctx.Process(target=_poller, args=(server.url, rate, stop, ready, results), daemon=True)
        poller.start()
        if not ready.wait(60):  # its first poll answered, before the frames flow
            raise RuntimeError("the h5pyd poller did not get an answer within 60 s")
    proc = start_sender(port, frames)
    cpu0, t0 = server_cpu_seconds(), time.perf_counter()
    while engine.state is EngineState.RUNNING:
        time.sleep(0.001)
    t_end = time.perf_counter()
    cpu = server_cpu_seconds() - cpu0
    stats = None
    if poller is not None:
        stop.set()
        served = server.app.app.state.results
        reuse = served.cache_hits / max(1, served.requests)
        try:
            polls, errors, spent, client_cpu = results.get(timeout=20)
        except queue.Empty:
            polls, errors, spent, client_cpu = 0, 0, 0.0, 0.0
        stats = (polls, errors, spent, cpu / (t_end - t0), reuse, client_cpu)
        poller.join(10)
    snap = engine.snapshot()
    if server is not None:
        server.close()
    engine.close()
    proc.join(10)
    if snap.counters.completed != frames:
        raise RuntimeError(f"engine completed {snap.counters.completed}/{frames}: {snap.status}")
    return (frames - 1) / (t_end - first[0]), stats


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rate", type=float, default=10.0, help="client polls per second")
    args = parser.parse_args(argv)
    warm_up(["roi"], {"roi_signal": [256, 512, 256, 512], "roi_background": [0, 128, 0, 128]})
    rates: dict[str, list[float]] = {"off": [], "idle": [], "polling": []}
    polls = []
    for _ in range(args.repeat):  # interleaved, so machine load hits every mode alike
        for mode, runs in rates.items():
            fps, stats = engine_run(free_port(), args.frames, mode, args.rate)
            runs.append(fps)
            if stats:
                polls.append(stats)
    best = {m: max(v) for m, v in rates.items()}
    n_polls = sum(p[0] for p in polls)
    latency = 1000 * sum(p[2] for p in polls) / max(1, n_polls)
    print(f"engine throughput with the HTTP access, zmq:// + roi + results file, 1024x1024 uint16, "
          f"{args.frames} frames, best of {args.repeat}")
    print(f"  server off                {best['off']:8.0f} frames/s")
    print(f"  server on, idle           {best['idle']:8.0f} frames/s   "
          f"ratio idle/off    {best['idle'] / best['off']:5.2f}")
    print(f"  h5pyd polling at {args.rate:g} Hz    {best['polling']:8.0f} frames/s   "
          f"ratio polling/off {best['polling'] / best['off']:5.2f}")
    print(f"  polls answered {n_polls} (failed {sum(p[1] for p in polls)}), mean poll {latency:.1f} ms, "
          f"server threads' CPU while polling {100 * max(p[3] for p in polls):.1f} % of one core, "
          f"{100 * min(p[4] for p in polls):.0f} % of responses reused")
    print(f"  (the h5pyd client itself, on this machine, used {100 * max(p[5] for p in polls):.0f} % of one core: "
          "a client on another host leaves only the server's share)")
    for mode, runs in rates.items():
        print(f"  {mode:8s} every run: {', '.join(f'{r:.0f}' for r in runs)} frames/s")
    return [Figure("engine roi + file, HTTP server idle", best["idle"], baseline=best["off"],
                   baseline_what="HTTP server off"),
            Figure(f"engine roi + file, h5pyd polling {args.rate:g} Hz", best["polling"], baseline=best["off"],
                   baseline_what="HTTP server off")]


if __name__ == "__main__":
    main()
