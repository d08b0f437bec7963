"""95% intervals of a mean (Student's t), shared by the benchmark's properties (``data_stats``) and
the report (``time_ray.analysis.stats``). Pure Python and numpy."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t975(df: int) -> float:
    """t_{0.975, df}: the table above for df <= 30, beyond it the Cornish-Fisher expansion
    z + (z^3 + z) / (4 df) + (5 z^5 + 16 z^3 + 3 z) / (96 df^2) with z = 1.95996 (error < 1e-4)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Interval:
    """Mean of n values (seeds, datasets) with its 95% t-interval: mean +- t_{0.975, n-1} * sd / sqrt(n)
    (sd with ddof 1).
    With one seed there is no interval (lo = hi = mean, ``n == 1``)."""

    mean: float
    lo: float
    hi: float
    n: int

    def above_zero(self) -> bool:
        """The interval lies above 0 (with one seed: the value is above 0)."""
        return self.lo > 0

    def text(self, digits: int = 3) -> str:
        if self.n < 2:
            return f"{self.mean:+.{digits}f} (1 seed, no interval)"
        return f"{self.mean:+.{digits}f} [95% CI {self.lo:+.{digits}f}, {self.hi:+.{digits}f}; {self.n} seeds]"


def seed_interval(values) -> Interval:
    """The 95% interval of the mean of per-seed values (see Interval)."""
    x = np.asarray(list(values), dtype=float)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, mean, mean, 1)
    half = t975(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Interval(mean, mean - half, mean + half, len(x))
