"""The results schema (docs/architecture.md "Contracts") and atomic parquet writes."""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

import pandas as pd

from time_ray.core.atomic import atomic_path
from time_ray.core.errors import TimeRayError, shown

if TYPE_CHECKING:
    from time_ray.core.contracts import Trial

# The version of a sweep directory's schema, written into DIR/config.yaml, DIR/sweep.json and DIR/trials.json
# (docs/config.md "Schema versions"). 1 (no version written): the config fingerprint hashed every section,
# resources included. 2: it hashes only what changes results (config.IDENTITY).
SCHEMA_VERSION = 2
POLICY_COLUMNS = [
    "trial_id",
    "policy",
    "init",
    "deploy",
    "merge",
    "merge_params",
    "ema_weight",
    "ema_with_base",
    "all_with_base",
    "recency",
    "budget_steps",
    "seed",
]
METRICS_COLUMNS = POLICY_COLUMNS + ["timestep", "dataset", "role", "metric", "value", "n_eval"]
TIMESTEP_COLUMNS = POLICY_COLUMNS + [
    "timestep",
    "a_ka",
    "a_zs",
    "gm",
    "train_steps",
    "train_gflops",
    "train_seconds",
    "merge_seconds",
    "eval_seconds",
    "pool_bytes",
    "expert_cache_hit",
    # the expert's own training, whoever paid for it: a cache hit's train_* are 0, these are not
    "expert_train_steps",
    "expert_train_gflops",
    "expert_train_seconds",
]
# trials.parquet: one row per trial of the sweep, finished or not
TRIAL_STATUSES = ("finished", "stopped_early", "failed", "unfinished")
TRIAL_COLUMNS = POLICY_COLUMNS + ["status", "last_timestep", "expert_trainings_saved", "train_steps_saved"]


TRIALS_FILE = "trials.json"  # the sweep's expanded trials, written when it starts (what a report expects)
TRIAL_ID = re.compile(r"[A-Za-z0-9_.-]+")  # what policy_space.expand_trials writes: policy-technique-digest


def checked_trial_id(value: object, source: str) -> str:
    """``value``, a trial id read from ``source`` (a sweep directory's file, e.g. DIR/trials.json), if it
    can name a directory of its own: ids become paths (pool/<id>, trials/<id>, export/<id>-...), so one
    holding a path separator or '..' would reach outside the sweep directory. TimeRayError otherwise."""
    if isinstance(value, str) and TRIAL_ID.fullmatch(value) and value.strip(".") != "":
        return value
    raise TimeRayError(
        f"sweep {source}: trial id {shown(value)} is not a trial id (letters, digits, '-', '_', '.' only; "
        "no path separators)."
    )


def checked_trial_ids(values, source: str) -> list[str]:
    """:func:`checked_trial_id` of each value."""
    return [checked_trial_id(value, source) for value in values]


def trials_json(name: str, tasks: int, trials: list[Trial]) -> str:
    """DIR/trials.json: its schema version (``SCHEMA_VERSION``), the sweep's name, T and every
    trial's policy columns plus ``multitask``."""
    document = {"schema_version": SCHEMA_VERSION, "name": name, "tasks": tasks, "trials": [t.to_json() for t in trials]}
    return json.dumps(document, indent=1)


def write_parquet_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Writes to a temp file in the same directory, then renames: readers never see half a file."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def concat_rows(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    """The rows of several trials' tables as one table (the schema's ``columns`` when there are none):
    how a sweep's top-level tables and the report's reading of per-trial files join them."""
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=METRICS_COLUMNS)


def trials_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def timesteps_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=TIMESTEP_COLUMNS)
