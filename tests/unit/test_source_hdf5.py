"""HDF5 replay: real files in tmp_path, read directly and through the engine."""
from __future__ import annotations

import hashlib
import threading
import time

import h5py
import hdf5plugin
import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineError, EngineState
from tango_dqm.frames import Frame, SeriesEnd
from tango_dqm.sources import SourceError, open_source
from tango_dqm.sources.hdf5_replay import block_frames
from tests.helpers import frames_for_test

ROI = [30, 15, 10, 10]
REC = "tests.unit.plugins:FrameRecorder"
DATA = "/entry/data/data"


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def write(path, frames, ids=None, chunks=True, **kw):
    stack = np.stack(frames)
    with h5py.File(path, "w") as f:
        f.create_dataset(DATA, data=stack, chunks=(1, *stack.shape[1:]) if chunks is True else chunks, **kw)
        if ids is not None:
            f.create_dataset("/entry/data/frame_id", data=np.asarray(ids, dtype=np.int64))
    return stack


def drain(src, timeout: float = 10.0) -> list:
    stop = threading.Event()
    got = []
    deadline = time.monotonic() + timeout
    for item in src.items(stop):
        if item is not None:
            got.append(item)
        if time.monotonic() > deadline:
            stop.set()
    return got


def drain_counting_reads(uri: str, monkeypatch) -> tuple[list, list]:
    """Every item of the source, and the (dataset, key) of every selection read it made."""
    calls: list = []
    real = h5py.Dataset.__getitem__

    def counting(self, key):
        calls.append((self.name, key))
        return real(self, key)

    src = open_source(uri)
    src.open()
    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    try:
        got = drain(src)
    finally:
        monkeypatch.undo()
        src.close()
    return got, calls


def run_engine(uri: str, roi=ROI, timeout: float = 20.0):
    engine = Engine(EngineConfig(sources=[uri], analyses=["roi", REC]))
    engine.set_parameter("roi_signal", roi)
    engine.start()
    deadline = time.monotonic() + timeout
    while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    snap = engine.snapshot()
    engine.close()
    assert snap.state is EngineState.CLOSE, snap.status
    return snap


def roi_sums(frames):
    ox, sx, oy, sy = ROI
    return np.array([f[oy:oy + sy, ox:ox + sx].sum(dtype=np.int64) for f in frames], dtype=float)


def test_replay_frames_ids_and_series_end(tmp_path):
    frames = frames_for_test(7, shape=(20, 30))
    path = tmp_path / "scan.h5"
    write(path, frames, ids=[100 + 3 * i for i in range(7)])
    src = open_source(f"hdf5://{path}?dataset={DATA}&ids=/entry/data/frame_id")
    assert (src.expected_frames, src.image_shape) == (7, (20, 30))  # known before open
    src.open()
    try:
        got = drain(src)
    finally:
        src.close()
    assert isinstance(got[-1], SeriesEnd) and got[-1].series == "scan"
    assert [f.frame_id for f in got[:-1]] == [100 + 3 * i for i in range(7)]
    for f, sent in zip(got, frames):
        np.testing.assert_array_equal(f.data, sent)
    # default: ids are the index
    src = open_source(f"hdf5://{path}")
    src.open()
    try:
        assert [f.frame_id for f in drain(src)[:-1]] == list(range(7))
    finally:
        src.close()


def test_reads_blocks_not_frames_nor_whole_file(tmp_path, monkeypatch):
    frames = frames_for_test(23, shape=(16, 16))
    path = tmp_path / "chunked.h5"
    write(path, frames, chunks=(4, 16, 16))
    got, calls = drain_counting_reads(f"hdf5://{path}?block=8", monkeypatch)
    assert len([g for g in got if isinstance(g, Frame)]) == 23
    assert [key for _, key in calls] == [slice(0, 8), slice(8, 16), slice(16, 23)]
    with h5py.File(path) as f:  # default: whole chunks, ~1 MiB per read
        assert block_frames(f[DATA]) % 4 == 0 and block_frames(f[DATA]) > 4
        assert block_frames(f[DATA], 3) == 3


def test_frames_stay_valid_after_later_blocks(tmp_path):
    """Frames are views into their block; later reads must not overwrite them."""
    frames = frames_for_test(10, shape=(8, 8))
    path = tmp_path / "views.h5"
    write(path, frames)
    src = open_source(f"hdf5://{path}?block=2")
    src.open()
    try:
        got = [g for g in drain(src) if isinstance(g, Frame)]
    finally:
        src.close()
    for g, sent in zip(got, frames):
        np.testing.assert_array_equal(g.data, sent)


def test_one_chunk_per_frame_is_read_chunk_by_chunk_and_a_gap_the_general_way(tmp_path, monkeypatch):
    """The layout tango-dqm record writes: frames come from HDF5's direct chunk read (no
    selection read), read-only; a frame never written (a gap) is HDF5's fill value."""
    frames = frames_for_test(6, shape=(16, 12))
    path = tmp_path / "direct.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(DATA, shape=(6, 16, 12), dtype=frames[0].dtype, chunks=(1, 16, 12), fillvalue=7)
        for i in (0, 1, 2, 4, 5):  # frame 3 never written
            ds[i] = frames[i]
    items, calls = drain_counting_reads(f"hdf5://{path}", monkeypatch)
    got = [g for g in items if isinstance(g, Frame)]
    assert [g.frame_id for g in got] == list(range(6))
    for i, g in enumerate(got):
        expected = np.full_like(frames[0], 7) if i == 3 else frames[i]
        np.testing.assert_array_equal(g.data, expected)
        assert g.data.dtype == frames[0].dtype and g.data.shape == (16, 12)
    assert calls == [(DATA, 3)]  # only the gap went through a selection read
    assert not got[0].data.flags.writeable


def test_frame_ids_are_read_a_block_of_ids_at_a_time(tmp_path, monkeypatch):
    from tango_dqm.sources import hdf5_replay

    frames = frames_for_test(11, shape=(8, 8))
    ids = [100 + 3 * i for i in range(11)]
    path = tmp_path / "ids.h5"
    write(path, frames, ids=ids)
    monkeypatch.setattr(hdf5_replay, "IDS_BLOCK", 4)
    items, calls = drain_counting_reads(f"hdf5://{path}?ids=/entry/data/frame_id&block=3", monkeypatch)
    got = [g for g in items if isinstance(g, Frame)]
    assert [g.frame_id for g in got] == ids
    for g, sent in zip(got, frames):
        np.testing.assert_array_equal(g.data, sent)
    # blocks of 3 frames: ids 0:4 serve 0:3; 3:6 needs a new read (3:7), 6:9 (6:10), 9:11 (9:13)
    assert [k for name, k in calls if name == "/entry/data/frame_id"] == \
        [slice(0, 4), slice(3, 7), slice(6, 10), slice(9, 13)]


@pytest.mark.parametrize("dtype, kw", [(">u2", {"dtype": ">u2"}), ("<u2", {"compression": "gzip"}),
                                       ("<f4", {"chunks": (2, 8, 8)})])
def test_other_layouts_are_read_the_general_way_with_the_same_values(tmp_path, monkeypatch, dtype, kw):
    frames = [f.astype(dtype) for f in frames_for_test(5, shape=(8, 8))]
    path = tmp_path / "general.h5"
    write(path, frames, chunks=kw.get("chunks", True), **{k: v for k, v in kw.items() if k != "chunks"})
    items, calls = drain_counting_reads(f"hdf5://{path}", monkeypatch)
    got = [g for g in items if isinstance(g, Frame)]
    assert len(got) == 5
    assert [name for name, _ in calls] == [DATA]  # one selection read of the (small) block
    for g, sent in zip(got, frames):
        np.testing.assert_array_equal(g.data, sent)


def test_bslz4_file_through_engine_matches_numpy(tmp_path):
    frames = frames_for_test(25, seed=4)
    path = tmp_path / "detector_bslz4.h5"
    write(path, frames, **hdf5plugin.Bitshuffle(cname="lz4"))
    with h5py.File(path) as f:  # really compressed with the bitshuffle filter (id 32008)
        assert f[DATA].id.get_create_plist().get_filter(0)[0] == 32008
    snap = run_engine(f"hdf5://{path}?dataset={DATA}")
    c = snap.counters
    assert (c.expected, c.completed, c.dropped, c.bad) == (25, 25, 0, 0)
    assert snap.summary["recorded"] == [(i, digest(f)) for i, f in enumerate(frames)]
    sums = roi_sums(frames)
    assert snap.summary["run_signal_sum_mean"] == pytest.approx(sums.mean(), rel=1e-12)
    assert (snap.summary["run_signal_sum_min"], snap.summary["run_signal_sum_max"]) == (sums.min(), sums.max())
    assert snap.summary["run_frame_max_max"] == max(float(f.max()) for f in frames)


def test_rate_limit(tmp_path):
    path = tmp_path / "rate.h5"
    write(path, frames_for_test(11, shape=(4, 4)))
    src = open_source(f"hdf5://{path}?rate=50")
    src.open()
    t0 = time.monotonic()
    try:
        got = drain(src)
    finally:
        src.close()
    elapsed = time.monotonic() - t0
    assert len([g for g in got if isinstance(g, Frame)]) == 11
    assert 0.19 <= elapsed < 2.0  # 10 periods of 20 ms between 11 frames


def _corrupt_chunk(path, index):
    with h5py.File(path) as f:
        info = f[DATA].id.get_chunk_info(index)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(bytes(np.random.default_rng(0).integers(0, 256, info.size, dtype=np.uint8)))


def test_read_error_mid_file_is_bad_input_and_replay_goes_on(tmp_path):
    frames = frames_for_test(12)
    path = tmp_path / "damaged.h5"
    write(path, frames, compression="gzip")
    _corrupt_chunk(path, 5)
    src = open_source(f"hdf5://{path}?block=4")
    src.open()
    try:
        got = drain(src)
    finally:
        src.close()
    assert [g.frame_id if isinstance(g, Frame) else type(g).__name__ for g in got] == \
        [0, 1, 2, 3, 4, "BadInput", 6, 7, 8, 9, 10, 11, "SeriesEnd"]
    assert got[5].kind == "read_error" and "[5]" in got[5].detail
    # through the engine: counted, the other frames analysed
    snap = run_engine(f"hdf5://{path}")
    c = snap.counters
    assert (c.completed, c.bad, c.dropped, c.total) == (11, 1, 0, 12)  # id 5 counted once: bad, not also a gap
    assert snap.bad_kinds == {"read_error": 1}
    good = [f for i, f in enumerate(frames) if i != 5]
    assert snap.summary["recorded"] == [(i, digest(f)) for i, f in enumerate(frames) if i != 5]
    assert snap.summary["run_signal_sum_mean"] == pytest.approx(roi_sums(good).mean(), rel=1e-12)


@pytest.mark.parametrize("setup, query, match", [
    ("missing", "", "does not exist"),
    ("truncated", "", "truncated"),
    ("garbage", "", "cannot open .* as HDF5"),
    ("good", "?dataset=/entry/nope", "no dataset '/entry/nope'"),
    ("good", "?dataset=/entry", "not a dataset"),
    ("good", "?dataset=/entry/data/frame_id", "frames along the first axis"),
    ("good", "?ids=/entry/missing_ids", "no ids dataset"),
    ("good", "?ids=/entry/data/data", "1-D integer dataset"),
])
def test_open_errors_are_clear(tmp_path, setup, query, match):
    path = tmp_path / "f.h5"
    if setup != "missing":
        write(path, frames_for_test(4, shape=(6, 6)), ids=range(4), chunks=None)
    if setup == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif setup == "garbage":
        path.write_bytes(b"this is not an HDF5 file" * 100)
    src = open_source(f"hdf5://{path}{query}")
    with pytest.raises(SourceError, match=match) as info:
        src.open()
    assert str(path) in str(info.value)


def test_truncated_file_faults_the_engine_with_the_reason(tmp_path):
    path = tmp_path / "cut.h5"
    write(path, frames_for_test(4, shape=(6, 6)), chunks=None)
    path.write_bytes(path.read_bytes()[:3000])
    engine = Engine(EngineConfig(sources=[f"hdf5://{path}"], analyses=["roi"]))
    with pytest.raises(EngineError, match="truncated"):
        engine.start()
    assert engine.state is EngineState.FAULT and str(path) in engine.status()
    engine.close()


def test_uri_must_be_an_absolute_path():
    with pytest.raises(SourceError, match="absolute"):
        open_source("hdf5://relative/file.h5")
