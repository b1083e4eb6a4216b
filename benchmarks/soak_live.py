"""Memory soak: a Live run at full rate with products on, RSS printed every 30 s.

    python -m benchmarks.soak_live [--minutes 10] [--warmup 1] [--bound 20]

Runs the engine in this process on a flat-out ``sim://`` source (small frames, so the
per-frame results file is written as fast as the analyses allow) with the standard
analyses and an OutputDirectory in a temporary directory. At the end it prints the RSS
growth after the warm-up and PASS (growth below ``--bound`` MB) or FAIL, and exits 1 on
FAIL. Not part of ``make bench`` (it takes minutes); run it by hand or from CI nightly.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ANALYSES = "roi,histogram,pixels,profile,gain"


def rss_mb() -> float:
    """Resident set size of this process in MB (10**6 bytes, as the bound is stated)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration of the Live run (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="minutes before the baseline RSS is taken")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between RSS lines")
    parser.add_argument("--bound", type=float, default=20.0, help="allowed growth after the warm-up, MB")
    parser.add_argument("--shape", default="64x64", help="simulated frame shape (small: many frames/s)")
    parser.add_argument("--analyses", default=ANALYSES, help="comma-separated analyses")
    parser.add_argument("--output", default="", help="OutputDirectory (default: a temporary directory)")
    parser.add_argument("--no-output", action="store_true", help="no OutputDirectory (for comparison)")
    args = parser.parse_args(argv)

    from tango_dqm.engine import Engine, EngineConfig, EngineState

    tmp = tempfile.TemporaryDirectory(prefix="dqm-soak-") if not (args.output or args.no_output) else None
    out = "" if args.no_output else str(Path(args.output or tmp.name))  # type: ignore[union-attr]
    config = EngineConfig([f"sim://?shape={args.shape}&rate=0&frames=0"], args.analyses.split(","),
                          output_directory=out)
    engine = Engine(config)
    engine.start(live=True)
    t0 = time.monotonic()
    duration, warmup = args.minutes * 60.0, args.warmup * 60.0
    baseline: float | None = None
    done = threading.Event()
    print(f"soak: Live, sim {args.shape} flat out, analyses {args.analyses}, output {out or 'none'}, "
          f"{args.minutes:g} min, warm-up {args.warmup:g} min, bound {args.bound:g} MB", flush=True)
    print(f"{'t/s':>7} {'RSS/MB':>8} {'growth/MB':>10} {'frames':>10} {'frames/s':>9} {'file/MB':>8}", flush=True)
    last_t, last_n = 0.0, 0
    peak_after = 0.0
    try:
        next_line = 0.0
        while True:
            now = time.monotonic() - t0
            if now >= next_line or now >= duration:
                snap = engine.snapshot()
                if engine.state is not EngineState.RUNNING:
                    print(f"engine left RUNNING: {snap.state.value}: {snap.status}", flush=True)
                    return False
                rss = rss_mb()
                if baseline is None and now >= warmup:
                    baseline = rss
                if baseline is not None:
                    peak_after = max(peak_after, rss)
                n = snap.counters.completed
                rate = (n - last_n) / (now - last_t) if now > last_t else 0.0
                last_t, last_n = now, n
                size = os.path.getsize(engine.output_file) / 1e6 if engine.output_file and \
                    os.path.exists(engine.output_file) else 0.0
                growth = f"{rss - baseline:10.1f}" if baseline is not None else f"{'-':>10}"
                print(f"{now:7.0f} {rss:8.1f} {growth} {n:10d} {rate:9.0f} {size:8.1f}", flush=True)
                next_line += args.interval
                if warmup > 0 and baseline is None and next_line > warmup:
                    next_line = warmup  # the baseline is taken exactly at the end of the warm-up
                if now >= duration:
                    break
            done.wait(min(1.0, max(0.01, min(next_line, duration) - (time.monotonic() - t0))))
    finally:
        engine.stop()
        deadline = time.monotonic() + 60
        while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
        engine.close()
        if tmp is not None:
            tmp.cleanup()
    final = rss_mb()
    if baseline is None:
        print("run shorter than the warm-up: no growth measured")
        return False
    growth = peak_after - baseline
    ok = growth < args.bound
    print(f"RSS after warm-up {baseline:.1f} MB, peak after it {peak_after:.1f} MB, at exit {final:.1f} MB: "
          f"growth {growth:.1f} MB over {(duration - warmup) / 60:.1f} min "
          f"({growth / max(1e-9, (duration - warmup) / 60):.2f} MB/min): "
          f"{'PASS' if ok else 'FAIL'} (bound {args.bound:g} MB)", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
