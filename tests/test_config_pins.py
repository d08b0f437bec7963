"""Pins of the config's serialised form: ``SweepConfig.fingerprint()`` names result directories and
``--resume`` compares it, and ``to_dict()`` is written to each sweep's config.yaml (key order included),
so neither may change when the config layer does. The values were computed before the move to pydantic."""

import json
from pathlib import Path

import pytest

from time_ray.config import SweepConfig, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

FINGERPRINTS = {
    "quickstart.yaml": "628200a209eb115e",
    "search.yaml": "c59b7779064d883b",
    "policy-space.yaml": "acbc67a8b6249635",  # changed on purpose: opcm, tsv_m and iso_c added
    "findings-t20.yaml": "0fbb968f17e27ce0",
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
    },
    "search": {
        "samples": 0,
        "method": "sobol",
        "seed": 0,
        "space": {},
        "early_stopping": {"scheduler": None, "metric": "gm", "grace_period": 1, "reduction_factor": 2},
    },
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
    assert load_config(CONFIGS / name).fingerprint() == FINGERPRINTS[name]


def test_default_config_fingerprint_is_unchanged():
    assert SweepConfig().fingerprint() == "f87c8a567c32b923"


def test_to_dict_is_unchanged_key_order_included():
    assert json.dumps(load_config(CONFIGS / "quickstart.yaml").to_dict()) == json.dumps(QUICKSTART)
    cfg = load_config(CONFIGS / "quickstart.yaml", OVERRIDES)
    assert json.dumps(cfg.to_dict()) == json.dumps(OVERRIDDEN)
    assert cfg.fingerprint() == "fb2dbd8c9ae89ce1"
