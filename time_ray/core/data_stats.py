"""Is the benchmark worth simulating? The properties of a stream with real tension between
learning new concepts and keeping old ones, measured on the base model and a short run:

* the base model knows the held-out concepts: mean held-out accuracy >= 3x chance;
* it does not know the adaptation concepts: mean adaptation accuracy <= 1.5x chance;
* they are learnable: an expert trained on task 1 with the budget reaches >= 0.8 on that task;
* learning them costs something: sequential finetuning over the stream loses held-out accuracy.
"""

from __future__ import annotations

import tempfile

from time_ray.core.checkpoints import materialize
from time_ray.core.evaluate import zero_shot_accuracy
from time_ray.core.experiment import Experiment
from time_ray.core.pool import CheckpointPool
from time_ray.core.simulate import simulate
from time_ray.core.strategies import Policy


def task_accuracy(model, experiment: Experiment, t: int) -> float:
    """Zero-shot accuracy on the test images of task t's classes (argmax over each dataset's classes)."""
    bench, task = experiment.bench, set(experiment.stream[t - 1])
    correct = total = 0.0
    for ds in bench.datasets.values():
        index = bench.test_indices([c for c in ds.classes if c in task])
        if len(index):
            correct += zero_shot_accuracy(model, bench, experiment.tokenize, ds, index) * len(index)
            total += len(index)
    return correct / total


def _mean_over(records, role: str, kind_of, kind: str = "classification") -> tuple[float, float]:
    """(mean value, mean chance) over the classification datasets of ``role``."""
    rows = [r for r in records if r["role"] == role and kind_of[r["dataset"]] == kind]
    return (sum(r["value"] for r in rows) / len(rows), sum(r["chance"] for r in rows) / len(rows))


def benchmark_stats(experiment: Experiment, base: dict, steps: int, seed: int = 0, log=None) -> dict:
    """Measures the four properties; returns the numbers, the targets and whether each holds."""
    bench = experiment.bench
    kind_of = {name: ds.kind for name, ds in bench.datasets.items()}
    chance = {name: 1 / len(ds.classes) for name, ds in bench.datasets.items()}
    with tempfile.TemporaryDirectory() as workdir:
        rows = simulate(experiment, Policy("ft", "ft"), base, steps, workdir, seed=seed, log=log)
        expert = experiment.new_model()
        pool = CheckpointPool(f"{workdir}/pool", f"{workdir}/base.safetensors")
        expert.load_state_dict(materialize(pool.expert(1)))
        expert_acc = task_accuracy(expert, experiment, 1)
    base_records = [{**r, "chance": chance[r["dataset"]]} for r in rows[0]["records"]]
    end_records = [{**r, "chance": chance[r["dataset"]]} for r in rows[-1]["records"]]
    held, held_chance = _mean_over(base_records, "heldout", kind_of)
    adapt, adapt_chance = _mean_over(base_records, "adaptation", kind_of)
    held_end, _ = _mean_over(end_records, "heldout", kind_of)
    counts = {role: sum(1 for d in bench.datasets.values() if d.role == role) for role in ("adaptation", "heldout")}
    return {
        "datasets": counts, "retrieval_datasets": sum(1 for d in bench.datasets.values() if d.kind == "retrieval"),
        "classes": len(bench.class_names), "train_images": len(bench.train_labels), "tasks": experiment.tasks,
        "properties": [
            {"property": "base held-out accuracy / chance", "value": held / held_chance, "target": ">= 3", "holds": held >= 3 * held_chance},
            {"property": "base adaptation accuracy / chance", "value": adapt / adapt_chance, "target": "<= 1.5", "holds": adapt <= 1.5 * adapt_chance},
            {"property": "task-1 expert accuracy on task 1", "value": expert_acc, "target": ">= 0.8", "holds": expert_acc >= 0.8},
            {"property": "held-out accuracy lost by sequential ft", "value": held - held_end, "target": "> 0", "holds": held_end < held},
        ],
        "trajectory": [{k: r[k] for k in ("timestep", "a_ka", "a_zs", "gm")} for r in rows],
    }
