"""HttpPort/HttpHost: the monitor's read-only HTTP access, read with the real h5pyd client."""
from __future__ import annotations

import http.client
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
import tango
from tango_dqm.devices.client import MonitorClient

from tests.helpers import StinsSender, frames_for_test, free_port
from tests.tango.test_monitor import context, wait_for
from tests.unit.test_engine import BKG, SIG
from tests.unit.test_http_h5pyd import _complete, _same, keep_root_log_level, open_remote, remote_frames
from tests.unit.test_http_h5pyd import wait_for as wait_until

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures(keep_root_log_level.__name__)]


def status_of(port: int, method: str, target: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, target, body=b"{}")
        return conn.getresponse().status
    finally:
        conn.close()


def test_h5pyd_reads_the_monitor_during_and_after_a_scan(tmp_path):
    port, stins = free_port(), free_port()
    sender = StinsSender(stins)
    out = tmp_path / "out"
    frames = frames_for_test(12)
    try:
        with context([f"det=zmq://127.0.0.1:{stins}"], analyses=("roi", "pixels"), OutputDirectory=str(out),
                     HttpPort=port) as p:
            url = f"http://127.0.0.1:{port}/"
            assert p.httpUrl == url
            assert MonitorClient(p).http_url() == url
            p.roi_signal = SIG
            p.roi_background = BKG
            p.Start()
            sender.header(series="1")
            for i in range(5):
                sender.image(i, frames[i])
            wait_until(lambda: remote_frames(url) >= 5, what="5 frames over HTTP")
            assert p.state() == tango.DevState.RUNNING
            with open_remote(url) as f:
                n = f["entry/results/frame_id"].shape[0]
                assert f["entry/results/signal_sum"][:n].tolist() == \
                    [float(fr[10:20, 30:45].sum()) for fr in frames[:n]]
            for i in range(5, 12):
                sender.image(i, frames[i])
            wait_until(lambda: remote_frames(url) == 12, what="12 frames over HTTP")  # re-opened: more frames
            sender.series_end()
            wait_for(p, tango.DevState.CLOSE)
            path = p.outputFile
            wait_until(lambda: _complete(path), what="summary written")
            with open_remote(url) as f, h5py.File(path, "r") as h:
                assert np.array_equal(f["entry/summary/pixels_map"][...], h["entry/summary/pixels_map"][...])
                for name in ("entry/results/frame_id", "entry/results/signal_sum", "entry/results/verdict",
                             "entry/summary/pixels_mean_map", "entry/summary/verdict", "entry/title"):
                    assert _same(f[name][()], h[name][()]), name
            # read-only, and the run pages are there once the report worker wrote them
            assert status_of(port, "PUT", "/?domain=/") == 405
            assert status_of(port, "DELETE", "/runs/index.html") == 405
            wait_until(lambda: status_of(port, "GET", "/runs/") == 200, what="run list")
            assert status_of(port, "GET", "/runs/../../etc/passwd") in (403, 404)
            # Init restarts it on the same port
            p.Init()
            assert p.httpUrl == url and p.state() == tango.DevState.ON
            with pytest.raises(FileNotFoundError):  # no scan since Init: nothing current
                open_remote(url)
            with open_remote(url, "/" + Path(path).name) as f:  # the last scan, by name
                assert f["entry/results/frame_id"].shape == (12,)
    finally:
        sender.close()
    # delete_device stopped it: the port is free again
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_http_port_taken_or_off_keeps_the_device_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with context(["sim://?frames=5&shape=16x16"], OutputDirectory=str(tmp_path), HttpPort=port) as p:
            assert p.state() == tango.DevState.ON
            assert f"HTTP access off: cannot listen on 127.0.0.1:{port}" in p.status()
            assert p.httpUrl == ""
            p.Start()
            wait_for(p, tango.DevState.CLOSE)  # the analysis is not affected
    with context(["sim://?frames=5&shape=16x16"], HttpPort=-3) as p:
        assert p.state() == tango.DevState.ON and p.httpUrl == "" and "HTTP" not in p.status()
    with context(["sim://?frames=5&shape=16x16"], HttpPort=70000) as p:
        assert p.state() == tango.DevState.ON and "0..65535" in p.status()
