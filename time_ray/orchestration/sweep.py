"""A sweep: every trial of a config as a Ray Tune function trial, then one long-format table."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from time_ray.config import SweepConfig, expand_trials, experiment_settings
from time_ray.core.base_model import load_base
from time_ray.core.checkpoints import save_atomic
from time_ray.core.errors import TimeRayError
from time_ray.core.results import METRICS_COLUMNS, TIMESTEP_COLUMNS, write_parquet_atomic


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_output(cfg: SweepConfig, output: Path, resume: bool) -> None:
    """Claims ``output`` for this sweep: never mixes two sweeps' results in one directory."""
    output.mkdir(parents=True, exist_ok=True)
    marker = output / "sweep.json"
    if marker.exists():
        previous = json.loads(marker.read_text())
        if previous.get("fingerprint") != cfg.fingerprint():
            raise TimeRayError(
                f"output {output}: holds the results of another sweep ({previous.get('name')!r}, config "
                f"fingerprint {previous.get('fingerprint')}; this config is {cfg.fingerprint()}). "
                "Choose another --output directory, or delete that one.")
        if not resume:
            raise TimeRayError(
                f"output {output}: already holds results of this sweep. Pass --resume to finish the "
                "unfinished trials, or choose another --output directory.")
    marker.write_text(json.dumps({"name": cfg.name, "fingerprint": cfg.fingerprint()}, indent=2))
    (output / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def finished(output: Path, trial: dict, tasks: int) -> bool:
    path = output / "trials" / trial["trial_id"] / "timesteps.parquet"
    return path.exists() and int(pd.read_parquet(path).timestep.max()) == tasks


DRIVER_CPU = 0.01  # a trial driver only waits and evaluates; merges run in the merge actor
MIN_WORKER_CPU = 0.5


def worker_resources(cfg: SweepConfig, cluster: dict, n_trials: int) -> tuple[dict, int]:
    """CPUs (and GPUs) per Train worker and how many trials run at once, from the cluster's
    resources: as many trials as fit with at least half a CPU per worker (drivers' 0.01 CPU counted),
    the CPUs shared equally among them, so no trial waits for a worker that cannot be placed."""
    workers = cfg.resources.workers_per_expert
    cpus = float(cluster.get("CPU", 1))
    limit = min(n_trials, cfg.resources.max_concurrent_trials or n_trials)
    concurrent = max(1, min(limit, math.floor(cpus / (workers * MIN_WORKER_CPU + DRIVER_CPU))))
    share = (cpus - DRIVER_CPU * concurrent) / (concurrent * workers)
    per_worker: dict = {"CPU": max(0.01, math.floor(share * 100) / 100)}  # rounded down: N shares fit
    if cfg.resources.use_gpu:
        gpus = float(cluster.get("GPU", 0))
        if gpus <= 0:
            raise TimeRayError("resources.use_gpu: true, but the Ray cluster has no GPU.")
        per_worker["GPU"] = min(1.0, gpus / (concurrent * workers))
    return per_worker, concurrent


def run_sweep(cfg: SweepConfig, output: str | Path, resume: bool = False, verbose: bool = False,
              ray_temp_dir: str | None = None) -> pd.DataFrame:
    """Runs the sweep and writes DIR/metrics.parquet, DIR/timesteps.parquet, DIR/config.yaml."""
    output = Path(output).resolve()
    prepare_output(cfg, output, resume)
    trials = expand_trials(cfg)
    todo = [t for t in trials if not (resume and finished(output, t, cfg.stream.tasks))]
    for trial in todo:  # a trial that did not finish starts over from a clean slate
        shutil.rmtree(output / "trials" / trial["trial_id"], ignore_errors=True)
        shutil.rmtree(output / "pool" / trial["trial_id"], ignore_errors=True)
    log(f"time-ray: sweep {cfg.name!r}: {len(trials)} trials, {cfg.stream.tasks} tasks each "
        f"({len(trials) - len(todo)} already finished) -> {output}")

    base_path = output / "base.safetensors"
    if not base_path.exists():
        save_atomic(load_base(cfg.model.arch, cfg.model.pretrained, cfg.stream.builtin,
                              cfg.model.base_training, log), base_path)
    if todo:
        _run_trials(cfg, todo, output, base_path, verbose, ray_temp_dir)
    return collect(output, trials)


def _run_trials(cfg, todo, output, base_path, verbose, ray_temp_dir) -> None:
    import ray
    from ray import tune

    from time_ray.orchestration.local_ray import init_ray
    from time_ray.orchestration.progress import ProgressPrinter
    from time_ray.orchestration.trial import run_trial

    cluster = init_ray(verbose=verbose, temp_dir=ray_temp_dir)
    per_worker, concurrent = worker_resources(cfg, cluster, len(todo))
    log(f"time-ray: Ray node {cluster['node_address']}, resources "
        f"{dict((k, v) for k, v in cluster.items() if k in ('CPU', 'GPU'))}; "
        f"{concurrent} trials at a time, {cfg.resources.workers_per_expert} Train worker(s) each with {per_worker}")
    from time_ray.orchestration.expert_cache import ExpertCache

    cache_name = f"time-ray-experts-{cfg.fingerprint()}"
    cache = ExpertCache.options(name=cache_name).remote(str(output / "experts"))
    run = {"output": str(output), "base_path": str(base_path), "settings": experiment_settings(cfg),
           "expert_cache": cache_name,
           "workers": cfg.resources.workers_per_expert, "use_gpu": cfg.resources.use_gpu,
           "resources_per_worker": per_worker}
    tuner = tune.Tuner(
        tune.with_resources(run_trial, {"cpu": DRIVER_CPU}),
        param_space={"trial": tune.grid_search(todo), "run": run},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent,
                                    trial_dirname_creator=lambda t: t.config["trial"]["trial_id"],
                                    trial_name_creator=lambda t: t.config["trial"]["trial_id"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(output / "ray"), verbose=0,
                                  callbacks=[ProgressPrinter(todo, cfg.stream.tasks)]),
    )
    results = tuner.fit()
    counts = ray.get(cache.stats.remote())
    log(f"time-ray: experts trained {counts['trained']}, reused from the cache {counts['hits']}")
    errors = [r for r in results if r.error is not None]
    if errors:
        details = "; ".join(f"{r.config['trial']['trial_id']}: {r.error}" for r in errors)
        raise TimeRayError(f"{len(errors)} of {len(todo)} trials failed: {details}. Finished trials are "
                           f"kept; rerun with --resume to retry the failed ones.")


def collect(output: Path, trials: list[dict]) -> pd.DataFrame:
    """Concatenates the trials' files into DIR/metrics.parquet and DIR/timesteps.parquet."""
    metrics, steps = [], []
    for trial in trials:
        d = output / "trials" / trial["trial_id"]
        if (d / "timesteps.parquet").exists():
            metrics.append(pd.read_parquet(d / "metrics.parquet"))
            steps.append(pd.read_parquet(d / "timesteps.parquet"))
    metrics_df = pd.concat(metrics, ignore_index=True) if metrics else pd.DataFrame(columns=METRICS_COLUMNS)
    steps_df = pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(columns=TIMESTEP_COLUMNS)
    write_parquet_atomic(metrics_df, output / "metrics.parquet")
    write_parquet_atomic(steps_df, output / "timesteps.parquet")
    return steps_df


def summary_table(steps: pd.DataFrame) -> str:
    """Final A_KA, A_ZS, GM per trial, best GM first, with the base model (timestep 0) first."""
    if steps.empty:
        return "(no finished timesteps)"
    last = steps.sort_values("timestep").groupby("trial_id").tail(1)
    base = steps[steps.timestep == 0].iloc[0]
    header = f"{'policy':<16}{'init':<7}{'deploy':<8}{'merge':<17}{'T':>3}{'A_KA':>8}{'A_ZS':>8}{'GM':>8}  settings"
    lines = [header, f"{'base model':<16}{'-':<7}{'-':<8}{'-':<17}{0:>3}{base.a_ka:>8.3f}{base.a_zs:>8.3f}{base.gm:>8.3f}"]
    for row in last.sort_values("gm", ascending=False).itertuples():
        lines.append(f"{row.policy:<16}{row.init:<7}{row.deploy:<8}{row.merge:<17}{row.timestep:>3}"
                     f"{row.a_ka:>8.3f}{row.a_zs:>8.3f}{row.gm:>8.3f}  {_settings(row)}".rstrip())
    return "\n".join(lines)


def _settings(row) -> str:
    """What distinguishes trials of one init/deploy/merge: params, non-default chain settings, budget."""
    parts = [f"{k}={v}" for k, v in json.loads(row.merge_params or "{}").items()]
    defaults = {"ema_weight": "0.5", "ema_with_base": True, "all_with_base": False, "recency": "uniform"}
    parts += [f"{k}={getattr(row, k)}" for k, v in defaults.items() if hasattr(row, k) and getattr(row, k) != v]
    return " ".join(parts + [f"steps={row.budget_steps}", f"seed={row.seed}"])
