"""Every check has the one evaluation signature ``check(evidence)``, judging exactly what ``evaluate`` does."""
from __future__ import annotations

import numpy as np

from tango_dqm.quality import (CHECK_TYPES, ChannelCheck, Evidence, LossCheck, RangeCheck, ReferenceCheck,
                               StalenessCheck, Verdict)


def test_every_check_type_has_the_one_signature():
    assert all(callable(getattr(t, "check", None)) for t in CHECK_TYPES.values())


def test_check_equals_evaluate_for_each_type():
    m = np.arange(10.0)
    chan = ChannelCheck("spec", dead_below=2, noisy_above=8, max_bad_error=1, min_frames=5)
    ev = Evidence(accumulated={"spec": m}, frames=5)
    assert chan.check(ev) == chan.evaluate(m, 5) and chan.check(ev).verdict is Verdict.ERROR
    assert chan.check(Evidence(accumulated={"spec": m}, frames=4)).verdict is Verdict.INSUFFICIENT

    ref = ReferenceCheck("spec", method="chi2")
    ref.set_reference(np.full(10, 100.0))
    h = np.full(10, 100.0)
    assert ref.check(Evidence(accumulated={"spec": h})) == ref.evaluate(h)

    rng = RangeCheck("a", error=(0, 1))
    rng.update(0, 5.0)
    assert rng.check(Evidence()) == rng.evaluate() and rng.check(Evidence()).verdict is Verdict.ERROR

    stale = StalenessCheck(timeout_s=5.0, grace_s=0)
    e = Evidence(now=100.0, last_frame_time=90.0, running=True, run_start=0.0, last_frame_id=7)
    assert stale.check(e) == stale.evaluate(100.0, 90.0, True, 0.0, 7) and stale.check(e).verdict is Verdict.STALE


def test_loss_check_lists_at_most_its_ranges_and_counts_the_rest():
    c = LossCheck(max_ranges_listed=2)
    ranges = [(1, 1), (5, 6), (9, 9)]
    e = Evidence(loss_counts=(96, 4, 0, 100), lost_ranges=ranges, lost_ranges_dropped=3, lost_known=4)
    assert c.check(e) == c.evaluate(96, 4, 0, 100, ranges=ranges[:2], known=4, more_ranges=1 + 3)
    assert c.check(e).verdict is Verdict.ERROR
