"""Mergeable run-level accumulators for analyses (part of the public plugin API)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class RunningStats:
    """Count, mean, variance, min and max of a scalar series; mergeable (Chan et al.)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def add(self, x: float) -> None:
        if x != x:  # NaN: a disabled ROI, not a value
            return
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        self.min = min(self.min, x)
        self.max = max(self.max, x)

    def merged(self, other: "RunningStats") -> "RunningStats":
        if other.n == 0:
            return RunningStats(self.n, self.mean, self.m2, self.min, self.max)
        if self.n == 0:
            return RunningStats(other.n, other.mean, other.m2, other.min, other.max)
        n = self.n + other.n
        d = other.mean - self.mean
        return RunningStats(
            n,
            self.mean + d * other.n / n,
            self.m2 + other.m2 + d * d * self.n * other.n / n,
            min(self.min, other.min),
            max(self.max, other.max),
        )

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else float("nan")


@dataclass
class ScalarSeries:
    """A :class:`RunningStats` per result name: the usual accumulator of scalar results."""

    stats: dict[str, RunningStats] = field(default_factory=dict)

    def add(self, results: Mapping[str, float]) -> "ScalarSeries":
        for key, value in results.items():
            if isinstance(value, (int, float)):
                self.stats.setdefault(key, RunningStats()).add(float(value))
        return self

    def merged(self, other: "ScalarSeries") -> "ScalarSeries":
        keys = self.stats.keys() | other.stats.keys()
        return ScalarSeries({k: self.stats.get(k, RunningStats()).merged(other.stats.get(k, RunningStats()))
                             for k in keys})

    def summary(self, prefix: str = "run_") -> dict[str, float]:
        """``{prefix}{name}_mean`` / ``_std`` / ``_min`` / ``_max`` for every series."""
        out: dict[str, float] = {}
        for key in sorted(self.stats):
            s = self.stats[key]
            out.update({f"{prefix}{key}_mean": s.mean if s.n else float("nan"),
                        f"{prefix}{key}_std": s.std,
                        f"{prefix}{key}_min": s.min if s.n else float("nan"),
                        f"{prefix}{key}_max": s.max if s.n else float("nan")})
        return out
