"""Reading a trial's recorded tables (``trials/<id>/timesteps.parquet`` and ``metrics.parquet``), damaged
ones included: what the sweep, its resume and the trial driver read back."""

from __future__ import annotations

import logging
import shutil

import pandas as pd

from time_ray.orchestration.storage import Storage

logger = logging.getLogger(__name__)
TABLES = ("timesteps.parquet", "metrics.parquet")


def read_tables(storage: Storage, trial_id: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The trial's recorded timesteps and their metrics, or None when it has recorded none.

    A table that cannot be read (zero bytes, cut short, not parquet, a column missing) is moved aside as
    ``<name>.damaged`` with a warning, and the trial is treated as having recorded nothing: every row is a
    deterministic function of its pool and of the expert cache, which ``--resume`` reads again, so the
    trial redoes its timesteps (no expert is trained twice) instead of failing on the file."""
    folder = f"trials/{trial_id}"
    steps_path = storage.pull(f"{folder}/timesteps.parquet", refresh=True)
    if steps_path is None:
        return None
    try:
        steps = pd.read_parquet(steps_path)
        metrics_path = storage.pull(f"{folder}/metrics.parquet", refresh=True)
        if metrics_path is None:
            raise FileNotFoundError("metrics.parquet is missing")
        metrics = pd.read_parquet(metrics_path)
        steps.timestep.max(), metrics.timestep.max()  # noqa: B018 - the column every reader needs
    except Exception as exc:  # noqa: BLE001 - pyarrow's errors have no common base; every kind is damage
        _set_aside(storage, folder, exc)
        return None
    return steps, metrics[metrics.timestep.isin(steps.timestep)]  # metrics are written first


def _set_aside(storage: Storage, folder: str, exc: Exception) -> None:
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    for name in TABLES:
        rel = f"{folder}/{name}"
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
