"""The public one-pass kernels against numpy on every dtype and the layouts frames and ROIs have."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tango_dqm import kernels

DTYPES = [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.float32, np.float64, np.bool_]


def _layouts(a: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "whole": a,
        "roi": a[3:20, 5:40],  # rows a pitch apart: seen as the frame's rows, cut
        "bottom-right roi": a[-7:, -9:],  # its last row ends where the buffer does
        "one row": a[5:6, 2:30],
        "one column": a[:, 4:5],
        "column step": a[::2, 1:30:3],
        "reversed rows": a[::-1],
        "transposed": a.T,
        "read-only": _read_only(a[1:, 1:]),
    }


def _read_only(a: np.ndarray) -> np.ndarray:
    v = a.view()
    v.flags.writeable = False
    return v


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_region_stats_and_min_max_count_match_numpy(dtype):
    rng = np.random.default_rng(7)
    if dtype is np.bool_:
        frame = rng.integers(0, 2, (37, 53)).astype(bool)
    else:
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        lo, hi = (info.min, info.max) if info is not None else (-1e4, 1e4)
        frame = rng.uniform(lo, hi, (37, 53)).astype(dtype)
    level = 1 if dtype is np.bool_ else float(np.quantile(frame.astype(np.float64), 0.9))
    for name, region in _layouts(frame).items():
        ref = region.astype(np.float64)
        st = kernels.region_stats(region)
        assert (st.min, st.max, st.count) == (ref.min(), ref.max(), ref.size), name
        if frame.dtype.kind == "f":  # float64 sums in another order than numpy's pairwise one
            assert st.sum == pytest.approx(ref.sum(), rel=1e-12), name
        else:  # exact
            assert st.sum == ref.sum(), name
        assert st.mean == pytest.approx(ref.mean(), rel=1e-12), name
        assert st.std == pytest.approx(ref.std(), rel=1e-9, abs=1e-12), name
        mn, mx, n = kernels.min_max_count_above(region, level)
        assert (mn, mx, n) == (ref.min(), ref.max(), int((ref >= level).sum())), name


def test_integer_sums_are_exact_on_full_scale_frames():
    frame = np.full((1024, 1024), 65535, np.uint16)
    frame[::7, ::3] = 0
    st = kernels.region_stats(frame)
    exact = int(frame.astype(np.int64).sum())
    assert st.sum == float(exact)
    n = frame.size
    var = (n * int((frame.astype(np.int64) ** 2).sum()) - exact * exact) / (n * n)
    assert st.std == math.sqrt(var)
    assert kernels.min_max_count_above(frame, 65535) == (0.0, 65535.0, int((frame == 65535).sum()))


def test_count_above_the_type_range_and_nan_rows():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert kernels.min_max_count_above(a, 300) == (0.0, 11.0, 0)
    assert kernels.min_max_count_above(a, -5) == (0.0, 11.0, 12)
    f = np.array([[np.nan, 1.0, 5.0], [2.0, np.nan, 0.5], [1.0, 2.0, 3.0]])
    # NaN is neither counted nor a minimum/maximum after the first element; a row whose
    # maximum is NaN is still counted
    mn, mx, n = kernels.min_max_count_above(f, 3.0)
    assert n == 2 and math.isnan(mn) and math.isnan(mx)
    assert kernels.min_max_count_above(f[1:], 3.0) == (0.5, 3.0, 1)
    # a NaN starting a later row hides neither that row's minimum nor its count
    assert kernels.min_max_count_above(np.array([[1.0, 2.0], [np.nan, 0.5]]), 1.5) == (0.5, 2.0, 1)
    assert kernels.min_max_count_above(np.array([[1.0, 2.0], [np.nan, 5.0]]), 1.5) == (1.0, 5.0, 2)


def test_empty_regions():
    a = np.zeros((4, 4), np.uint16)
    st = kernels.region_stats(a[2:2, :])
    assert st.count == 0 and st.sum == 0.0 and math.isnan(st.mean)
    mn, mx, n = kernels.min_max_count_above(a[:, 3:3], 1)
    assert n == 0 and math.isnan(mn) and math.isnan(mx)
