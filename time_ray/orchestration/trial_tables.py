"""A trial's recorded rows in storage: one row file per recorded timestep (``trials/<id>/rows/<t>.json``,
written as the timestep is recorded) and its tables (``trials/<id>/timesteps.parquet`` and ``metrics.parquet``,
written once from them when the trial ends, or when the sweep collects its tables). What the sweep, its
resume, the trial driver and the trackers read back, damaged files included."""

from __future__ import annotations

import contextlib
import logging
import shutil

import pandas as pd

from time_ray.core.results import (
    MAX_ROW_FILE_BYTES,
    ROW_FILE,
    ROWS_FOLDER,
    with_row_files,
    write_parquet_atomic,
)
from time_ray.orchestration.storage import Storage

logger = logging.getLogger(__name__)
TABLES = ("timesteps.parquet", "metrics.parquet")


def row_files(storage: Storage, trial_id: str) -> list[str]:
    """The trial's row files not yet in its tables (relative names, in timestep order)."""
    folder = f"trials/{trial_id}/{ROWS_FOLDER}"
    return [rel for rel in storage.files(folder) if ROW_FILE.fullmatch(rel.rsplit("/", 1)[-1])]


def read_tables(storage: Storage, trial_id: str, set_aside: bool = True) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The trial's recorded timesteps and their metrics (its tables and its row files), or None when it has
    recorded none.

    A file that cannot be read (zero bytes, cut short, not parquet or not a row file, a column missing) is
    moved aside as ``<name>.damaged`` with a warning, and the trial is treated as having recorded nothing: every
    row is a deterministic function of its pool and of the expert cache, which ``--resume`` reads again, so
    the trial redoes its timesteps (no expert is trained twice) instead of failing on the file.
    ``set_aside=False`` (a reader beside a running trial): the error is raised instead."""
    folder = f"trials/{trial_id}"
    rows = row_files(storage, trial_id)
    try:
        texts = []  # before the tables: a row file gone meanwhile is in the tables written since
        for rel in rows:
            local = storage.pull(rel, refresh=True)
            with contextlib.suppress(FileNotFoundError):
                if local is None:
                    continue
                if local.stat().st_size > MAX_ROW_FILE_BYTES:
                    raise ValueError(f"{rel.rsplit('/', 1)[-1]}: larger than {MAX_ROW_FILE_BYTES} bytes")
                texts.append(local.read_text())
        steps = metrics = None
        steps_path = storage.pull(f"{folder}/timesteps.parquet", refresh=True)
        if steps_path is not None:
            steps = pd.read_parquet(steps_path)
            metrics_path = storage.pull(f"{folder}/metrics.parquet", refresh=True)
            if metrics_path is None:
                raise FileNotFoundError("metrics.parquet is missing")
            metrics = pd.read_parquet(metrics_path)
        elif not texts:
            return None
        steps, metrics = with_row_files(steps, metrics, texts)
        steps.timestep.max(), metrics.timestep.max()  # noqa: B018 - the column every reader needs
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors have no common base; every kind is damage
        if not set_aside:
            raise
        _set_aside(storage, folder, rows, exc)
        return None
    return steps, metrics[metrics.timestep.isin(steps.timestep)]


def write_tables(storage: Storage, trial_id: str, steps: pd.DataFrame, metrics: pd.DataFrame) -> None:
    """The trial's tables, written whole (metrics first: a reader that sees timestep t in timesteps.parquet
    finds its metrics too); then its row files, which they now hold, are removed."""
    folder = f"trials/{trial_id}"
    for name, frame in (("metrics.parquet", metrics), ("timesteps.parquet", steps)):
        write_parquet_atomic(frame, storage.local(f"{folder}/{name}"))
        storage.push(f"{folder}/{name}")
    if row_files(storage, trial_id):
        storage.remove_tree(f"{folder}/{ROWS_FOLDER}")


def collected_tables(storage: Storage, trial_id: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """``read_tables``, with the trial's tables written from its row files first when it has any (a trial that
    stopped or failed before its end, or was interrupted)."""
    tables = read_tables(storage, trial_id)
    if tables is not None and row_files(storage, trial_id):
        write_tables(storage, trial_id, *tables)
    return tables


def _set_aside(storage: Storage, folder: str, rows: list[str], exc: Exception) -> None:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    for rel in [f"{folder}/{name}" for name in TABLES] + rows:
        local = storage.pull(rel, refresh=True)
        if local is not None:  # kept for whoever wants to look at it, never read again
            shutil.copyfile(local, storage.local(rel + ".damaged"))
            storage.push(rel + ".damaged")
            storage.remove_tree(rel)
    logger.warning(
        "time-ray: %s: the recorded tables cannot be read (%s); moved aside as *.damaged, the trial redoes "
        "its timesteps from its pool and the expert cache",
        storage.display(folder),
        reason,
    )
