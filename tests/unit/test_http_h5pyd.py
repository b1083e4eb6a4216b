"""The real h5pyd client reads a live scan through ResultsHttpServer (real uvicorn on 127.0.0.1)."""
from __future__ import annotations

import logging
import time

import h5py
import h5pyd
import numpy as np
import pytest

from tango_dqm.engine import Engine, EngineConfig, EngineState
from tango_dqm.http import ResultsHttpServer
from tests.helpers import frames_for_test

SIG = [30, 15, 10, 10]
BKG = [0, 10, 40, 10]


@pytest.fixture(autouse=True)
def keep_root_log_level():
    """h5pyd.File sets the root logger to ERROR; later tests (caplog) need it back."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def open_remote(url: str, domain: str = "/") -> h5pyd.File:
    # endpoint/username given explicitly so that no ~/.hscfg is consulted; retries as h5pyd does on 503
    return h5pyd.File(domain, "r", endpoint=url.rstrip("/"), username="none", password="none", retries=3,
                      timeout=10)


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def remote_frames(url: str) -> int:
    with open_remote(url) as f:
        return int(f["entry/results/frame_id"].shape[0])


def _same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "O" or b.dtype.kind == "O" or a.dtype.kind in "SU":
        return [x.decode() if isinstance(x, bytes) else x for x in a.ravel().tolist()] == \
               [x.decode() if isinstance(x, bytes) else x for x in b.ravel().tolist()]
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


@pytest.fixture
def live_scan(tmp_path, stins_sender, stins_port):
    engine = Engine(EngineConfig([f"det=zmq://127.0.0.1:{stins_port}"], analyses=["roi", "pixels"],
                                 output_directory=str(tmp_path)))
    engine.set_parameter("roi_signal", SIG)
    engine.set_parameter("roi_background", BKG)
    server = ResultsHttpServer("127.0.0.1", 0, tmp_path, lambda: engine.products.current)
    server.start()
    yield engine, server, stins_sender
    server.close()
    engine.close()


def test_h5pyd_reads_growing_scan_then_equal_to_h5py(live_scan):
    engine, server, sender = live_scan
    frames = frames_for_test(12)
    engine.start()
    sender.header(series="7")
    for i in range(5):
        sender.image(i, frames[i])
    assert wait_for(lambda: remote_frames(server.url) >= 5, what="5 frames over HTTP") == 1

    with open_remote(server.url) as f:  # during the scan: a per-frame result and its frame ids
        n = f["entry/results/frame_id"].shape[0]
        assert f["entry/results/frame_id"][:n].tolist() == list(range(n))
        signal = f["entry/results/signal_sum"]
        assert signal.dtype == np.float64 and signal.maxshape == (None,)
        assert signal[0] == pytest.approx(float(frames[0][10:20, 30:45].sum()))
        assert signal.attrs["units"] == "counts"
        assert f["entry"].attrs["NX_class"] == "NXentry"
        first = n
    for i in range(5, 12):
        sender.image(i, frames[i])
    # re-opening shows the frames written since
    assert wait_for(lambda: remote_frames(server.url) >= 12, what="12 frames over HTTP")
    assert first < 12
    sender.series_end()
    wait_for(lambda: engine.state is EngineState.CLOSE, what="CLOSE")
    path = engine.output_file
    wait_for(lambda: _complete(path), what="summary written")

    with open_remote(server.url) as f, h5py.File(path, "r") as h:
        pixel_map = f["entry/summary/pixels_map"][...]  # a run-summary map
        assert pixel_map.shape == frames[0].shape and pixel_map.dtype == np.uint8
        assert np.array_equal(pixel_map, h["entry/summary/pixels_map"][...])
        names: list[str] = []
        h.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert len(names) > 50
        for name in names:  # every dataset of the file, value and attributes, equal to h5py's
            remote = f[name]
            assert remote.shape == h[name].shape, name
            assert _same(remote[()], h[name][()]), name
            for key, value in h[name].attrs.items():
                assert _same(remote.attrs[key], value), (name, key)
        rows = f["entry/results/signal_sum"][2:7]  # a slice, as h5py gives it
        assert np.array_equal(rows, h["entry/results/signal_sum"][2:7])
        spectrum = f["entry/results/frame_id"][[1, 4, 9]]  # a list (points) selection: POST
        assert spectrum.tolist() == [1, 4, 9]


def _complete(path: str) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return bool(f["entry"].attrs.get("dqm_complete", False))
    except OSError:
        return False


def test_h5pyd_opens_a_finished_file_by_name_and_errors_are_clean(tmp_path):
    path = tmp_path / "scan_1.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/big", data=np.arange(300_000, dtype=np.float64))  # 2.4 MB
        f["entry/big"].attrs["units"] = "counts"
        f.create_dataset("entry/title", data="scan 1", dtype=h5py.string_dtype())
        f["entry/soft"] = h5py.SoftLink("/entry/big")
    with ResultsHttpServer("127.0.0.1", 0, tmp_path, lambda: None, max_bytes=1 << 20) as server:
        with open_remote(server.url, "/scan_1.h5") as f:
            assert f["entry/title"][()] in (b"scan 1", "scan 1")
            assert f["entry/big"][10:20].tolist() == list(range(10, 20))
            assert f["entry/soft"][0:3].tolist() == [0.0, 1.0, 2.0]  # soft link, resolved by path
            with pytest.raises(IOError) as exc:
                f["entry/big"][...]  # 2.4 MB > the 1 MiB limit
            assert "413" in str(exc.value)
        with pytest.raises(FileNotFoundError):  # no current scan
            open_remote(server.url)
        with pytest.raises(FileNotFoundError):
            open_remote(server.url, "/nothing.h5")
