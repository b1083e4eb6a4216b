"""OrderedPool: outputs in submission order whatever the finishing order, bounded, exceptions in place."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tango_dqm.pipeline import OrderedPool, PipelineClosed, default_threads


def _pool_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def test_outputs_come_back_in_submission_order_when_jobs_finish_out_of_order():
    gates = [threading.Event() for _ in range(4)]
    started = threading.Semaphore(0)

    def job(i):
        started.release()
        gates[i].wait(5)
        return i * 10

    pool = OrderedPool(4, max_in_flight=6, name="t-order")
    for i in range(4):
        pool.submit(("frame", i), job, i)
    pool.submit(("marker", 4))  # an item without a job keeps its place
    for _ in range(4):
        assert started.acquire(timeout=5)  # all four run at once
    for i in (3, 2, 1):
        gates[i].set()
    with pytest.raises(TimeoutError):
        pool.next(timeout=0.05)  # the oldest is still running: nothing jumps the queue
    gates[0].set()
    assert [pool.next(5) for _ in range(5)] == [(("frame", i), i * 10, None) for i in range(4)] + [
        (("marker", 4), None, None)]
    with pytest.raises(IndexError):
        pool.next()
    assert pool.close()


def test_exception_is_returned_in_its_place():
    def job(i):
        if i == 2:
            raise ValueError(f"bad {i}")
        return i

    pool = OrderedPool(2, name="t-exc")
    out = []
    for i in range(5):
        while not pool.has_room():
            out.append(pool.next(5))
        pool.submit(i, job, i)
    while len(pool):
        out.append(pool.next(5))
    assert [tag for tag, _, _ in out] == list(range(5))
    assert [v for _, v, e in out if e is None] == [0, 1, 3, 4]
    err = out[2][2]
    assert isinstance(err, ValueError) and str(err) == "bad 2"
    assert pool.close()


def test_in_flight_is_bounded():
    pool = OrderedPool(2, max_in_flight=3, name="t-bound")
    gate = threading.Event()
    for i in range(3):
        assert pool.has_room()
        pool.submit(i, gate.wait, 5)
    assert not pool.has_room() and len(pool) == 3
    with pytest.raises(RuntimeError, match="in flight"):
        pool.submit(3, gate.wait, 5)
    gate.set()
    pool.next(5)
    assert pool.has_room()
    assert pool.close()


def test_close_with_jobs_in_flight_drops_them_and_ends_the_threads():
    ran = []
    gate, started = threading.Event(), threading.Event()

    def job(i):
        if i == 0:
            started.set()
            gate.wait(5)
        ran.append(i)

    before = len(_pool_threads("t-close"))
    pool = OrderedPool(1, max_in_flight=8, name="t-close")
    assert len(_pool_threads("t-close")) == before + 1
    for i in range(8):
        pool.submit(i, job, i)
    assert started.wait(5)  # job 0 is running (under load the worker may not have taken it yet)
    closer = threading.Thread(target=lambda: closed.append(pool.close(5)))
    closed: list[bool] = []
    closer.start()
    deadline = time.monotonic() + 5
    while not pool.closed:  # close() marks the queued jobs cancelled before it waits for the worker
        assert time.monotonic() < deadline
        time.sleep(0.001)
    gate.set()
    closer.join(5)
    assert closed == [True]
    assert ran == [0]  # the running job finished; those never started never ran
    assert len(pool) == 0 and len(_pool_threads("t-close")) == before
    with pytest.raises(PipelineClosed):
        pool.submit(9, job, 9)


def test_workers_run_at_once_on_gil_releasing_work():
    """numpy (like the nogil kernels) releases the GIL: two workers overlap their jobs."""
    a = np.random.default_rng(0).random((512, 512))
    inside = []
    lock = threading.Lock()
    both = threading.Event()

    def job(_):
        with lock:
            inside.append(1)
            if len(inside) == 2:
                both.set()
        ok = both.wait(5)  # only true when the other worker is in its job at the same time
        float(np.sort(a, axis=None)[0])
        return ok

    pool = OrderedPool(2, name="t-overlap")
    pool.submit(0, job, 0)
    pool.submit(1, job, 1)
    assert [pool.next(10)[1] for _ in range(2)] == [True, True]
    assert pool.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 1"):
        OrderedPool(0)
    assert default_threads() >= 1


# ---- Accumulation: the run's accumulators on a thread of their own ------------------------------

class _Appender:
    """accumulate appends (frame id, a parameter) to a list; fails on the frame named ``fail_on``."""

    def __init__(self, fail_on: int | None = None, delay: float = 0.0):
        self.fail_on, self.delay = fail_on, delay
        self.threads: set[str] = set()

    def accumulate(self, acc, output, params):
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if output == self.fail_on:
            raise ValueError(f"bad frame {output}")
        return acc + [(output, params)]


def test_accumulation_applies_items_in_order_on_its_own_thread():
    from tango_dqm.pipeline import Accumulation

    a = _Appender(delay=0.001)
    acc = Accumulation([a, a], [[], []])
    try:
        for i in range(50):
            acc.add(i, [i, i], {"p": i % 3})  # returns before it is applied: the queue is bounded
        seen = []
        acc.call(lambda accs: seen.append(len(accs[0])))  # in order with the frames
        accs = acc.drain(10)
        assert accs[0] == accs[1] == [(i, {"p": i % 3}) for i in range(50)]
        assert seen == [50] and acc.frames == 50 and acc.error is None
        assert a.threads == {"dqm-accumulate"}
    finally:
        assert acc.close()


def test_accumulation_failure_is_kept_and_stops_accumulating():
    from tango_dqm.pipeline import Accumulation

    acc = Accumulation([_Appender(fail_on=3)], [[]])
    try:
        for i in range(10):
            acc.add(i, [i], None)  # never blocks for good after a failure
        accs = acc.drain(10)
        assert [f for f, _ in accs[0]] == [0, 1, 2]  # nothing after the failing frame
        assert acc.error is not None and "accumulate failed on frame 3: ValueError: bad frame 3" in acc.error
        assert "run Reset" in acc.error
    finally:
        acc.close()


def test_accumulation_close_drops_what_is_queued_and_later_calls_return():
    from tango_dqm.pipeline import Accumulation

    acc = Accumulation([_Appender(delay=0.05)], [[]], max_queued=4)
    for i in range(4):
        acc.add(i, [i], None)
    t0 = time.monotonic()
    assert acc.close(5)
    assert time.monotonic() - t0 < 2.0  # one item at most, not all of them
    assert len(acc.accs[0]) < 4
    acc.add(9, [9], None)  # after close: neither blocks nor accumulates
    assert acc.drain(1) is acc.accs and 9 not in [f for f, _ in acc.accs[0]]
    assert acc.close()  # idempotent
