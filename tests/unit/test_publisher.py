"""The publisher: every frame's results at low rates, the latest one when frames come faster
than the listener (or results_interval) takes them, state changes in order and never held up."""
from __future__ import annotations

import threading

from tango_dqm.publisher import Publisher


class Recorder:
    def __init__(self, block_first: bool = False):
        self.items: list[tuple] = []
        self.delivered = threading.Condition()
        self.release = threading.Event()
        self.entered = threading.Event()  # a delivery of results began
        if not block_first:
            self.release.set()

    def on_state(self, state, status):
        with self.delivered:
            self.items.append(("state", state))
            self.delivered.notify_all()

    def on_results(self, results, frame_id):
        self.entered.set()
        self.release.wait(30)
        with self.delivered:
            self.items.append(("results", frame_id))
            self.delivered.notify_all()

    def on_tick(self):
        pass

    def wait_for(self, item, timeout=30.0):
        with self.delivered:
            assert self.delivered.wait_for(lambda: item in self.items, timeout), self.items


def test_every_result_delivered_when_each_is_taken_before_the_next():
    rec = Recorder()
    pub = Publisher(rec, set())
    try:
        for i in range(20):
            pub.results({"x": i}, i)
            rec.wait_for(("results", i))
        assert [fid for kind, fid in rec.items if kind == "results"] == list(range(20))
    finally:
        pub.close()


def test_results_coalesce_while_the_listener_is_busy():
    rec = Recorder(block_first=True)
    pub = Publisher(rec, set(), results_interval=0.0)
    try:
        pub.results({"x": 0}, 0)
        assert rec.entered.wait(30)
        for i in range(1, 100):  # the listener is still in frame 0's delivery
            pub.results({"x": i}, i)
        rec.release.set()
        rec.wait_for(("results", 99))
        assert pub.flush()
        assert [fid for kind, fid in rec.items if kind == "results"] == [0, 99]  # the latest, once
    finally:
        pub.close()


def test_results_coalesce_for_the_interval_and_a_state_change_ends_the_pause():
    rec = Recorder()
    pub = Publisher(rec, set(), results_interval=3600.0)  # after a delivery, results wait (for ever)
    try:
        pub.results({"x": 0}, 0)
        rec.wait_for(("results", 0))
        for i in range(1, 50):
            pub.results({"x": i}, i)
        pub.state("CLOSE", "done")  # never held up by the pause, nor reordered before the results
        rec.wait_for(("state", "CLOSE"))
        assert rec.items == [("results", 0), ("results", 49), ("state", "CLOSE")]
    finally:
        pub.close()
