"""Every merging technique and strategy end to end on a small stream, in one process (no Ray)."""

import math
from dataclasses import asdict

import pytest

from time_ray.core.base_model import BaseTraining, builtin_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.experiment import Experiment
from time_ray.core.experts import expert_key
from time_ray.core.merging import TECHNIQUES, make_technique
from time_ray.core.simulate import simulate
from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES, Policy
from time_ray.core.stream import Mixture

SPEC = BenchmarkSpec(
    adaptation_datasets=3,
    heldout_datasets=2,
    classes_per_dataset=3,
    pretrain_classes=4,
    train_per_class=6,
    test_per_class=4,
)
SETTINGS = {
    "arch": "tiny-clip",
    "benchmark": asdict(SPEC),
    "tasks": 2,
    "order": "dataset",
    "stream_seed": 0,
    "mixture": asdict(Mixture()),
    "training": {"batch_size": 8, "lr": 1e-3, "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0},
}


@pytest.fixture(scope="module")
def setup(cache_dir):
    base, _ = builtin_base("tiny-clip", SPEC, BaseTraining(steps=5, batch_size=8))
    return Experiment.from_settings(ExperimentSettings.from_dict(SETTINGS)), base


def check(rows, tasks=2):
    assert [r["timestep"] for r in rows] == list(range(tasks + 1))
    for r in rows:
        assert all(0 <= rec["value"] <= 1 for rec in r["records"]) and math.isfinite(r["gm"])


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_every_technique_runs_in_the_ema_chain(setup, tmp_path, technique):
    experiment, base = setup
    rows = simulate(experiment, Policy("ema", "ema", technique=make_technique(technique)), base, 2, tmp_path)
    check(rows)


@pytest.mark.parametrize("init", INIT_STRATEGIES)
@pytest.mark.parametrize("deploy", DEPLOY_STRATEGIES)
def test_every_init_deploy_pair_runs(setup, tmp_path, init, deploy):
    experiment, base = setup
    check(simulate(experiment, Policy(init, deploy), base, 2, tmp_path))


def evaluations(experiment, monkeypatch) -> list[tuple[bool, int]]:
    """Records (subset, seed) of every evaluation ``experiment`` runs."""
    calls, evaluate = [], experiment.evaluate

    def spy(model, device="cpu", subset=False, seed=0):
        calls.append((subset, seed))
        return evaluate(model, device, subset, seed)

    monkeypatch.setattr(experiment, "evaluate", spy)
    return calls


def test_full_test_sets_at_every_timestep_by_default(setup, tmp_path, monkeypatch):
    experiment, base = setup
    calls = evaluations(experiment, monkeypatch)
    check(simulate(experiment, Policy("ft", "ft"), base, 2, tmp_path))
    assert calls == [(False, 0)] * 3


def test_subset_evaluates_as_a_sweep_trial_does(setup, tmp_path, monkeypatch):
    """Seeded subsets during the stream, the full test sets at its last timestep (trial.TrialDriver.drive)."""
    experiment, base = setup
    calls = evaluations(experiment, monkeypatch)
    check(simulate(experiment, Policy("ft", "ft"), base, 2, tmp_path, subset=True, eval_seed=5))
    assert calls == [(True, 5), (True, 5), (False, 5)]


def test_expert_cache_trains_each_distinct_expert_once(setup, tmp_path, monkeypatch):
    """Experts equal across policies are trained once, as the sweep's expert cache does: ft/ft and
    ft/ema share both experts; zs/ft shares only expert 1 (its init is theta_0 for every task)."""
    experiment, base = setup
    trained = []
    train = experiment.train_expert
    monkeypatch.setattr(
        experiment, "train_expert", lambda model, t, *a, **k: trained.append(t) or train(model, t, *a, **k)
    )
    plain = simulate(experiment, Policy("ft", "ema"), base, 2, tmp_path / "plain")
    assert trained == [1, 2]
    cache: dict = {}
    hits = {}
    for init, deploy in (("ft", "ft"), ("ft", "ema"), ("zs", "ft")):
        rows = simulate(experiment, Policy(init, deploy), base, 2, tmp_path / f"{init}-{deploy}", experts=cache)
        check(rows)
        hits[init, deploy] = [r["expert_cache_hit"] for r in rows[1:]]
        if (init, deploy) == ("ft", "ema"):  # reused experts give the same results as trained ones
            assert [r["records"] for r in rows] == [r["records"] for r in plain]
    assert hits == {("ft", "ft"): [False, False], ("ft", "ema"): [True, True], ("zs", "ft"): [True, False]}
    assert trained == [1, 2, 1, 2, 2] and len(cache) == 3
    # addressed as the sweep's expert cache addresses them: expert 1 starts at theta_0
    assert expert_key(base, 1, 2, 0, experiment.settings) in cache
    assert expert_key(base, 1, 2, 0, experiment.settings, multitask=True) not in cache
    assert "expert_cache_hit" not in plain[1]
