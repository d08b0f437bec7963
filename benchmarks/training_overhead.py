"""Training overhead: finetuning one expert through Ray Train versus the same steps in a plain PyTorch loop.

    .venv/bin/python benchmarks/training_overhead.py [--quick]

* The same function body runs in both: ``Experiment.from_settings`` (the quickstart's settings, benchmark
  read from the disk cache) -> a tiny-clip model -> ``finetune`` on task 1 with the quickstart recipe (batch
  64, AdamW, cosine schedule), seed 0: the work of ``expert_training.train_experts`` for one task, without
  the merge service. Ray: a ``TorchTrainer`` with one worker given the CPU share the sweep gives a single trial
  (``sweep.worker_resources``), on a local Ray started by ``local_ray.init_ray`` (loopback, fresh temp dir).
  Plain: called in this process (in-process benchmark cache cleared first) on as many torch threads as Ray
  gives that worker (OMP_NUM_THREADS = max(1, floor(CPU share)), Ray's rule), so the comparison is of Ray's
  overhead, not of thread counts; a separate probe times plain steps on 1 thread and on every core, since
  the thread count Ray picks is a finding of its own (on a busy 2-core machine 2 OpenMP threads can be far
  slower than 1: a parallel region waits for its descheduled thread).
* Sizes: the quickstart's 200 steps per task and 1000 steps; ``--quick``: 5 steps.
* Wall: plain = the call; Ray = ``TorchTrainer.fit()`` with Ray already running (``ray.init`` reported
  apart); for comparison, ``ray_task`` = the same body as a plain Ray task with the worker's CPU share (Ray
  without Ray Train). Time to first step: from the call (or ``fit()``) to the end of the first optimizer
  step. Step time: (end - first step) / (steps - 1), the loop once running. torch threads as seen inside.
* Rounds run plain, Ray Train, Ray task in turn (``--repeats``, default 3); medians. The overhead is the
  median over rounds of wall / plain wall - 1 within a round (runs close in time: other users' load moves
  them together).
Target: overhead <= 10% at the larger size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, emit, log, machine, median, verdict  # noqa: E402


def run_steps(config: dict) -> dict:
    """Build the experiment and model, finetune ``steps`` steps; wall-clock marks (time.time) of each phase."""
    from dataclasses import asdict

    import torch

    from time_ray.core import models
    from time_ray.core.experiment import Experiment, task_seed
    from time_ray.core.finetune import TrainSettings, finetune

    marks = {"start": time.time()}
    experiment = Experiment.from_settings(config["settings"])
    model = experiment.new_model()
    if config["ray"]:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
    settings = TrainSettings(steps=config["steps"], seed=task_seed(0, 1), **asdict(experiment.training))
    marks["setup_done"] = time.time()

    def on_step(step, loss):
        if step == 1:
            marks["first_step"] = time.time()

    finetune(
        model,
        experiment.bench,
        experiment.captions(),
        experiment.sampler(1, 0),
        settings,
        "cpu",
        on_step=on_step,
        image_size=models.image_size(experiment.arch),
    )
    marks["end"] = time.time()
    marks["torch_threads"] = torch.get_num_threads()
    marks["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return marks


def ray_train_fn(config: dict) -> None:
    """The Train worker: the same body, its marks written to a file the driver reads."""
    Path(config["marks"]).write_text(json.dumps(run_steps(config)))


def summarize(called: float, returned: float, marks: dict, steps: int) -> dict:
    return {
        "wall_s": round(returned - called, 2),
        "first_step_s": round(marks["first_step"] - called, 2),
        "setup_s": round(marks["setup_done"] - marks["start"], 2),
        "before_body_s": round(marks["start"] - called, 2),
        "after_body_s": round(returned - marks["end"], 2),
        "step_ms": round(1000 * (marks["end"] - marks["first_step"]) / max(1, steps - 1), 1),
        "torch_threads": marks["torch_threads"],
        "omp_num_threads": marks["omp_num_threads"],
    }


def plain_run(settings: dict, steps: int, threads: int) -> dict:
    import torch

    from time_ray.core.benchmark import build_benchmark

    build_benchmark.cache_clear()  # read from the disk cache, as the Ray worker does
    torch.set_num_threads(threads)
    called = time.time()
    marks = run_steps({"settings": settings, "steps": steps, "ray": False})
    return summarize(called, time.time(), marks, steps)


def thread_probe(settings: dict, steps: int) -> dict:
    """Plain step time (ms) on 1 thread and on every core, alternated twice; medians."""
    times: dict[int, list[float]] = {n: [] for n in sorted({1, os.cpu_count() or 1})}
    for _ in range(2):
        for n, t in times.items():
            t.append(plain_run(settings, steps, n)["step_ms"])
    return {f"{n}_threads_step_ms": median(t) for n, t in times.items()}


def ray_task_run(settings: dict, steps: int, per_worker: dict) -> dict:
    """The same body as a plain Ray task with the worker's CPU share: Ray without Ray Train (no controller,
    placement group or process group), to tell Train's share of the overhead from Ray's."""
    import ray

    task = ray.remote(num_cpus=per_worker["CPU"])(run_steps)
    called = time.time()
    marks = ray.get(task.remote({"settings": settings, "steps": steps, "ray": False}))
    return summarize(called, time.time(), marks, steps)


def ray_run(settings: dict, steps: int, per_worker: dict, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    marks_path = Path(storage) / f"marks-{time.time_ns()}.json"
    trainer = TorchTrainer(
        ray_train_fn,
        train_loop_config={"settings": settings, "steps": steps, "ray": True, "marks": str(marks_path)},
        scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker=per_worker),
        run_config=RunConfig(name=marks_path.stem, storage_path=storage),
    )
    called = time.time()
    trainer.fit()
    returned = time.time()
    return summarize(called, returned, json.loads(marks_path.read_text()), steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 steps, one round (a smoke run)")
    parser.add_argument("--steps", default=None, help="comma-separated step counts (default 200,1000)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds of plain + Ray (default 3)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in (args.steps or ("5" if args.quick else "200,1000")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    results = {"benchmark": "training_overhead", "steps": sizes, "repeats": repeats, "machine": machine()}

    import time_ray.orchestration  # noqa: F401  (keeps a local Ray on loopback)
    from time_ray.config import experiment_settings, load_config
    from time_ray.core.experiment import Experiment
    from time_ray.orchestration.local_ray import init_ray, shutdown_ray
    from time_ray.orchestration.sweep import worker_resources

    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    settings = experiment_settings(cfg)
    log("building (or reading) the quickstart benchmark")
    Experiment.from_settings(settings)
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short: Ray's socket paths are limited
    start = time.time()
    cluster = init_ray(temp_dir=ray_tmp)
    results["ray_init_s"] = round(time.time() - start, 2)
    per_worker, _ = worker_resources(cfg, cluster, 1)
    threads = max(1, math.floor(per_worker["CPU"]))
    results["ray_worker_resources"], results["plain_threads"] = per_worker, threads
    log("thread probe: plain steps on 1 thread and on every core")
    results["thread_probe"] = thread_probe(settings, 5 if args.quick else 30)
    try:
        with tempfile.TemporaryDirectory(prefix="tr-train-") as storage:
            for steps in sizes:
                runs = {"plain": [], "ray": [], "ray_task": []}
                for round_ in range(repeats):
                    runs["plain"].append(plain_run(settings, steps, threads))
                    runs["ray"].append(ray_run(settings, steps, per_worker, storage))
                    runs["ray_task"].append(ray_task_run(settings, steps, per_worker))
                    for kind, rs in runs.items():
                        log(f"  {steps} steps, round {round_ + 1}: {kind:<8} {rs[-1]}")
                entry = {
                    kind: {
                        key: median([r[key] for r in rs])
                        if key not in ("torch_threads", "omp_num_threads")
                        else rs[-1][key]
                        for key in rs[0]
                    }
                    for kind, rs in runs.items()
                }
                entry["runs"] = runs
                for kind, key in (("ray", "overhead"), ("ray_task", "overhead_ray_task")):
                    ratios = [r["wall_s"] / p["wall_s"] - 1 for p, r in zip(runs["plain"], runs[kind])]
                    entry[key] = round(median(ratios), 3)
                results[f"steps_{steps}"] = entry
    finally:
        shutdown_ray()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    largest = results[f"steps_{max(sizes)}"]
    notes = []
    for s in sizes:
        e = results[f"steps_{s}"]
        notes.append(
            f"{s} steps: time to first step plain {e['plain']['first_step_s']:.1f} s, Ray Train "
            f"{e['ray']['first_step_s']:.1f} s, Ray task {e['ray_task']['first_step_s']:.1f} s; step "
            f"time plain {e['plain']['step_ms']:.0f} ms, Ray Train {e['ray']['step_ms']:.0f} ms "
            f"({e['ray']['torch_threads']} thread(s) in the worker); overhead Ray Train "
            f"{100 * e['overhead']:.0f}%, Ray task {100 * e['overhead_ray_task']:.0f}%"
        )
    notes.append("thread probe (plain loop): " + ", ".join(f"{k} {v:.0f}" for k, v in results["thread_probe"].items()))
    emit(
        results,
        [
            verdict(
                f"Ray Train overhead at {max(sizes)} steps",
                100 * largest["overhead"],
                "<= 10%",
                largest["overhead"] <= 0.10,
                unit="%",
            )
        ],
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
