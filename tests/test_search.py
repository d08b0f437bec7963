"""Random / quasi-random search over continuous hyperparameters, crossed with the grid, and the
early-stopping settings (`search:` in a sweep config)."""

import pytest

from time_ray.config import ConfigError, expand_trials, load_config, search_points
from time_ray.plan import asha_fraction, make_plan

GRID = (
    "policies.grid={init: [zs], deploy: [ema, ft], "
    "merge: [{technique: ties}, {technique: average}, {technique: slerp}]}"
)


def cfg_with(*sets):
    return load_config("configs/quickstart.yaml", ["policies.presets=[]", GRID, *sets])


def test_points_are_seeded_inside_their_bounds_and_methods_differ():
    sets = ["search={samples: 8, space: {lambda: [0.2, 1.5], prune: [0.05, 0.9]}}"]
    sobol = search_points(cfg_with(*sets).search)
    assert sobol == search_points(cfg_with(*sets).search)  # same seed, same points
    assert len(sobol) == 8 and all(0.2 <= p["lambda"] <= 1.5 and 0.05 <= p["prune"] <= 0.9 for p in sobol)
    random = search_points(cfg_with(*sets, "search.method=random").search)
    assert random != sobol and search_points(cfg_with(*sets, "search.seed=1").search) != sobol
    # low discrepancy: 8 Sobol points put exactly one point in each eighth of every axis
    assert sorted(int((p["lambda"] - 0.2) / 1.3 * 8) for p in sobol) == list(range(8))


def test_each_policy_gets_the_draws_of_the_parameters_it_has():
    cfg = cfg_with("search={samples: 3, space: {lambda: [0.2, 1.5], t: [0.1, 0.9], ema_weight: [0.2, 0.8]}}")
    points = search_points(cfg.search)
    trials = expand_trials(cfg, flops_per_step=1e9)

    def by(merge, deploy):
        return [t for t in trials if t.merge == merge and t.deploy == deploy]

    # ties has lambda (not t); with deploy ema it also gets ema_weight: 3 draws
    assert [t.merge_params["lambda"] for t in by("ties", "ema")] == [p["lambda"] for p in points]
    assert [t.policy.ema_weight for t in by("ties", "ema")] == [p["ema_weight"] for p in points]
    assert all("t" not in t.merge_params for t in by("ties", "ema"))
    assert [t.merge_params["t"] for t in by("slerp", "ft")] == [p["t"] for p in points]
    # average under deploy ft has none of them: one trial, unchanged
    assert len(by("average", "ft")) == 1 and by("average", "ft")[0].merge_params == {}
    assert len(by("average", "ema")) == 3 and len({t.trial_id for t in trials}) == len(trials)


def test_search_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"search.space.lamda: not a continuous hyperparameter. Did you mean lambda"):
        cfg_with("search={samples: 2, space: {lamda: [0, 1]}}")
    with pytest.raises(ConfigError, match=r"search.space.prune: expected \[low, high\] with low < high"):
        cfg_with("search={samples: 2, space: {prune: [0.9, 0.1]}}")
    with pytest.raises(ConfigError, match=r"search.space.prune: must be in \[0, 1\)"):
        cfg_with("search={samples: 2, space: {prune: [0.5, 1.5]}}")
    with pytest.raises(ConfigError, match="search.samples is 0"):
        cfg_with("search={space: {lambda: [0, 1]}}")
    with pytest.raises(ConfigError, match="search.method: unknown value 'grid'|search.method.*grid"):
        cfg_with("search={samples: 2, method: grid, space: {lambda: [0, 1]}}")
    with pytest.raises(ConfigError, match="search.early_stopping.scheduler"):
        cfg_with("search.early_stopping.scheduler=hyperband")


def test_asha_expected_share_of_timesteps():
    # T=4, grace 1, eta 2: every trial runs timestep 1, half reach 2, a quarter reach 3 and 4
    assert asha_fraction(4, 1, 2) == (1 + 1 / 2 + 2 / 4) / 4
    assert asha_fraction(1, 1, 2) == 1.0 and asha_fraction(8, 8, 2) == 1.0
    assert asha_fraction(9, 1, 3) == pytest.approx((1 + 2 / 3 + 6 / 9) / 9)
    plan = make_plan(cfg_with("search.early_stopping.scheduler=asha"), flops_per_step=1e9, model_bytes=1)
    assert plan["early_stopping_fraction"] == 0.5
    assert plan["expected_trainings_with_stopping"] == plan["expert_trainings"] // 2


def test_the_shipped_search_config():
    cfg = load_config("configs/search.yaml")
    trials = expand_trials(cfg, flops_per_step=1e9)
    # sequential-ft x 2 budgets + (2 init x 2 deploy x 3 techniques) x 6 Sobol draws x 2 budgets
    assert len(trials) == 2 + 12 * 6 * 2
    assert {t.merge_params["lambda"] for t in trials if t.merge == "ties"} == {
        p["lambda"] for p in search_points(cfg.search)
    }
    plan = make_plan(cfg, flops_per_step=1e9, model_bytes=1)
    assert plan["early_stopping_fraction"] == 0.5 and plan["expected_trainings_with_stopping"] == 146 * 4 // 2
