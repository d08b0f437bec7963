"""The Tune function trial: the driver of one policy's temporal loop (docs/architecture.md "Data flow").

  the trial's pool is in the sweep's merge service (merge_actor.py), whose actor it calls with its trial
  id first; its experts come from the sweep's expert cache, which is the job queue of
  the sweep's expert-training service (expert_training.py): a thread asks the pool for theta^i_t,
  submits the job (or finds the expert cached) and links expert t into the pool when it is there
  t = 0: evaluate theta_0
  for t in 1..T: wait for expert t in the pool -> deployed weights from the actor -> evaluate
                 -> its rows as one small file (atomically) -> tune.report
  at its end: the trial's parquet tables, written once from those rows

Resumable at every timestep: the rows recorded so far, the pool (experts, EMA chain, training info)
and the expert cache are in storage, and each expert is a deterministic function of its init and its
per-task seed, so a restarted trial continues after its last recorded timestep and gives the same
numbers. A NaN loss is recorded in ``trials/<id>/failed.json`` instead of being retried.
"""

from __future__ import annotations

import functools
import json
import logging
import pickle
import threading
import time
from dataclasses import replace
from typing import Any

import ray
import torch
from ray import tune

from time_ray.core.contracts import ExperimentSettings, ExpertInfo, RunContext, TimestepCosts, Trial
from time_ray.core.errors import CheckpointError
from time_ray.core.experiment import Experiment
from time_ray.core.experts import expert_key
from time_ray.core.metrics import summarize
from time_ray.core.predictions import PREDICTIONS_FILE, predictions_frame
from time_ray.core.results import metrics_frame, row_file, row_file_text, timesteps_frame, write_parquet_atomic
from time_ray.logs import worker_console
from time_ray.orchestration import faults
from time_ray.orchestration.expert_cache import WAIT_SECONDS, ExpertJob, cached_info, expert_file, obtain
from time_ray.orchestration.served import Served
from time_ray.orchestration.storage import Storage
from time_ray.orchestration.trial_tables import read_tables, write_tables

logger = logging.getLogger(__name__)


class TrialRecorder:
    """One trial's rows: each recorded timestep is one small row file, written atomically (the cost of a
    timestep does not grow with t); the trial's parquet tables are written once from all of them at its
    end (trial_tables.py)."""

    def __init__(self, storage: Storage, trial: Trial):
        self.storage, self.trial_id = storage, trial.trial_id
        self.dir = f"trials/{trial.trial_id}"
        self.cols = trial.columns()
        self.metric_rows: list[dict] = []
        self.timestep_rows: list[dict] = []
        # a resumed trial continues after its last recorded timestep
        tables = read_tables(storage, trial.trial_id)
        if tables is not None:
            self.timestep_rows = tables[0].to_dict("records")
            self.metric_rows = tables[1].to_dict("records")

    @property
    def last_timestep(self) -> int:
        """The last recorded timestep, -1 when none."""
        return max((r["timestep"] for r in self.timestep_rows), default=-1)

    def record(self, t: int, records: list[dict], costs: TimestepCosts) -> dict:
        summary = summarize(records)
        metric_rows = [{**self.cols, "timestep": t, **r} for r in records]
        row = {**self.cols, "timestep": t, **summary, **costs.to_row()}
        self.storage.write_text(f"{self.dir}/{row_file(t)}", row_file_text(row, metric_rows))
        self.metric_rows += metric_rows
        self.timestep_rows.append(row)
        return row

    def finish(self) -> None:
        """The trial's tables, from every row it recorded (its row files removed)."""
        write_tables(self.storage, self.trial_id, timesteps_frame(self.timestep_rows), metrics_frame(self.metric_rows))


class NonRetryableFailure(Exception):
    """A failure that a retry would repeat (a NaN loss, a damaged checkpoint)."""


class TrialDriver:
    """One trial: its recorder, the merge service actor holding its pool (``actor``, called with the trial
    id first), its experts' thread and evaluation."""

    def __init__(self, trial: Trial, run: RunContext, service: Any, evaluator=None):
        self.trial, self.run = trial, run
        self.storage, self.trial_id = run.storage, trial.trial_id
        self.multitask = trial.multitask
        self.tasks = run.settings.tasks
        self.experts = 1 if self.multitask else self.tasks  # the multitask reference: one, on the union
        self.evaluator = evaluator  # the sweep's shared Evaluator actor serving this trial (None: here)
        self.recorder = TrialRecorder(self.storage, trial)
        self.actor = service  # the merge service actor serving this trial
        self.failure: list[BaseException] = []
        self.training: threading.Thread | None = None
        self.progress, self.events = threading.Condition(), 0  # the experts thread's news, for wait_for_expert

    def timestep_of(self, t: int) -> int:
        """The multitask reference trains once on the union; its result stands at the stream's end."""
        return self.tasks if self.multitask else t

    @functools.cached_property
    def experiment(self) -> Experiment:
        """The stream and benchmark, built only where this driver evaluates itself."""
        return Experiment.from_settings(self.run.settings, self.multitask)

    def evaluate(
        self, t: int, subset: bool, predictions: bool = False
    ) -> tuple[list[dict], TimestepCosts, dict | None]:
        """Zero-shot evaluation of theta^o_t: by the sweep's shared evaluator (the weights go to it from
        the merge service directly), with use_gpu as a task holding a GPU slice only while it evaluates,
        or here. The same seeded subsets for every policy. ``predictions``: also each test image's
        prediction (core.evaluate.evaluate_all), else None."""
        state, costs = self.actor.deployed.options(num_returns=2).remote(self.trial_id, t)
        seed, start = self.run.settings.stream_seed, time.perf_counter()
        try:
            if self.evaluator is not None and not self.run.eval_gpu:
                call = self.evaluator.evaluate.remote(state, self.multitask, subset, seed, predictions)
                records, seconds, kept = ray.get(call)
                return records, replace(ray.get(costs), eval_seconds=seconds), kept
            if self.run.eval_gpu:
                records, kept = ray.get(
                    evaluate_task.options(num_cpus=self.run.driver_cpu, num_gpus=self.run.eval_gpu).remote(
                        self.run.settings, self.multitask, state, subset, seed, predictions
                    )
                )
            else:
                model = self.experiment.new_model(ray.get(state))
                kept = {} if predictions else None
                records = self.experiment.evaluate(model, subset=subset, seed=seed, predictions=kept)
            return records, replace(ray.get(costs), eval_seconds=time.perf_counter() - start), kept
        except ray.exceptions.RayTaskError as error:
            if isinstance(error.cause, CheckpointError):
                raise NonRetryableFailure(f"policy {self.trial_id}: timestep {t}: {error.cause}") from None
            raise

    def wait_for_expert(self, t: int) -> None:
        """Until expert t is in the pool. The experts thread wakes this wait after each expert it links and
        when it ends (``progress``), so the pool is asked only then (and every ``expert_cache.WAIT_SECONDS``)."""
        while True:
            with self.progress:
                seen = self.events
            # read before the pool: a thread that had ended by then did all it would do (it ends right
            # after linking the last expert)
            alive = self.training is not None and self.training.is_alive()
            if ray.get(self.actor.n_experts.remote(self.trial_id)) >= t:
                return
            if (message := ray.get(self.actor.failed.remote(self.trial_id))) is not None:
                raise NonRetryableFailure(message)
            if not alive:
                cause = self.failure[0] if self.failure else None
                raise RuntimeError(
                    f"policy {self.trial_id}: obtaining the experts stopped before expert {t} was "
                    f"stored: {cause or 'no error reported'}"
                ) from cause
            with self.progress:
                if self.events == seen:
                    self.progress.wait(WAIT_SECONDS)

    def _progressed(self) -> None:
        """The experts thread linked an expert or ended: wakes ``wait_for_expert``."""
        with self.progress:
            self.events += 1
            self.progress.notify_all()

    def write_predictions(self, kept: dict) -> None:
        """``trials/<id>/predictions.parquet``: each test image's prediction at the final timestep
        (core.predictions; join ``DIR/test_split.parquet`` on ``test_index``)."""
        frame = predictions_frame(kept)
        write_parquet_atomic(frame, self.storage.local(f"trials/{self.trial_id}/{PREDICTIONS_FILE}"))
        self.storage.push(f"trials/{self.trial_id}/{PREDICTIONS_FILE}")

    def record(self, timestep: int, records: list[dict], costs: TimestepCosts) -> None:
        row = self.recorder.record(timestep, records, costs)
        tune.report(_report(row, self.tasks) | {"expert_cache_hit": costs.expert_cache_hit})
        faults.after_timestep(self.trial_id, timestep, self.actor)

    def drive(self) -> None:
        """Continues after the last recorded timestep (all of them for a new trial)."""
        if ray.get(self.actor.n_experts.remote(self.trial_id)) < self.experts:  # else: resumed, nothing to train
            self.training = _in_thread(
                self.obtain_experts, f"experts-{self.trial_id}", self.failure, done=self._progressed
            )
        if self.recorder.last_timestep < 0:
            records, costs, _ = self.evaluate(0, subset=True)
            self.record(0, records, TimestepCosts(eval_seconds=costs.eval_seconds))  # theta_0 cost nothing
        for t in range(1, self.experts + 1):
            if self.timestep_of(t) <= self.recorder.last_timestep:
                continue
            self.wait_for_expert(t)
            final = t == self.experts  # subsets during the stream, full test sets at its end
            records, costs, kept = self.evaluate(t, subset=not final, predictions=final and self.run.predictions)
            if kept is not None:  # before the final row: a finished trial has its predictions
                self.write_predictions(kept)
            self.record(self.timestep_of(t), records, costs)
        if self.training is not None:
            self.training.join()
        if self.failure:
            raise self.failure[0]
        self.recorder.finish()
        self.actor.release.remote(self.trial_id)

    def obtain_experts(self) -> None:
        """Runs in a thread while the driver evaluates: for t = n_experts+1, ...: theta^i_t from the pool,
        its cache address, then the expert from the sweep's expert cache, which is the training
        service's job queue (expert_cache.py): a hit at once, or a job the service trains (or is
        already training for another trial), waited for. Expert t is linked into the pool as soon as it
        is there, so timestep t is evaluated while expert t+1 trains."""
        cache = ray.get_actor(self.run.expert_cache)
        first = ray.get(self.actor.n_experts.remote(self.trial_id)) + 1
        trained = 0
        for t in range(first, self.experts + 1):
            init_ref = self.actor.init_weights.remote(self.trial_id, t)
            try:
                init = ray.get(init_ref)
            except ray.exceptions.RayTaskError as error:  # a damaged expert: training cannot help
                if isinstance(error.cause, CheckpointError):
                    message = f"policy {self.trial_id}: init of task {t}: {error.cause}"
                    ray.get(self.actor.fail.remote(self.trial_id, message))
                    return
                raise
            steps, seed = self.trial.budget_steps, self.trial.seed
            key = expert_key(init, t, steps, seed, self.run.settings, self.multitask)
            del init  # the service reads it through the reference
            job = ExpertJob(key, t, init_ref, steps, seed, self.multitask, self.trial_id)
            answer, value = obtain(cache, job, owner=self.trial_id)
            if answer in ("failed", "error"):
                if answer == "failed":  # deterministic (a NaN loss): recorded, not retried
                    ray.get(self.actor.fail.remote(self.trial_id, value))
                    return
                raise RuntimeError(f"policy {self.trial_id}: expert {t}: {value}")
            if answer == "cancelled":
                return
            info = ExpertInfo.cache_hit(cached_info(self.storage, key)) if answer == "hit" else value
            trained += not info.expert_cache_hit
            ray.get(self.actor.link_expert.remote(self.trial_id, t, expert_file(key), info))
            self._progressed()
        if trained == 0:
            which = f"all {self.experts}" if first == 1 else f"{self.experts - first + 1} remaining"
            worker_console()  # this runs in a Tune trial actor: the driver's console handler and level
            logger.info("policy %s: %s experts from the expert cache, none trained", self.trial_id, which)


def run_trial(
    config: dict,
    trials: dict[str, bytes],
    run: RunContext,
    pools: Served,
    evaluators: Served | None = None,
) -> None:
    """The Tune function trial of ``config["trial_id"]``. ``trials`` (each trial pickled on its own: a driver
    unpickles only its own), ``run``, the merge service (``pools``: which actor holds each trial's pool) and
    the shared evaluators come through ``tune.with_parameters``. A deterministic failure is recorded in
    ``trials/<id>/failed.json`` for the sweep's report and the trial ends, so Tune does not retry what would
    fail the same way."""
    trial_id = config["trial_id"]
    trial = pickle.loads(trials[trial_id])
    driver = TrialDriver(trial, run, pools.of(trial_id), evaluators.of(trial_id) if evaluators else None)
    try:
        driver.drive()
    except NonRetryableFailure as error:
        driver.storage.write_text(f"trials/{driver.trial_id}/failed.json", json.dumps({"error": str(error)}))


def _in_thread(work, name: str, failure: list, done=None) -> threading.Thread:
    """Runs ``work`` in a daemon thread; what it raises goes to ``failure`` (re-raised by the driver);
    ``done()`` is called when it ends, however it ends."""

    def run():
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the driver
            failure.append(exc)
        finally:
            if done is not None:
                done()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


@functools.lru_cache(maxsize=4)
def _experiment(settings_json: str, multitask: bool) -> Experiment:
    return Experiment.from_settings(ExperimentSettings.from_dict(json.loads(settings_json)), multitask)


@ray.remote
def evaluate_task(
    settings: ExperimentSettings, multitask: bool, state: dict, subset: bool, seed: int, predictions: bool = False
) -> tuple[list[dict], dict | None]:
    """Zero-shot evaluation of a deployed model on the GPU Ray gave this task (the benchmark stays
    loaded in the worker process between calls): its records and, when asked, per-image predictions."""
    experiment = _experiment(json.dumps(settings.to_dict(), sort_keys=True), multitask)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = experiment.new_model(state).to(device)
    kept: dict | None = {} if predictions else None
    return experiment.evaluate(model, device=device, subset=subset, seed=seed, predictions=kept), kept


# what Tune gets of a recorded timestep: its scheduler's metric, the progress lines, the trackers (with the costs)
REPORTED = (
    *("timestep", "a_ka", "a_zs", "gm", "policy"),  # (not trial_id: Tune writes its own id there)
    *("train_steps", "train_gflops", "train_seconds", "merge_seconds", "eval_seconds"),
)


def _report(row: dict, tasks: int) -> dict:
    return {"tasks": tasks} | {key: row[key] for key in REPORTED}
