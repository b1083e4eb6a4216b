"""Watched directory: a separate writer process appends to HDF5 files while the watcher runs.

Every frame carries its global sequence number in pixel [0, 0] and content derived from
it, so the test can tell that each frame was processed exactly once, in order.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.frames import BadInput, Frame, SeriesEnd
from tango_dqm.sources import SourceError, open_source
from tango_dqm.sources.watch_dir import WatchDirSource

SHAPE = (24, 32)
DATA = "/entry/data/data"
IDS = "/entry/data/frame_id"
ROI = [4, 10, 2, 8]
REC = "tests.unit.plugins:FrameRecorder"
N_A, N_B, N_C = 30, 12, 5  # frames in a.h5 (SWMR, with ids), b.h5 (reopen to append), c.h5 (late)

WRITER = r'''
"""Writes a.h5 (SWMR, ids), b.h5 (reopened per append) and c.h5 (unopenable at first) in DIR."""
import os, sys, time
import h5py
import numpy as np

directory, n_a, n_b, n_c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
SHAPE = (24, 32)
DATA, IDS = "/entry/data/data", "/entry/data/frame_id"

def frame(seq):
    f = np.random.default_rng(seq).integers(0, 1000, size=SHAPE, dtype=np.uint16)
    f[0, 0] = seq
    return f

seq = 0
# a.h5: a SWMR writer, one frame per flush, data first then its id
with h5py.File(os.path.join(directory, "a.h5"), "w", libver="latest") as f:
    d = f.create_dataset(DATA, shape=(0, *SHAPE), maxshape=(None, *SHAPE), chunks=(1, *SHAPE), dtype=np.uint16)
    ids = f.create_dataset(IDS, shape=(0,), maxshape=(None,), chunks=(64,), dtype=np.int64)
    f.swmr_mode = True
    for i in range(n_a):
        d.resize(i + 1, axis=0)
        d[i] = frame(seq)
        d.flush()
        ids.resize(i + 1, axis=0)
        ids[i] = 1000 + i
        ids.flush()
        seq += 1
        time.sleep(0.01)
# b.h5: closed after every append of 3 frames, reopened to append
path = os.path.join(directory, "b.h5")
for start in range(0, n_b, 3):
    with h5py.File(path, "a") as f:
        d = f.get(DATA) or f.create_dataset(DATA, shape=(0, *SHAPE), maxshape=(None, *SHAPE),
                                            chunks=(1, *SHAPE), dtype=np.uint16)
        n = min(3, n_b - start)
        d.resize(start + n, axis=0)
        for k in range(n):
            d[start + k] = frame(seq)
            seq += 1
    time.sleep(0.05)
# c.h5: exists but cannot be opened for a while (being created), then appears complete
path = os.path.join(directory, "c.h5")
with open(path, "wb") as fh:
    fh.write(b"\x89HDF\r\n")
time.sleep(0.6)
with h5py.File(path + ".tmp", "w") as f:
    f.create_dataset(DATA, data=np.stack([frame(seq + k) for k in range(n_c)]))
os.replace(path + ".tmp", path)
print("done", seq + n_c)
'''


def frame(seq: int) -> np.ndarray:
    f = np.random.default_rng(seq).integers(0, 1000, size=SHAPE, dtype=np.uint16)
    f[0, 0] = seq
    return f


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def expected_ids() -> list[int]:
    """a.h5 has ids 1000+i; b.h5 and c.h5 use the running index over all frames read."""
    return [1000 + i for i in range(N_A)] + list(range(N_A, N_A + N_B + N_C))


def start_writer(tmp_path, directory) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), str(directory), str(N_A), str(N_B), str(N_C)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def drain(src, stop=None, timeout: float = 15.0, live: bool = False, until=None) -> list:
    stop = stop or threading.Event()
    got = []
    deadline = time.monotonic() + timeout
    for item in src.items(stop, live):
        if item is not None:
            got.append(item)
        if time.monotonic() > deadline or (until is not None and until(got)):
            stop.set()
    return got


def write_file(path, seqs, ids=None):
    with h5py.File(path, "w") as f:
        f.create_dataset(DATA, data=np.stack([frame(s) for s in seqs]), maxshape=(None, *SHAPE),
                         chunks=(1, *SHAPE))
        if ids is not None:
            f.create_dataset(IDS, data=np.asarray(ids, dtype=np.int64), maxshape=(None,))


def append(path, seqs):
    with h5py.File(path, "a") as f:
        d = f[DATA]
        n = d.shape[0]
        d.resize(n + len(seqs), axis=0)
        d[n:] = np.stack([frame(s) for s in seqs])


@pytest.mark.timeout(60)
def test_growing_files_from_writer_process_read_exactly_once(tmp_path):
    directory = tmp_path / "scan"
    directory.mkdir()
    writer = start_writer(tmp_path, directory)
    src = open_source(f"watch://{directory}?pattern=*.h5&dataset={DATA}&ids={IDS}&poll=0.05&idle=2")
    src.open()
    writer_busy_at_first_frame = []
    try:
        got = drain(src, timeout=30, until=lambda g: writer_busy_at_first_frame.append(writer.poll() is None)
                    if len(g) == 1 and not writer_busy_at_first_frame else False)
    finally:
        src.close()
    out, err = writer.communicate(timeout=30)
    assert writer_busy_at_first_frame == [True]  # frames were read while the files grew
    assert writer.returncode == 0, err
    total = N_A + N_B + N_C
    frames = [g for g in got if isinstance(g, Frame)]
    assert [int(f.data[0, 0]) for f in frames] == list(range(total))  # each once, in file name order
    assert all(np.array_equal(f.data, frame(s)) for s, f in enumerate(frames))
    assert [f.frame_id for f in frames] == expected_ids()
    assert [f.meta["file"] for f in frames] == ["a.h5"] * N_A + ["b.h5"] * N_B + ["c.h5"] * N_C
    assert not [g for g in got if isinstance(g, BadInput)]  # c.h5 was retried, not reported
    assert isinstance(got[-1], SeriesEnd)
    assert src.state == {"files": {"a.h5": N_A, "b.h5": N_B, "c.h5": N_C}, "next_id": total}
    # the SWMR file was opened once and refreshed while it grew, not reopened at every poll
    assert src.open_counts["a.h5"] <= 2


@pytest.mark.timeout(60)
def test_engine_on_growing_files_matches_numpy(tmp_path):
    directory = tmp_path / "scan"
    directory.mkdir()
    writer = start_writer(tmp_path, directory)
    engine = Engine(EngineConfig(sources=[f"watch://{directory}?ids={IDS}&poll=0.05&idle=2"],
                                 analyses=["roi", REC]))
    engine.set_parameter("roi_signal", ROI)
    engine.start()
    deadline = time.monotonic() + 30
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = engine.snapshot()
    engine.close()
    writer.communicate(timeout=30)
    assert snap.state is EngineState.CLOSE, snap.status
    total = N_A + N_B + N_C
    sent = [frame(s) for s in range(total)]
    assert snap.summary["recorded"] == list(zip(expected_ids(), map(digest, sent)))
    ox, sx, oy, sy = ROI
    sums = np.array([f[oy:oy + sy, ox:ox + sx].sum(dtype=np.int64) for f in sent], dtype=float)
    assert snap.summary["run_signal_sum_mean"] == pytest.approx(sums.mean(), rel=1e-12)
    assert (snap.summary["run_signal_sum_min"], snap.summary["run_signal_sum_max"]) == (sums.min(), sums.max())
    # a.h5 ids 1000..1029 then the running index 30..46: no gap, nothing dropped
    assert (snap.counters.completed, snap.counters.dropped, snap.counters.bad) == (total, 0, 0)


def test_position_survives_restart_via_state_file_and_state_object(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    state_file = tmp_path / "watch_state.json"
    write_file(directory / "a.h5", range(0, 5))
    uri = f"watch://{directory}?poll=0.05&state={state_file}"
    src = open_source(uri)
    src.open()
    first = drain(src, until=lambda got: len(got) >= 3)  # stopped after 3 of 5 frames
    src.close()
    assert [int(f.data[0, 0]) for f in first] == [0, 1, 2]
    assert json.loads(state_file.read_text()) == {"files": {"a.h5": 3}, "next_id": 3}

    append(directory / "a.h5", range(5, 8))
    write_file(directory / "b.h5", range(8, 10))
    src = open_source(uri + "&idle=0.3")  # a new watcher: continues where the old one stopped
    src.open()
    second = drain(src)
    src.close()
    frames = [g for g in second if isinstance(g, Frame)]
    assert [int(f.data[0, 0]) for f in frames] == list(range(3, 10))
    assert [f.frame_id for f in frames] == list(range(3, 10))
    assert json.loads(state_file.read_text()) == {"files": {"a.h5": 8, "b.h5": 2}, "next_id": 10}

    # the same through the state object, without a file
    src2 = WatchDirSource(open_source(f"watch://{directory}?poll=0.05&idle=0.3").spec,
                          state={"files": {"a.h5": 6}, "next_id": 40})
    src2.open()
    frames = [g for g in drain(src2) if isinstance(g, Frame)]
    src2.close()
    assert [int(f.data[0, 0]) for f in frames] == [6, 7, 8, 9]
    assert [f.frame_id for f in frames] == [40, 41, 42, 43]
    assert src2.state == {"files": {"a.h5": 8, "b.h5": 2}, "next_id": 44}


def test_unreadable_and_incomplete_files_are_counted_once_and_engine_goes_on(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    write_file(directory / "a_good.h5", range(0, 4))
    (directory / "b_garbage.h5").write_bytes(b"definitely not HDF5" * 50)
    with h5py.File(directory / "c_nodata.h5", "w") as f:
        f.create_dataset("/entry/other", data=np.zeros(3))
    write_file(directory / "d_good.h5", range(4, 9))
    (directory / "notes.txt").write_text("not matched by the pattern")
    engine = Engine(EngineConfig(sources=[f"watch://{directory}?poll=0.05&bad_after=0.2&idle=1"],
                                 analyses=["roi", REC]))
    engine.start()
    deadline = time.monotonic() + 10
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    snap = engine.snapshot()
    engine.close()
    assert snap.state is EngineState.CLOSE, snap.status
    assert snap.bad_kinds == {"unreadable_file": 1, "missing_dataset": 1}
    assert (snap.counters.completed, snap.counters.bad) == (9, 2)
    assert snap.summary["recorded"] == [(i, digest(frame(i))) for i in range(9)]


def test_file_being_created_is_retried_not_skipped(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    (directory / "a.h5").write_bytes(b"")  # created, nothing written yet
    src = open_source(f"watch://{directory}?poll=0.05&bad_after=5")
    src.open()
    stop = threading.Event()
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(drain(src, stop=stop, timeout=10,
                                                              until=lambda g: len(g) >= 3)))
    reader.start()
    time.sleep(0.4)  # several polls fail to open it
    assert got == []
    tmp = directory / "a.tmp"
    write_file(tmp, range(3))
    os.replace(tmp, directory / "a.h5")
    reader.join(10)
    src.close()
    assert [int(g.data[0, 0]) for g in got] == [0, 1, 2]


def test_live_watcher_never_ends_and_stop_ends_it(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    write_file(directory / "a.h5", range(2))
    src = open_source(f"watch://{directory}?poll=0.05&idle=0.1")
    src.open()
    stop = threading.Event()
    timer = threading.Timer(0.6, stop.set)
    timer.start()
    t0 = time.monotonic()
    got = drain(src, stop=stop, live=True)
    src.close()
    assert time.monotonic() - t0 >= 0.55  # idle does not end a live watcher
    assert [type(g) for g in got] == [Frame, Frame]


def test_bad_uris():
    with pytest.raises(SourceError, match="absolute"):
        open_source("watch://rel/dir")
    with pytest.raises(SourceError, match="poll"):
        open_source("watch:///tmp?poll=0")
    with pytest.raises(SourceError, match="not a directory"):
        open_source("watch:///nonexistent/dir/xyz").open()


def test_frame_that_cannot_be_read_is_retried_then_counted_once_and_skipped(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()
    path = directory / "a.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(DATA, data=np.stack([frame(s) for s in range(6)]), chunks=(1, *SHAPE), compression="gzip")
    with h5py.File(path) as f:
        info = f[DATA].id.get_chunk_info(2)
    with open(path, "r+b") as fh:  # frame 2's compressed chunk becomes garbage
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    src = open_source(f"watch://{directory}?poll=0.05&bad_after=0.3&idle=0.6&block=4")
    src.open()
    t0 = time.monotonic()
    got = drain(src)
    src.close()
    items = [g.frame_id if isinstance(g, Frame) else type(g).__name__ for g in got]
    assert items == [0, 1, "BadInput", 3, 4, 5, "SeriesEnd"]  # id 2 used up: the engine sees the gap
    assert got[2].kind == "read_error" and "[2]" in got[2].detail
    assert [int(g.data[0, 0]) for g in got if isinstance(g, Frame)] == [0, 1, 3, 4, 5]
    assert time.monotonic() - t0 >= 0.3  # retried until bad_after, not skipped at once
    assert src.state == {"files": {"a.h5": 6}, "next_id": 6}
