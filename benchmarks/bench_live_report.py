"""Engine throughput while the live report is redrawn, against the same run without live pages.

    python -m benchmarks.bench_live_report [--frames 4000] [--repeat 2]

The standard set (roi + profile + pixels + histogram, the demo's parameters) with products on,
on 1024x1024 uint16 STINS frames sent as fast as they are taken: once with ``ReportInterval`` 1 s
(the report and run list redrawn by the report thread while the scan runs, at most a fifth of
the time) and once with 0 (the report at the end only, the baseline). Runs are interleaved;
best of ``--repeat``. The ratio is what an operator watching the page costs the analysis.
"""
from __future__ import annotations

import argparse
import tempfile

from benchmarks.common import STANDARD_SET, Figure, demo_engine_parameters, engine_run, warm_up


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    params = demo_engine_parameters()
    warm_up(STANDARD_SET, params)
    off, live, pages = [], [], []
    for _ in range(max(1, args.repeat)):  # interleaved, so machine load hits both alike
        for interval, rates in ((0.0, off), (1.0, live)):
            stats: dict = {}
            with tempfile.TemporaryDirectory(prefix="bench_live_") as out:
                rates.append(engine_run(STANDARD_SET, params, args.frames, output_directory=out,
                                        report_interval=interval, stats=stats))
            if interval:
                pages.append(stats.get("live_pages", 0))
    b, v = max(off), max(live)
    print(f"engine standard set, products on, live report, best of {args.repeat}")
    print(f"  {'what':<52} {'frames/s':>9} {'x off':>7}")
    print(f"  {'ReportInterval 0 (report at the end) [baseline]':<52} {b:9.0f} {1.0:7.2f}")
    label = f"ReportInterval 1 s (live pages: {', '.join(map(str, pages))} per run)"
    print(f"  {label:<52} {v:9.0f} {v / b:7.2f}")
    return [Figure("engine standard set, live report every 1 s", v, baseline=b,
                   baseline_what="the same, report at the end", goal=">= 0.8x", met=v / b >= 0.8)]


if __name__ == "__main__":
    main()
