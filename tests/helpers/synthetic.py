"""A synthetic sweep directory with known answers, written in the results schema (no training).

Final A_KA / A_ZS per init/deploy pair are set below (FINAL); every trajectory moves linearly from
theta_0 (A_KA 0.10, A_ZS 0.80) to its final values; every 10 steps per task beyond 10 add BUDGET_KA
to A_KA; seeds add SEED_NOISE * (seed - 1) to A_KA (mean 0 over seeds 0, 1, 2). Each timestep has two
adaptation and two held-out datasets whose values are the mean -+ 0.02, so A_KA and A_ZS are exact
means, then one row per task j (role 'task', dataset task_01..): task_value (the task x task matrix).

Companions (time_ray.analysis.companions), each written by write_sweep with its config:
  COMPUTE   the same setting, best-in-time and multitask at 40 steps per task: pooled with the sweep
  NOREPLAY  no replay: A_KA lower by NOREPLAY_KA (offline merging) or NOREPLAY_KA_OTHERS (the rest)
  WIDE      tiny-clip-wide: A_KA higher by WIDE_KA (stream policies), WIDE_MT_KA (multitask),
            WIDE_GFLOPS per training step
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from time_ray.config import expand_trials, load_config
from time_ray.core.contracts import Trial
from time_ray.core.results import metrics_frame, timesteps_frame, trials_json, write_parquet_atomic

CONFIG = """\
# time-ray sweep synthetic.yaml
name: synthetic
stream: {tasks: 3}
budget: {steps_per_task: 20, multipliers: [0.5, 1.0]}
policies:
  presets: [sequential-ft, offline-merge, best-in-time]
  multitask: true
  grid:
    - {init: [zs, ft, ema], deploy: [ft, ema, all]}
    - init: [ema]
      deploy: [ema]
      merge: [{technique: ties, lambda: 1.0, prune: 0.7}, {technique: magmax, lambda: 0.5}]
    - {init: [zs], deploy: [all], recency: [exp]}
seeds: [0, 1, 2]
"""
BASE = (0.10, 0.80)
FINAL = {  # (init, deploy) -> final (A_KA, A_ZS) at the small budget, weight averaging
    ("zs", "ft"): (0.40, 0.70),
    ("zs", "ema"): (0.35, 0.78),
    ("zs", "all"): (0.25, 0.79),
    ("ft", "ft"): (0.80, 0.55),
    ("ft", "ema"): (0.70, 0.65),
    ("ft", "all"): (0.50, 0.70),
    ("ema", "ft"): (0.72, 0.62),
    ("ema", "ema"): (0.75, 0.74),
    ("ema", "all"): (0.55, 0.75),
}
TECHNIQUE_KA = {"average": 0.0, "ties": 0.01, "magmax": -0.02}
RECENCY_KA = {"uniform": 0.0, "exp": 0.10}
MULTITASK = (0.80, 0.80)
BUDGET_KA = 0.05
SEED_NOISE = 0.004
GFLOPS_PER_STEP = 1.5
COMPANION = """\
# time-ray sweep {name}.yaml
name: {name}
{setting}stream: {{tasks: 3{mixture}}}
budget: {{steps_per_task: 20, multipliers: {multipliers}}}
policies:
  presets: {presets}
  multitask: true
seeds: [0, 1, 2]
"""
COMPUTE = COMPANION.format(
    name="synthetic-compute", setting="", mixture="", multipliers="[2.0]", presets="[best-in-time]"
)
NOREPLAY = COMPANION.format(
    name="synthetic-noreplay",
    setting="",
    mixture=", mixture: {pretrain: 0.33, current: 0.67, replay: 0.0}",
    multipliers="[1.0]",
    presets="[offline-merge, best-in-time, sequential-ft]",
)
WIDE = COMPANION.format(
    name="synthetic-wide",
    setting="model: {arch: tiny-clip-wide}\n",
    mixture="",
    multipliers="[1.0]",
    presets="[best-in-time]",
)
NOREPLAY_KA, NOREPLAY_KA_OTHERS = 0.05, 0.01
# the task rows: a task is learned to TASK_LEARNED (+ DEPLOY_TASK of the deploy strategy) when trained,
# loses TASK_FORGET per later task, and sits at TASK_UNSEEN + 0.01 j before; seeds add the A_KA noise
TASK_LEARNED, TASK_FORGET, TASK_UNSEEN = 0.90, 0.10, 0.10
DEPLOY_TASK = {"ema": 0.02}
MULTITASK_TASK = 0.80
WIDE_KA, WIDE_MT_KA, WIDE_GFLOPS = 0.06, 0.02, 4.0


def designed_values(trial: Trial, variant: str = "synthetic") -> tuple[float, float]:
    """The designed final (A_KA, A_ZS) of a trial spec in the sweep named ``variant``."""
    if trial.multitask:
        ka, zs = MULTITASK
        return ka + (WIDE_MT_KA if variant == "synthetic-wide" else 0.0), zs
    ka, zs = FINAL[(trial.init, trial.deploy)]
    ka += TECHNIQUE_KA[trial.merge] + RECENCY_KA[trial.policy.recency]
    ka += {
        "synthetic-noreplay": -(NOREPLAY_KA if trial.name == "offline-merge" else NOREPLAY_KA_OTHERS),
        "synthetic-wide": WIDE_KA,
    }.get(variant, 0.0)
    return ka + BUDGET_KA * (trial.budget_steps - 10) / 10 + SEED_NOISE * (trial.seed - 1), zs


def task_value(trial: Trial, t: int, j: int) -> float:
    """The designed accuracy on task j of the model deployed after task t (see TASK_LEARNED)."""
    if trial.multitask:
        return MULTITASK_TASK if t > 0 else TASK_UNSEEN + 0.01 * j
    if j > t:
        value = TASK_UNSEEN + 0.01 * j
    else:
        value = TASK_LEARNED + DEPLOY_TASK.get(trial.deploy, 0.0) - TASK_FORGET * (t - j)
    return value + SEED_NOISE * (trial.seed - 1)


def write_trial(
    out: Path,
    trial: Trial,
    tasks: int,
    last: int | None = None,
    variant: str = "synthetic",
    gflops_per_step: float = GFLOPS_PER_STEP,
    task_rows: bool = True,
) -> None:
    """trials/<id>/{metrics,timesteps}.parquet up to timestep ``last`` (default: T); without
    ``task_rows`` as a sweep recorded before time-ray recorded them."""
    cols = trial.columns()
    ka, zs = designed_values(trial, variant)
    timesteps = [0, tasks] if trial.multitask else list(range(tasks + 1))
    metric_rows, step_rows = [], []
    for t in [t for t in timesteps if last is None or t <= last]:
        frac = t / tasks
        a_ka, a_zs = BASE[0] + frac * (ka - BASE[0]), BASE[1] + frac * (zs - BASE[1])
        for name, role, value in (
            ("a1", "adaptation", a_ka - 0.02),
            ("a2", "adaptation", a_ka + 0.02),
            ("h1", "heldout", a_zs - 0.02),
            ("h2", "heldout", a_zs + 0.02),
        ):
            metric_rows.append(
                {
                    **cols,
                    "timestep": t,
                    "dataset": name,
                    "role": role,
                    "metric": "accuracy",
                    "value": value,
                    "n_eval": 40,
                }
            )
        for j in range(1, tasks + 1) if task_rows else ():
            metric_rows.append(
                {
                    **cols,
                    "timestep": t,
                    "dataset": f"task_{j:02d}",
                    "role": "task",
                    "metric": "accuracy",
                    "value": task_value(trial, t, j),
                    "n_eval": 20,
                }
            )
        trained = t > 0
        step_rows.append(
            {
                **cols,
                "timestep": t,
                "a_ka": a_ka,
                "a_zs": a_zs,
                "gm": math.sqrt(a_ka * a_zs),
                "train_steps": trial.budget_steps if trained else 0,
                "train_gflops": trial.budget_steps * gflops_per_step if trained else 0.0,
                "train_seconds": 1.0 * trained,
                "merge_seconds": 0.0 if trial.deploy == "ft" else 0.1 * trained,
                "eval_seconds": 0.5,
                "pool_bytes": t * 1_000_000 * (2 if "ema" in (trial.init, trial.deploy) else 1),
                "expert_cache_hit": False,
            }
        )
    write_parquet_atomic(metrics_frame(metric_rows), out / "trials" / trial.trial_id / "metrics.parquet")
    write_parquet_atomic(timesteps_frame(step_rows), out / "trials" / trial.trial_id / "timesteps.parquet")


def write_sweep(
    out: Path, skip: int = 0, truncate: int = 0, config: str = CONFIG, task_rows: bool = True
) -> list[Trial]:
    """The synthetic sweep (or a companion: ``config``) in ``out``: config.yaml, sweep.json, trials/.
    The first ``skip`` trials get no rows and the next ``truncate`` stop at timestep 1 (a partial
    sweep); without ``task_rows``, as recorded before time-ray recorded per-task rows. Returns the
    trial specs."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.yaml").write_text(config)
    cfg = load_config(out / "synthetic.yaml")
    gflops = WIDE_GFLOPS if cfg.model.arch == "tiny-clip-wide" else GFLOPS_PER_STEP
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (out / "sweep.json").write_text(json.dumps({"name": cfg.name, "fingerprint": cfg.fingerprint()}))
    trials = expand_trials(cfg)
    (out / "trials.json").write_text(trials_json(cfg.name, cfg.stream.tasks, trials))  # as the sweep does
    for i, trial in enumerate(trials):
        if i >= skip:
            write_trial(
                out,
                trial,
                cfg.stream.tasks,
                last=1 if i < skip + truncate else None,
                variant=cfg.name,
                gflops_per_step=gflops,
                task_rows=task_rows,
            )
    return trials
