import logging

import torch

from time_ray.core.base_model import BaseTraining, builtin_base, builtin_key, load_base
from time_ray.core.benchmark import BenchmarkSpec

SPEC = BenchmarkSpec(
    adaptation_datasets=1,
    heldout_datasets=1,
    classes_per_dataset=2,
    pretrain_classes=2,
    train_per_class=4,
    test_per_class=2,
)
RECIPE = BaseTraining(steps=3, batch_size=8)


def test_builtin_base_is_pretrained_once_then_reused_from_the_cache(cache_dir, caplog):
    caplog.set_level(logging.INFO, logger="time_ray")
    first, path = builtin_base("tiny-clip", SPEC, RECIPE)
    second, again = builtin_base("tiny-clip", SPEC, RECIPE)
    messages = caplog.messages
    assert path == again and path.is_relative_to(cache_dir)
    assert "pretraining" in messages[0] and "reusing" in messages[-1]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_pretraining_lines_say_elapsed_time_and_eta(cache_dir, caplog):
    caplog.set_level(logging.INFO, logger="time_ray")
    builtin_base("tiny-clip", SPEC, BaseTraining(steps=20, batch_size=8))
    steps = [m for m in caplog.messages if m.lstrip().startswith("pretraining step")]
    assert [m.split()[2] for m in steps] == [f"{s}/20" for s in (2, 4, 6, 8, 10, 12, 14, 16, 18, 20)]
    assert all(" elapsed" in m for m in steps)
    assert all("  ETA " in m for m in steps[:-1]) and "ETA" not in steps[-1]  # none once it is done


def test_cache_key_changes_with_anything_that_changes_the_weights():
    key = builtin_key("tiny-clip", SPEC, RECIPE)
    assert builtin_key("tiny-clip", SPEC, BaseTraining(steps=4, batch_size=8)) != key
    assert builtin_key("tiny-clip", BenchmarkSpec(seed=1), RECIPE) != builtin_key("tiny-clip", BenchmarkSpec(), RECIPE)


def test_local_checkpoint_path_is_loaded(tmp_path, cache_dir):
    state, path = builtin_base("tiny-clip", SPEC, RECIPE)
    loaded = load_base("tiny-clip", str(path), SPEC, RECIPE)
    assert torch.equal(loaded["logit_scale"], state["logit_scale"])
