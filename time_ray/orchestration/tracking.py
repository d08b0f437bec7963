"""Experiment trackers (MLflow, Weights & Biases) fed by the sweep's driver, opt in with the config's
``tracking`` section (docs/tracking.md).

A Ray Tune callback in the driver process gives every trial a run of its own in each tracker: its policy
columns as params (config), and per recorded timestep (step = timestep) A_KA, A_ZS, GM and the costs of
its row (reported with the result). At the sweep's end one sweep-level run per tracker gets the
result tables. A resumed sweep continues the runs it started (found by their tags in MLflow, by a run id
derived from the sweep and the trial in W&B).

Trackers never decide anything: a tracker that cannot be reached or is not installed is one warning,
and the sweep goes on without it. Both packages are imported only when the section names them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ray.tune import Callback

from time_ray.config import SweepConfig, TrackingConfig, WandbConfig, mlflow_directory
from time_ray.core.contracts import Trial
from time_ray.orchestration.storage import Storage
from time_ray.orchestration.trial_tables import read_tables

logger = logging.getLogger(__name__)

METRICS = ("a_ka", "a_zs", "gm")
COSTS = ("train_steps", "train_gflops", "train_seconds", "merge_seconds", "eval_seconds", "expert_cache_hit")
ARTIFACTS = ("metrics.parquet", "timesteps.parquet", "trials.parquet", "config.yaml")
ROLE_TAG = "time_ray.role"  # "trial" or "sweep"
TRIAL_TAG = "time_ray.trial_id"
FINGERPRINT_TAG = "time_ray.sweep_fingerprint"
OUTPUT_TAG = "time_ray.output"  # the sweep's directory: a resume continues the runs of its own directory
CONFIG_TAG = "time_ray.config_fingerprint"  # the fingerprint in DIR/sweep.json (it changes with `tracking`)
SWEEP = "(sweep)"  # the key of the sweep-level run: no trial id holds parentheses
INSTALL = "pip install 'time-ray[tracking]'"


def sweep_fingerprint(cfg: SweepConfig) -> str:
    """The fingerprint of what the sweep computes: its config with the sections that only say how it runs
    (``sweep.EXECUTION``: resources, tracking, ...) at their defaults. It stays the same across a
    ``--resume`` that changes those, so the runs of a resumed sweep are found again."""
    from time_ray.orchestration.sweep import EXECUTION

    defaults = {s: SweepConfig.model_fields[s].get_default(call_default_factory=True) for s in EXECUTION}
    return cfg.model_copy(update=defaults).fingerprint()


@dataclass(frozen=True)
class SweepIdentity:
    """What names a sweep's runs in a tracker."""

    name: str
    fingerprint: str  # sweep_fingerprint
    config_fingerprint: str  # SweepConfig.fingerprint, as in DIR/sweep.json
    output: str  # the sweep directory, as the sweep shows it

    def tags(self, key: str) -> dict[str, str]:
        """The tags of the run of ``key`` (a trial id, or SWEEP): what finds it again on --resume."""
        role = {ROLE_TAG: "sweep"} if key == SWEEP else {ROLE_TAG: "trial", TRIAL_TAG: key}
        return {**role, FINGERPRINT_TAG: self.fingerprint, OUTPUT_TAG: self.output}

    def run_name(self, key: str) -> str:
        return self.name if key == SWEEP else key

    def run_id(self, key: str) -> str:
        """A W&B run id, the same whenever this sweep's directory runs ``key``."""
        return hashlib.sha256(f"{self.fingerprint}\n{self.output}\n{key}".encode()).hexdigest()[:32]


class Tracker(Protocol):
    """One tracker's runs, by key (a trial id, or SWEEP)."""

    name: str  # as the warning names it
    where: str  # its URI, or W&B's project and mode

    def open(self, key: str, params: dict[str, Any]) -> int:
        """Starts the run of ``key``, or continues it; the last step it holds (-1: none)."""
        ...

    def log(self, key: str, values: dict[str, float], step: int) -> None: ...

    def close(self, key: str, status: str) -> None:
        """``status``: FINISHED, FAILED or KILLED."""
        ...

    def upload(self, key: str, paths: list[Path]) -> None: ...


class MlflowTracker:
    """Runs in an MLflow experiment named after the sweep, through ``MlflowClient`` (no global state)."""

    name = "MLflow"

    def __init__(self, uri: str, identity: SweepIdentity, resume: bool):
        self.where, self.identity, self.resume = uri, identity, resume
        if mlflow_directory(uri) or uri.lower().startswith("file:"):
            # MLflow refuses its file store unless this says it is wanted; the config asked for one
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(identity.name)  # the first request: an unreachable URI fails here
        self.experiment = found.experiment_id if found is not None else self.client.create_experiment(identity.name)
        self.runs: dict[str, str] = {}

    def open(self, key: str, params: dict[str, Any]) -> int:
        from mlflow.entities import Param

        tags = self.identity.tags(key)
        run_id = self._existing(tags) if self.resume else None
        last = -1
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment, tags=tags, run_name=self.identity.run_name(key)
            ).info.run_id
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        else:
            self.client.update_run(run_id, status="RUNNING")
            last = max((m.step for m in self.client.get_metric_history(run_id, "gm")), default=-1)
        self.client.set_tag(run_id, CONFIG_TAG, self.identity.config_fingerprint)
        self.runs[key] = run_id
        return last

    def _existing(self, tags: dict[str, str]) -> str | None:
        """The run with these tags that this sweep directory started (its first, should there be several)."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items() if k != OUTPUT_TAG)
        found = self.client.search_runs([self.experiment], filter_string=query, max_results=1000)
        ours = [r for r in found if r.data.tags.get(OUTPUT_TAG) == tags[OUTPUT_TAG]]
        return min(ours, key=lambda r: r.info.start_time).info.run_id if ours else None

    def log(self, key: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[key], metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self, key: str, status: str) -> None:
        self.client.set_terminated(self.runs.pop(key), status)

    def upload(self, key: str, paths: list[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.runs[key], str(path))


class WandbTracker:
    """Runs of a W&B project, grouped by the sweep's name; several open at once (``reinit="create_new"``)."""

    name = "W&B"

    def __init__(self, section: WandbConfig, identity: SweepIdentity):
        import wandb

        self.wandb, self.section, self.identity = wandb, section, identity
        self.where = f"project {section.project}, {section.mode}" + (f", {section.dir}" if section.dir else "")
        if section.dir is not None:
            Path(section.dir).mkdir(parents=True, exist_ok=True)
        self.runs: dict[str, Any] = {}

    def open(self, key: str, params: dict[str, Any]) -> int:
        s = self.section
        run = self.wandb.init(
            project=s.project,
            entity=s.entity,
            mode=s.mode,
            dir=s.dir,
            id=self.identity.run_id(key),
            resume="allow",
            name=self.identity.run_name(key),
            group=self.identity.name,
            job_type="sweep" if key == SWEEP else "trial",
            config=params,
            reinit="create_new",
            # no console capture or system metrics: the driver serves many runs, its console is the sweep's
            settings=self.wandb.Settings(silent=True, console="off", x_disable_stats=True, save_code=False),
        )
        self.runs[key] = run
        return run.starting_step - 1 if run.resumed else -1

    def log(self, key: str, values: dict[str, float], step: int) -> None:
        self.runs[key].log(values, step=step)

    def close(self, key: str, status: str) -> None:
        self.runs.pop(key).finish(exit_code=0 if status == "FINISHED" else 1)

    def upload(self, key: str, paths: list[Path]) -> None:
        artifact = self.wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.identity.name}-results"), "results")
        for path in paths:
            artifact.add_file(str(path), name=path.name)
        self.runs[key].log_artifact(artifact)


def warn(name: str, where: str, exc: BaseException) -> None:
    """The one line a failing tracker gets."""
    text = " ".join(str(exc).split())[:500]
    hint = f"; install the trackers with {INSTALL}" if isinstance(exc, ImportError) else ""
    logger.warning(
        "time-ray: tracking: %s (%s) failed, the sweep goes on without it: %s: %s%s",
        name,
        where,
        type(exc).__name__,
        text,
        hint,
    )


def open_trackers(section: TrackingConfig, identity: SweepIdentity, resume: bool) -> list[Tracker]:
    """The trackers the section names that could be set up (the others warned about)."""
    trackers: list[Tracker] = []
    if section.mlflow is not None:
        try:
            trackers.append(MlflowTracker(section.mlflow, identity, resume))
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the sweep
            warn(MlflowTracker.name, section.mlflow, exc)
    if section.wandb is not None:
        try:
            trackers.append(WandbTracker(section.wandb, identity))
        except Exception as exc:  # noqa: BLE001
            warn(WandbTracker.name, f"project {section.wandb.project}", exc)
    return trackers


def _values(row: dict) -> dict[str, float]:
    """The metrics and costs a result or a timesteps.parquet row holds."""
    return {k: float(row[k]) for k in METRICS + COSTS if row.get(k) is not None}


class TrackingCallback(Callback):
    """Feeds the trackers from Tune's loop in the driver: a trial's run starts at its first result, gets each
    recorded timestep once (also those recorded before a crash whose result never came), and ends with the
    trial. ``finish`` logs the result tables to a sweep-level run once the sweep has written them."""

    def __init__(self, cfg: SweepConfig, trials: list[Trial], storage: Storage, resume: bool = False):
        self.storage = storage
        self.identity = SweepIdentity(cfg.name, sweep_fingerprint(cfg), cfg.fingerprint(), storage.display())
        shared = {"sweep": cfg.name, "sweep_fingerprint": self.identity.fingerprint}
        self.params = {t.trial_id: {**t.columns(), **shared} for t in trials}
        self.sweep_params = {**shared, "trials": len(trials), "tasks": cfg.stream.tasks}
        self.trackers = open_trackers(cfg.tracking, self.identity, resume)
        self.last: dict[tuple[str, str], int] = {}  # (tracker, trial id) of an open run -> the last step it holds
        if self.trackers:
            logger.info("time-ray: tracking: runs go to %s", "; ".join(f"{t.name} ({t.where})" for t in self.trackers))

    def __getstate__(self) -> dict:  # Tune pickles its run config (for Tuner.restore, never used here)
        return {**self.__dict__, "trackers": []}

    def _safely(self, tracker: Tracker, work, *args) -> None:
        """``work(*args)``; a tracker that fails is warned about once and left out for the rest of the sweep."""
        try:
            work(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker never fails the sweep
            self.trackers.remove(tracker)
            warn(tracker.name, tracker.where, exc)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.trackers:
            return
        trial_id = trial.config["trial_id"]
        rows = self._rows(trial_id, result)
        for tracker in list(self.trackers):
            self._safely(tracker, self._log, tracker, trial_id, rows)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial.config["trial_id"], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial.config["trial_id"], "FAILED")

    def _log(self, tracker: Tracker, trial_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        key = (tracker.name, trial_id)
        if key not in self.last:
            self.last[key] = tracker.open(trial_id, self.params.get(trial_id, {"trial_id": trial_id}))
        for step, values in rows:
            if step > self.last[key]:
                tracker.log(trial_id, values, step)
                self.last[key] = step

    def _end(self, trial_id: str, status: str) -> None:
        for tracker in list(self.trackers):
            if self.last.pop((tracker.name, trial_id), None) is not None:
                self._safely(tracker, tracker.close, trial_id, status)

    def _rows(self, trial_id: str, result: dict) -> list[tuple[int, dict[str, float]]]:
        """(timestep, values) of the reported timestep (its metrics and costs come with the result) and, when a
        tracker's run lacks earlier ones (recorded before a crash whose results never came), those from the
        trial's recorded rows."""
        step = int(result["timestep"])
        behind = any(self.last.get((t.name, trial_id), -1) < step - 1 for t in self.trackers)
        table = self._recorded(trial_id) if behind else None
        rows = {} if table is None else {int(r["timestep"]): _values(r) for r in table if r["timestep"] <= step}
        rows[step] = {**rows.get(step, {}), **_values(result)}
        return sorted(rows.items())

    def _recorded(self, trial_id: str) -> list[dict] | None:
        try:
            tables = read_tables(self.storage, trial_id, set_aside=False)  # the trial decides about damage
            return None if tables is None else tables[0].to_dict("records")
        except Exception as exc:  # noqa: BLE001 - written atomically; a read that fails loses only earlier rows
            logger.debug("time-ray: tracking: %s: recorded rows not read: %s", trial_id, exc)
            return None

    def finish(self, failed: bool = False) -> None:
        """At the sweep's end, its tables written: runs of trials still open end as KILLED, and each tracker's
        sweep-level run gets the result tables (FAILED when trials failed)."""
        paths = [p for name in ARTIFACTS if (p := self.storage.pull(name, refresh=True)) is not None]
        for tracker in list(self.trackers):
            self._safely(tracker, self._finish, tracker, paths, "FAILED" if failed else "FINISHED")

    def _finish(self, tracker: Tracker, paths: list[Path], status: str) -> None:
        for name, trial_id in [k for k in self.last if k[0] == tracker.name]:
            del self.last[(name, trial_id)]
            tracker.close(trial_id, "KILLED")
        tracker.open(SWEEP, self.sweep_params)
        tracker.upload(SWEEP, paths)
        tracker.close(SWEEP, status)
