"""Replay of recorded frames: ``tango-dqm replay`` (hdf5 + roi) vs dranspose's ``replay``.

    python -m benchmarks.bench_replay [--frames 400] [--repeat 3] [--dranspose]

Frames (1024x1024 uint16, the demo's scene) are recorded into an HDF5 file laid out as
``tango-dqm record`` writes it (/entry/data/data, /entry/data/frame_id; page cache warm).

- tango-dqm: the engine of ``tango-dqm replay`` (tango_dqm.replay: the hdf5:// source of
  the file, the roi analysis), frames/s from the first to the last result, awaited on the
  engine's listener. The ``tango-dqm replay`` command itself is also timed end to end
  (process start and imports included), for reference.
- dranspose (only with ``--dranspose``): dranspose 0.2's ``dranspose replay`` CLI with an
  equivalent ROI worker and reducer (benchmarks/dranspose_roi.py) on the same frames, held
  in memory as STINS messages; frames/s from the first to the last result in its reducer.
  dranspose is installed into its own venv, benchmarks/.venv-dranspose, on first use (it is
  a benchmark, not a dependency of tango-dqm).

Goal (issue 11): tango-dqm replay >= 4x dranspose replay.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, SHAPE, Figure, RunWaiter, demo_frames, warm_up

ROIS = {"signal": [256, 512, 256, 512], "background": [0, 128, 0, 128]}
VENV = ROOT / "benchmarks" / ".venv-dranspose"


def record_file(path: Path, n: int) -> None:
    import h5py

    from tango_dqm.replay import DATA, IDS

    pool = demo_frames(8)
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset(DATA, shape=(n, *SHAPE), dtype=np.uint16, chunks=(1, *SHAPE))
        for i in range(0, n, 50):
            k = min(50, n - i)
            ds[i:i + k] = np.stack([pool[(i + j) % len(pool)] for j in range(k)])
        f.create_dataset(IDS, data=np.arange(n, dtype=np.int64))


LAST: dict[str, float] = {}  # net_signal of the last frame, per side: the workers must agree


def tango_dqm_replay(path: Path, n: int) -> float:
    """The engine of ``tango-dqm replay`` on the file, roi only: frames/s first to last result."""
    from tango_dqm.engine import Engine, EngineConfig
    from tango_dqm.replay import replay_uri

    waiter = RunWaiter(n - 1)
    engine = Engine(EngineConfig([replay_uri(path)], ["roi"]), waiter)
    try:
        engine.set_parameter("roi_signal", ROIS["signal"])
        engine.set_parameter("roi_background", ROIS["background"])
        engine.start()
        if not waiter.ended.wait(600):
            raise RuntimeError("replay did not end within 600 s")
        snap = engine.snapshot()
        completed = snap.counters.completed
        LAST["tango-dqm"] = float(snap.results.get("net_signal", float("nan")))
    finally:
        engine.close()
    if completed != n or waiter.first is None or waiter.last is None:
        raise RuntimeError(f"replay completed {completed}/{n}: {waiter.final_state}")
    return (n - 1) / (waiter.last - waiter.first)


def tango_dqm_cli(path: Path, folder: Path) -> float:
    """Wall time of the ``tango-dqm replay`` command (seconds), process start included."""
    params = folder / "rois.json"
    params.write_text(json.dumps({"roi_signal": ROIS["signal"], "roi_background": ROIS["background"]}))
    exe = Path(sys.executable).with_name("tango-dqm")
    t0 = time.perf_counter()
    subprocess.run([str(exe), "replay", str(path), "-a", "roi", "--params", str(params)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ensure_dranspose() -> Path:
    """benchmarks/.venv-dranspose with dranspose installed (pip, on first use)."""
    exe = VENV / "bin" / "dranspose"
    if not exe.exists():
        print(f"  installing dranspose into {VENV} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "dranspose", "h5py"],
                       check=True)
    return exe


def dranspose_replay(exe: Path, path: Path, folder: Path) -> tuple[float, float]:
    """dranspose replay with the ROI worker: (frames/s first to last result, wall seconds)."""
    out = folder / "dranspose_timing.json"
    out.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DQM_BENCH_H5": str(path), "DQM_BENCH_OUT": str(out),
           "DQM_BENCH_ROIS": json.dumps(ROIS), "LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), "replay", "-w", "benchmarks.dranspose_roi:RoiWorker",
                           "-r", "benchmarks.dranspose_roi:RoiReducer", "-s", "benchmarks.dranspose_roi:H5Source"],
                          env=env, cwd=str(folder), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"dranspose replay failed ({proc.returncode}): {proc.stderr[-2000:]}")
    t = json.loads(out.read_text())
    LAST["dranspose"] = float(t["last_net_signal"])
    return (t["frames"] - 1) / (t["last"] - t["first"]), wall


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="frames in the recorded file (2 MiB each)")
    parser.add_argument("--repeat", type=int, default=3, help="alternated runs; the best is kept")
    parser.add_argument("--dranspose", action="store_true", help="also run dranspose replay (installs it once)")
    args = parser.parse_args(argv)
    params = {"roi_signal": ROIS["signal"], "roi_background": ROIS["background"]}
    warm_up(["roi"], params)
    exe = ensure_dranspose() if args.dranspose else None
    dqm, dqm_cli, drp, drp_wall = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench_replay_") as tmp:
        folder = Path(tmp)
        path = folder / "frames.h5"
        record_file(path, args.frames)
        tango_dqm_replay(path, args.frames)  # warms the page cache
        for _ in range(max(1, args.repeat)):
            dqm.append(tango_dqm_replay(path, args.frames))
            if exe is not None:
                rate, wall = dranspose_replay(exe, path, folder)
                drp.append(rate)
                drp_wall.append(wall)
        dqm_cli.append(tango_dqm_cli(path, folder))
    d = max(dqm)
    print(f"replay of {args.frames} recorded {SHAPE[0]}x{SHAPE[1]} uint16 frames, roi, best of {args.repeat}")
    print(f"  {'what':<62} {'frames/s':>9} {'x dranspose':>12}")
    if drp:
        b = max(drp)
        print(f"  {'dranspose replay, ROI worker, frames in memory [baseline]':<62} {b:9.0f} {1.0:12.2f}")
        print(f"  {'tango-dqm replay engine, hdf5:// + roi':<62} {d:9.0f} {d / b:12.2f}")
        if not np.isclose(LAST["tango-dqm"], LAST["dranspose"], rtol=1e-9):
            print(f"  WARNING: the workers disagree: net_signal of the last frame {LAST}")
        print(f"  wall time of the commands: tango-dqm replay {min(dqm_cli):.1f} s, "
              f"dranspose replay {min(drp_wall):.1f} s (process start, imports, loading included)")
        return [Figure("tango-dqm replay, hdf5 + roi", d, baseline=b, baseline_what="dranspose replay",
                       goal=">= 4x", met=d / b >= 4.0)]
    print(f"  {'tango-dqm replay engine, hdf5:// + roi':<62} {d:9.0f} {'-':>12}")
    print(f"  wall time of the tango-dqm replay command: {min(dqm_cli):.1f} s (process start and imports included)")
    print("  for the ratio to dranspose replay: python -m benchmarks --only replay --dranspose "
          "(or make bench BENCH_ARGS=--dranspose); installs dranspose into benchmarks/.venv-dranspose once")
    return [Figure("tango-dqm replay, hdf5 + roi", d, baseline=None,
                   baseline_what="dranspose: run with --dranspose", goal=">= 4x dranspose")]


if __name__ == "__main__":
    main()
