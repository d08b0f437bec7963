"""Every merging technique and strategy end to end on a small stream, in one process (no Ray)."""

import math
from dataclasses import asdict

import pytest

from time_ray.core.base_model import BaseTraining, builtin_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.experiment import Experiment
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
