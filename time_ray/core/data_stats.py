"""Is the benchmark worth simulating? The properties of a stream with real tension between
learning new concepts and keeping old ones, measured on the base model and a short run:

* the adaptation domains are partly known, as FoMo-in-Flux's are to OpenCLIP (A_KA / A_ZS = 38.5 / 67.9
  = 0.57 for ViT-B/32): the base model's A_KA / A_ZS lies in [0.4, 0.7];
* the base model knows the held-out concepts: mean held-out accuracy >= 3x chance;
* the tasks are learnable: every expert of sequential finetuning reaches >= 0.8 on its own task;
* learning them costs something: sequential finetuning over the stream loses held-out accuracy, the
  95% interval of the mean loss over the held-out datasets lying above 0.
"""

from __future__ import annotations

import tempfile

from time_ray.core.checkpoints import materialize
from time_ray.core.evaluate import zero_shot_accuracy
from time_ray.core.experiment import Experiment
from time_ray.core.intervals import seed_interval
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


def _heldout_values(records, kind_of) -> dict[str, float]:
    return {
        r["dataset"]: r["value"]
        for r in records
        if r["role"] == "heldout" and kind_of[r["dataset"]] == "classification"
    }


def _mean_over(records, role: str, kind_of, kind: str = "classification") -> tuple[float, float]:
    """(mean value, mean chance) over the classification datasets of ``role``."""
    rows = [r for r in records if r["role"] == role and kind_of[r["dataset"]] == kind]
    return (sum(r["value"] for r in rows) / len(rows), sum(r["chance"] for r in rows) / len(rows))


def benchmark_stats(experiment: Experiment, base: dict, steps: int, seed: int = 0) -> dict:
    """Measures the four properties; returns the numbers, the targets and whether each holds."""
    bench = experiment.bench
    kind_of = {name: ds.kind for name, ds in bench.datasets.items()}
    chance = {name: 1 / len(ds.classes) for name, ds in bench.datasets.items()}
    with tempfile.TemporaryDirectory() as workdir:
        rows = simulate(experiment, Policy("ft", "ft"), base, steps, workdir, seed=seed)
        expert = experiment.new_model()
        pool = CheckpointPool(f"{workdir}/pool", f"{workdir}/base.safetensors")
        own = []
        for t in range(1, experiment.tasks + 1):  # expert t on the classes of task t
            expert.load_state_dict(materialize(pool.expert(t)))
            own.append(task_accuracy(expert, experiment, t))
    base_records = [{**r, "chance": chance[r["dataset"]]} for r in rows[0]["records"] if r["role"] != "task"]
    held, held_chance = _mean_over(base_records, "heldout", kind_of)
    known = rows[0]["a_ka"] / rows[0]["a_zs"] if rows[0]["a_zs"] > 0 else float("nan")
    before, after = _heldout_values(rows[0]["records"], kind_of), _heldout_values(rows[-1]["records"], kind_of)
    lost = seed_interval([before[d] - after[d] for d in before])
    counts = {role: sum(1 for d in bench.datasets.values() if d.role == role) for role in ("adaptation", "heldout")}
    return {
        "datasets": counts,
        "retrieval_datasets": sum(1 for d in bench.datasets.values() if d.kind == "retrieval"),
        "classes": len(bench.class_names),
        "train_images": len(bench.train_labels),
        "tasks": experiment.tasks,
        "properties": [
            {
                "property": "base A_KA / A_ZS (domains partly known)",
                "value": known,
                "target": "0.4-0.7",
                "holds": 0.4 <= known <= 0.7,
            },
            {
                "property": "base held-out accuracy / chance",
                "value": held / held_chance,
                "target": ">= 3",
                "holds": held >= 3 * held_chance,
            },
            {
                "property": "worst expert's accuracy on its own task",
                "value": min(own),
                "target": ">= 0.8",
                "holds": min(own) >= 0.8,
            },
            {
                "property": "held-out accuracy lost by sequential ft",
                "value": lost.mean,
                "target": "CI > 0",
                "holds": lost.above_zero(),
                "interval": [lost.lo, lost.hi],
                "datasets": lost.n,
            },
        ],
        "expert_accuracy": own,
        "trajectory": [{k: r[k] for k in ("timestep", "a_ka", "a_zs", "gm")} for r in rows],
    }
