"""Seed intervals, Pareto fronts and the variance split, against hand-computed answers."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from time_ray.analysis.stats import pareto_front, seed_interval, t975, variance_decomposition


def test_t_quantiles_match_the_table_and_the_expansion_joins_it():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(30) == 2.042
    assert t975(31) == pytest.approx(2.0395, abs=2e-4)  # Student t_{0.975, 31}
    assert t975(120) == pytest.approx(1.9799, abs=2e-4)
    assert t975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_seed_interval_is_the_t_interval_of_the_mean():
    iv = seed_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, n 3: half-width 4.303 / sqrt(3)
    half = 4.303 / math.sqrt(3)
    assert (iv.mean, iv.n) == (2.0, 3)
    assert iv.lo == pytest.approx(2 - half) and iv.hi == pytest.approx(2 + half)
    assert not iv.above_zero() and "[95% CI -0.484, +4.484; 3 seeds]" in iv.text()  # includes 0
    pair = seed_interval([0.1, 0.3])  # sd 0.1414, half-width 12.706 * 0.1414 / sqrt(2) = 1.2706
    assert pair.lo == pytest.approx(0.2 - 1.2706, abs=1e-4) and not pair.above_zero()
    one = seed_interval([0.05, float("nan")])
    assert (one.n, one.lo, one.hi) == (1, 0.05, 0.05) and one.above_zero() and "1 seed, no interval" in one.text()
    assert seed_interval([]).n == 0


def test_pareto_front_of_hand_made_points():
    cost = [1.0, 2.0, 2.0, 3.0, 0.5, 2.0]
    value = [0.5, 0.6, 0.4, 0.6, 0.3, 0.6]
    # (3, .6) is beaten by (2, .6); (2, .4) by (1, .5); the two identical (2, .6) do not beat each other
    assert pareto_front(cost, value).tolist() == [True, True, False, False, True, True]


def test_pareto_front_with_several_costs():
    costs = np.array([[1, 5], [2, 1], [2, 5], [1, 1], [3, 5]])  # (GFLOPs, MiB)
    value = [0.7, 0.7, 0.8, 0.6, 0.75]
    # rows 0 and 1 trade one cost for the other; row 2 is the best, row 3 the cheapest; row 4 costs
    # more than row 2 in both and is worse
    assert pareto_front(costs, value).tolist() == [True, True, True, True, False]


EFFECTS = {
    "init": {"zs": 0.0, "ft": 0.2},
    "deploy": {"ft": 0.0, "ema": 0.1, "all": 0.2},
    "technique": {"average": 0.0, "ties": 0.02},
    "budget": {50.0: 0.0, 200.0: 0.1},
}


def _design(seeds_noise=(0.0,)):
    rows = []
    for combo in itertools.product(*(d.items() for d in EFFECTS.values())):
        for seed, noise in enumerate(seeds_noise):
            row = dict(zip(EFFECTS, (level for level, _ in combo)))
            rows.append({**row, "settings": "", "seed": seed, "gm": 0.3 + sum(e for _, e in combo) + noise})
    return pd.DataFrame(rows)


def test_variance_split_of_a_balanced_additive_design():
    split = variance_decomposition(_design(seeds_noise=(-0.01, 0.01))).set_index("axis")
    # population variance of each axis' effects; seed: sample variance of (-0.01, +0.01) = 0.0002
    expected = {"init": 0.01, "deploy": 0.02 / 3, "technique": 0.0001, "budget": 0.0025, "seed": 0.0002}
    total = sum(expected.values())
    for axis, var in expected.items():
        assert split.loc[axis, "variance"] == pytest.approx(var)
        assert split.loc[axis, "share"] == pytest.approx(var / total)
    assert math.isnan(split.loc["settings", "variance"]) and split.loc["settings", "contexts"] == 0
    assert split.loc["init", "contexts"] == 3 * 2 * 2  # every deploy x technique x budget
    assert split.share.sum() == pytest.approx(1.0)


def test_variance_split_compares_an_axis_only_with_itself():
    """A technique tried at one init/deploy pair only: its component is its own effect, not the
    difference between that pair and the others."""
    frame = _design()
    frame = frame[(frame.technique == "average") | ((frame.init == "ft") & (frame.deploy == "ema"))]
    split = variance_decomposition(frame).set_index("axis")
    assert split.loc["technique", "variance"] == pytest.approx(0.0001)
    assert split.loc["technique", "contexts"] == 2  # ft/ema at both budgets
    assert split.loc["init", "variance"] == pytest.approx(0.01)
    assert math.isnan(split.loc["seed", "variance"])
