"""DataQualityReducer over two DataQualityMonitor workers in real device server processes."""
from __future__ import annotations

import contextlib
import json
import time

import pytest
import tango
from tango.test_context import DeviceTestContext

from tango_dqm.devices.controlsystem import ControlSystem
from tango_dqm.devices.monitor import DataQualityMonitor
from tango_dqm.devices.reducer import DataQualityReducer
from tango_dqm.engine import Engine, EngineConfig, EngineState
from tests.helpers import add_device, free_port
from tests.scaleout_helpers import assert_same_values, wait_state

pytestmark = pytest.mark.timeout(180)

SIM = "sim://?frames=200&shape=64x80&seed=4"
SIG, BKG = [30, 15, 10, 10], [0, 20, 40, 20]


def wait_for(proxy, state, timeout=60.0):
    deadline = time.monotonic() + timeout
    while proxy.state() != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"state {proxy.state()} after {timeout}s; status: {proxy.status()}")
        time.sleep(0.02)


@contextlib.contextmanager
def scaleout_context(tmp_path, endpoint):
    """Two workers and a reducer, each in a server of its own on the embedded database, started
    by executable name as Starter runs them (several forked test contexts in one test process,
    or three devices in one, hung or were refused at startup under load)."""
    workers = {f"test/worker/{k}": {"Sources": [f"{SIM}&partition={k}/2"], "Analyses": ["roi"],
                                    "Reducer": [endpoint], "AnalysisThreads": ["1"]} for k in range(2)}
    reducer = {"Workers": list(workers), "Endpoint": [endpoint], "Analyses": ["roi"],
               "OutputDirectory": [str(tmp_path / "reducer")]}
    with ControlSystem(tmp_path / "cs") as cs:
        db = tango.Database("127.0.0.1", cs.port)
        devices = [(f"worker{k}", "DataQualityMonitor", name, props) for k, (name, props) in enumerate(workers.items())]
        devices.append(("reducer", "DataQualityReducer", "test/reducer/1", reducer))
        for instance, cls, name, props in devices:
            add_device(db, f"{cls}/{instance}", cls, name, props)
        for instance, cls, name, _ in devices:
            cs.start_server(cls, instance, [name])
            cs.proxy(name).set_timeout_millis(15000)  # two cores, three servers: calls may take seconds
        yield cs.proxy


def test_reducer_device_drives_its_workers_and_equals_one_monitor(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with scaleout_context(tmp_path, endpoint) as proxy:
        r = proxy("test/reducer/1")
        w0, w1 = (proxy(f"test/worker/{k}") for k in range(2))
        assert r.state() == tango.DevState.ON, r.status()
        assert "reducer of 2 workers" in r.status() and r.reducerEndpoint == endpoint
        # parameters written on the reducer reach every worker (checked here first)
        r.roi_signal, r.roi_background = SIG, BKG
        assert list(w0.roi_signal) == SIG and list(w1.roi_background) == BKG
        with pytest.raises(tango.DevFailed, match="offset"):
            r.roi_signal = [-1, 5, 0, 5]
        assert list(r.roi_signal) == SIG and list(w1.roi_signal) == SIG
        events: list = []
        sub = r.subscribe_event("signal_sum", tango.EventType.CHANGE_EVENT, events.append)
        archive: list = []
        sub_a = r.subscribe_event("signal_sum", tango.EventType.ARCHIVE_EVENT, archive.append)
        scan_id = r.Start()
        assert w0.state() in (tango.DevState.RUNNING, tango.DevState.CLOSE)
        wait_for(r, tango.DevState.CLOSE)
        assert (r.totalEvents, r.completedEvents, r.droppedEvents, r.badEvents) == (200, 200, 0, 0), r.status()
        assert (w0.completedEvents, w1.completedEvents, w0.droppedEvents) == (100, 100, 0)
        assert r.scanId == scan_id and r.outputFile.endswith(".h5")
        states = json.loads(r.workerStates)
        assert [(s["state"], s["frames"]) for s in states] == [("CLOSE", 100), ("CLOSE", 100)]
        # the same run in one engine, here
        one = Engine(EngineConfig([SIM], ["roi"]))
        try:
            one.set_parameter("roi_signal", SIG)
            one.set_parameter("roi_background", BKG)
            one.start()
            wait_state(one, EngineState.CLOSE)
            want = one.snapshot()
        finally:
            one.close()
        assert_same_values(json.loads(r.runSummary), json.loads(json.dumps(want.summary)))
        assert r.signal_sum == pytest.approx(want.results["signal_sum"], rel=1e-12)
        assert r.verdict == int(want.quality.verdict)
        assert any(e.attr_value is not None and e.attr_value.value == pytest.approx(want.results["signal_sum"])
                   for e in events if not e.err)
        assert any(not e.err and e.attr_value is not None for e in archive[1:])
        r.unsubscribe_event(sub)
        r.unsubscribe_event(sub_a)
        # Reset and Archive go to the workers too
        path = r.Archive()
        assert "/archive/" in path
        r.Reset()
        assert r.state() == tango.DevState.ON and r.completedEvents == 0
        wait_for(w0, tango.DevState.ON)  # the workers are reset in the background: Reset returns at once
        wait_for(w1, tango.DevState.ON)
        # Stop ends the scan on every worker
        r.Live()
        wait_for(w1, tango.DevState.RUNNING)
        r.Stop()
        wait_for(r, tango.DevState.CLOSE)
        assert w0.state() == tango.DevState.CLOSE and w1.state() == tango.DevState.CLOSE
        assert r.completedEvents == w0.completedEvents + w1.completedEvents


def test_a_worker_without_its_reducer_is_a_clear_fault():
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # no reducer there
    with DeviceTestContext(DataQualityMonitor, properties={"Sources": [SIM], "Reducer": endpoint}, process=True,
                           host="127.0.0.1", timeout=60) as p:
        assert p.state() == tango.DevState.ON
        with pytest.raises(tango.DevFailed, match="cannot reach the reducer"):
            p.Start()
        assert p.state() == tango.DevState.FAULT
        assert f"cannot reach the reducer at {endpoint}" in p.status()
        assert "Start the DataQualityReducer server (Astor) or fix the Reducer property" in p.status()


@pytest.mark.parametrize("props, rule", [
    ({"Sources": [SIM], "Reducer": "localhost:5600"}, "Reducer must be the reducer's endpoint tcp://host:port"),
])
def test_bad_scaleout_properties_are_a_fault_at_init(props, rule):
    with DeviceTestContext(DataQualityMonitor, properties=props, process=True, host="127.0.0.1", timeout=60) as p:
        assert p.state() == tango.DevState.FAULT
        assert rule in p.status() and "run Init" in p.status()


def test_a_reducer_without_workers_is_a_fault_at_init():
    with DeviceTestContext(DataQualityReducer, properties={"Analyses": ["roi"]}, process=True, host="127.0.0.1",
                           timeout=60) as p:
        assert p.state() == tango.DevState.FAULT
        assert "no workers: set the Workers property" in p.status()
