"""The Tune function trial: the driver of one policy's temporal loop (ARCHITECTURE.md data flow).

  start the merge actor and the Train run (which trains experts 1..T in turn)
  t = 0: evaluate theta_0
  for t in 1..T: wait for expert t in the pool -> deployed weights from the actor -> evaluate
                 -> append rows to the trial's parquet files (atomically) -> tune.report
"""

from __future__ import annotations

import functools
import json
import threading
import time

import ray
import torch
from ray import tune
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from time_ray.config import policy_of
from time_ray.core.experiment import Experiment
from time_ray.core.metrics import summarize
from time_ray.core.results import metrics_frame, timesteps_frame, write_parquet_atomic
from time_ray.orchestration.expert_training import train_experts
from time_ray.orchestration.merge_actor import MergeActor
from time_ray.orchestration.storage import Storage

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

    def __init__(self, storage: Storage, trial_dir: str, trial: dict):
        self.storage, self.dir = storage, trial_dir
        self.cols = policy_columns(trial)
        self.metric_rows: list[dict] = []
        self.timestep_rows: list[dict] = []

    def record(self, t: int, records: list[dict], costs: dict) -> dict:
        summary = summarize(records)
        self.metric_rows += [{**self.cols, "timestep": t, **r} for r in records]
        row = {**self.cols, "timestep": t, **summary, **costs}
        self.timestep_rows.append(row)
        # metrics first: a reader that sees timestep t in timesteps.parquet finds its metrics too
        for name, frame in (("metrics.parquet", metrics_frame(self.metric_rows)),
                            ("timesteps.parquet", timesteps_frame(self.timestep_rows))):
            write_parquet_atomic(frame, self.storage.local(f"{self.dir}/{name}"))
            self.storage.push(f"{self.dir}/{name}")
        return row


def run_trial(config: dict) -> None:
    trial, run = config["trial"], config["run"]
    storage = run["storage"]
    recorder = TrialRecorder(storage, f"trials/{trial['trial_id']}", trial)
    multitask = bool(trial.get("multitask"))
    experiment = Experiment.from_settings(run["settings"], multitask)
    # the multitask reference trains once on the union; its result stands at the stream's end
    timestep_of = (lambda t: run["settings"]["tasks"]) if multitask else (lambda t: t)
    actor = MergeActor.remote(storage, trial["trial_id"], policy_of(trial))
    trainer = TorchTrainer(
        train_experts,
        train_loop_config={"merge_actor": actor, "settings": run["settings"], "steps": trial["budget_steps"],
                           "seed": trial["seed"], "trial_id": trial["trial_id"], "multitask": multitask,
                           "expert_cache": run.get("expert_cache"), "storage": storage},
        scaling_config=ScalingConfig(num_workers=run["workers"], use_gpu=run["use_gpu"],
                                     resources_per_worker=run["resources_per_worker"]),
        run_config=RunConfig(name=f"{trial['trial_id']}-{int(time.time())}",
                             storage_path=storage.ray_path("ray/train")),
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
    eval_seed = run["settings"]["stream_seed"]  # the same subsets for every policy

    def evaluate(t: int, subset: bool) -> tuple[list[dict], dict, float]:
        state, info = actor.deployed.options(num_returns=2).remote(t)
        start = time.perf_counter()
        if run.get("eval_gpu"):  # holds a GPU slice only while it evaluates
            records = ray.get(evaluate_task.options(num_cpus=run["driver_cpu"], num_gpus=run["eval_gpu"])
                              .remote(run["settings"], multitask, state, subset, eval_seed))
        else:
            records = experiment.evaluate(experiment.new_model(ray.get(state)), subset=subset, seed=eval_seed)
        return records, ray.get(info), time.perf_counter() - start

    records, _, seconds = evaluate(0, subset=True)
    row = recorder.record(0, records, {**zero_cost, "eval_seconds": seconds})
    tune.report(_report(row, run["settings"]["tasks"]))

    for t in range(1, experiment.tasks + 1):
        while ray.get(actor.n_experts.remote()) < t:
            if not training.is_alive():
                raise RuntimeError(
                    f"policy {trial['trial_id']}: the Train run stopped before expert {t} was stored: "
                    f"{failure[0] if failure else 'no error reported'}") from (failure[0] if failure else None)
            time.sleep(POLL_SECONDS)
        final = t == experiment.tasks  # subsets during the stream, full test sets at its end
        records, info, seconds = evaluate(t, subset=not final)
        costs = {"train_steps": info["train_steps"], "train_gflops": info["train_gflops"],
                 "train_seconds": info["train_seconds"], "merge_seconds": info["merge_seconds"],
                 "eval_seconds": seconds, "pool_bytes": info["pool_bytes"],
                 "expert_cache_hit": bool(info.get("expert_cache_hit", False))}
        row = recorder.record(timestep_of(t), records, costs)
        tune.report(_report(row, run["settings"]["tasks"]))
    training.join()
    if failure:
        raise failure[0]


@functools.lru_cache(maxsize=4)
def _experiment(settings_json: str, multitask: bool) -> Experiment:
    return Experiment.from_settings(json.loads(settings_json), multitask)


@ray.remote
def evaluate_task(settings: dict, multitask: bool, state: dict, subset: bool, seed: int) -> list[dict]:
    """Zero-shot evaluation of a deployed model on the GPU Ray gave this task (the benchmark stays
    loaded in the worker process between calls)."""
    experiment = _experiment(json.dumps(settings, sort_keys=True), multitask)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = experiment.new_model(state).to(device)
    return experiment.evaluate(model, device=device, subset=subset, seed=seed)


def _report(row: dict, tasks: int) -> dict:
    return {"timestep": row["timestep"], "tasks": tasks, "a_ka": row["a_ka"], "a_zs": row["a_zs"],
            "gm": row["gm"], "policy": row["policy"], "trial_id": row["trial_id"]}
