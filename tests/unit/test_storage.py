"""HDF5 results (ScanWriter): layout, SWMR readers in another process, SIGKILL, marks, paths."""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tango_dqm.engine import Counters
from tango_dqm.plugin import Result
from tango_dqm.storage import (INT_MISSING, VERDICTS, ScanWriter, StorageError, confined_path, mark_scan,
                               open_scan, read_marks_log, read_scan_info, recover_scan_file, safe_name,
                               scan_files, writer_alive)

N_SCALARS = 15


def declarations() -> dict[str, Result]:
    decl = [Result(f"r{i}", float, unit="counts", label=f"Result {i}") for i in range(N_SCALARS - 1)]
    decl += [Result("count", int, unit="pixels"), Result("spec", float, kind="spectrum", unit="counts"),
             Result("img", np.uint16, kind="image")]
    return {r.name: r for r in decl}


def row(i: int) -> dict:
    out = {f"r{k}": float(i * k) + 0.5 for k in range(N_SCALARS - 1)}
    out["count"] = i
    out["spec"] = np.arange(4, dtype=float) + i
    out["img"] = np.full((6, 8), i, dtype=np.uint16)
    return out


PROVENANCE = {
    "parameters": {"roi_signal": [30, 15, 10, 10], "roi_background": [], "saturation_level": 65535,
                   "gain": 1.5},
    "rois": {"signal": [30, 15, 10, 10], "background": []},
    "thresholds": {"signal_sum": {"warning": [0, 1e6], "error": [None, 2e6]}},
    "reference": {"name": "ref_2024", "version": "3"},
    "background": {"name": "dark_01", "version": "1"},
    "versions": {"tango-dqm": "0.1.0", "git": "abc123", "analyses": {"roi": {"version": "1"}}},
    "sources": ["sim://?frames=100", "zmq://localhost:5555"],
}


def new_writer(path: Path, scan_id: str = "scan_0001", **kw) -> ScanWriter:
    return ScanWriter(path, scan_id, declarations(), PROVENANCE, **kw)


class Lines:
    """Lines printed by a child process, read by a thread so that waits can time out."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.q.put(line.strip())
        self.q.put(None)

    def next(self, timeout: float = 30.0) -> str:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from the child process within {timeout}s") from None
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"child process ended (rc={self.proc.wait()}): {err}")
        return line


def spawn(script: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True, cwd=str(Path(__file__).resolve().parents[2]))


# ---- layout ----------------------------------------------------------------------------------


def test_layout_frames_summary_and_provenance(tmp_path):
    w = new_writer(tmp_path / "scan_0001.h5", flush_frames=7)
    n = 50
    for i in range(n):
        w.append(1000 + i, 1.7e9 + i * 0.01, row(i), verdict="WARNING" if i == 3 else 0)
    counters = Counters(total=n, completed=n, dropped=0, bad=2, expected=n)
    summary = {"run_r1_mean": 12.5, "run_count_max": n - 1, "pixel_map": np.ones((6, 8)),
               "histogram": np.arange(10), "fit": {"a": 1.0, "ok": True}, "label": "fine"}
    path = w.finish(summary, counters, "WARNING", end_reason="series end",
                    provenance={"parameter_changes": [{"name": "gain", "value": 2.0, "applied_at_frame": 1010}]})
    assert path == tmp_path / "scan_0001.h5" and w.frames_written == n
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan_0001.h5"]  # the writer lock is gone

    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "entry"
        e = f["entry"]
        assert e.attrs["NX_class"] == "NXentry"
        assert e["title"][()].decode() == "scan_0001"
        assert e["start_time"][()] and e["end_time"][()]
        res = e["results"]
        assert res.attrs["NX_class"] == "NXprocess" and res["program"][()] == b"tango-dqm"
        assert res["frame_id"].dtype == np.int64 and res["frame_id"][:].tolist() == list(range(1000, 1000 + n))
        assert res["timestamp"].dtype == np.float64 and res["timestamp"][0] == pytest.approx(1.7e9)
        for k in range(N_SCALARS - 1):
            ds = res[f"r{k}"]
            assert ds.dtype == np.float64 and ds.attrs["units"] == "counts"
            np.testing.assert_array_equal(ds[:], np.arange(n) * k + 0.5)
        assert res["count"].dtype == np.int64 and res["count"][:].tolist() == list(range(n))
        assert res["spec"].shape == (n, 4) and res["spec"][5].tolist() == [5, 6, 7, 8]
        assert res["spec_length"][:].tolist() == [4] * n
        assert res["img"].shape == (6, 8) and res["img"].dtype == np.uint16 and res["img"][0, 0] == n - 1
        assert res["img_frame_id"][()] == 1000 + n - 1
        v = res["verdict"]
        assert v.dtype == np.uint8 and v[3] == VERDICTS.index("WARNING") and v[:].sum() == v[3]
        assert v.attrs["flag_meanings"] == " ".join(VERDICTS)
        # every per-frame dataset is chunked and extendible (SWMR-appendable)
        for name in ("frame_id", "timestamp", "verdict", "r0", "count", "spec"):
            assert res[name].chunks is not None and res[name].maxshape[0] is None

        data = e["data"]
        assert data.attrs["NX_class"] == "NXdata" and data.attrs["signal"] == "r0"
        assert list(data.attrs["axes"]) == ["frame_id"]
        assert data["r0"][:].tolist() == res["r0"][:].tolist()  # hard links, not copies

        s = e["summary"]
        assert s["frames"][()] == n and s["verdict"][()] == b"WARNING" and s["end_reason"][()] == b"series end"
        assert s["run_r1_mean"][()] == 12.5 and s["run_count_max"][()] == n - 1
        assert s["pixel_map"].shape == (6, 8) and s["histogram"][:].tolist() == list(range(10))
        assert json.loads(s["fit"][()]) == {"a": 1.0, "ok": True} and s["fit"].attrs["encoding"] == "json"
        assert s["label"][()] == b"fine"
        c = s["counters"]
        assert (c["total"][()], c["completed"][()], c["bad"][()], c["expected"][()]) == (n, n, 2, n)
        assert json.loads(s["frame_verdict_counts_json"][()]) == {"OK": n - 1, "WARNING": 1}

        p = e["provenance"]
        assert json.loads(p["parameters_json"][()]) == PROVENANCE["parameters"]
        assert p["parameters/roi_signal"][:].tolist() == [30, 15, 10, 10]
        assert p["parameters/roi_background"].shape == (0,)
        assert p["parameters/gain"][()] == 1.5 and p["parameters/saturation_level"][()] == 65535
        assert p["rois/signal"][:].tolist() == [30, 15, 10, 10]
        assert json.loads(p["thresholds_json"][()]) == PROVENANCE["thresholds"]
        assert p["reference/version"][()] == b"3" and p["background/name"][()] == b"dark_01"
        assert json.loads(p["versions_json"][()])["git"] == "abc123"
        assert [s.decode() for s in p["sources"][:]] == PROVENANCE["sources"]
        assert json.loads(p["parameter_changes"][()])[0]["applied_at_frame"] == 1010
        assert json.loads(p["json"][()])["reference"]["version"] == "3"

    info = read_scan_info(path)
    assert (info["scan_id"], info["frames"], info["verdict"], info["complete"]) == ("scan_0001", n, "WARNING", True)


def test_versions_default_to_deployed_versions(tmp_path):
    w = ScanWriter(tmp_path / "a.h5", "a", declarations(), {"parameters": {}})
    w.finish({}, None, None)
    with h5py.File(w.path) as f:
        versions = json.loads(f["entry/provenance/versions_json"][()])
    assert {"tango-dqm", "numpy", "h5py", "git"} <= set(versions)


def test_engine_result_declarations_are_accepted(tmp_path):
    decl = {"a": ("roi", Result("a", float)), "b": ("roi", Result("b", int))}
    w = ScanWriter(tmp_path / "e.h5", "e", decl, {}, main_result="b")
    w.append(0, 0.0, {"a": 1.0, "b": 2})
    w.finish({}, None, "OK")
    with h5py.File(w.path) as f:
        assert f["entry/results/a"].attrs["analysis"] == "roi"
        assert f["entry/data"].attrs["signal"] == "b"


def test_spectrum_width_grows_with_nan_padding_across_blocks(tmp_path):
    w = ScanWriter(tmp_path / "s.h5", "s", [Result("spec", float, kind="spectrum")], {}, flush_frames=2)
    lengths = [3, 3, 5, 2, 0, 6, None]  # None: result missing in that frame
    for i, n in enumerate(lengths):
        w.append(i, 0.0, {} if n is None else {"spec": np.arange(n) + 10 * i})
    w.finish({}, None, None)
    with h5py.File(w.path) as f:
        spec, length = f["entry/results/spec"][...], f["entry/results/spec_length"][...]
    assert spec.shape == (7, 6)
    assert length.tolist() == [3, 3, 5, 2, 0, 6, 0]
    for i, n in enumerate(lengths):
        n = n or 0
        np.testing.assert_array_equal(spec[i, :n], np.arange(n) + 10 * i)
        assert np.isnan(spec[i, n:]).all()  # earlier rows were padded when the width grew


def test_fixed_spectrum_width_truncates(tmp_path, caplog):
    w = ScanWriter(tmp_path / "s.h5", "s", [Result("spec", float, kind="spectrum")], {},
                   spectrum_widths={"spec": 4})
    w.append(0, 0.0, {"spec": np.arange(6)})
    w.append(1, 0.0, {"spec": np.arange(2)})
    w.finish({}, None, None)
    with h5py.File(w.path) as f:
        assert f["entry/results/spec"].maxshape == (None, 4)
        assert f["entry/results/spec"][0].tolist() == [0, 1, 2, 3]
        assert f["entry/results/spec_length"][:].tolist() == [6, 2]
    assert "truncated" in caplog.text


def test_missing_and_unconvertible_values(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    decl = [Result("x", float), Result("n", int), Result("s", str)]
    w = ScanWriter(tmp_path / "m.h5", "m", decl, {})
    w.append(0, 0.0, {"x": 1.0, "n": 1, "s": "a"})
    w.append(1, 0.0, {})  # all missing
    w.append(2, 0.0, {"x": "not a number", "n": None, "s": "b", "undeclared": 5})
    w.append(3, 0.0, {"x": "still not", "n": np.int32(7)})
    w.finish({}, None, None)
    with h5py.File(w.path) as f:
        x, n, s = (f[f"entry/results/{k}"][:] for k in "xns")
        assert f["entry/results/n"].attrs["missing_value"] == INT_MISSING
    assert x[0] == 1.0 and np.isnan(x[1:]).all()
    assert n.tolist() == [1, INT_MISSING, INT_MISSING, 7]
    assert [v.decode() for v in s] == ["a", "", "b", ""]
    assert caplog.text.count("does not fit") == 1  # logged once per result


def test_bad_declarations_and_existing_file(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        ScanWriter(tmp_path / "a.h5", "a", [Result("frame_id", int)], {})
    with pytest.raises(ValueError, match="main_result"):
        ScanWriter(tmp_path / "b.h5", "b", [Result("x", float)], {}, main_result="nope")
    ScanWriter(tmp_path / "c.h5", "c", [Result("x", float)], {}).close()
    with pytest.raises(StorageError, match="already exists"):
        ScanWriter(tmp_path / "c.h5", "c", [Result("x", float)], {})
    w = ScanWriter(tmp_path / "d.h5", "d", [Result("x", float)], {})
    with pytest.raises(StorageError, match="already being written"):
        ScanWriter(tmp_path / "d.h5", "d", [Result("x", float)], {}, overwrite=True)
    w.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "d.h5"]


def test_append_after_close_is_refused(tmp_path):
    w = new_writer(tmp_path / "c.h5")
    w.append(0, 0.0, row(0))
    w.close()
    w.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        w.append(1, 0.0, row(1))
    with h5py.File(w.path) as f:  # an unfinished (closed) scan keeps its frames, has no end_time
        assert f["entry/results/frame_id"].shape == (1,) and "end_time" not in f["entry"]
    assert read_scan_info(w.path)["complete"] is False


def test_flush_is_bounded_by_frames_and_interval(tmp_path):
    w = new_writer(tmp_path / "f.h5", flush_frames=10, flush_interval=None)
    for i in range(25):
        w.append(i, 0.0, row(i))
    assert (w.frames, w.frames_written) == (25, 20)
    w.close()

    w = new_writer(tmp_path / "t.h5", flush_frames=10**6, flush_interval=0.1)
    for i in range(5):
        w.append(i, 0.0, row(i))
    deadline = time.monotonic() + 5
    while w.frames_written < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.frames_written == 5  # the timer flushed an idle writer
    w.close()


# ---- memory per frame ------------------------------------------------------------------------

MEMORY = r'''
import json, os, sys
import numpy as np
from tango_dqm.plugin import Result
from tango_dqm.storage import ScanWriter

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

decl = [Result(f"r{i}", float) for i in range(16)] + [Result("count", int)]
decl += [Result(f"spec{i}", float, kind="spectrum") for i in range(2)] + [Result("img", np.float32, kind="image")]
row = {f"r{i}": float(i) for i in range(16)}
row.update(count=3, spec0=np.arange(64.0), spec1=np.arange(48.0))
w = ScanWriter(sys.argv[1], "mem", decl, {}, flush_interval=None, flush_frames=int(sys.argv[3]))
for i in range(2000):  # warm-up: buffers, first chunks, imports done
    w.append(i, 0.0, dict(row, img=np.zeros((32, 32), np.float32)), 0)
w.flush()
base = rss()
for i in range(2000, int(sys.argv[2])):
    w.append(i, 0.0, dict(row, img=np.zeros((32, 32), np.float32)) if i % 100 == 0 else row, 0)
w.flush()
out = {"growth": rss() - base, "mdc": w._file.id.get_mdc_size()[2], "mdc_max": w._file.id.get_mdc_config().max_size,
       "chunk_cache": [w._file[f"entry/results/{n}"].id.get_access_plist().get_chunk_cache()[1]
                       for n in ("frame_id", "r0", "spec0", "img")], "frames": w.frames_written}
w.close()
print(json.dumps(out), flush=True)
'''


def test_writer_memory_does_not_grow_per_frame(tmp_path):
    """20k frames of per-frame results (17 scalars, 2 spectra, an image) in a fresh process.

    HDF5 2.0 gives every dataset an 8 MiB chunk cache that written chunks fill and keep, so
    before the fix this grew by ~20 MB here (and by tens of MB per minute in a fast Live run,
    up to 8 MiB times the number of datasets); the metadata cache could reach 32 MiB.
    """
    from tango_dqm.storage import CHUNK_CACHE_BYTES, METADATA_CACHE_BYTES

    script = tmp_path / "memory.py"
    script.write_text(MEMORY)
    frames = 20_000
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "mem.h5"), str(frames), "256"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["frames"] == frames
    assert out["growth"] < 6e6, out  # the old code grew by ~20 MB
    assert out["mdc_max"] <= METADATA_CACHE_BYTES and out["mdc"] <= METADATA_CACHE_BYTES, out
    assert all(0 < c <= CHUNK_CACHE_BYTES for c in out["chunk_cache"]), out
    with h5py.File(tmp_path / "mem.h5", "r") as f:  # and the file is complete
        res = f["entry/results"]
        assert res["frame_id"].shape == (frames,) and res["frame_id"][-1] == frames - 1
        assert res["spec0"].shape == (frames, 64) and res["spec0"][-1, 63] == 63.0
        assert res["spec1"].shape == (frames, 48) and res["spec1_length"][-1] == 48
        assert res["img"].shape == (32, 32) and res["img_frame_id"][()] == frames - 100


# ---- a reader in another process (SWMR) ------------------------------------------------------

READER = r'''
import json, sys, time
import h5py
path, target = sys.argv[1], int(sys.argv[2])
f = h5py.File(path, "r", swmr=True)
fid, r3 = f["entry/results/frame_id"], f["entry/results/r3"]
print("ready", flush=True)
seen = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    fid.refresh(); r3.refresh()
    n = min(fid.shape[0], r3.shape[0])
    if not seen or n != seen[-1]:
        seen.append(n)
        ok = fid[:n].tolist() == list(range(n)) and r3[:n].tolist() == [3.0 * i + 0.5 for i in range(n)]
        print(json.dumps({"frames": n, "consistent": ok}), flush=True)
    if n >= target:
        break
    time.sleep(0.005)
f.close()
'''


def test_swmr_reader_process_sees_frames_grow(tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(READER)
    w = new_writer(tmp_path / "live.h5", flush_frames=10**6, flush_interval=None)
    batches, per_batch = 5, 40
    proc = spawn(script, str(w.path), str(batches * per_batch))
    lines = Lines(proc)
    try:
        assert lines.next() == "ready"
        assert json.loads(lines.next()) == {"frames": 0, "consistent": True}
        for b in range(batches):
            for i in range(b * per_batch, (b + 1) * per_batch):
                w.append(i, time.time(), row(i))
            w.flush()
            msg = json.loads(lines.next())  # the reader saw this block, while the scan runs
            assert msg == {"frames": (b + 1) * per_batch, "consistent": True}
        w.finish({"run_r3_mean": 1.0}, Counters(total=200, completed=200), "OK")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        w.close()
    with h5py.File(w.path) as f:
        assert f["entry/results/frame_id"].shape == (batches * per_batch,)
        assert f["entry/summary/verdict"][()] == b"OK"


HOLDER = r'''
import sys, h5py
f = h5py.File(sys.argv[1], "r", swmr=True)
print("open", flush=True)
sys.stdin.readline()
f.close()
'''


def test_finish_and_mark_while_a_swmr_reader_holds_the_file(tmp_path):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    w = new_writer(tmp_path / "held.h5")
    for i in range(10):
        w.append(i, 0.0, row(i))
    proc = spawn(script, str(w.path))
    try:
        assert Lines(proc).next() == "open"
        w.finish({"x": 1.0}, None, "OK")  # reopening for the summary must not fail on the reader's lock
        new = mark_scan(tmp_path, w.path, "archived", "good while watched")
    finally:
        proc.communicate("\n", timeout=30)
    with h5py.File(new) as f:
        assert f["entry/summary/x"][()] == 1.0 and f["entry"].attrs["dqm_mark"] == "archived"


# ---- SIGKILL ------------------------------------------------------------------------------

WRITER = r'''
import sys, time
import numpy as np
from tango_dqm.plugin import Result
from tango_dqm.storage import ScanWriter
path, mode = sys.argv[1], sys.argv[2]
decl = [Result(f"r{i}", float) for i in range(14)] + [Result("count", int),
        Result("spec", float, kind="spectrum")]
prov = {"parameters": {"gain": 2.0, "roi_signal": [1, 2, 3, 4]}, "sources": ["sim://?frames=1000"]}
if mode == "blocks":   # flushes every 50 frames, 30 frames left in memory
    w = ScanWriter(path, "killed", decl, prov, flush_interval=None, flush_frames=50)
    n = 230
else:                  # the timer flushes an idle writer within flush_interval
    w = ScanWriter(path, "killed", decl, prov, flush_interval=0.2, flush_frames=10**6)
    n = 37
for i in range(n):
    r = {f"r{k}": float(i * k) for k in range(14)}
    r.update(count=i, spec=np.arange(5) + i)
    w.append(i, 1.7e9 + i, r)
if mode == "timer":
    time.sleep(1.0)
print(f"{w.frames} {w.frames_written}", flush=True)
time.sleep(120)
'''


@pytest.mark.parametrize("mode, appended, flushed", [("blocks", 230, 200), ("timer", 37, 37)])
def test_sigkill_mid_scan_leaves_a_readable_file(tmp_path, mode, appended, flushed):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "killed.h5"
    proc = spawn(script, str(path), mode)
    try:
        assert Lines(proc).next() == f"{appended} {flushed}"
        # while the writer process lives, its file is neither recovered nor marked
        assert writer_alive(path) and read_scan_info(path)["running"]
        with pytest.raises(StorageError, match="still being written"):
            recover_scan_file(path)
        with pytest.raises(StorageError, match="still being written"):
            mark_scan(tmp_path, path, "flagged", "too early")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not writer_alive(path)

    def check(f: h5py.File) -> None:
        res = f["entry/results"]
        assert res["frame_id"].shape == (flushed,)  # every frame up to the last flush
        assert res["frame_id"][:].tolist() == list(range(flushed))
        np.testing.assert_array_equal(res["r7"][:], 7.0 * np.arange(flushed))
        assert res["spec"].shape == (flushed, 5) and res["spec"][-1].tolist() == list(range(flushed - 1, flushed + 4))
        assert f["entry/provenance/parameters/gain"][()] == 2.0
        assert "end_time" not in f["entry"]

    with h5py.File(path, "r", swmr=True) as f:  # h5py opens it as it is
        check(f)
    with open_scan(path) as f:
        check(f)
    info = read_scan_info(path)
    assert (info["frames"], info["complete"], info["running"], info["error"]) == (flushed, False, False, "")

    assert recover_scan_file(path) is True  # now any HDF5 reader opens it without SWMR
    with h5py.File(path, "r") as f:
        check(f)
        assert f["entry"].attrs["dqm_recovered"]
    assert recover_scan_file(path) is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.h5", "writer.py"]  # no lock file left


def test_mark_recovers_a_killed_writers_file(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "killed.h5"
    proc = spawn(script, str(path), "blocks")
    try:
        Lines(proc).next()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    new = mark_scan(tmp_path, path, "flagged", "writer crashed")
    with h5py.File(new) as f:
        assert f["entry"].attrs["dqm_mark"] == "flagged" and f["entry/results/frame_id"].shape == (200,)


# ---- paths and marks ---------------------------------------------------------------------


def test_confined_path(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert confined_path(root, "a.h5") == root.resolve() / "a.h5"
    assert confined_path(root, "sub/x/../b.h5") == root.resolve() / "sub" / "b.h5"
    assert confined_path(str(root), root / "c.h5") == root.resolve() / "c.h5"
    for bad in ("../escape.h5", str(tmp_path / "other.h5"), "/etc/passwd", ".", "sub/../.."):
        with pytest.raises(ValueError, match="outside the output directory"):
            confined_path(root, bad)
    (root / "link").symlink_to(tmp_path)  # a symlink pointing out of root is resolved and refused
    with pytest.raises(ValueError, match="outside"):
        confined_path(root, "link/x.h5")
    with pytest.raises(ValueError):
        confined_path(root, "")
    with pytest.raises(ValueError, match="outside"):
        ScanWriter("../x.h5", "x", [Result("x", float)], {}, root=root)
    w = ScanWriter("inside.h5", "x", [Result("x", float)], {}, root=root)
    assert w.path == root.resolve() / "inside.h5"
    w.close()
    assert safe_name("../a b/c") == "_a_b_c" and safe_name("scan_1.2") == "scan_1.2"


def finished_scan(root: Path, scan_id: str, verdict: str = "OK", frames: int = 5) -> Path:
    w = new_writer(root / f"{scan_id}.h5", scan_id)
    for i in range(frames):
        w.append(i, 0.0, row(i))
    return w.finish({}, Counters(total=frames, completed=frames), verdict)


def test_mark_scan_moves_file_and_report_and_logs(tmp_path):
    root = tmp_path
    h5 = finished_scan(root, "scan_a")
    (root / "scan_a.html").write_text("<html></html>")
    (root / "scan_a_plots").mkdir()
    (root / "scan_a_plots" / "trend.png").write_bytes(b"png")

    new = mark_scan(root, "scan_a.h5", "flagged", "beam lost at frame 3", user="tester")
    assert new == root.resolve() / "flagged" / "scan_a.h5" and new.is_file() and not h5.exists()
    assert (root / "flagged" / "scan_a.html").is_file() and (root / "flagged" / "scan_a_plots" / "trend.png").is_file()
    assert not (root / "scan_a.html").exists()
    with h5py.File(new) as f:
        a = f["entry"].attrs
        assert (a["dqm_mark"], a["dqm_mark_reason"]) == ("flagged", "beam lost at frame 3") and a["dqm_mark_time"]
    info = read_scan_info(new)
    assert (info["mark"], info["mark_reason"]) == ("flagged", "beam lost at frame 3")

    # the operator changes their mind: archive it; the log keeps both lines
    newer = mark_scan(root, new, "archived", "beam was fine after all\nsecond line", user="tester")
    assert newer == root.resolve() / "archive" / "scan_a.h5" and (root / "archive" / "scan_a.html").is_file()
    lines = (root / "marks.log").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["mark"] == "flagged" and first["scan_id"] == "scan_a" and first["reason"] == "beam lost at frame 3"
    assert first["from"] == "scan_a.h5" and first["to"] == "flagged/scan_a.h5" and first["user"] == "tester"
    assert second["to"] == "archive/scan_a.h5" and second["reason"].endswith("second line")
    assert read_marks_log(root) == [first, second]
    assert [p.relative_to(root.resolve()).as_posix() for p in scan_files(root.resolve())] == ["archive/scan_a.h5"]


def test_mark_scan_refusals(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    outside = finished_scan(tmp_path, "outside")
    with pytest.raises(ValueError, match="outside"):
        mark_scan(root, outside, "flagged", "x")
    with pytest.raises(ValueError, match="outside"):
        mark_scan(root, "../outside.h5", "flagged", "x")
    (root / "sneaky.h5").symlink_to(outside)
    with pytest.raises(ValueError, match="outside"):
        mark_scan(root, "sneaky.h5", "flagged", "x")
    inside = finished_scan(root, "inside")
    with pytest.raises(ValueError, match="mark must be"):
        mark_scan(root, inside, "deleted", "x")
    with pytest.raises(FileNotFoundError):
        mark_scan(root, "nope.h5", "flagged", "x")
    (root / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a scan results file"):
        mark_scan(root, "notes.txt", "flagged", "x")
    # a flagged/ that is a symlink out of root is refused too
    evil = tmp_path / "evil"
    evil.mkdir()
    (root / "flagged").symlink_to(evil)
    with pytest.raises(ValueError, match="outside"):
        mark_scan(root, inside, "flagged", "x")
    (root / "flagged").unlink()
    # a name already taken in the target directory is not overwritten
    (root / "archive").mkdir()
    (root / "archive" / "inside.h5").write_bytes(b"other")
    with pytest.raises(FileExistsError):
        mark_scan(root, inside, "archived", "x")
    # a scan still being written is refused
    running = new_writer(root / "running.h5", "running")
    running.append(0, 0.0, row(0))
    running.flush()
    try:
        with pytest.raises(StorageError, match="still being written"):
            mark_scan(root, "running.h5", "flagged", "x")
    finally:
        running.close()
    assert (root / "running.h5").is_file() and outside.is_file() and inside.is_file()
    assert not (root / "marks.log").exists()  # nothing was marked


def test_a_reader_in_the_writers_process_never_blocks_finish_or_marks(tmp_path):
    """The run list and the report read results files in the process that writes and marks them:
    a reader holding the file open while the scan finishes, or while it is flagged, must not make
    the writer's re-open for writing fail ("already open for read-only")."""
    decl = {"a": ("roi", Result("a", float))}
    w = ScanWriter(tmp_path / "r.h5", "r", decl, {})
    for i in range(5):
        w.append(i, 0.0, {"a": float(i)})
    w.flush()
    with open_scan(w.path) as reader:  # the file is being written
        assert reader["entry/results/frame_id"].shape[0] in (0, 5)
        path = w.finish({}, None, "OK")
    with open_scan(path) as reader:  # a finished file, read while it is marked
        assert reader["entry/results/a"][...].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        moved = mark_scan(tmp_path, path, "flagged", "test")
    with open_scan(moved) as f:
        assert f["entry/results/a"].shape == (5,)
