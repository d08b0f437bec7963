"""The benchmark's properties (docs/method.md §6, the built-in benchmark: a stream worth simulating),
checked at a small size."""

from dataclasses import asdict

from time_ray.core.base_model import BaseTraining, builtin_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.data_stats import benchmark_stats, properties
from time_ray.core.experiment import Experiment
from time_ray.core.intervals import seed_interval
from time_ray.core.stream import Mixture

SPEC = BenchmarkSpec(
    adaptation_datasets=4,
    heldout_datasets=5,
    retrieval_datasets=0,
    classes_per_dataset=5,
    pretrain_classes=20,
    train_per_class=30,
    test_per_class=20,
    # 3 of each known class's 30 images: at this size (5 classes a dataset, a base of 300 steps) the held-out
    # sets are partly known as the quickstart's are at its default (2 of 40 images, 1500 steps)
    known_exposure=0.1,
)


def test_small_builtin_benchmark_has_the_properties_that_make_it_worth_simulating(cache_dir):
    base, _ = builtin_base("tiny-clip", SPEC, BaseTraining(steps=300, batch_size=64, lr=2e-3))
    settings = {
        "arch": "tiny-clip",
        "benchmark": asdict(SPEC),
        "tasks": 2,
        "order": "dataset",
        "stream_seed": 0,
        "mixture": asdict(Mixture()),
        "training": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0},
    }
    stats = benchmark_stats(Experiment.from_settings(ExperimentSettings.from_dict(settings)), base, steps=200)
    values = {p["property"]: p for p in stats["properties"]}
    assert stats["datasets"] == {"adaptation": 4, "heldout": 5}
    failing = [p for p in stats["properties"] if not p["holds"]]
    assert not failing, values
    assert len(stats["trajectory"]) == 3


def _holds(a_ka=0.4, a_zs=0.65, heldout=None, chance=0.1, own=(0.9, 0.95), lost=(0.03, 0.05, 0.04)):
    """Which properties hold for hand-made measurements (defaults: a benchmark where every one holds)."""
    base = {"a_ka": a_ka, "a_zs": a_zs, "heldout": heldout or {"a": 0.6, "b": 0.7, "c": 0.8}, "chance": chance}
    return {p["property"]: p["holds"] for p in properties(base, list(own), seed_interval(lost))}


def test_every_property_holds_on_a_benchmark_that_has_them():
    held = _holds()
    assert list(held) == [
        "base A_KA / A_ZS (domains partly known)",
        "base held-out accuracy / chance",
        "base mean held-out accuracy",
        "base max held-out accuracy",
        "worst expert's accuracy on its own task",
        "held-out accuracy lost by sequential ft",
    ]
    assert all(held.values()), held


def test_held_out_sets_at_the_ceiling_or_unknown_fail_and_the_bounds_are_inclusive():
    mean, top = "base mean held-out accuracy", "base max held-out accuracy"
    ceiling = _holds(heldout={"a": 0.99, "b": 1.0, "c": 0.98})  # the base model knows them perfectly
    assert not ceiling[mean] and not ceiling[top]
    assert not _holds(heldout={"a": 0.5, "b": 0.55, "c": 0.6})[mean]  # mean 0.55: too far from the ceiling
    one_easy = _holds(heldout={"a": 0.5, "b": 0.5, "c": 0.95})  # mean 0.65 holds, one set at 0.95 does not
    assert one_easy[mean] and not one_easy[top]
    edges = _holds(heldout={"a": 0.45, "b": 0.9})  # mean 0.675, max exactly 0.9
    assert edges[mean] and edges[top]
    assert _holds(heldout={"a": 0.6})[mean] and _holds(heldout={"a": 0.75})[mean]
    assert not _holds(heldout={"a": 0.76})[mean] and not _holds(heldout={"a": 0.59})[mean]


def test_known_ratio_chance_experts_and_loss_fail_outside_their_targets():
    ratio = "base A_KA / A_ZS (domains partly known)"
    assert _holds(a_ka=0.26, a_zs=0.65)[ratio] and _holds(a_ka=0.455, a_zs=0.65)[ratio]  # 0.4 and 0.7
    assert not _holds(a_ka=0.2, a_zs=0.65)[ratio] and not _holds(a_ka=0.6, a_zs=0.65)[ratio]
    assert not _holds(a_ka=0.4, a_zs=0.0)[ratio]  # no held-out accuracy: no ratio
    assert not _holds(chance=0.25)["base held-out accuracy / chance"]  # mean 0.7 < 3 x 0.25
    assert not _holds(own=(0.95, 0.79))["worst expert's accuracy on its own task"]
    assert not _holds(lost=(0.05, -0.04, 0.0))["held-out accuracy lost by sequential ft"]  # CI spans 0
