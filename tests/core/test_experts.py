from dataclasses import replace

import torch

from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
from time_ray.core.experts import expert_key

INIT = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2]), "logit_scale": torch.tensor(2.0)}
SETTINGS = ExperimentSettings(arch="tiny-clip", tasks=4)


def test_same_inputs_same_key_and_any_change_changes_it():
    key = expert_key(INIT, 1, 100, 0, SETTINGS)
    assert key == expert_key(
        {k: v.clone() for k, v in INIT.items()}, 1, 100, 0, ExperimentSettings.from_dict(SETTINGS.to_dict())
    )
    changed = dict(INIT, a=INIT["a"].clone())
    changed["a"][1, 2] += 1e-6
    assert expert_key(changed, 1, 100, 0, SETTINGS) != key
    assert expert_key(dict(INIT, a=INIT["a"].reshape(3, 2)), 1, 100, 0, SETTINGS) != key  # shape counts
    assert expert_key(INIT, 2, 100, 0, SETTINGS) != key
    assert expert_key(INIT, 1, 101, 0, SETTINGS) != key
    assert expert_key(INIT, 1, 100, 1, SETTINGS) != key
    assert expert_key(INIT, 1, 100, 0, replace(SETTINGS, training=TrainingRecipe(lr=2e-4))) != key
    assert expert_key(INIT, 1, 100, 0, replace(SETTINGS, stream_seed=1)) != key
    assert expert_key(INIT, 1, 100, 0, SETTINGS, multitask=True) != key


def test_scalar_tensors_count():
    key = expert_key(INIT, 1, 100, 0, SETTINGS)
    assert expert_key(dict(INIT, logit_scale=torch.tensor(2.5)), 1, 100, 0, SETTINGS) != key
