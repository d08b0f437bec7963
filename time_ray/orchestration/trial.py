"""The Tune function trial: the driver of one policy's temporal loop (ARCHITECTURE.md data flow).

  start the merge actor and the Train run (which trains experts 1..T in turn)
  t = 0: evaluate theta_0
  for t in 1..T: wait for expert t in the pool -> deployed weights from the actor -> evaluate
                 -> append rows to the trial's parquet files (atomically) -> tune.report
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import ray
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from time_ray.config import policy_of
from time_ray.core.experiment import Experiment
from time_ray.core.metrics import summarize
from time_ray.core.results import metrics_frame, timesteps_frame, write_parquet_atomic
from time_ray.orchestration.expert_training import train_experts
from time_ray.orchestration.merge_actor import MergeActor

POLL_SECONDS = 0.2


def policy_columns(trial: dict) -> dict:
    """The policy of a trial as result columns (EMA and 'all' settings with their defaults)."""
    policy = policy_of(trial)
    return {"trial_id": trial["trial_id"], "policy": trial["policy"], "init": trial["init"],
            "deploy": trial["deploy"], "merge": trial["merge"],
            "merge_params": json.dumps(trial["merge_params"], sort_keys=True),
            "ema_weight": str(policy.ema_weight), "ema_with_base": policy.ema_with_base,
            "all_with_base": policy.all_with_base, "recency": policy.recency,
            "budget_steps": trial["budget_steps"], "seed": trial["seed"]}


class TrialRecorder:
    """Accumulates one trial's rows and rewrites its parquet files atomically after each timestep."""

    def __init__(self, trial_dir: Path, trial: dict):
        self.dir = trial_dir
        self.cols = policy_columns(trial)
        self.metric_rows: list[dict] = []
        self.timestep_rows: list[dict] = []

    def record(self, t: int, records: list[dict], costs: dict) -> dict:
        summary = summarize(records)
        self.metric_rows += [{**self.cols, "timestep": t, **r} for r in records]
        row = {**self.cols, "timestep": t, **summary, **costs}
        self.timestep_rows.append(row)
        write_parquet_atomic(metrics_frame(self.metric_rows), self.dir / "metrics.parquet")
        write_parquet_atomic(timesteps_frame(self.timestep_rows), self.dir / "timesteps.parquet")
        return row


def run_trial(config: dict) -> None:
    trial, run = config["trial"], config["run"]
    out = Path(run["output"])
    recorder = TrialRecorder(out / "trials" / trial["trial_id"], trial)
    multitask = bool(trial.get("multitask"))
    experiment = Experiment.from_settings(run["settings"], multitask)
    # the multitask reference trains once on the union; its result stands at the stream's end
    timestep_of = (lambda t: run["settings"]["tasks"]) if multitask else (lambda t: t)
    actor = MergeActor.remote(str(out / "pool" / trial["trial_id"]), run["base_path"], policy_of(trial))
    trainer = TorchTrainer(
        train_experts,
        train_loop_config={"merge_actor": actor, "settings": run["settings"], "steps": trial["budget_steps"],
                           "seed": trial["seed"], "trial_id": trial["trial_id"], "multitask": multitask,
                           "expert_cache": run.get("expert_cache")},
        scaling_config=ScalingConfig(num_workers=run["workers"], use_gpu=run["use_gpu"],
                                     resources_per_worker=run["resources_per_worker"]),
        run_config=RunConfig(name=f"{trial['trial_id']}-{int(time.time())}",
                             storage_path=str(out / "ray" / "train")),
    )
    failure: list[BaseException] = []

    def fit():
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver below
            failure.append(exc)

    training = threading.Thread(target=fit, name=f"train-{trial['trial_id']}", daemon=True)
    training.start()

    zero_cost = {"train_steps": 0, "train_gflops": 0.0, "train_seconds": 0.0, "merge_seconds": 0.0,
                 "pool_bytes": 0, "expert_cache_hit": False}
    base_model = experiment.new_model(ray.get(actor.deployed.remote(0))[0])
    start = time.perf_counter()
    eval_seed = run["settings"]["stream_seed"]  # the same subsets for every policy
    records = experiment.evaluate(base_model, subset=True, seed=eval_seed)
    row = recorder.record(0, records, {**zero_cost, "eval_seconds": time.perf_counter() - start})
    tune.report(_report(row, run["settings"]["tasks"]))

    for t in range(1, experiment.tasks + 1):
        while ray.get(actor.n_experts.remote()) < t:
            if not training.is_alive():
                raise RuntimeError(
                    f"policy {trial['trial_id']}: the Train run stopped before expert {t} was stored: "
                    f"{failure[0] if failure else 'no error reported'}") from (failure[0] if failure else None)
            time.sleep(POLL_SECONDS)
        state, info = ray.get(actor.deployed.remote(t))
        start = time.perf_counter()
        final = t == experiment.tasks  # subsets during the stream, full test sets at its end
        records = experiment.evaluate(experiment.new_model(state), subset=not final, seed=eval_seed)
        costs = {"train_steps": info["train_steps"], "train_gflops": info["train_gflops"],
                 "train_seconds": info["train_seconds"], "merge_seconds": info["merge_seconds"],
                 "eval_seconds": time.perf_counter() - start, "pool_bytes": info["pool_bytes"],
                 "expert_cache_hit": bool(info.get("expert_cache_hit", False))}
        row = recorder.record(timestep_of(t), records, costs)
        tune.report(_report(row, run["settings"]["tasks"]))
    training.join()
    if failure:
        raise failure[0]


def _report(row: dict, tasks: int) -> dict:
    return {"timestep": row["timestep"], "tasks": tasks, "a_ka": row["a_ka"], "a_zs": row["a_zs"],
            "gm": row["gm"], "policy": row["policy"], "trial_id": row["trial_id"]}
