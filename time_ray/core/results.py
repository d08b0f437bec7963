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


# trials/<id>/rows/<t>.json: one recorded timestep's rows (its timesteps.parquet row and its metrics.parquet
# rows), written when it is recorded; the trial's tables are written from them once, when the trial ends (or
# when the sweep collects its tables), so recording a timestep costs the same at t = 1 and at t = 100
ROWS_FOLDER = "rows"
ROW_FILE = re.compile(r"\d{5}\.json")
MAX_ROW_FILE_BYTES = 16 << 20  # one timestep of one trial: a few hundred rows; a larger file is not ours

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


def row_file(t: int) -> str:
    """A recorded timestep's row file, relative to its trial's folder."""
    return f"{ROWS_FOLDER}/{t:05d}.json"


def row_file_text(row: dict, metric_rows: list[dict]) -> str:
    """The row file of one timestep: its timesteps.parquet row and its metrics.parquet rows, in one document
    (written atomically: a reader that sees the timestep sees its metrics)."""
    return json.dumps({"timestep": row, "metrics": metric_rows}, default=_plain)


def _plain(value):
    """numpy scalars as Python numbers (json writes floats exactly: they read back bit for bit)."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not a results value")


def with_row_files(
    steps: pd.DataFrame | None, metrics: pd.DataFrame | None, texts: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A trial's (timesteps, metrics): its written tables (None: not written yet) and the texts of its row
    files (``row_file``, in timestep order), a timestep in both counted once (the tables'). ValueError for a
    row file that is not one."""
    seen = set() if steps is None else {int(t) for t in steps.timestep}
    step_rows: list[dict] = []
    metric_rows: list[dict] = []
    for text in texts:
        document = json.loads(text)
        row = document.get("timestep") if isinstance(document, dict) else None
        rows = document.get("metrics") if isinstance(document, dict) else None
        if not isinstance(row, dict) or not isinstance(rows, list) or not isinstance(row.get("timestep"), int):
            raise ValueError("a row file without its timestep row and metrics rows")
        if row["timestep"] in seen:
            continue
        seen.add(row["timestep"])
        step_rows.append(row)
        metric_rows += rows
    if not step_rows:
        return (
            steps if steps is not None else timesteps_frame([]),
            metrics if metrics is not None else metrics_frame([]),
        )
    new_steps, new_metrics = timesteps_frame(step_rows), metrics_frame(metric_rows)
    if steps is None or steps.empty:
        return new_steps, new_metrics
    return (
        pd.concat([steps, new_steps], ignore_index=True),
        pd.concat([metrics, new_metrics], ignore_index=True) if metrics is not None else new_metrics,
    )
