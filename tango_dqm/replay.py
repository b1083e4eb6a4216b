"""Offline tools: record any stream into HDF5, and replay files through the same engine.

``record`` writes frames as ``/entry/data/data`` (frames along the first axis) with their
ids in ``/entry/data/frame_id``, exactly what the ``hdf5://`` source replays. ``replay``
runs the engine and plugins with no Tango: the per-frame results equal the live device's
on the same frames, since they depend only on frame ids and data.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np

from .engine import Engine, EngineConfig, EngineState, Snapshot
from .frames import BadInput, Frame, SeriesEnd, SeriesStart
from .sources import open_source

DATA, IDS = "/entry/data/data", "/entry/data/frame_id"


def replay_uri(path: str | Path) -> str:
    """The ``hdf5://`` URI that replays a file written by :func:`record`."""
    return f"hdf5://{Path(path).resolve()}?dataset={DATA}&ids={IDS}"


def as_source_uri(text: str) -> str:
    """A URI as given, or a plain path to a recorded file turned into its ``hdf5://`` URI."""
    return text if "://" in text else replay_uri(text)


def load_params(path: str | Path | None) -> dict[str, Any]:
    """Parameter values from a JSON or YAML file (never a pickle)."""
    if path is None:
        return {}
    text = Path(path).read_text()
    if str(path).endswith((".yaml", ".yml")):
        import yaml
        values = yaml.safe_load(text)
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected an object of parameter values, got {type(values).__name__}")
    return values


def record(uri: str, out: str | Path, frames: int | None = None, timeout: float | None = None,
           progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None) -> int:
    """Write the frames of ``uri`` into ``out`` until the series ends, ``frames`` were
    written, ``timeout`` seconds passed or ``stop`` is set. Returns the number written."""
    source = open_source(uri)
    source.open()
    stop = stop or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    written = bad = 0
    try:
        with h5py.File(out, "w", libver="latest") as f:
            data = ids = None
            f.require_group("entry").attrs["NX_class"] = "NXentry"
            f["entry"].attrs["source"] = uri
            for item in source.items(stop, live=False):
                if deadline is not None and time.monotonic() > deadline:
                    break
                if item is None:
                    continue
                if isinstance(item, SeriesEnd):
                    break
                if isinstance(item, SeriesStart):
                    continue
                if isinstance(item, BadInput):
                    bad += 1
                    continue
                frame: Frame = item
                if data is None or ids is None:  # both made at the first frame
                    data = f.create_dataset(DATA, shape=(0, *frame.data.shape), maxshape=(None, *frame.data.shape),
                                            dtype=frame.data.dtype, chunks=(1, *frame.data.shape))
                    ids = f.create_dataset(IDS, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
                    f.swmr_mode = True  # readable (and replayable) while recording
                if frame.data.shape != data.shape[1:] or frame.data.dtype != data.dtype:
                    bad += 1  # one dataset holds one shape; a changed header ends up here
                    continue
                data.resize(written + 1, axis=0)
                data[written] = frame.data
                ids.resize(written + 1, axis=0)
                ids[written] = frame.frame_id
                written += 1
                if written % 100 == 0:
                    f.flush()
                if progress is not None:
                    progress(written, bad)
                if frames is not None and written >= frames:
                    break
    finally:
        source.close()
    return written


def replay(source: str, analyses: Sequence[str], params: dict[str, Any] | None = None,
           out: str | Path | None = None, live_progress: Callable[[Snapshot], None] | None = None,
           checks: Sequence[Any] = ()) -> Snapshot:
    """Run ``analyses`` over ``source`` with no Tango; return the final snapshot.
    With ``out`` the per-frame results and run summary go to that HDF5 file."""
    out_path = Path(out).resolve() if out is not None else None
    config = EngineConfig([as_source_uri(source)], list(analyses), checks=list(checks),
                          output_directory=str(out_path.parent) if out_path else "",
                          output_name=out_path.name if out_path else "")
    engine = Engine(config)
    try:
        for name, value in (params or {}).items():
            engine.set_parameter(name, value)
        engine.start()
        while engine.state is EngineState.RUNNING:
            time.sleep(0.2)
            if live_progress is not None:
                live_progress(engine.snapshot())
        engine.publisher.flush()
        snap = engine.snapshot()
        if engine.products is not None:
            engine.products.worker.wait_idle(120)  # the report of this run
        return snap
    finally:
        engine.close()


def print_summary(snap: Snapshot, stream: TextIO = sys.stdout) -> None:
    c = snap.counters
    print(f"{snap.state.value}: {c.completed}/{c.total} events completed, {c.dropped} dropped, {c.bad} bad",
          file=stream)
    if snap.quality is not None:
        print(f"verdict {snap.quality.verdict.name}", file=stream)
    for key, value in sorted(snap.summary.items()):
        if isinstance(value, (int, float, str, np.integer, np.floating)):
            print(f"  {key:40s} {value}", file=stream)
