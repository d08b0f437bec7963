"""What a sweep will cost, before anything runs: trials, unique experts after deduplication,
training GFLOPs and device hours, pool storage (`time-ray plan`)."""

from __future__ import annotations

import json
import logging
from typing import NamedTuple

from time_ray.config import SweepConfig, expand_trials, measure_flops_per_step
from time_ray.core.benchmark import Benchmark
from time_ray.core.contracts import Trial
from time_ray.core.real_data.problems import DataProblems

logger = logging.getLogger(__name__)

DEFAULT_DEVICE_TFLOPS = 100.0  # sustained training throughput assumed for device-hours (state yours)


MEASURE_ABOVE_STEPS = 100_000  # `sweep` measures a training step's FLOPs for its size warning only beyond this


TIMED_BATCH = 16  # `plan` times steps of this batch first; the configured batch too when that is quick
TIMED_STEPS = 5  # steps timed at each batch; the first two (warm-up) are not counted
QUICK_STEP_SECONDS = 5.0  # a configured-batch step predicted faster than this is timed itself


def measure_step_seconds(cfg: SweepConfig, flops_per_step: float) -> dict:
    """Seconds of one training step of the config on this machine (CPU threads or the first GPU), images
    read from the data as the sweep reads them. Steps of a batch of ``TIMED_BATCH`` are timed first; when
    the configured batch's step, predicted from them by FLOPs (exact, ``flops_per_step``), takes less than
    ``QUICK_STEP_SECONDS`` it is timed itself, else the prediction stands (a large model at a large batch
    is estimated in seconds, not timed for hours)."""
    import torch

    batch = cfg.training.batch_size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = min(TIMED_BATCH, batch)
    seconds, flops = _timed_step(cfg, small, device)
    predicted, timed = seconds * flops_per_step / flops, small
    if small < batch and predicted < QUICK_STEP_SECONDS:
        predicted, timed = _timed_step(cfg, batch, device)[0], batch
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"seconds_per_step": predicted, "timed_batch": timed, "device": where}


def _timed_step(cfg: SweepConfig, batch: int, device: str) -> tuple[float, float]:
    """(seconds, FLOPs) of one training step at ``batch``: ``TIMED_STEPS`` real steps of task 1, after warm-up."""
    import time
    from dataclasses import replace

    from time_ray.config import experiment_settings
    from time_ray.core.experiment import Experiment

    settings = experiment_settings(cfg)
    experiment = Experiment.from_settings(replace(settings, training=replace(settings.training, batch_size=batch)))
    model = experiment.new_model().to(device)
    stamps: list[float] = []
    experiment.train_expert(
        model, 1, TIMED_STEPS, 0, device, on_step=lambda step, loss: stamps.append(time.perf_counter())
    )
    warm = stamps[1:]  # from the end of the second step
    return (warm[-1] - warm[0]) / (len(warm) - 1), experiment.flops_per_step(model, device)


def size_warnings(
    cfg: SweepConfig, trials: list[Trial], flops_per_step: float | None = None, tflops: float = DEFAULT_DEVICE_TFLOPS
) -> list[str]:
    """Lines that say a sweep is larger than ``resources.warn_trials`` trials or ``resources.warn_device_hours``
    device-hours (at ``tflops`` sustained): what ``plan`` prints and ``sweep`` logs before it starts.
    Without ``flops_per_step``, one step is measured only when the unique experts' steps pass
    ``MEASURE_ABOVE_STEPS`` (below it no sweep comes near the device-hours warning)."""
    warnings = []
    r = cfg.resources
    if len(trials) > r.warn_trials:
        warnings.append(
            f"this sweep has {len(trials):,} trials, more than resources.warn_trials ({r.warn_trials:,}); "
            "check search.samples, the grid and the seeds (raise the setting to silence this)"
        )
    steps = sum(s for _, _, s, _, _ in unique_experts(trials, cfg.stream.tasks))
    if flops_per_step is None and steps > MEASURE_ABOVE_STEPS:
        flops_per_step = measure_flops_per_step(cfg)
    hours = steps * (flops_per_step or 0.0) / (tflops * 1e12) / 3600
    if hours > r.warn_device_hours:
        warnings.append(
            f"this sweep trains {steps:,} steps, about {hours:,.3g} device-hours at {tflops:g} "
            f"TFLOP/s, more than resources.warn_device_hours ({r.warn_device_hours:g}); check the budget "
            "(raise the setting to silence this)"
        )
    return warnings


# what every line of plan's trial list shows; the other policy columns (core.results.POLICY_COLUMNS) are shown
# where they tell apart trials of one policy name
TRIAL_LINE = ("init", "deploy", "merge", "merge_params", "budget_steps", "seed")


def trial_lines(trials: list[Trial]) -> list[str]:
    """``plan``'s line per trial: its id, init, deploy, technique and parameters, steps per task and seed, plus
    every other policy column (``ema_weight``, ``ema_with_base``, ``all_with_base``, ``recency``) whose value
    differs between trials of the same policy name, so that no two lines of a name read the same."""
    columns = {t.trial_id: t.columns() for t in trials}
    values: dict[str, dict[str, set[str]]] = {}
    for t in trials:
        for name, value in columns[t.trial_id].items():
            values.setdefault(t.name, {}).setdefault(name, set()).add(str(value))
    lines = []
    for t in trials:
        row = columns[t.trial_id]
        differing = [
            k for k, seen in values[t.name].items() if k not in ("trial_id", "policy", *TRIAL_LINE) and len(seen) > 1
        ]
        extra = "".join(f" {k}={row[k]}" for k in differing)
        lines.append(
            f"  {t.trial_id:<40} init={t.init:<6} deploy={t.deploy:<6} merge={t.merge} "
            f"{t.merge_params or ''} steps/task={t.budget_steps} seed={t.seed}{extra}"
        )
    return lines


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


class DataOutline(NamedTuple):
    """What :func:`data_outline` returns."""

    rows: list[dict]  # a row per dataset: name, role, classes, images...
    tasks: list[list[str]]  # each task's ``dataset+++class`` names
    size: int  # the image size
    bench: Benchmark  # images by path
    problems: DataProblems  # what is wrong with the data, every offender


def data_outline(cfg: SweepConfig, strict: bool = True) -> DataOutline:
    """The config's datasets, tasks, image size, benchmark and data problems, without decoding an image
    (every image file's header is read once, :func:`~time_ray.core.real_data.problems.check_images`).
    ``plan``, ``data show`` and ``sweep`` (before it claims its output directory) all check the data
    through it. ``strict`` (``plan``, ``sweep``): unreadable images are a ConfigError and the other problems
    are logged as warnings; otherwise (``data show``) they are only returned."""
    from time_ray.core.errors import ConfigError
    from time_ray.core.real_data import dataset_row, outline_real_data
    from time_ray.core.real_data.problems import find_problems
    from time_ray.core.stream import make_stream

    if cfg.stream.benchmark == "builtin":
        from time_ray.core.benchmark import build_benchmark

        bench, pairs, size = build_benchmark(cfg.stream.builtin), None, cfg.stream.builtin.image_size
        rows = [dataset_row(bench, d.name, d.role, d.kind, d.template, d.classes) for d in bench.datasets.values()]
        if bench.generic_classes:
            rows.append(dataset_row(bench, "pretrain", "pretrain", "classification", None, bench.generic_classes))
    else:
        from time_ray.core.models import image_size

        rows, bench, pairs = outline_real_data(cfg.stream.benchmark, cfg.stream.data)
        size = image_size(cfg.model.arch)
    try:
        stream = make_stream(bench, cfg.stream.tasks, cfg.stream.order, cfg.stream.seed, pairs)
    except ValueError as exc:
        raise ConfigError(f"stream: {exc}.") from None
    names = [[f"{bench.class_dataset[c]}+++{bench.class_names[c]}" for c in task] for task in stream]
    problems = find_problems(bench, images=cfg.stream.benchmark != "builtin")
    if strict:
        if (error := problems.error()) is not None:
            raise ConfigError(error)
        for warning in problems.warnings():
            logger.warning("time-ray: warning: %s", warning)
    return DataOutline(rows, names, size, bench, problems)


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
    time_here: bool = False,
) -> dict:
    """What the sweep costs. ``time_here``: also the training time on this machine, from steps timed here
    (:func:`measure_step_seconds`)."""
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
        "warnings": size_warnings(cfg, trials, flops, device_tflops),
        "here": _time_here(cfg, flops, experts) if time_here else None,
    }


def _time_here(cfg: SweepConfig, flops: float, experts: set[tuple]) -> dict:
    """The unique experts' training time on this machine, one expert at a time."""
    timed = measure_step_seconds(cfg, flops)
    steps = sum(s for _, _, s, _, _ in experts)
    return timed | {"train_seconds": steps * timed["seconds_per_step"]}
