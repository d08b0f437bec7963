"""Training overhead: finetuning one expert through Ray Train (the sweep's expert-training service, and
before it a Train run per expert) versus the same steps in a plain PyTorch loop.

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
  them together). These are the "before" columns: a fresh Train run per expert.
* The service, after those rounds on the same local Ray: the sweep's ``ExpertCache`` actor
  (named; it is the job queue) and the expert-training service (``expert_training.start_service``) with
  1 worker group of 1 worker with the same resources (``sweep.worker_resources(cfg, cluster, 1)``: the
  worker holds nearly every CPU, so the service starts after the per-run rounds, whose Train workers
  would otherwise wait for it). A job trains task 1 at seed 0 from theta_0 (``ray.put`` of the base model),
  the work of the plain body, under a new key each time (a unique string: never a cache hit); jobs are
  submitted one after another and each is timed from submit to done (``expert_cache.obtain``, which
  polls every 0.25 s, as a trial does). ``service_startup_s``: from the ``start_service`` call to the
  first job done, minus that job's training (the worker's ``train_seconds``): Train's start-up plus the
  worker's first experiment and model, paid once per sweep. Then rounds run plain and a service job in
  turn: ``service.wall_s`` per expert once running, ``service.job_overhead_s`` = wall - the worker's
  training seconds (queue polling, the init's transfer, saving and publishing the expert) and
  ``service_overhead`` = median over rounds of service wall / plain wall - 1. The plain wall includes
  building the experiment (``plain.setup_s``), which the service's worker does once;
  ``service_overhead_vs_loop`` compares with the plain wall less that setup (a one-process loop that
  keeps its experiment between experts). The queue is closed at the end and the service's task waited for.
  ``ray_worker_time_ray``: where a Ray worker imported time_ray from (workers inherit PYTHONPATH).
Targets: the service's overhead <= 10% at 200 steps (the quickstart's size); the per-run
Train overhead at the larger size is reported as before, for comparison.
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

    with experiment.batches(1, 0, steps=config["steps"]) as batches:
        finetune(model, batches, settings, "cpu", on_step=on_step)
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


def time_ray_path() -> str:
    import time_ray

    return time_ray.__file__


class Service:
    """The sweep's expert cache (job queue) and expert-training service with one worker group, as
    sweep._run_trials starts them, on the running local Ray."""

    def __init__(self, cfg, settings, cluster: dict, per_worker: dict, directory: str):
        import ray

        from time_ray.config import base_model_source
        from time_ray.core.base_model import load_base
        from time_ray.core.contracts import RunContext
        from time_ray.orchestration.expert_cache import ExpertCache
        from time_ray.orchestration.expert_training import start_service
        from time_ray.orchestration.storage import Storage
        from time_ray.orchestration.sweep import DRIVER_CPU

        storage = Storage(directory)
        self.name = f"time-ray-experts-bench-{os.getpid()}"
        self.cache = ExpertCache.options(name=self.name).remote(storage)
        self.init = ray.put(load_base(**base_model_source(cfg)))
        run = RunContext(
            storage=storage,
            settings=settings,
            expert_cache=self.name,
            workers=1,
            use_gpu=False,
            resources_per_worker=per_worker,
            driver_cpu=DRIVER_CPU,
            loopback=cluster["node_address"] == "127.0.0.1",
        )
        self.jobs = 0
        self.started = time.time()
        self.task = start_service(run, self.name, 1)

    def job(self, steps: int) -> dict:
        """One expert from submit to done: wall seconds and the worker's training seconds."""
        from time_ray.orchestration.expert_cache import ExpertJob, obtain

        self.jobs += 1
        key = f"bench-{os.getpid()}-{self.jobs}-{steps}"
        job = ExpertJob(key, 1, self.init, steps, 0, False, "bench")
        called = time.time()
        answer, info = obtain(self.cache, job, owner="bench")
        returned = time.time()
        if answer != "done":
            raise RuntimeError(f"the training service answered {answer!r}: {info}")
        return {
            "wall_s": round(returned - called, 2),
            "train_s": round(info.train_seconds, 2),
            "job_overhead_s": round(returned - called - info.train_seconds, 2),
            "step_ms": round(1000 * info.train_seconds / max(1, info.train_steps), 1),
            "returned": returned,
        }

    def close(self, timeout: float = 120.0) -> dict:
        import ray

        ray.get(self.cache.close.remote(), timeout=timeout)
        ray.get(self.task, timeout=timeout)
        return ray.get(self.cache.stats.remote())


def service_rounds(results, cfg, settings, cluster, per_worker, sizes, repeats, threads, storage) -> None:
    """The service's start-up, then rounds of plain and a service job in turn at each size."""
    log("the expert-training service: 1 worker group of 1 worker")
    service = Service(cfg, settings, cluster, per_worker, str(Path(storage) / "service"))
    first = service.job(sizes[0])
    results["service_startup_s"] = round(first["returned"] - service.started - first["train_s"], 2)
    results["service_first_job"] = {k: v for k, v in first.items() if k != "returned"}
    log(f"  service start-up {results['service_startup_s']} s (first job: {results['service_first_job']})")
    for steps in sizes:
        entry = results[f"steps_{steps}"]
        runs = {"plain_beside_service": [], "service": []}
        for round_ in range(repeats):
            runs["plain_beside_service"].append(plain_run(settings, steps, threads))
            job = service.job(steps)
            runs["service"].append({k: v for k, v in job.items() if k != "returned"})
            for kind, rs in runs.items():
                log(f"  {steps} steps, round {round_ + 1}: {kind:<20} {rs[-1]}")
        entry["runs"] |= runs
        entry["plain_beside_service"] = {
            k: median([r[k] for r in runs["plain_beside_service"]]) for k in ("wall_s", "setup_s")
        }
        entry["service"] = {k: median([r[k] for r in runs["service"]]) for k in runs["service"][0]}
        pairs = list(zip(runs["plain_beside_service"], runs["service"]))
        entry["service_overhead"] = round(median([s["wall_s"] / p["wall_s"] - 1 for p, s in pairs]), 3)
        entry["service_overhead_vs_loop"] = round(
            median([s["wall_s"] / (p["wall_s"] - p["setup_s"]) - 1 for p, s in pairs]), 3
        )
    results["service_stats"] = service.close()


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
    import ray

    results["ray_worker_time_ray"] = ray.get(ray.remote(num_cpus=0)(time_ray_path).remote())
    log(f"a Ray worker imports time_ray from {results['ray_worker_time_ray']}")
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
            service_rounds(results, cfg, settings, cluster, per_worker, sizes, repeats, threads, storage)
    finally:
        shutdown_ray()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    largest = results[f"steps_{max(sizes)}"]
    target = 200 if 200 in sizes else max(sizes)  # --quick: its one size
    notes = [
        f"service start-up {results['service_startup_s']:.1f} s (once per sweep); a Ray worker imports "
        f"time_ray from {results['ray_worker_time_ray']}"
    ]
    for s in sizes:
        e = results[f"steps_{s}"]
        notes.append(
            f"{s} steps: time to first step plain {e['plain']['first_step_s']:.1f} s, Ray Train "
            f"{e['ray']['first_step_s']:.1f} s, Ray task {e['ray_task']['first_step_s']:.1f} s; step "
            f"time plain {e['plain']['step_ms']:.0f} ms, Ray Train {e['ray']['step_ms']:.0f} ms "
            f"({e['ray']['torch_threads']} thread(s) in the worker); overhead Ray Train "
            f"{100 * e['overhead']:.0f}%, Ray task {100 * e['overhead_ray_task']:.0f}%; service: per expert "
            f"{e['service']['wall_s']:.1f} s vs plain {e['plain_beside_service']['wall_s']:.1f} s "
            f"(overhead {100 * e['service_overhead']:.0f}%, {100 * e['service_overhead_vs_loop']:.0f}% against "
            f"the plain loop without its setup; {e['service']['job_overhead_s']:.2f} s per job beyond training)"
        )
    notes.append("thread probe (plain loop): " + ", ".join(f"{k} {v:.0f}" for k, v in results["thread_probe"].items()))
    emit(
        results,
        [
            verdict(
                f"Ray Train overhead at {max(sizes)} steps, a Train run per expert (the design compared against)",
                100 * largest["overhead"],
                "<= 10%",
                largest["overhead"] <= 0.10,
                unit="%",
            ),
            verdict(
                f"expert-training service overhead per expert at {target} steps",
                100 * results[f"steps_{target}"]["service_overhead"],
                "<= 10%",
                results[f"steps_{target}"]["service_overhead"] <= 0.10,
                unit="%",
            ),
        ],
        notes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
