import math

import pytest
import torch

from time_ray.core import models
from time_ray.core.batches import CaptionTokens, TrainBatches
from time_ray.core.benchmark import BenchmarkSpec, build_benchmark
from time_ray.core.evaluate import evaluate_all
from time_ray.core.finetune import NonFiniteLoss, TrainSettings, clip_loss, finetune, lr_factor
from time_ray.core.metrics import summarize
from time_ray.core.stream import Mixture, MixtureSampler, make_stream

SPEC = BenchmarkSpec(
    adaptation_datasets=2,
    heldout_datasets=1,
    classes_per_dataset=3,
    pretrain_classes=2,
    train_per_class=8,
    test_per_class=4,
)


def test_clip_loss_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits = [[2, 0], [0, 2]]: each row's CE = log(1 + e^-2)
    expected = math.log(1 + math.exp(-2))
    assert clip_loss(img, txt, torch.tensor(2.0)).item() == pytest.approx(expected)


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_factor(0, 100, 0.1, 1e-3) == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1, 1e-3) == pytest.approx(1.0)
    assert lr_factor(10, 100, 0.1, 1e-3) == pytest.approx(1.0)
    assert lr_factor(100, 100, 0.1, 1e-3) == pytest.approx(1e-3)
    assert lr_factor(55, 100, 0.1, 1e-3) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)


def test_metrics_summary_hand_computed():
    records = [
        {"role": "adaptation", "value": 0.2},
        {"role": "adaptation", "value": 0.6},
        {"role": "heldout", "value": 0.9},
    ]
    s = summarize(records)
    assert s["a_ka"] == pytest.approx(0.4) and s["a_zs"] == pytest.approx(0.9)
    assert s["gm"] == pytest.approx(0.6)


def test_finetuning_both_towers_learns_a_task_and_evaluation_is_well_formed():
    torch.manual_seed(0)
    bench = build_benchmark(SPEC)
    model = models.create_model("tiny-clip")
    before = models.state_dict_of(model)
    tokenize = models.tokenizer("tiny-clip")
    sampler = MixtureSampler(bench, make_stream(bench, 2), 1, Mixture(0, 1, 0), 24, seed=0)
    batches = TrainBatches(bench, sampler, CaptionTokens(bench, tokenize), size=models.image_size("tiny-clip"))
    stats = finetune(model, batches, TrainSettings(steps=60, batch_size=24, lr=2e-3, weight_decay=0.0))
    after = models.state_dict_of(model)
    assert stats["steps"] == 60 and math.isfinite(stats["loss"])
    assert not torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])  # image tower
    assert not torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])  # text tower
    records = evaluate_all(model, bench, tokenize)
    assert {r["dataset"] for r in records} == set(bench.datasets)
    assert all(0 <= r["value"] <= 1 and r["n_eval"] == 3 * 4 for r in records)
    task_1 = next(r for r in records if r["dataset"] == "adapt-00")
    assert task_1["value"] > 1 / 3  # better than chance on the task it was trained on


def test_a_non_finite_loss_names_the_step():
    bench = build_benchmark(SPEC)
    model = models.create_model("tiny-clip")
    with torch.no_grad():
        model.logit_scale.fill_(float("nan"))
    sampler = MixtureSampler(bench, make_stream(bench, 2), 1, Mixture(), 8, seed=0)
    with pytest.raises(NonFiniteLoss, match="at step 1 of 5"):
        batches = TrainBatches(bench, sampler, CaptionTokens(bench, models.tokenizer("tiny-clip")))
        finetune(model, batches, TrainSettings(steps=5, batch_size=8))
