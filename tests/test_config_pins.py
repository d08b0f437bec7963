"""Pins of the config's serialised form: ``SweepConfig.fingerprint()`` names result directories and
``--resume`` compares it, and ``to_dict()`` is written to each sweep's config.yaml (key order included),
so neither may change when the config layer does (docs/config.md). Schema version 2's fingerprints hash
``config.IDENTITY`` alone; version 1's (no schema version, every section hashed) are what the sweep.json of
a directory written before it holds, and ``config.version_1_fingerprint`` must still give them."""

import json
from pathlib import Path

import pytest

from time_ray.config import SweepConfig, load_config, version_1_fingerprint

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

FINGERPRINTS = {  # schema version 2
    # changed on purpose: stream.builtin.known_exposure (its default 0.05; the findings configs pin 1.0)
    "quickstart.yaml": "5d90e64136cdcd0b",
    "search.yaml": "7df57efb229dd5d4",
    "policy-space.yaml": "2cb76b38d99fb378",
    "findings-t20.yaml": "ba8f43492c65da6e",
    "findings.yaml": "f169ed4cee7b2a86",
}
VERSION_1_FINGERPRINTS = {  # computed before the move to pydantic, as version 1's sweep.json holds them
    # changed on purpose: stream.builtin.known_exposure 0.05 is not the benchmark version 1 sweeps computed on
    # (every image, 1.0: core.benchmark.ADDED_FIELDS); the findings configs pin 1.0 and keep theirs
    "quickstart.yaml": "9b43c7bb2ce5e192",
    "search.yaml": "44d3a7cc64387dab",
    "policy-space.yaml": "428dff94c14614dc",  # changed on purpose before: opcm, tsv_m and iso_c added
    "findings-t20.yaml": "0fbb968f17e27ce0",  # also in analysis/reports/findings-t20/sweeps/findings-t20/sweep.json
    "findings.yaml": "ca89be81a59c6526",
}

# every float field given as an int, scalars for tuples, free-form real-data options (a missing path stays as typed)
OVERRIDES = [
    "training.grad_clip=1",
    "training.lr=1",
    "budget.multipliers=[1, 2]",
    "stream.mixture={pretrain: 0, current: 1, replay: 0}",
    "stream.builtin.adaptation_known=1",
    "resources.cpus_per_worker=1",
    "model.base_training.lr=1",
    "seeds=3",
    "stream.data={root: no/such/dir, heldout: [a, b], n: 2}",
    "policies.presets=offline-merge",
]

QUICKSTART = {
    "schema_version": 2,
    "name": "quickstart",
    "model": {
        "arch": "tiny-clip",
        "pretrained": "builtin",
        "base_training": {"steps": 1500, "batch_size": 128, "lr": 0.001, "weight_decay": 0.1, "seed": 0},
    },
    "stream": {
        "benchmark": "builtin",
        "data": None,
        "tasks": 4,
        "order": "dataset",
        "seed": 0,
        "mixture": {"pretrain": 0.33, "current": 0.34, "replay": 0.33},
        "captions": "template",
        "builtin": {
            "seed": 0,
            "adaptation_datasets": 14,
            "heldout_datasets": 6,
            "retrieval_datasets": 1,
            "classes_per_dataset": 10,
            "pretrain_classes": 40,
            "train_per_class": 40,
            "test_per_class": 20,
            "image_size": 32,
            "adaptation_known": 0.5,
            "known_exposure": 0.05,
        },
    },
    "training": {"batch_size": 64, "lr": 0.0001, "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0},
    "budget": {
        "steps_per_task": 200,
        "samples_per_task": None,
        "gflops_per_task": None,
        "total_steps": None,
        "multipliers": [1.0],
    },
    "policies": {"presets": ["sequential-ft", "offline-merge", "best-in-time"], "grid": None, "multitask": False},
    "seeds": [0],
    "resources": {
        "workers_per_expert": 1,
        "use_gpu": False,
        "max_concurrent_trials": None,
        "cpus_per_worker": None,
        "gpus_per_worker": None,
        "merge_actors": 1,
        "evaluators": 1,
        "warn_trials": 2000,
        "warn_device_hours": 1000.0,
    },
    "search": {
        "samples": 0,
        "method": "sobol",
        "seed": 0,
        "space": {},
        "early_stopping": {"scheduler": None, "metric": "gm", "grace_period": 1, "reduction_factor": 2},
    },
    "outputs": {"predictions": "auto"},
    "tracking": {"mlflow": None, "wandb": None},
}


def _updated(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested mappings included, keeping ``base``'s key order."""
    return {
        k: _updated(v, changes[k])
        if isinstance(v, dict) and isinstance(changes.get(k), dict) and v
        else changes.get(k, v)
        for k, v in base.items()
    }


OVERRIDDEN = _updated(  # QUICKSTART after OVERRIDES: floats given as ints come back as floats, scalars as lists
    QUICKSTART,
    {
        "model": {"base_training": {"lr": 1.0}},
        "stream": {
            "data": {"root": "no/such/dir", "heldout": ["a", "b"], "n": 2},
            "mixture": {"pretrain": 0.0, "current": 1.0, "replay": 0.0},
            "builtin": {"adaptation_known": 1.0},
        },
        "training": {"lr": 1.0, "grad_clip": 1.0},
        "budget": {"multipliers": [1.0, 2.0]},
        "policies": {"presets": ["offline-merge"]},
        "seeds": [3],
        "resources": {"cpus_per_worker": 1.0},
    },
)


@pytest.mark.parametrize("name", sorted(FINGERPRINTS))
def test_fingerprints_of_shipped_configs_are_unchanged(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.fingerprint() == FINGERPRINTS[name]
    assert version_1_fingerprint(cfg) == VERSION_1_FINGERPRINTS[name]


def test_default_config_fingerprint_is_unchanged():
    assert SweepConfig().fingerprint() == "dfd24712f41bfec1"  # changed on purpose: known_exposure
    assert version_1_fingerprint(SweepConfig()) == "5528c7b80b35bb3d"


def test_a_config_on_version_1_benchmark_keeps_its_version_1_fingerprint():
    """Version 1 sweeps pretrained theta_0 on every image of each known class: a config that says so
    (stream.builtin.known_exposure 1.0) still has the fingerprint their sweep.json holds; another value does not."""
    every_image = load_config(CONFIGS / "quickstart.yaml", ["stream.builtin.known_exposure=1"])
    assert version_1_fingerprint(every_image) == "628200a209eb115e"  # quickstart's, before the field existed
    assert every_image.fingerprint() != load_config(CONFIGS / "quickstart.yaml").fingerprint()
    half = load_config(CONFIGS / "quickstart.yaml", ["stream.builtin.known_exposure=0.5"])
    assert version_1_fingerprint(half) not in ("628200a209eb115e", VERSION_1_FINGERPRINTS["quickstart.yaml"])


def test_a_config_yaml_written_before_known_exposure_reads_as_the_benchmark_it_computed_on():
    """config.yaml writes every field: a builtin section with all of them but known_exposure was written before
    it existed, when theta_0 saw every image (1.0); a section that leaves other fields out takes the default."""
    written = load_config(CONFIGS / "quickstart.yaml").to_dict()
    del written["stream"]["builtin"]["known_exposure"]
    assert SweepConfig.model_validate(written).stream.builtin.known_exposure == 1.0
    assert load_config(CONFIGS / "quickstart.yaml").stream.builtin.known_exposure == 0.05  # image_size left out


def test_version_1_fingerprint_counts_resources_the_version_2_one_does_not():
    default = load_config(CONFIGS / "quickstart.yaml")
    for change in ("resources.merge_actors=2", "resources.use_gpu=true", "outputs.predictions=never"):
        other = load_config(CONFIGS / "quickstart.yaml", [change])
        assert other.fingerprint() == default.fingerprint()
        assert version_1_fingerprint(other) != version_1_fingerprint(default), change


def test_to_dict_is_unchanged_key_order_included():
    assert json.dumps(load_config(CONFIGS / "quickstart.yaml").to_dict()) == json.dumps(QUICKSTART)
    cfg = load_config(CONFIGS / "quickstart.yaml", OVERRIDES)
    assert json.dumps(cfg.to_dict()) == json.dumps(OVERRIDDEN)
    assert cfg.fingerprint() == "3f7f566920b5630b" and version_1_fingerprint(cfg) == "5ea4844153cd8a68"
