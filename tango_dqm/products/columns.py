"""Per-frame columns of a results file read in bounded blocks.

A 12 h live run at 100 Hz has 4.3 million rows per column; reading every scalar column at once
took ~6 GB. The report and the run log read each column in blocks of at most ``BLOCK_ROWS``
rows and keep only run statistics (:class:`Stats`), a fixed number of plot points per column
(:class:`Envelope`: min, max and mean per bin of consecutive frames) and bounded lists of frame
id ranges (:class:`IdRanges`). Memory is set by ``BLOCK_ROWS`` and the number of plot points,
never by the length of the run.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import h5py
import numpy as np

from .scanfile import INT_MISSING

BLOCK_ROWS = 65536  # rows read at a time: 512 KiB of float64 per column


def block_bounds(n: int, step: int = BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive blocks of ``step`` rows covering ``n`` rows."""
    for start in range(0, n, step):
        yield start, min(n, start + step)


def read_float(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a 1-D numeric column as float64, the integer fill value as NaN."""
    raw = ds[start:stop]
    values = raw.astype(np.float64)
    if raw.dtype.kind in "iu":
        values[raw == INT_MISSING] = np.nan
    return values


@dataclass
class Stats:
    """Count, mean, standard deviation, min and max of the finite values, merged block by block
    (Chan's pairwise update, as exact as one pass of numpy over the whole column), and the last value."""

    count: int = 0
    mean: float = math.nan
    m2: float = 0.0
    min: float = math.nan
    max: float = math.nan
    last: float = math.nan

    def update(self, values: np.ndarray) -> None:
        if len(values):
            self.last = float(values[-1])
        fin = values[np.isfinite(values)]
        if not fin.size:
            return
        n_b, mean_b = fin.size, float(fin.mean())
        m2_b = float(((fin - mean_b) ** 2).sum())
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            self.min, self.max = float(fin.min()), float(fin.max())
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.count * n_b / n
        self.count = n
        self.min, self.max = min(self.min, float(fin.min())), max(self.max, float(fin.max()))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan


def bin_width(n: int, max_points: int) -> int:
    """Rows per plotted point so that ``n`` rows give at most ``max_points`` points."""
    return max(1, math.ceil(n / max(1, max_points)))


def aligned_block(width: int) -> int:
    """A block length that is a whole number of bins (so no bin spans two blocks)."""
    return width * max(1, BLOCK_ROWS // width)


@dataclass
class Envelope:
    """Per-bin min, max and mean of ``n`` rows in bins of ``width`` consecutive rows (the last bin
    may be shorter), filled block by block; blocks must start at a multiple of ``width``."""

    n: int
    width: int
    lo: np.ndarray = field(init=False)
    hi: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    count: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        bins = math.ceil(self.n / self.width) if self.n else 0
        self.lo, self.hi = np.full(bins, np.nan), np.full(bins, np.nan)
        self.total, self.count = np.zeros(bins), np.zeros(bins, np.int64)

    def update(self, start: int, values: np.ndarray) -> None:
        if start % self.width:
            raise ValueError(f"block start {start} is not a multiple of the bin width {self.width}")
        b0, w = start // self.width, self.width
        full = len(values) // w * w
        parts = [(b0, values[:full].reshape(-1, w))]
        if full < len(values):
            parts.append((b0 + full // w, values[full:].reshape(1, -1)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bins stay NaN
            for b, rows in parts:
                sl = slice(b, b + rows.shape[0])
                self.lo[sl] = np.nanmin(rows, axis=1)
                self.hi[sl] = np.nanmax(rows, axis=1)
                ok = np.isfinite(rows)
                self.total[sl] = np.where(ok, rows, 0.0).sum(axis=1)
                self.count[sl] = ok.sum(axis=1)

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)


class IdRanges:
    """Frame ids selected block by block, kept as runs of consecutive ids (in file order, merged
    once sorted): at most ``max_ranges`` runs are kept, the ids beyond them only counted."""

    def __init__(self, max_ranges: int = 10_000):
        self.max_ranges = max_ranges
        self.count = 0
        self._ranges: list[list[int]] = []
        self.ranges_dropped = 0

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not ids.size:
            return
        self.count += int(ids.size)
        breaks = np.nonzero(np.diff(ids) != 1)[0]
        starts, ends = np.r_[ids[0], ids[breaks + 1]], np.r_[ids[breaks], ids[-1]]
        for a, b in zip(starts.tolist(), ends.tolist()):
            if self._ranges and self._ranges[-1][1] + 1 == a:
                self._ranges[-1][1] = b
            elif len(self._ranges) < self.max_ranges:
                self._ranges.append([a, b])
            else:
                self.ranges_dropped += 1

    def ranges(self) -> list[tuple[int, int]]:
        """The kept runs, sorted and merged where they touch."""
        out: list[list[int]] = []
        for a, b in sorted(self._ranges):
            if out and a <= out[-1][1] + 1:
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        return [(a, b) for a, b in out]


def column_stats(ds: h5py.Dataset, n: int) -> Stats:
    """Stats of the first ``n`` rows of a 1-D numeric column, read in blocks."""
    stats = Stats()
    for start, stop in block_bounds(n):
        stats.update(read_float(ds, start, stop))
    return stats
