"""The statistics of the report: seed intervals, Pareto fronts, the variance decomposition of GM.

Pure functions of numbers and frames (numpy / pandas only)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# two-sided 95% quantiles t_{0.975, df} of Student's t for df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


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
    """Mean over seeds with its 95% t-interval: mean +- t_{0.975, n-1} * sd / sqrt(n) (sd with ddof 1).
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


def pareto_front(cost, value) -> np.ndarray:
    """Which points are Pareto-optimal when every cost is minimised and value maximised: point i is
    on the front unless some j has cost_j <= cost_i (every cost) and value_j >= value_i, with at
    least one strict. ``cost``: n values, or an n x k array of k costs."""
    c = np.asarray(cost, dtype=float).reshape(len(value), -1)
    v = np.asarray(value, dtype=float)
    no_worse = (c[None, :, :] <= c[:, None, :]).all(axis=2) & (v[None, :] >= v[:, None])
    better = (c[None, :, :] < c[:, None, :]).any(axis=2) | (v[None, :] > v[:, None])
    return ~(no_worse & better).any(axis=1)


AXES = ("init", "deploy", "technique", "settings", "budget")


def variance_decomposition(final: pd.DataFrame, value: str = "gm", axes=AXES) -> pd.DataFrame:
    """How much GM moves when one decision changes and every other stays fixed.

    With m(cell) the mean over seeds of ``value`` in one design cell (init, deploy, technique,
    settings, budget), the component of axis a is
        V_a = mean over contexts c of Var_{levels l of a}( m(c, l) )    (population variance, ddof 0)
    where a context fixes every other axis and only contexts in which a takes at least two levels
    count. The seed component is V_seed = mean over cells of Var_seeds(value) (ddof 1): the noise.
    share_a = V_a / sum of all components. For a balanced design with additive effects V_a is the
    variance of a's effects, so the shares are the ANOVA main-effect shares; in the unbalanced designs
    of real sweeps (a technique varied only inside the EMA chain) an axis is still compared only with
    itself, never confounded with another axis."""
    cells = final.groupby(list(axes), dropna=False)[value]
    means = cells.mean().reset_index()
    rows = []
    for axis in axes:
        others = [a for a in axes if a != axis]
        per_context = means.groupby(others, dropna=False)[value].agg(lambda s: s.var(ddof=0) if len(s) > 1 else np.nan)
        varied = per_context.dropna()
        rows.append({"axis": axis, "levels": int(means[axis].nunique()), "contexts": len(varied),
                     "variance": float(varied.mean()) if len(varied) else math.nan})
    seed_var = cells.var(ddof=1).dropna()
    rows.append({"axis": "seed", "levels": int(final["seed"].nunique()), "contexts": len(seed_var),
                 "variance": float(seed_var.mean()) if len(seed_var) else math.nan})
    out = pd.DataFrame(rows)
    out["std"] = np.sqrt(out["variance"])
    out["share"] = out["variance"] / out["variance"].sum(skipna=True)
    return out
