"""Init 50 times, alternating between analysis sets with different attributes, with and without a
subscribed client, some during a scan, on a loaded machine; the server must never crash."""
from __future__ import annotations

import json
import time

import pytest
import tango

from tango_dqm.devices.controlsystem import ControlSystem
from tests.e2e.test_controlsystem import young_host_clock

pytestmark = pytest.mark.timeout(240)
DEV = "stress/dqm/init"
SMALL = ["roi"]
LARGE = ["roi", "profile", "pixels", "histogram"]
ONLY_LARGE = {"profile_centroid_x", "pixels_hot", "hist_counts"}


def wait_state(dev, states, timeout=30.0):
    deadline = time.monotonic() + timeout
    while dev.state() not in states:
        assert time.monotonic() < deadline, dev.status()
        time.sleep(0.02)


class Events:
    """A client's change-event callback: counts values and errors per attribute."""

    def __init__(self):
        self.values: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    def push_event(self, event):
        name = event.attr_name.rsplit("/", 1)[-1].lower()
        bucket = self.errors if event.err else self.values
        bucket[name] = bucket.get(name, 0) + 1


def test_init_50_times_alternating_attribute_sets(tmp_path, cpu_burners):
    config = {"servers": {"DataQualityMonitor": {"stress": {"DataQualityMonitor": {DEV: {"properties": {
        "Sources": ["sim://?frames=100000&shape=64x64&rate=300"], "Analyses": SMALL}}}}}}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    with ControlSystem(tmp_path / "cs") as cs:
        cs.apply_config(tmp_path / "c.json")
        # as if the host had just booted: the condition of the Init crash (see the e2e test)
        proc = cs.start_server("DataQualityMonitor", "stress", [DEV], wrapper=young_host_clock())
        dev = cs.proxy(DEV)
        db = tango.Database()
        events = Events()
        subscriptions: list[int] = []
        for i in range(50):
            analyses = LARGE if i % 2 == 0 else SMALL
            subscribed = (i // 10) % 2 == 1  # Inits 10-19 and 30-39 with a client subscribed
            if subscribed and not subscriptions:
                subscriptions = [dev.subscribe_event(a, tango.EventType.CHANGE_EVENT, events)
                                 for a in ("State", "Status", "completedEvents", "signal_sum")]
            if not subscribed and subscriptions:
                for sid in subscriptions:
                    dev.unsubscribe_event(sid)
                subscriptions = []
            during_scan = i % 3 == 0
            if during_scan:
                dev.Start()
                deadline = time.monotonic() + 20
                while dev.completedEvents < 5:
                    assert time.monotonic() < deadline, dev.status()
                    time.sleep(0.02)
            db.put_device_property(DEV, {"Analyses": analyses})
            dev.Init()
            assert proc.poll() is None, f"server died at Init {i}"
            assert dev.state() == tango.DevState.ON, (i, dev.status())
            assert "ready" in dev.status()
            names = set(dev.get_attribute_list())
            assert "roi_signal" in names
            assert (names >= ONLY_LARGE) if analyses is LARGE else not (ONLY_LARGE & names), (i, names)
        for sid in subscriptions:
            dev.unsubscribe_event(sid)
        assert events.values.get("state", 0) >= 1 and events.values.get("status", 0) >= 1, events.values
        # the device still works after the storm
        db.put_device_property(DEV, {"Sources": ["sim://?frames=30&shape=64x64"]})
        dev.Init()
        dev.Start()
        wait_state(dev, {tango.DevState.CLOSE})
        assert (dev.completedEvents, dev.droppedEvents, dev.badEvents) == (30, 0, 0)
        assert proc.poll() is None
