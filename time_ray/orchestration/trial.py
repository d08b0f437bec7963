"""The Tune function trial: the driver of one policy's temporal loop (ARCHITECTURE.md data flow).

  the trial's pool is in the sweep's merge service (merge_actor.py), called through a PoolHandle as an
  actor of the trial's own; start the Train run (which trains experts 1..T in turn); with the sweep's
  expert cache the Train run starts lazily: the driver links the leading cached experts itself and
  starts it at the first expert to train, or never when every expert is in the cache
  t = 0: evaluate theta_0
  for t in 1..T: wait for expert t in the pool -> deployed weights from the actor -> evaluate
                 -> append rows to the trial's parquet files (atomically) -> tune.report

Resumable at every timestep: the rows recorded so far, the pool (experts, EMA chain, training info)
and the expert cache are in storage, and each expert is a deterministic function of its init and its
per-task seed, so a restarted trial continues after its last recorded timestep and gives the same
numbers. A NaN loss is recorded in ``trials/<id>/failed.json`` instead of being retried.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from dataclasses import replace

import pandas as pd
import ray
import torch
from ray import tune
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from time_ray.core.contracts import ExperimentSettings, RunContext, TimestepCosts, Trial
from time_ray.core.errors import CheckpointError
from time_ray.core.experiment import Experiment
from time_ray.core.metrics import summarize
from time_ray.core.results import metrics_frame, timesteps_frame, write_parquet_atomic
from time_ray.logs import worker_console
from time_ray.orchestration import faults
from time_ray.orchestration.expert_cache import lease
from time_ray.orchestration.expert_training import TrainLoopConfig, take_cached, train_experts
from time_ray.orchestration.loopback_torch import torch_config
from time_ray.orchestration.merge_actor import PoolHandle
from time_ray.orchestration.storage import Storage

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.2
TRAIN_MAX_FAILURES = 3  # restarts of a Train run whose worker died


class TrialRecorder:
    """Accumulates one trial's rows and rewrites its parquet files atomically after each timestep."""

    def __init__(self, storage: Storage, trial_dir: str, trial: Trial):
        self.storage, self.dir = storage, trial_dir
        self.cols = trial.columns()
        self.metric_rows: list[dict] = []
        self.timestep_rows: list[dict] = []
        # a resumed trial continues after its last recorded timestep
        steps = storage.pull(f"{trial_dir}/timesteps.parquet", refresh=True)
        if steps is not None:
            done = pd.read_parquet(steps)
            metrics = pd.read_parquet(storage.pull(f"{trial_dir}/metrics.parquet", refresh=True))
            metrics = metrics[metrics.timestep.isin(done.timestep)]  # metrics are written first
            self.timestep_rows = done.to_dict("records")
            self.metric_rows = metrics.to_dict("records")

    @property
    def last_timestep(self) -> int:
        """The last recorded timestep, -1 when none."""
        return max((r["timestep"] for r in self.timestep_rows), default=-1)

    def record(self, t: int, records: list[dict], costs: TimestepCosts) -> dict:
        summary = summarize(records)
        self.metric_rows += [{**self.cols, "timestep": t, **r} for r in records]
        row = {**self.cols, "timestep": t, **summary, **costs.to_row()}
        self.timestep_rows.append(row)
        # metrics first: a reader that sees timestep t in timesteps.parquet finds its metrics too
        for name, frame in (
            ("metrics.parquet", metrics_frame(self.metric_rows)),
            ("timesteps.parquet", timesteps_frame(self.timestep_rows)),
        ):
            write_parquet_atomic(frame, self.storage.local(f"{self.dir}/{name}"))
            self.storage.push(f"{self.dir}/{name}")
        return row


class NonRetryableFailure(Exception):
    """A failure that a retry would repeat (a NaN loss, a damaged checkpoint)."""


class TrialDriver:
    """One trial: its recorder, its pool in the merge service (``actor``), Train run and evaluation."""

    def __init__(self, trial: Trial, run: RunContext, pool: PoolHandle):
        self.trial, self.run = trial, run
        self.storage, self.trial_id = run.storage, trial.trial_id
        self.multitask = trial.multitask
        self.experiment = Experiment.from_settings(run.settings, self.multitask)
        self.tasks = run.settings.tasks
        self.recorder = TrialRecorder(self.storage, f"trials/{self.trial_id}", trial)
        self.actor = pool  # called as a merge actor of the trial's own
        self.failure: list[BaseException] = []
        self.training: threading.Thread | None = None

    def timestep_of(self, t: int) -> int:
        """The multitask reference trains once on the union; its result stands at the stream's end."""
        return self.tasks if self.multitask else t

    def evaluate(self, t: int, subset: bool) -> tuple[list[dict], TimestepCosts]:
        """Zero-shot evaluation of theta^o_t: here, or with use_gpu as a task holding a GPU slice
        only while it evaluates. The same seeded subsets for every policy."""
        state, costs = self.actor.deployed.options(num_returns=2).remote(t)
        seed, start = self.run.settings.stream_seed, time.perf_counter()
        try:
            if self.run.eval_gpu:
                records = ray.get(
                    evaluate_task.options(num_cpus=self.run.driver_cpu, num_gpus=self.run.eval_gpu).remote(
                        self.run.settings, self.multitask, state, subset, seed
                    )
                )
            else:
                model = self.experiment.new_model(ray.get(state))
                records = self.experiment.evaluate(model, subset=subset, seed=seed)
            return records, replace(ray.get(costs), eval_seconds=time.perf_counter() - start)
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, CheckpointError):
                raise NonRetryableFailure(f"policy {self.trial_id}: timestep {t}: {error.cause}") from None
            raise

    def wait_for_expert(self, t: int) -> None:
        while True:
            # read before the pool: a thread that had ended by then did all it would do (with a lazy
            # start it ends right after linking the last cached expert, with no Train run at all)
            alive = self.training is not None and self.training.is_alive()
            if ray.get(self.actor.n_experts.remote()) >= t:
                return
            if (message := ray.get(self.actor.failed.remote())) is not None:
                raise NonRetryableFailure(message)
            if not alive:
                cause = self.failure[0] if self.failure else None
                raise RuntimeError(
                    f"policy {self.trial_id}: the Train run stopped before expert {t} was "
                    f"stored: {cause or 'no error reported'}"
                ) from cause
            time.sleep(POLL_SECONDS)

    def record(self, timestep: int, records: list[dict], costs: TimestepCosts) -> None:
        row = self.recorder.record(timestep, records, costs)
        tune.report(_report(row, self.tasks) | {"expert_cache_hit": costs.expert_cache_hit})
        faults.after_timestep(self.trial_id, timestep, self.actor)

    def drive(self) -> None:
        """Continues after the last recorded timestep (all of them for a new trial)."""
        if ray.get(self.actor.n_experts.remote()) < self.experiment.tasks:  # else: resumed, nothing to train
            if self.run.expert_cache and not self.multitask:
                self.training = _in_thread(self.train_lazily, f"experts-{self.trial_id}", self.failure)
            else:
                self.training = _start_training(self.trial, self.run, self.actor, self.failure)
        if self.recorder.last_timestep < 0:
            records, costs = self.evaluate(0, subset=True)
            self.record(0, records, TimestepCosts(eval_seconds=costs.eval_seconds))  # theta_0 cost nothing
        for t in range(1, self.experiment.tasks + 1):
            if self.timestep_of(t) <= self.recorder.last_timestep:
                continue
            self.wait_for_expert(t)
            final = t == self.experiment.tasks  # subsets during the stream, full test sets at its end
            records, costs = self.evaluate(t, subset=not final)
            self.record(self.timestep_of(t), records, costs)
        if self.training is not None:
            self.training.join()
        if self.failure:
            raise self.failure[0]

    def train_lazily(self) -> None:
        """Lazy Train start (runs in a thread while the driver evaluates): for t = n_experts+1, ...
        the driver asks the cache itself, exactly as the Train worker would, and links each hit into
        the pool; the TorchTrainer starts only at the first expert that must be trained, there, and
        not at all when every expert is in the cache. Expert t is in the pool as soon as it is linked,
        so timestep t is evaluated meanwhile. An expert another trial is training is waited for
        here (``obtain``), as the worker would, but without holding a Train worker's resources.

        Lease handoff: a 'train' answer is this trial's claim (owner = trial id). The driver keeps
        renewing it until the Train run ends, since Train's start-up (or a wait for its resources)
        can outlast the lease; the Train worker's own claim with the same owner takes it back at once,
        and renewals only extend a claim this trial still holds (not one another trial took after a
        release). Releasing it instead and letting the worker claim it afresh would also be correct,
        but then other trials needing that expert could claim it during the start-up and start Train
        runs of their own; held, they wait and take it from the cache."""
        cache = ray.get_actor(self.run.expert_cache)
        config = train_loop_config(self.trial, self.run, self.actor)
        first = ray.get(self.actor.n_experts.remote()) + 1
        for t in range(first, self.experiment.tasks + 1):
            init_ref = self.actor.init_weights.remote(t)
            try:
                key = config.expert_key(ray.get(init_ref), t)
            except ray.exceptions.RayTaskError as error:  # a damaged expert: training cannot help
                if isinstance(error.cause, CheckpointError):
                    ray.get(self.actor.fail.remote(f"policy {self.trial_id}: init of task {t}: {error.cause}"))
                    return
                raise
            if take_cached(cache, self.actor, key, t, owner=self.trial_id):
                continue
            # the worker starts at t (the pool's next expert) and reuses this init: merge time once
            with lease(cache, key, owner=self.trial_id):
                _trainer(self.trial, self.run, replace(config, first_init=(t, init_ref))).fit()
            return
        which = f"all {self.experiment.tasks}" if first == 1 else f"{self.experiment.tasks - first + 1} remaining"
        worker_console()  # this runs in a Tune trial actor: the driver's console handler and level
        logger.info("policy %s: %s experts from the expert cache, no Train run", self.trial_id, which)


def run_trial(config: dict, trials: dict[str, Trial], run: RunContext, pools: dict[str, PoolHandle]) -> None:
    """The Tune function trial of ``config["trial_id"]`` (``trials``, ``run`` and each trial's handle of
    its pool in the merge service, ``pools``, come through ``tune.with_parameters``). A deterministic failure
    is recorded in ``trials/<id>/failed.json`` for the sweep's report and the trial ends, so Tune does not
    retry what would fail the same way."""
    driver = TrialDriver(trials[config["trial_id"]], run, pools[config["trial_id"]])
    try:
        driver.drive()
    except NonRetryableFailure as error:
        driver.storage.write_text(f"trials/{driver.trial_id}/failed.json", json.dumps({"error": str(error)}))


def train_loop_config(trial: Trial, run: RunContext, actor) -> TrainLoopConfig:
    """What the Train workers of the trial's run get (expert_training.train_experts)."""
    return TrainLoopConfig(
        merge_actor=actor,
        settings=run.settings,
        steps=trial.budget_steps,
        seed=trial.seed,
        trial_id=trial.trial_id,
        multitask=trial.multitask,
        storage=run.storage,
        expert_cache=run.expert_cache,
    )


def _trainer(trial: Trial, run: RunContext, config: TrainLoopConfig) -> TorchTrainer:
    """The trial's Train run: it trains the experts the pool does not hold yet; a killed worker is
    replaced and the run goes on (FailureConfig). Its directory: ray/train/<trial_id>-<time>."""
    return TorchTrainer(
        train_experts,
        train_loop_config={"job": config},
        torch_config=torch_config(run.loopback),
        scaling_config=ScalingConfig(
            num_workers=run.workers, use_gpu=run.use_gpu, resources_per_worker=run.resources_per_worker
        ),
        run_config=RunConfig(
            name=f"{trial.trial_id}-{int(time.time())}",
            storage_path=run.storage.ray_path("ray/train"),
            failure_config=FailureConfig(max_failures=TRAIN_MAX_FAILURES),
        ),
    )


def _start_training(trial: Trial, run: RunContext, actor, failure: list) -> threading.Thread:
    """The trial's Train run, started now, in a thread."""
    trainer = _trainer(trial, run, train_loop_config(trial, run, actor))
    return _in_thread(trainer.fit, f"train-{trial.trial_id}", failure)


def _in_thread(work, name: str, failure: list) -> threading.Thread:
    """Runs ``work`` in a daemon thread; what it raises goes to ``failure`` (re-raised by the driver)."""

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


@functools.lru_cache(maxsize=4)
def _experiment(settings_json: str, multitask: bool) -> Experiment:
    return Experiment.from_settings(ExperimentSettings.from_dict(json.loads(settings_json)), multitask)


@ray.remote
def evaluate_task(settings: ExperimentSettings, multitask: bool, state: dict, subset: bool, seed: int) -> list[dict]:
    """Zero-shot evaluation of a deployed model on the GPU Ray gave this task (the benchmark stays
    loaded in the worker process between calls)."""
    experiment = _experiment(json.dumps(settings.to_dict(), sort_keys=True), multitask)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = experiment.new_model(state).to(device)
    return experiment.evaluate(model, device=device, subset=subset, seed=seed)


def _report(row: dict, tasks: int) -> dict:
    return {
        "timestep": row["timestep"],
        "tasks": tasks,
        "a_ka": row["a_ka"],
        "a_zs": row["a_zs"],
        "gm": row["gm"],
        "policy": row["policy"],
        "trial_id": row["trial_id"],
    }
