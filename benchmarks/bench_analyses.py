"""Per-frame cost of the built-in analyses on 1024x1024 uint16 frames, against one numpy pass.

    python -m benchmarks.bench_analyses [--seconds 0.4] [--repeat 3]

Each analysis runs as the engine runs it: ``process`` then ``accumulate`` on every
frame (``finish`` once per run, timed separately). The baseline is one
``numpy.sum(frame, dtype=uint64)`` pass over the same frames, timed in the same run,
interleaved with the analyses; the ratio is analysis time / baseline time (1.0 = as
cheap as reading the frame once). Best of ``--repeat`` rounds, to damp machine noise.
Indented rows show parts of an analysis and the alternatives measured to choose the
implementation (numba vs numpy pixel accumulate, numba value count vs np.bincount).
The "demo set" rows run the standard set (roi + profile + pixels + histogram) with the
demo's parameters (config/demo.json); their sum is the kernels-alone cost of a frame
that the engine's standard-set figure (bench_engine) is compared with.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from tango_dqm import Frame, Params, load_analysis, row_view
from tango_dqm.plugin import Runner, instantiate
from tango_dqm.analysis.histogram import _count_values
from tango_dqm.simulation import FrameGenerator, Scene

from benchmarks.common import Figure, demo_engine_parameters

SHAPE = (1024, 1024)
N_FRAMES = 8  # distinct frames, cycled (16 MiB: more than the L2 cache, like a real stream)


def make_frames() -> list[np.ndarray]:
    gen = FrameGenerator(Scene(shape=SHAPE, dtype="uint16", seed=1, background=100.0, noise=5.0,
                               sigma=40.0, amplitude=3000.0, drift_x=3.0, hot_pixels=20, dead_pixels=20))
    return [gen.render(i) for i in range(N_FRAMES)]


def params_for(analysis, **values) -> Params:
    return Params({p.name: p.validate(values.get(p.name, p.default), SHAPE) for p in analysis.parameters})


def per_frame_seconds(step: Callable[[int], Any], seconds: float) -> float:
    """Mean seconds per call of ``step(i)`` over about ``seconds`` of calls."""
    step(0)  # warm-up (numba compile or cache load)
    n = 0
    t0 = time.perf_counter()
    while True:
        step(n)
        n += 1
        if n % 16 == 0 and time.perf_counter() - t0 >= seconds:
            break
    return (time.perf_counter() - t0) / n


def analysis_step(spec: str, frames: list[np.ndarray], accumulate: bool = True, **values):
    runner = Runner(instantiate(load_analysis(spec)))  # as the engine calls it (prepare() cached)
    a = runner.analysis
    p = params_for(a, **values)
    state = {"acc": a.new_accumulator()}

    def step(i: int) -> None:
        # a new Frame each time, as from a source: values cached on a frame (frame_min_max_count)
        # must not make a frame seen again look free
        r = runner.process(Frame(frames[i % len(frames)], i), p)
        if accumulate:
            state["acc"] = a.accumulate(state["acc"], r, p)

    return step, a, state


def numpy_pixel_accumulate(frames: list[np.ndarray]):
    """The vectorised numpy alternative to the pixels plugin's numba accumulate kernel."""
    s = np.zeros(SHAPE, np.int64)
    ss = np.zeros(SHAPE, np.int64)
    mx = np.zeros(SHAPE, np.uint16)
    tmp = np.empty(SHAPE, np.int64)

    def step(i: int) -> None:
        f = frames[i % len(frames)]
        np.add(s, f, out=s)
        np.multiply(f, f, out=tmp, dtype=np.int64)
        np.add(ss, tmp, out=ss)
        np.maximum(mx, f, out=mx)

    return step


DEMO_SET = {"roi": "roi", "profile": "tango_dqm.analysis.profile:Profile",
            "pixels": "tango_dqm.analysis.pixels:Pixels", "histogram": "tango_dqm.analysis.histogram:Histogram"}


def main(argv: list[str] | None = None) -> list[Figure]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.4, help="timing per measurement (default 0.4 s)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best is reported (default 3)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    frames = make_frames()

    roi = dict(roi_signal=[256, 512, 256, 512], roi_background=[0, 128, 0, 128])
    pixels_step, pixels, pixels_state = analysis_step("tango_dqm.analysis.pixels:Pixels", frames)
    pixels_proc_step, _, _ = analysis_step("tango_dqm.analysis.pixels:Pixels", frames, accumulate=False)
    pixel_params = params_for(pixels)
    pixel_results = [pixels.process(Frame(f, i), pixel_params, None) for i, f in enumerate(frames)]
    acc_only_state = {"acc": pixels.new_accumulator()}

    def pixels_acc_step(i: int) -> None:
        acc_only_state["acc"] = pixels.accumulate(acc_only_state["acc"], pixel_results[i % len(frames)], pixel_params)

    rows: list[tuple[str, Callable[[int], Any]]] = [
        ("numpy.sum(dtype=uint64)  [baseline]", lambda i: np.sum(frames[i % N_FRAMES], dtype=np.uint64)),
        ("roi (signal 512x512 + background)", analysis_step("roi", frames, **roi)[0]),
        ("profile (full frame)", analysis_step("tango_dqm.analysis.profile:Profile", frames)[0]),
        ("profile + Gaussian fit", analysis_step("tango_dqm.analysis.profile:Profile", frames,
                                                 profile_fit=True)[0]),
        ("pixels (process + accumulate)", pixels_step),
        ("  pixels process (saturated count)", pixels_proc_step),
        ("  pixels accumulate (numba, used)", pixels_acc_step),
        ("  pixels accumulate (numpy, alt.)", numpy_pixel_accumulate(frames)),
        ("histogram (full frame, 1024 bins)", analysis_step("tango_dqm.analysis.histogram:Histogram", frames)[0]),
        ("  histogram value count (numba, used)",
         lambda i: _count_values(*row_view(frames[i % N_FRAMES]), 0, 65536)),
        ("  histogram value count (np.bincount, alt.)",
         lambda i: np.bincount(frames[i % N_FRAMES].ravel(), minlength=65536)),
        ("histogram (ROI 512x512)", analysis_step("tango_dqm.analysis.histogram:Histogram", frames,
                                                  roi_histogram=[256, 512, 256, 512])[0]),
        ("gain (full-frame charge)", analysis_step("tango_dqm.analysis.gain:Gain", frames)[0]),
    ]
    demo = demo_engine_parameters()
    demo_rows = [f"demo set: {name}" for name in DEMO_SET]
    rows += [(row, analysis_step(spec, frames, **demo)[0]) for row, spec in zip(demo_rows, DEMO_SET.values())]
    best = {name: float("inf") for name, _ in rows}
    for _ in range(max(1, args.repeat)):
        for name, step in rows:  # interleaved: every round measures the baseline too
            best[name] = min(best[name], per_frame_seconds(step, args.seconds))

    t0 = time.perf_counter()
    pixels.finish(pixels_state["acc"])
    t_finish = time.perf_counter() - t0

    base = best[rows[0][0]]
    print(f"per-frame cost on {SHAPE[0]}x{SHAPE[1]} uint16 frames (process + accumulate; best of {args.repeat})")
    print(f"{'what':<46} {'ms/frame':>9} {'frames/s':>9} {'x numpy.sum':>12}")
    for name, _ in rows:
        t = best[name]
        print(f"{name:<46} {t * 1e3:9.3f} {1.0 / t:9.0f} {t / base:12.2f}")
    summed = sum(best[r] for r in demo_rows)
    print(f"{'demo set summed (roi+profile+pixels+histogram)':<46} {summed * 1e3:9.3f} {1.0 / summed:9.0f} "
          f"{summed / base:12.2f}")
    print(f"pixels finish (hot/dead map, once per run): {t_finish * 1e3:.0f} ms")
    print(f"[bench_analyses took {time.perf_counter() - t_start:.1f} s]")
    return [Figure("standard set kernels alone, summed", 1.0 / summed, baseline=1.0 / base,
                   baseline_what="numpy.sum pass")]


if __name__ == "__main__":
    main()
