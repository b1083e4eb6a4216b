"""Reports of long runs read bounded windows: memory and plotted points do not grow with the run.

A 12 h live run at 100 Hz has 4.3 million rows per column; the report used to read every scalar
column whole (~6 GB). A synthetic results file of 200,000 frames (10 scalar columns, a gap of
lost frames, WARNING frames) is read with tracemalloc on: the peak is a few blocks of rows,
far below the columns' size, and every plot gets at most MAX_POINTS points; the statistics,
envelopes and flagged frame ids still match plain numpy over the whole columns.
"""
from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest

from tango_dqm.plugin import Result
from tango_dqm.products.columns import BLOCK_ROWS, Envelope, IdRanges, Stats
from tango_dqm.products.report import page as report_page
from tango_dqm.products.report.reading import MAX_POINTS, _read
from tango_dqm.report import write_report
from tango_dqm.storage import ScanWriter, write_lost_frames

N = 200_000
K = 10
LOST = (150_000, 150_999)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long_live_run.h5"
    rng = np.random.default_rng(3)
    values = rng.normal(0.0, 1.0, (N, K))
    values[::997, 1] = np.nan  # missing values are skipped, not zeros
    w = ScanWriter(path, "long live run", [Result(f"r{k}", float, unit="counts") for k in range(K)],
                   {"thresholds": [{"type": "range", "name": "r0_range", "result": "r0", "warning": [-3, 3],
                                    "error": None}], "mode": "live"}, main_result="r0")
    for i in range(N):
        if LOST[0] <= i <= LOST[1]:
            continue
        w.append(i, 1.7e9 + i * 0.01, dict(zip((f"r{k}" for k in range(K)), values[i].tolist())),
                 verdict="WARNING" if abs(values[i, 0]) >= 3 else "OK")
    w.finish({}, {"total": N, "completed": N - 1000, "dropped": 1000, "bad": 0}, "WARNING",
             end_reason="stopped")
    write_lost_frames(path, [LOST])
    return path


def test_reading_a_long_run_is_bounded_and_exact(long_file):
    with h5py.File(long_file, "r") as f:  # the truth: plain numpy over the whole columns
        res = f["entry/results"]
        ids, r0, r1 = res["frame_id"][...], res["r0"][...], res["r1"][...]
        column_bytes = sum(res[name].nbytes for name in res if isinstance(res[name], h5py.Dataset)
                           and res[name].ndim == 1)
    rows = len(ids)
    assert rows == N - 1000 and column_bytes > 17e6

    tracemalloc.start()
    try:
        data = _read(long_file)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # a few blocks of rows at a time, whatever the length of the run (the old reader held every column)
    assert peak < 16 * BLOCK_ROWS * 8 < column_bytes / 2, (peak, column_bytes)

    width = data.width
    assert data.n == rows and width == -(-rows // MAX_POINTS)
    assert len(data.frame_id) <= MAX_POINTS and len(data.verdict) == len(data.frame_id)
    np.testing.assert_array_equal(data.frame_id, ids[::width])
    assert data.id_span == (0, N - 1)
    s0 = next(s for s in data.scalars if s.name == "r0")
    s1 = next(s for s in data.scalars if s.name == "r1")
    assert data.scalars[0] is s0  # the main result first
    for s, truth in ((s0, r0), (s1, r1)):
        fin = truth[np.isfinite(truth)]
        assert s.stats.count == fin.size
        assert s.stats.mean == pytest.approx(fin.mean(), rel=1e-9, abs=1e-12)
        assert s.stats.std == pytest.approx(fin.std(), rel=1e-9)
        assert (s.stats.min, s.stats.max) == (fin.min(), fin.max())
        assert len(s.values) == len(s.lo) == len(s.hi) == len(data.frame_id)
        counts, edges = s.hist
        assert counts.sum() == fin.size and len(edges) == len(counts) + 1
        # per-bin min, max and mean, against numpy on the bins (the last bin is shorter)
        for b in (0, 123, len(s.values) - 1):
            chunk = truth[b * width:(b + 1) * width]
            assert s.lo[b] == np.nanmin(chunk) and s.hi[b] == np.nanmax(chunk)
            assert s.values[b] == pytest.approx(np.nanmean(chunk), rel=1e-12, abs=1e-12)
    # flagged frames, counted over every frame, not over the plotted points
    outside = ids[np.abs(r0) >= 3]
    assert data.range_frames["r0_range"].count == outside.size > 0
    assert data.verdict_frames[2].count == outside.size  # WARNING
    assert int(data.verdict_counts[2]) == outside.size and int(data.verdict_counts.sum()) == rows


def test_report_of_a_long_run_plots_bounded_points(long_file, monkeypatch):
    drawn = []
    real = report_page._plot_trend

    def recording(s, x, out, main, lost):
        drawn.append((s.name, len(x), len(s.values)))
        return real(s, x, out, main, lost)

    monkeypatch.setattr(report_page, "_plot_trend", recording)
    page = write_report(long_file)
    assert sorted(name for name, *_ in drawn) == sorted(f"r{k}" for k in range(K))
    assert all(nx == ny <= MAX_POINTS for _, nx, ny in drawn), drawn
    text = page.read_text(encoding="utf-8")
    assert "lost frames (never analysed): 1000: 150000-150999" in text
    assert "per-frame verdict" in text


def test_column_helpers_match_numpy():
    rng = np.random.default_rng(0)
    v = rng.normal(5.0, 2.0, 10_007)
    v[::13] = np.nan
    st, env = Stats(), Envelope(len(v), 7)
    for start in range(0, len(v), 700):  # blocks of whole bins
        st.update(v[start:start + 700])
        env.update(start, v[start:start + 700])
    fin = v[np.isfinite(v)]
    assert st.count == fin.size and st.mean == pytest.approx(fin.mean()) and st.std == pytest.approx(fin.std())
    assert len(env.lo) == -(-len(v) // 7)
    np.testing.assert_allclose(env.mean[:-1], np.nanmean(v[: len(v) // 7 * 7].reshape(-1, 7), axis=1))
    assert env.hi[-1] == np.nanmax(v[len(v) // 7 * 7:])
    with pytest.raises(ValueError, match="multiple of the bin width"):
        env.update(3, v[:7])
    ids = IdRanges(max_ranges=3)
    ids.add(np.array([1, 2, 3, 10, 11]))
    ids.add(np.array([12, 20, 30, 40]))
    assert ids.ranges() == [(1, 3), (10, 12), (20, 20)] and ids.count == 9 and ids.ranges_dropped == 2
