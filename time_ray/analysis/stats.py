"""The statistics of the report: seed intervals, Pareto fronts, the variance decomposition of GM.

Pure functions of numbers and frames (numpy / pandas only)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from time_ray.core.intervals import Interval, seed_interval, t975  # noqa: F401 (re-exported)


def pareto_front(cost, value) -> np.ndarray:
    """Which points are Pareto-optimal when every cost is minimised and value maximised: point i is
    on the front unless some j has cost_j <= cost_i (every cost) and value_j >= value_i, with at
    least one strict. ``cost``: n values, or an n x k array of k costs."""
    c = np.asarray(cost, dtype=float).reshape(len(value), -1)
    v = np.asarray(value, dtype=float)
    no_worse = (c[None, :, :] <= c[:, None, :]).all(axis=2) & (v[None, :] >= v[:, None])
    better = (c[None, :, :] < c[:, None, :]).any(axis=2) | (v[None, :] > v[:, None])
    return np.asarray(~(no_worse & better).any(axis=1))


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
        rows.append(
            {
                "axis": axis,
                "levels": int(means[axis].nunique()),
                "contexts": len(varied),
                "variance": float(varied.mean()) if len(varied) else math.nan,
            }
        )
    seed_var = cells.var(ddof=1).dropna()
    rows.append(
        {
            "axis": "seed",
            "levels": int(final["seed"].nunique()),
            "contexts": len(seed_var),
            "variance": float(seed_var.mean()) if len(seed_var) else math.nan,
        }
    )
    out = pd.DataFrame(rows)
    out["std"] = np.sqrt(out["variance"])
    out["share"] = out["variance"] / out["variance"].sum(skipna=True)
    return out
