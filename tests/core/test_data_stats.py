"""The benchmark's properties (docs/method.md §6, the built-in benchmark: a stream worth simulating),
checked at a small size."""

from dataclasses import asdict

from time_ray.core.base_model import BaseTraining, builtin_base
from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.contracts import ExperimentSettings
from time_ray.core.data_stats import benchmark_stats
from time_ray.core.experiment import Experiment
from time_ray.core.stream import Mixture

SPEC = BenchmarkSpec(
    adaptation_datasets=4,
    heldout_datasets=5,
    retrieval_datasets=0,
    classes_per_dataset=5,
    pretrain_classes=20,
    train_per_class=30,
    test_per_class=10,
)


def test_small_builtin_benchmark_has_the_properties_that_make_it_worth_simulating(cache_dir):
    base, _ = builtin_base("tiny-clip", SPEC, BaseTraining(steps=400, batch_size=64, lr=2e-3))
    settings = {
        "arch": "tiny-clip",
        "benchmark": asdict(SPEC),
        "tasks": 2,
        "order": "dataset",
        "stream_seed": 0,
        "mixture": asdict(Mixture()),
        "training": {"batch_size": 32, "lr": 1e-3, "weight_decay": 0.2, "warmup": 0.1, "grad_clip": 1.0},
    }
    stats = benchmark_stats(Experiment.from_settings(ExperimentSettings.from_dict(settings)), base, steps=100)
    values = {p["property"]: p for p in stats["properties"]}
    assert stats["datasets"] == {"adaptation": 4, "heldout": 5}
    failing = [p for p in stats["properties"] if not p["holds"]]
    assert not failing, values
    assert len(stats["trajectory"]) == 3
