"""The frozen dataclasses that cross process boundaries (core.contracts): typed, pickled for Ray,
built once from the config, and the expert cache's address unchanged by the move from dicts."""

import pickle
from dataclasses import FrozenInstanceError, asdict

import pytest

from time_ray.config import expand_trials, experiment_settings, load_config
from time_ray.core.contracts import ExperimentSettings, ExpertInfo, TimestepCosts, TrainingRecipe, Trial
from time_ray.core.experts import expert_key
from time_ray.core.policy_defaults import POLICY_DEFAULTS
from time_ray.core.results import POLICY_COLUMNS, TIMESTEP_COLUMNS
from time_ray.core.strategies import Policy


def test_a_misspelt_field_fails_at_construction():
    with pytest.raises(TypeError, match="budget_step"):
        Trial(
            trial_id="x", name="p", policy=Policy("zs", "ft"), merge="average", merge_params={}, budget_step=3, seed=0
        )
    with pytest.raises(TypeError, match="train_step"):
        ExpertInfo(train_step=3)
    costs = TimestepCosts()
    with pytest.raises(FrozenInstanceError):
        costs.train_steps = 3  # type: ignore[misc]


def test_trials_are_parsed_once_and_pickle_with_their_policy():
    cfg = load_config("configs/quickstart.yaml", ["policies.grid={init: [ema], deploy: [ema], merge: [ties]}"])
    trials = expand_trials(cfg)
    ties = next(t for t in trials if t.merge == "ties")
    assert isinstance(ties.policy, Policy) and ties.policy.technique.name == "ties"
    assert (ties.init, ties.deploy) == ("ema", "ema")
    again = pickle.loads(pickle.dumps(ties))
    assert again == ties and again.policy.technique.params() == ties.policy.technique.params()
    # the policy columns of the results schema, in its order, with the defaults of core.policy_defaults
    columns = ties.columns()
    assert list(columns) == POLICY_COLUMNS
    assert columns["ema_weight"] == str(POLICY_DEFAULTS["ema_weight"]) == "0.5"
    assert columns["recency"] == POLICY_DEFAULTS["recency"] and columns["ema_with_base"] is True
    assert ties.to_json() == {**columns, "multitask": False}


def test_policy_defaults_live_in_one_place():
    policy = Policy("zs", "ft")
    assert {k: getattr(policy, k) for k in POLICY_DEFAULTS} == POLICY_DEFAULTS


def test_experiment_settings_keep_the_expert_cache_address():
    """Experts are addressed by a hash over the settings' dict: the typed settings must give exactly
    the dict the sweep hashed before (else every cached expert would be trained again)."""
    # the calibration the quickstart had when these addresses were made (core.benchmark.ADDED_FIELDS)
    cfg = load_config("configs/quickstart.yaml", ["stream.builtin.known_exposure=1.0"])
    settings = experiment_settings(cfg)
    before = {  # config.experiment_settings as it was, a plain dict
        "arch": cfg.model.arch,
        "benchmark": asdict(cfg.stream.builtin),
        "tasks": cfg.stream.tasks,
        "benchmark_kind": cfg.stream.benchmark,
        "data": cfg.stream.data,
        "order": cfg.stream.order,
        "stream_seed": cfg.stream.seed,
        "mixture": asdict(cfg.stream.mixture),
        "training": {
            "batch_size": cfg.training.batch_size,
            "lr": cfg.training.lr,
            "weight_decay": cfg.training.weight_decay,
            "warmup": cfg.training.warmup,
            "grad_clip": cfg.training.grad_clip,
        },
        "captions": cfg.stream.captions,
    }
    assert settings.to_dict() == before
    init = {"w": __import__("torch").ones(3)}
    # the address the sweep's expert cache gave this expert before (experts/<key>.safetensors stay found)
    assert expert_key(init, 1, 10, 0, settings) == "86087d7f05300ef2b48ab757c0953261"
    assert expert_key(init, 1, 10, 0, settings, multitask=True) == "87ed147c487362f10f8703a136821f77"
    # other data, another expert: the default calibration (2 of 40 images of each known class) has its own
    calibrated = experiment_settings(load_config("configs/quickstart.yaml"))
    assert calibrated.benchmark.known_exposure == 0.05
    assert expert_key(init, 1, 10, 0, calibrated) not in ("86087d7f05300ef2b48ab757c0953261", None)
    assert ExperimentSettings.from_dict(settings.to_dict()) == settings
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert isinstance(settings.training, TrainingRecipe)


def test_timestep_costs_are_the_cost_columns_of_a_row():
    expert = ExpertInfo.trained(steps=7, seconds=1.5, gflops=2.0, loss=0.3)
    costs = TimestepCosts.of(expert, merge_seconds=0.25, pool_bytes=1024)
    row = costs.to_row()
    assert set(row) <= set(TIMESTEP_COLUMNS)
    assert row == {
        "train_steps": 7,
        "train_gflops": 2.0,
        "train_seconds": 1.5,
        "merge_seconds": 0.25,
        "eval_seconds": 0.0,
        "pool_bytes": 1024,
        "expert_cache_hit": False,
        "expert_train_steps": 7,
        "expert_train_gflops": 2.0,
        "expert_train_seconds": 1.5,
    }
    hit = TimestepCosts.of(ExpertInfo.cache_hit(expert), 0.0, 0)  # this trial paid nothing; the expert took 7 steps
    assert hit.expert_cache_hit and (hit.train_steps, hit.train_gflops, hit.train_seconds) == (0, 0.0, 0.0)
    assert (hit.expert_train_steps, hit.expert_train_gflops, hit.expert_train_seconds) == (7, 2.0, 1.5)
    # info kept by an older version (train_* only) still gives the expert's own cost
    old = ExpertInfo(train_steps=7, train_seconds=1.5, train_gflops=2.0, loss=0.3)
    assert ExpertInfo.cache_hit(old).expert_train_steps == 7 and ExpertInfo.cache_hit().expert_train_steps == 0
    # info_<t>.json round trip, tolerant of keys written by older versions
    assert ExpertInfo.from_json({**expert.to_json(), "old_key": 1}) == expert
