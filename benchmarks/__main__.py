"""Run the benchmarks and print every figure of issue 11 beside its baseline: ``python -m benchmarks``
(``make bench``; pass options with ``make bench BENCH_ARGS="..."``).
The memory soak (``python -m benchmarks.soak_live``, 10 minutes by default) is run by hand,
see docs/operations.md.

    python -m benchmarks [--only NAME[,NAME]] [--long] [--dranspose] [--rates 100,500] [--seconds 10]

NAME is a module's name without ``bench_`` (engine, device, replay, analyses, ingest, scaleout, and
any other benchmarks/bench_*.py). Each benchmark prints its own table; a summary of every
goal's figure, baseline, ratio and goal closes the run. Default total: about 3 minutes on
2 cores; ``--long`` runs the issue's 60 s per rate through the device and the full ingest set.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import pkgutil
import sys
import time
from pathlib import Path

from benchmarks.common import Figure

ORDER = ["engine", "device", "replay", "analyses", "ingest", "scaleout"]


def discover() -> list[str]:
    here = Path(__file__).parent
    found = sorted(i.name[len("bench_"):] for i in pkgutil.iter_modules([str(here)]) if i.name.startswith("bench_"))
    return [n for n in ORDER if n in found] + [n for n in found if n not in ORDER]


def module_args(name: str, args: argparse.Namespace) -> list[str]:
    if name == "device":
        return ["--rates", args.rates, "--seconds", str(args.seconds)] + (["--long"] if args.long else [])
    if name == "replay":
        return ["--dranspose"] if args.dranspose else []
    if name == "ingest":
        return [] if args.long else ["--quick"]
    return []


def _num(v: float | None, unit: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit in ("ms", "ms p99"):
        return f"{v:.2f}"
    return f"{v:.0f}"


def _load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def summary(figures: list[Figure]) -> None:
    print("\n=== summary: issue 11 goals, each beside its baseline from this run ===")
    w = max(len(f.what) for f in figures)
    bw = max(len(f.baseline_what) for f in figures)
    print(f"{'figure':<{w}} {'value':>9} {'unit':<9} {'baseline':>9} {'(of what)':<{bw}} {'ratio':>6}  goal")
    for f in figures:
        ratio = f"{f.ratio:6.2f}" if f.ratio is not None else f"{'-':>6}"
        met = {True: "  [met]", False: "  [NOT met]", None: ""}[f.met]
        print(f"{f.what:<{w}} {_num(f.value, f.unit):>9} {f.unit:<9} {_num(f.baseline, f.unit):>9} "
              f"{f.baseline_what:<{bw}} {ratio}  {f.goal}{met}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--long", action="store_true", help="the issue's 60 s per rate; full ingest set")
    parser.add_argument("--dranspose", action="store_true",
                        help="also run dranspose replay (installs it into benchmarks/.venv-dranspose once)")
    parser.add_argument("--rates", default="100,500", help="device benchmark frame rates, Hz (default 100,500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="device benchmark seconds per rate (default 10)")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        wanted = [n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(names)}")
        names = [n for n in names if n in wanted]
    figures: list[Figure] = []
    failed: list[str] = []
    t0 = time.perf_counter()
    print(f"{os.cpu_count()} CPUs, load average {_load()} (figures from a loaded machine are lower; "
          "ratios hold better)", flush=True)
    for name in names:
        print(f"\n=== bench_{name} ===", flush=True)
        t = time.perf_counter()
        try:
            out = importlib.import_module(f"benchmarks.bench_{name}").main(module_args(name, args))
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not hide the others' figures
            print(f"bench_{name} FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(name)
            continue
        if isinstance(out, list):
            figures += [f for f in out if isinstance(f, Figure)]
        print(f"[bench_{name}: {time.perf_counter() - t:.0f} s]", flush=True)
    std = next((f for f in figures if f.what.startswith("engine standard set")), None)
    kernels = next((f for f in figures if f.what.startswith("standard set kernels")), None)
    if std is not None and kernels is not None:  # how much of a frame's time is spent outside the kernels
        figures.append(Figure("engine standard set vs its kernels alone", std.value, baseline=kernels.value,
                              baseline_what="kernels summed"))
    if figures:
        summary(figures)
    print(f"\nload average at the end {_load()}")
    print(f"total {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
