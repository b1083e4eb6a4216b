"""Quality checks and the QualityMonitor: verdicts, per-frame flags, statistics, config, coverage."""
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from tango_dqm.plugin import Result
from tango_dqm.quality import (
    VERDICT_ALARM_PROPERTIES, ChannelCheck, LossCheck, QualityMonitor, RangeCheck, ReferenceCheck, StalenessCheck,
    Verdict, checks_from_config, chi2_two_histograms, format_id_ranges, ks_two_histograms, worst,
)

OK, INS, WARN, ERR, STALE = (Verdict.OK, Verdict.INSUFFICIENT, Verdict.WARNING, Verdict.ERROR, Verdict.STALE)


# ---- verdicts ------------------------------------------------------------------------------


def test_verdict_order_worst_case_wins():
    assert sorted([STALE, OK, ERR, INS, WARN]) == [OK, INS, WARN, ERR, STALE]
    assert worst([OK, INS]) is INS            # partly unjudged is not OK
    assert worst([INS, ERR, OK]) is ERR        # INSUFFICIENT never hides an ERROR
    assert worst([ERR, STALE]) is STALE        # a stopped stream is loudest
    assert worst([]) is OK


def test_verdict_tango_mapping():
    assert [v.tango_quality for v in Verdict] == ["ATTR_VALID", "ATTR_VALID", "ATTR_WARNING", "ATTR_ALARM",
                                                  "ATTR_ALARM"]
    # int(verdict) in an attribute with these properties: Tango's own rule is value > max -> quality
    max_w, max_a = float(VERDICT_ALARM_PROPERTIES["max_warning"]), float(VERDICT_ALARM_PROPERTIES["max_alarm"])
    tango_rule = ["ALARM" if int(v) > max_a else "WARNING" if int(v) > max_w else "VALID" for v in Verdict]
    assert tango_rule == ["VALID", "VALID", "WARNING", "ALARM", "ALARM"]


# ---- range check ----------------------------------------------------------------------------


def drifting_monitor():
    # value drifts up by 0.5 per frame: < 5 OK, [5, 10) WARNING, >= 10 ERROR
    # (a value at a limit is outside, as in Tango)
    return QualityMonitor([RangeCheck("signal_mean", warning=(None, 5.0), error=(None, 10.0))])


def test_range_drift_per_frame_flags_and_run_record():
    mon = drifting_monitor()
    flags = [mon.update(100 + i, {"signal_mean": 0.5 * i}, now=float(i)) for i in range(31)]
    expected = [int(OK)] * 10 + [int(WARN)] * 10 + [int(ERR)] * 11  # 5.0 at i=10 WARNING, 10.0 at i=20 ERROR
    assert flags == expected
    ids, kept = mon.flags()
    assert ids.tolist() == list(range(100, 131)) and kept.tolist() == expected

    r = mon.results(now=31.0)[0]
    assert r.verdict is ERR and r.entries == 31 and r.value == 15.0
    assert r.frames == tuple(range(120, 130))                  # first ERROR frames (10 listed)
    assert r.details["warning_frames"] == tuple(range(110, 120))
    assert r.details["counts"] == {"OK": 10, "WARNING": 10, "ERROR": 11}
    assert mon.verdict(now=31.0) is ERR
    snap = mon.snapshot(now=31.0)
    assert snap.flag_counts["ERROR"] == 11 and snap.flag_counts["OK"] == 10


def test_range_verdict_follows_the_drift_while_running():
    mon = drifting_monitor()
    seen = []
    for i in range(31):
        mon.update(i, {"signal_mean": 0.5 * i}, now=0.0)
        seen.append(mon.verdict(now=0.0))
    assert seen[9] is OK and seen[10] is WARN
    assert seen[19] is WARN and seen[20] is ERR and seen[-1] is ERR


def test_range_low_side_and_both_sides():
    c = RangeCheck("t", warning=(20.0, 30.0), error=(10.0, 40.0))
    # a value at a limit is outside, as Tango computes attribute quality
    assert [c.judge(x) for x in (25, 20.01, 20, 10.01, 10, 29.99, 30, 39.99, 40)] == \
        [OK, OK, WARN, WARN, ERR, OK, WARN, WARN, ERR]
    assert c.judge(float("nan")) is None and c.judge(None) is None and c.judge("x") is None
    assert c.judge(np.float32(45)) is ERR and c.judge(np.array(5)) is ERR and c.judge(float("inf")) is ERR


def test_range_report_line_names_check_value_limits_frames():
    mon = drifting_monitor()
    for i in range(31):
        mon.update(100 + i, {"signal_mean": 0.5 * i}, now=0.0)
    lines = mon.report(now=0.0).splitlines()
    assert lines[0].startswith("verdict ERROR: 1 of 1 checks failing")
    assert len(lines) == 2
    assert lines[1].startswith("ERROR signal_mean_range: last 15, min 0, max 15")
    assert "outside error [-inf, 10] on 11/31 frames (first 120, 121" in lines[1]
    assert "outside warning [-inf, 5] on 10/31 frames (first 110" in lines[1]


def test_missing_and_nan_values_are_not_evaluated():
    mon = QualityMonitor([RangeCheck("a", error=(0, 1))])
    assert mon.update(1, {"a": float("nan")}, now=0) == int(INS)
    assert mon.update(2, {}, now=0) == int(INS)
    assert mon.update(3, {"a": None}, now=0) == int(INS)
    assert mon.update(4, {"a": 0.5}, now=0) == int(OK)
    assert mon.results(now=0)[0].entries == 1


def test_per_frame_flag_is_worst_of_the_range_checks():
    mon = QualityMonitor([RangeCheck("a", warning=(0, 1)), RangeCheck("b", error=(0, 1))])
    assert mon.update(1, {"a": 2, "b": 0.5}, now=0) == int(WARN)
    assert mon.update(2, {"a": 2, "b": 2}, now=0) == int(ERR)
    assert mon.update(3, {"a": float("nan"), "b": 0.5}, now=0) == int(OK)


def test_insufficient_for_a_short_run_then_ok():
    mon = QualityMonitor([RangeCheck("a", warning=(0, 10), min_entries=10)])
    for i in range(9):
        mon.update(i, {"a": 5.0}, now=0)
    r = mon.results(now=0)[0]
    assert r.verdict is INS and "9 of 10" in r.message
    assert mon.verdict(now=0) is INS
    mon.update(9, {"a": 5.0}, now=0)
    assert mon.verdict(now=0) is OK


def test_insufficient_does_not_hide_an_error_of_another_check():
    mon = QualityMonitor([RangeCheck("a", warning=(0, 10), min_entries=1000), RangeCheck("b", error=(0, 1))])
    mon.update(1, {"a": 5.0, "b": 7.0}, now=0)
    snap = mon.snapshot(now=0)
    assert [r.verdict for r in snap.checks] == [INS, ERR]
    assert snap.verdict is ERR
    lines = snap.report().splitlines()
    assert lines[1].startswith("ERROR b_range") and lines[2].startswith("INSUFFICIENT a_range")


def test_no_checks_is_insufficient_not_ok():
    mon = QualityMonitor([])
    assert mon.verdict(now=0) is INS
    assert "no quality checks configured" in mon.report(now=0)


def test_tolerance_allows_a_fraction_of_bad_frames():
    c = RangeCheck("a", error=(0, 1), tolerance=0.05)
    for i in range(100):
        c.update(i, 5.0 if i == 50 else 0.5)
    assert c.evaluate().verdict is OK                  # 1% bad <= 5%
    for i in range(100, 110):
        c.update(i, 5.0)
    r = c.evaluate()
    assert r.verdict is ERR and r.frames[:2] == (50, 100)  # 11/110 = 10% > 5%


def test_from_result_and_tango_properties_match_the_declaration():
    res = Result("signal_mean", float, warning=(1.0, 5.0), alarm=(0.0, None))
    c = RangeCheck.from_result(res)
    assert (c.result, c.warning, c.error) == ("signal_mean", (1.0, 5.0), (0.0, None))
    assert c.tango_properties() == {"min_warning": "1.0", "max_warning": "5.0", "min_alarm": "0.0"}
    assert RangeCheck.from_result(Result("img", float, kind="image", warning=(0, 1))) is None
    assert RangeCheck.from_result(Result("plain", float)) is None


def test_start_clears_the_run_record():
    mon = QualityMonitor([RangeCheck("a", error=(0, 1))])
    mon.update(1, {"a": 5.0}, now=0)
    assert mon.verdict(now=0) is ERR
    mon.start(now=10.0)
    assert mon.verdict(now=10.0) is INS and mon.flags()[0].size == 0
    mon.update(2, {"a": 0.5}, now=10.5)
    assert mon.verdict(now=10.5) is OK


# ---- staleness ---------------------------------------------------------------------------------


def test_staleness_with_explicit_times():
    c = StalenessCheck(timeout_s=5.0)
    assert c.evaluate(now=104.9, last_frame_time=100.0, running=True).verdict is OK
    r = c.evaluate(now=105.1, last_frame_time=100.0, running=True, last_frame_id=42)
    assert r.verdict is STALE and r.value == pytest.approx(5.1) and "last frame 42" in r.message
    assert c.evaluate(now=1000.0, last_frame_time=100.0, running=False).verdict is OK
    # before any frame: counted from the start of the run, with a start-up grace period (5 s by default)
    assert c.evaluate(now=9.9, last_frame_time=None, running=True, since=0.0).verdict is OK
    r = c.evaluate(now=10.1, last_frame_time=None, running=True, since=0.0)
    assert r.verdict is STALE and "timeout 10 s" in r.message and "no frame since the start" in r.message
    no_grace = StalenessCheck(timeout_s=5.0, grace_s=0)
    assert no_grace.evaluate(now=5.1, last_frame_time=None, running=True, since=0.0).verdict is STALE


def test_monitor_goes_stale_while_running_and_stale_beats_error():
    mon = QualityMonitor([StalenessCheck(5.0), RangeCheck("a", error=(0, 1))])
    mon.start(now=0.0)
    assert mon.verdict(now=6.0) is INS                    # start-up grace: not stale yet, nothing judged
    assert mon.verdict(now=10.5) is STALE                 # no frame at all since start, grace over
    mon.update(1, {"a": 0.5}, now=6.5)
    assert mon.verdict(now=11.4) is OK
    mon.update(2, {"a": 3.0}, now=11.4)
    assert mon.verdict(now=16.3) is ERR
    assert mon.verdict(now=16.5) is STALE
    lines = mon.report(now=16.5).splitlines()
    assert lines[1].startswith("STALE staleness: no frame for 5.1 s")
    assert lines[2].startswith("ERROR a_range")           # the error is still reported
    mon.stop()
    assert mon.verdict(now=100.0) is ERR                  # not running: staleness does not apply


# ---- reference comparison -----------------------------------------------------------------------

EDGES = np.linspace(-5, 5, 201)


def samples(seed, n, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, n)


def hist(x):
    return np.histogram(x, EDGES)[0]


REF_RAW = samples(1, 40_000)
SAME_RAW = samples(2, 20_000)
DIFF_RAW = samples(3, 20_000, loc=0.1)


def test_chi2_matches_scipy_contingency_and_separates_distributions():
    ref = hist(REF_RAW)
    for raw, should_fail in ((SAME_RAW, False), (DIFF_RAW, True)):
        h = hist(raw)
        stat, ndf, p = chi2_two_histograms(h, ref)
        used = (h + ref) > 0
        expect = stats.chi2_contingency(np.vstack([h[used], ref[used]]), correction=False)
        assert stat == pytest.approx(expect.statistic, rel=1e-12) and ndf == expect.dof
        assert p == pytest.approx(expect.pvalue, rel=1e-9)
        if should_fail:
            assert p < 1e-3
        else:
            assert p > 0.01
    # unequal totals are normalised: the naive sum (a-b)^2/(a+b) of a 1:2 pair would be huge
    h = hist(SAME_RAW)
    naive = np.sum((h - ref) ** 2 / np.maximum(h + ref, 1))
    assert naive > 1000 and chi2_two_histograms(h, ref)[2] > 0.01


def test_chi2_ignores_bins_empty_in_both():
    a, b = np.array([10, 0, 20, 30]), np.array([12, 0, 18, 33])
    assert chi2_two_histograms(a, b)[1] == 2
    assert chi2_two_histograms(a, b)[0] == pytest.approx(chi2_two_histograms(a[[0, 2, 3]], b[[0, 2, 3]])[0])


def test_ks_binned_agrees_with_unbinned_and_kstwo():
    ref_raw, same, diff = samples(11, 10_000), samples(12, 10_000), samples(13, 10_000, loc=0.1)
    ref = hist(ref_raw)
    for raw, should_fail in ((same, False), (diff, True)):
        d, en, p = ks_two_histograms(hist(raw), ref)
        # D is exactly the unbinned empirical-CDF difference at the bin edges ...
        ecdf = lambda x: np.searchsorted(np.sort(x), EDGES[1:], side="left") / x.size  # noqa: E731
        assert d == pytest.approx(np.max(np.abs(ecdf(raw) - ecdf(ref_raw))), abs=1e-12)
        # ... so never above scipy's unbinned statistic, and close to it with fine bins
        unbinned = stats.ks_2samp(raw, ref_raw, method="asymp")
        assert d <= unbinned.statistic + 1e-12 and unbinned.statistic - d < 0.005
        assert en == 5000 and p == pytest.approx(stats.kstwo.sf(d, 5000), rel=1e-12)
        if should_fail:
            assert p < 1e-3 and unbinned.pvalue < 1e-3
        else:
            assert p > 0.01 and unbinned.pvalue > 0.01


def test_ks_large_samples_use_kolmogorov_limit():
    ref = hist(REF_RAW)
    d_same, _, p_same = ks_two_histograms(hist(SAME_RAW), ref)
    d_diff, _, p_diff = ks_two_histograms(hist(DIFF_RAW), ref)
    assert p_same > 0.01 and p_diff < 1e-3
    assert p_same == pytest.approx(stats.ks_2samp(SAME_RAW, REF_RAW, method="asymp").pvalue, abs=0.15)


def test_reference_checks_in_the_monitor():
    mon = QualityMonitor([ReferenceCheck("spectrum", method="chi2"),
                          ReferenceCheck("spectrum", method="ks"),
                          ReferenceCheck("spectrum", method="chi2", name="strict", min_entries=50_000)])
    assert [r.verdict for r in mon.evaluate_references({"spectrum": hist(SAME_RAW)})] == [INS, INS, INS]
    assert mon.set_references({"spectrum": hist(REF_RAW), "unrelated": np.ones(3)}) == \
        ["spectrum_chi2", "spectrum_ks", "strict"]
    out = mon.evaluate_references({"spectrum": hist(SAME_RAW)})
    assert [r.verdict for r in out] == [OK, OK, INS]
    assert "20000 of 50000 entries" in out[2].message
    out = mon.evaluate_references({"spectrum": hist(DIFF_RAW)})
    assert [r.verdict for r in out] == [ERR, ERR, INS] and all(r.value < 1e-3 for r in out[:2])
    assert mon.verdict(now=0) is ERR
    assert "p = " in out[0].message and "chi2" in out[0].message


def test_reference_warning_level_shape_mismatch_and_not_evaluated():
    c = ReferenceCheck("s", warning_p=0.5, error_p=1e-30, reference=hist(REF_RAW))
    assert c.evaluate(hist(DIFF_RAW)).verdict is WARN        # 1e-30 < p < 0.5
    r = c.evaluate(np.ones(50))
    assert r.verdict is ERR and "does not match the reference" in r.message
    assert c.evaluate(None).verdict is INS
    assert c.evaluate(-hist(SAME_RAW)).verdict is ERR
    mon = QualityMonitor([ReferenceCheck("s")])
    assert mon.results(now=0)[0].message == "not evaluated yet" and mon.verdict(now=0) is INS
    with pytest.raises(ValueError, match="reference"):
        ReferenceCheck("s", reference=[-1, 2])


# ---- channels ---------------------------------------------------------------------------------------


def test_dead_and_noisy_channels_found_exactly_2d():
    m = np.full((20, 30), 100.0)
    m[3, 4], m[10, 2] = 0.0, 0.5       # dead
    m[7, 7] = 1e6                      # noisy
    m[0, 0] = np.nan                   # masked, ignored
    c = ChannelCheck("hits", dead_below=1, noisy_above=1000, max_bad_warning=0, max_bad_error=2)
    r = c.evaluate(m)
    assert r.verdict is ERR and r.value == 3
    assert r.channels == ((3, 4), (7, 7), (10, 2))
    assert r.details["dead"] == ((3, 4), (10, 2)) and r.details["noisy"] == ((7, 7),)
    c3 = ChannelCheck("hits", dead_below=1, noisy_above=1000, max_bad_warning=0, max_bad_error=3)
    assert c3.evaluate(m).verdict is WARN
    assert ChannelCheck("hits", dead_below=1, max_bad_warning=2, max_bad_error=5).evaluate(m).verdict is OK


def test_channels_1d_and_min_frames():
    m = np.arange(10.0)
    c = ChannelCheck("spec", dead_below=2, noisy_above=8, max_bad_error=1, min_frames=5)
    r = c.evaluate(m, frames=5)
    assert r.channels == (0, 1, 9) and r.verdict is ERR
    assert c.evaluate(m, frames=4).verdict is INS
    mon = QualityMonitor([c])
    for i in range(5):
        mon.update(i, {}, now=0)
    assert mon.evaluate_references({"spec": m})[0].channels == (0, 1, 9)
    assert mon.verdict(now=0) is ERR


# ---- configuration --------------------------------------------------------------------------------


def test_checks_from_config_all_types_and_roundtrip():
    lines = [
        '{"type": "range", "result": "signal_mean", "warning": [null, 5], "error": [null, 10], "min_entries": 3}',
        '{"type": "staleness", "timeout_s": 2.5}',
        '{"type": "reference", "result": "spectrum", "method": "ks", "warning_p": 0.05, "error_p": 0.001}',
        '{"type": "channels", "result": "hits", "dead_below": 1, "max_bad_warning": 1, "max_bad_error": 4}',
        "",
    ]
    checks = checks_from_config(lines)
    assert [type(c) for c in checks] == [RangeCheck, StalenessCheck, ReferenceCheck, ChannelCheck]
    assert checks[0].warning == (None, 5.0) and checks[0].min_entries == 3
    assert checks[2].name == "spectrum_ks"
    mon = QualityMonitor(checks)
    again = checks_from_config(json.dumps(mon.config()))
    assert [c.to_config() for c in again] == mon.config()
    assert isinstance(checks_from_config({"type": "staleness", "timeout_s": 1})[0], StalenessCheck)


@pytest.mark.parametrize("config, words", [
    ([{"result": "a"}], ["#1", "'type'"]),
    ([{"type": "rnage", "result": "a"}], ["#1", "'type'", "rnage"]),
    ([{"type": "staleness", "timeout_s": 1}, {"type": "range", "result": "a", "warnig": [0, 1]}],
     ["#2", "range 'a'", "'warnig'"]),
    ([{"type": "range", "result": "a", "warning": [5, 1]}], ["#1", "a_range", "'warning'", "min must be < max"]),
    ([{"type": "range", "result": "a", "warning": "5"}], ["a_range", "'warning'"]),
    ([{"type": "range", "result": "a", "warning": [0, 10], "error": [2, 8]}], ["'warning'", "within"]),
    ([{"type": "range", "result": "a"}], ["'warning'", "set a warning or an error range"]),
    ([{"type": "range", "result": "a", "error": [0, 1], "min_entries": -1}], ["'min_entries'", ">= 0"]),
    ([{"type": "range", "result": "a", "error": [0, 1], "min_entries": 2.5}], ["'min_entries'", "integer"]),
    ([{"type": "range", "result": "a", "error": [0, 1], "tolerance": 1}], ["'tolerance'"]),
    ([{"type": "range", "warning": [0, 1]}], ["#1", "'result' is required"]),
    ([{"type": "staleness", "timeout_s": -1}], ["staleness", "'timeout_s'", "> 0"]),
    ([{"type": "staleness", "timeout_s": True}], ["'timeout_s'"]),
    ([{"type": "reference", "result": "s", "method": "anderson"}], ["'method'", "anderson"]),
    ([{"type": "reference", "result": "s", "warning_p": 0.001, "error_p": 0.01}], ["s_chi2", "'error_p'"]),
    ([{"type": "reference", "result": "s", "warning_p": 1.5}], ["'warning_p'"]),
    ([{"type": "channels", "result": "m"}], ["m_channels", "'dead_below'"]),
    ([{"type": "channels", "result": "m", "dead_below": 1, "max_bad_warning": 5, "max_bad_error": 2}],
     ["'max_bad_warning'"]),
    ([{"type": "range", "result": "a", "error": [0, 1], "name": "bad name"}], ["'name'"]),
    ([{"type": "range", "result": "a", "error": [0, 1]}, {"type": "range", "result": "a", "warning": [0, 1]}],
     ["two checks are named 'a_range'"]),
    ("[{not json", ["invalid JSON"]),
    (["{\"type\": \"staleness\", \"timeout_s\": 1}", "{oops"], ["#2", "invalid JSON"]),
    ([42], ["#1", "must be an object"]),
])
def test_config_errors_name_the_check_and_field(config, words):
    with pytest.raises(ValueError) as info:
        checks_from_config(config)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_validate_against_declared_results():
    declared = {"signal_mean": "scalar", "spectrum": "spectrum", "image": "image"}
    QualityMonitor([RangeCheck("signal_mean", error=(0, 1)), ReferenceCheck("spectrum", method="ks"),
                    ChannelCheck("image", dead_below=0)]).validate(declared)
    with pytest.raises(ValueError, match="no analysis declares a result 'sgnal_mean'"):
        QualityMonitor([RangeCheck("sgnal_mean", error=(0, 1))]).validate(declared)
    with pytest.raises(ValueError, match="needs a scalar"):
        QualityMonitor([RangeCheck("spectrum", error=(0, 1))]).validate(declared)
    with pytest.raises(ValueError, match="needs a spectrum"):
        QualityMonitor([ReferenceCheck("image", method="ks")]).validate(declared)


# ---- coverage -------------------------------------------------------------------------------------


def test_coverage_counts_evaluated_frames_over_all_frames():
    mon = QualityMonitor([RangeCheck("a", error=(0, 10))])
    for i in range(10):
        mon.update(i, {"a": float("nan") if i in (3, 4) else 1.0}, now=0)
    cov = mon.coverage(completed=10, total=13)      # 3 frames dropped or bad
    assert (cov.evaluated, cov.completed, cov.total, cov.missing) == (8, 10, 13, 3)
    assert cov.fraction == pytest.approx(8 / 13)
    assert "61.5% (8 of 13 frames evaluated; 3 dropped or bad, 2 without a value)" in str(cov)
    assert "coverage 61.5%" in mon.report(now=0, completed=10, total=13).splitlines()[0]
    assert mon.coverage(0, 0).fraction == 0.0
    assert mon.coverage(completed=5, total=5).fraction == 1.0  # never more than the completed frames
    with pytest.raises(ValueError, match="total"):
        mon.coverage(1, -1)


def test_coverage_without_range_checks_counts_analysed_frames():
    mon = QualityMonitor([ReferenceCheck("s")])
    for i in range(4):
        mon.update(i, {}, now=0)
    assert mon.coverage(completed=4, total=8).fraction == 0.5


# ---- threads ----------------------------------------------------------------------------------------


def test_reads_are_consistent_while_the_engine_updates():
    mon = QualityMonitor([RangeCheck("a", warning=(0, 5), error=(0, 10))])
    n = 20_000
    stop = threading.Event()
    bad: list[str] = []

    def reader():
        while not stop.is_set():
            s = mon.snapshot(now=0)
            r = s.checks[0]
            if r.entries != s.frames or sum(s.flag_counts.values()) != s.frames \
                    or sum(r.details["counts"].values()) != s.frames:
                bad.append(f"inconsistent: {r.entries} {s.frames} {s.flag_counts}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so an unlocked read would be caught
    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(n):
            mon.update(i, {"a": float(i % 12)}, now=0)
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(interval)
    assert not bad, bad[:3]
    assert mon.snapshot(now=0).frames == n


# ---- lost frames (the loss check) --------------------------------------------------------------------


def test_loss_check_follows_tangos_rule_and_names_the_lost_frames():
    c = LossCheck()  # defaults: any lost frame warns, 1 % is an error
    assert (c.warning, c.error) == (1e-9, 0.01)
    assert c.tango_properties() == {"max_warning": "1e-09", "max_alarm": "0.01"}
    assert c.evaluate(0, 0, 0, 0).verdict is INS                       # no frame at all: not judged
    ok = c.evaluate(300, 0, 0, 300)
    assert ok.verdict is OK and ok.value == 0.0 and "0 of 300 frames lost or bad" in ok.message
    one = c.evaluate(999_999, 1, 0, 1_000_000, [(17, 17)])
    assert one.verdict is WARN and one.frames == (17,)                # one lost frame in a million still warns
    r = c.evaluate(289, 11, 0, 300, [(40, 45), (100, 100), (201, 204)])
    assert r.verdict is ERR and r.value == pytest.approx(11 / 300)
    assert "11 of 300 frames lost or bad (3.667%): 11 lost, 0 bad; lost ids 40-45, 100, 201-204" in r.message
    assert r.frames == (40, 41, 42, 43, 44, 45, 100, 201, 202, 203) and r.details["lost_ids_known"] == 11
    at = LossCheck(warning=0.1, error=0.2)
    assert at.evaluate(90, 10, 0, 100).verdict is WARN                # at the limit is outside (Tango)
    assert at.evaluate(80, 10, 10, 100).verdict is ERR                # bad frames count as well
    assert at.evaluate(95, 0, 5, 0).value == pytest.approx(0.05)      # total unknown: every frame seen
    unknown = c.evaluate(95, 5, 0, 100, [(3, 4)])
    assert "3 lost with unknown ids" in unknown.message


@pytest.mark.parametrize("kwargs, words", [
    ({"warning": 0}, ["'warning'", "> 0"]),
    ({"error": 1.5}, ["'error'", "<= 1"]),
    ({"warning": 0.2, "error": 0.1}, ["'warning'", "<= error"]),
    ({"warning": "0.1"}, ["'warning'", "finite number"]),
])
def test_loss_check_rejects_bad_limits(kwargs, words):
    with pytest.raises(ValueError) as info:
        LossCheck(**kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_format_id_ranges_stays_bounded():
    assert format_id_ranges([(1, 1), (3, 5)]) == "1, 3-5"
    text = format_id_ranges([(i * 10, i * 10 + 1) for i in range(1000)], max_items=5)
    assert text == "0-1, 10-11, 20-21, 30-31, 40-41, ... (995 more ranges)"


def test_monitor_records_lost_ranges_merged_sorted_and_bounded(monkeypatch):
    mon = QualityMonitor([LossCheck(max_ranges_listed=3)])
    mon.start(now=0.0)
    for first, last in ((10, 12), (13, 13), (20, 21), (5, 6), (30, 30), (40, 40)):
        mon.lost_frames(first, last)
    assert mon.lost_ranges().tolist() == [[5, 6], [10, 13], [20, 21], [30, 30], [40, 40]]
    mon.set_loss_counts(completed=90, lost=10, bad=0, total=100)
    assert mon.lost_fraction() == pytest.approx(0.1)
    r = mon.snapshot(now=0.0).checks[0]
    assert r.verdict is ERR and "lost ids 5-6, 10-13, 20-21, ... (2 more ranges)" in r.message
    assert "unknown ids" not in r.message                            # all 10 ids are known
    monkeypatch.setattr(QualityMonitor, "MAX_LOST_RANGES", 5)
    mon.lost_frames(50)                                               # beyond the bound: counted, not kept
    assert len(mon.lost_ranges()) == 5
    assert "(3 more ranges)" in mon.snapshot(now=0.0).checks[0].message
    mon.start(now=1.0)                                                # a new run starts clean
    assert mon.lost_ranges().shape == (0, 2) and mon.lost_fraction() == 0.0
    assert mon.verdict(now=1.0) is INS


def test_loss_limits_from_config_and_edited_live():
    checks = checks_from_config(['{"type": "loss", "warning": 0.02, "error": 0.1}'])
    assert isinstance(checks[0], LossCheck) and checks[0].to_config()["error"] == 0.1
    mon = QualityMonitor(checks)
    assert mon.loss_limits() == (0.02, 0.1)
    mon.set_loss_counts(95, 5, 0, 100)
    assert mon.verdict(now=0) is WARN
    assert mon.set_loss_limits(0.01, 0.05) is True and mon.verdict(now=0) is ERR
    assert mon.set_loss_limits(0.01, 0.05) is False
    with pytest.raises(ValueError, match="'warning'"):
        mon.set_loss_limits(0.5, 0.05)
    assert mon.loss_limits() == (0.01, 0.05)                          # a refused edit changes nothing
    with pytest.raises(ValueError, match="at most one loss check"):
        checks_from_config([{"type": "loss"}, {"type": "loss", "name": "other"}])
    with pytest.raises(ValueError, match="unknown field"):
        checks_from_config([{"type": "loss", "warnig": 0.1}])
    with pytest.raises(ValueError, match="no loss check"):
        QualityMonitor([]).set_loss_limits(0.1, 0.2)


def _zmq_scan(tmp_path, lost: set[int], n: int = 300, **config):
    from tango_dqm.engine import Engine, EngineConfig, EngineState
    from tests.helpers import StinsSender, free_port

    port = free_port()
    engine = Engine(EngineConfig([f"zmq://127.0.0.1:{port}"], ["roi"], output_directory=str(tmp_path), **config))
    sender = StinsSender(port)
    try:
        engine.start()
        sender.header(frames=n)
        for i in range(n):
            if i not in lost:
                sender.image(i, np.full((8, 8), 5 + i % 7, np.uint16))
        sender.series_end()
        deadline = time.monotonic() + 30
        while engine.state is EngineState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.products.worker.wait_idle(30)                  # the report is written
        return engine.snapshot(), engine.output_file
    finally:
        sender.close()
        engine.close()


def test_a_scan_with_lost_frames_never_ends_ok_and_its_file_names_them(tmp_path):
    import h5py

    from tango_dqm.report import write_run_list

    lost = {*range(40, 46), 100, *range(201, 205)}                    # 11 of 300, as in issue 10
    snap, path = _zmq_scan(tmp_path, lost)
    assert snap.state.value == "CLOSE" and snap.quality.verdict is ERR, snap.verdict_report
    assert "finished: 289/300 completed, 11 lost (" in snap.status and "complete:" not in snap.status
    loss = next(c for c in snap.quality.checks if c.check_type == "loss")
    assert "lost ids 40-45, 100, 201-204" in loss.message and loss.line() in snap.verdict_report
    with h5py.File(path, "r") as f:
        assert f["entry/dqm/lost_frames"][...].tolist() == [[40, 45], [100, 100], [201, 204]]
        assert f["entry/summary/verdict"][()].decode() == "ERROR"
    page = Path(path).with_suffix(".html").read_text()
    assert "finished: 289/300 completed, 11 lost" in page and "11 in 3 ranges: 40-45, 100, 201-204" in page
    assert "finished: 289/300 completed, 11 lost" in write_run_list(tmp_path).read_text()


def test_a_scan_without_loss_is_complete(tmp_path):
    import h5py

    snap, path = _zmq_scan(tmp_path, set(), n=50)
    assert "finished, complete: 50/50 completed, 0 lost" in snap.status, snap.status
    assert next(c for c in snap.quality.checks if c.check_type == "loss").verdict is OK
    with h5py.File(path, "r") as f:
        assert f["entry/dqm/lost_frames"].shape == (0, 2)
    assert "<td>complete" in Path(path).with_suffix(".html").read_text()


# ---- warm start ------------------------------------------------------------------------------------


_WARM = """
import json, sys
from tango_dqm import kernels
from tango_dqm.engine import Engine, EngineConfig
if sys.argv[1] != "warm":
    Engine._warm_up = lambda self, shape, dtype: 0.0
e = Engine(EngineConfig(["sim://?frames=5&shape=48x40&dtype=int32"], ["roi", "profile", "pixels", "histogram"]))
assert e.warmed.wait(120)
sigs = [str(s) for d in (kernels._int_moments, kernels._float_moments, kernels._min_max_count_ge)
        for s in d.signatures]
print(json.dumps({"sigs": sigs, "took": e.warmup_s}))
"""


def test_engine_compiles_the_kernels_for_the_source_dtype_at_init():
    # In fresh interpreters: numba dispatchers list what they compiled (or loaded from the cache).
    import subprocess

    out = {}
    for mode in ("warm", "cold"):
        res = subprocess.run([sys.executable, "-c", _WARM, mode], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    warm = [s for s in out["warm"]["sigs"] if "int32" in s]
    assert warm, out["warm"]
    # the kernels see read-only views of writable and received frames alike: one type per dtype
    assert all("'C', True" in s for s in warm), warm  # Array(dtype, ndim, layout, readonly)
    assert not any("int32" in s for s in out["cold"]["sigs"]), out["cold"]
    assert out["warm"]["took"] > 0


def test_kernel_cache_falls_back_to_a_private_directory_when_the_install_is_read_only(tmp_path):
    import subprocess

    code = ("import os; real = os.access; os.access = lambda p, m, **k: False if m == os.W_OK else real(p, m)\n"
            "import numba, numpy as np\nfrom tango_dqm import kernels\nos.access = real\n"
            "print(numba.config.CACHE_DIR)\n"
            "print(kernels.region_stats(np.arange(12, dtype=np.uint16).reshape(3, 4)))")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    cache_dir = Path(res.stdout.splitlines()[0])
    assert cache_dir.parent == tmp_path and (cache_dir.stat().st_mode & 0o077) == 0
    assert "sum=66.0" in res.stdout
    assert any(cache_dir.rglob("*.nbi"))                              # compiled kernels were cached there


def test_a_late_frame_is_no_longer_lost():
    mon = QualityMonitor([LossCheck()])
    mon.lost_frames(10, 14)
    mon.lost_frames(20)
    assert mon.found_frame(12) and mon.found_frame(10) and mon.found_frame(14) and mon.found_frame(20)
    assert not mon.found_frame(12) and not mon.found_frame(5) and not mon.found_frame(99)
    assert mon.lost_ranges().tolist() == [[11, 11], [13, 13]]
    mon.set_loss_counts(98, 2, 0, 100)
    r = mon.snapshot(now=0).checks[0]
    assert "lost ids 11, 13" in r.message and r.details["lost_ids_known"] == 2


def test_warm_up_uses_the_shape_and_dtype_the_source_announces(tmp_path, monkeypatch):
    import h5py

    from tango_dqm.engine import Engine, EngineConfig

    seen = []
    real = Engine._warm_up
    monkeypatch.setattr(Engine, "_warm_up", lambda self, shape, dtype: seen.append((shape, dtype))
                        or real(self, shape, dtype))
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("/entry/data/data", data=np.zeros((3, 12, 20), np.float32))
    for uri in ("sim://?shape=24x16&dtype=uint8", f"hdf5://{tmp_path / 'f.h5'}", "zmq://127.0.0.1:1"):
        e = Engine(EngineConfig([uri], ["roi", "profile"]))
        assert e.warmed.wait(60) and e.warmup_s > 0
        e.close()
    # zmq announces nothing: warmed up on uint16 of a small shape
    assert seen == [((24, 16), "uint8"), ((12, 20), "float32"), (None, None)]
