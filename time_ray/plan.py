"""What a sweep will cost, before anything runs: trials, unique experts after deduplication,
training GFLOPs and device hours, pool storage (`time-ray plan`)."""

from __future__ import annotations

import json

from time_ray.config import SweepConfig, expand_trials, measure_flops_per_step
from time_ray.core.contracts import Trial

DEFAULT_DEVICE_TFLOPS = 100.0  # sustained training throughput assumed for device-hours (state yours)


def init_lineage(trial: Trial, t: int) -> str:
    """What expert t of a trial starts from, as a name: every trial whose experts share it trains the
    same expert. Task 1 and the zs strategy start at theta_0; otherwise the start depends on the
    trial's own history, which its init strategy (and the settings that strategy merges with) fixes.
    ``ft`` and ``opcm`` use no merging technique: trials differing only in it share their experts."""
    policy = trial.policy
    if t == 1 or policy.init == "zs":
        return "theta_0"
    settings: dict = {"init": policy.init}
    if policy.init in ("ema", "all", "ft-zs"):
        settings |= {"merge": trial.merge, "params": trial.merge_params}
    if policy.init == "ema":
        settings |= {"ema_weight": policy.ema_weight, "ema_with_base": policy.ema_with_base}
    if policy.init == "all":
        settings |= {"recency": policy.recency, "all_with_base": policy.all_with_base}
    return json.dumps(settings, sort_keys=True)


def unique_experts(trials: list[Trial], tasks: int) -> set[tuple]:
    keys = set()
    for trial in trials:
        for t in range(1, (1 if trial.multitask else tasks) + 1):
            keys.add((init_lineage(trial, t), t, trial.budget_steps, trial.seed, trial.multitask))
    return keys


def asha_fraction(tasks: int, grace: int, reduction: int) -> float:
    """Expected share of timesteps a trial runs under ASHA (promotion of the top 1/eta at each rung
    r_k = grace * eta^k): e/T with e = g + sum_k (min(r_{k+1}, T) - r_k) / eta^(k+1)."""
    grace = min(grace, tasks)
    expected, rung, k = float(grace), grace, 0
    while rung < tasks:
        nxt = min(rung * reduction, tasks)
        expected += (nxt - rung) / reduction ** (k + 1)
        rung, k = nxt, k + 1
    return expected / tasks


def data_path(cfg: SweepConfig) -> dict:
    """How the sweep reads its images (no image decoded): for real data the image files, read per batch
    (no store is built; docs/data.md), their bytes on disk (estimated from a sample), the pretraining
    pool's shards, and the pixels one training or evaluating process holds at most."""
    from time_ray.config import experiment_settings
    from time_ray.core import models
    from time_ray.core.experiment import Experiment
    from time_ray.core.images import ImageFiles, disk_bytes, memory_per_process

    experiment = Experiment.from_settings(experiment_settings(cfg))
    bench, size = experiment.bench, models.image_size(cfg.model.arch)
    splits = [bench.train_images, bench.test_images]
    if not all(isinstance(images, ImageFiles) for images in splits):
        held = sum(images.numel() * images.element_size() for images in splits if not isinstance(images, ImageFiles))
        return {"kind": "tensors", "images": sum(len(i) for i in splits), "memory_bytes": held}
    shards = list(experiment.pool_shards)
    return {
        "kind": "files",
        "images": sum(len(i) for i in splits),
        "disk_bytes": sum(disk_bytes(images.paths) for images in splits if isinstance(images, ImageFiles)),
        "shards": len(shards),
        "shard_bytes": sum(p.stat().st_size for p in shards),
        "memory_bytes": memory_per_process(experiment.sampler(1, 0).batch_len, size),
        "augment": experiment.augment,
    }


def make_plan(
    cfg: SweepConfig,
    flops_per_step: float | None = None,
    model_bytes: int | None = None,
    device_tflops: float = DEFAULT_DEVICE_TFLOPS,
) -> dict:
    flops = flops_per_step if flops_per_step is not None else measure_flops_per_step(cfg)
    if model_bytes is None:
        from time_ray.core.models import create_model

        model_bytes = sum(p.numel() * p.element_size() for p in create_model(cfg.model.arch).state_dict().values())
    trials = expand_trials(cfg, flops)
    tasks = cfg.stream.tasks
    experts = unique_experts(trials, tasks)
    trainings = sum(1 if t.multitask else tasks for t in trials)
    gflops = sum(steps for _, _, steps, _, _ in experts) * flops / 1e9
    # the EMA chain r_t and the OPCM chain m_t (its technique-free rule) are kept per trial
    chains = sum(tasks * len({"ema", "opcm"} & {t.init, t.deploy}) for t in trials)
    stop = cfg.search.early_stopping
    fraction = asha_fraction(tasks, stop.grace_period, stop.reduction_factor) if stop.scheduler else 1.0
    return {
        "early_stopping_fraction": fraction,
        "expected_trainings_with_stopping": round(trainings * fraction),
        "trials": len(trials),
        "trials_list": trials,
        "tasks": tasks,
        "expert_trainings": trainings,
        "unique_experts": len(experts),
        "gflops_per_step": flops / 1e9,
        "train_gflops": gflops,
        "device_hours": gflops / (device_tflops * 1e3) / 3600,
        "device_tflops": device_tflops,
        "model_bytes": model_bytes,
        # the expert cache holds each unique expert once (pools reference it); each trial's pool
        # holds its own EMA chain; plus theta_0
        "storage_bytes": model_bytes * (len(experts) + chains + 1),
        "data": data_path(cfg),
    }
