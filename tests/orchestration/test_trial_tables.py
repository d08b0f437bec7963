"""A trial's recorded tables read back, damaged ones set aside (time_ray/orchestration/trial_tables.py)."""

import logging

import pandas as pd
import pytest

from time_ray.orchestration.storage import Storage
from time_ray.orchestration.trial_tables import read_tables


def write_tables(folder, timesteps, metric_timesteps):
    folder.mkdir(parents=True)
    pd.DataFrame({"timestep": timesteps, "gm": [0.5] * len(timesteps)}).to_parquet(folder / "timesteps.parquet")
    pd.DataFrame({"timestep": metric_timesteps, "value": range(len(metric_timesteps))}).to_parquet(
        folder / "metrics.parquet"
    )


def test_metrics_of_timesteps_not_recorded_are_left_out(tmp_path):
    write_tables(tmp_path / "trials" / "a", [0, 1], [0, 0, 1, 2])  # timestep 2's metrics written, its row not
    steps, metrics = read_tables(Storage(tmp_path), "a")
    assert steps.timestep.tolist() == [0, 1] and metrics.timestep.tolist() == [0, 0, 1]
    assert read_tables(Storage(tmp_path), "absent") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: (f / "timesteps.parquet").write_bytes(b""),
        lambda f: (f / "timesteps.parquet").write_bytes((f / "timesteps.parquet").read_bytes()[:40]),
        lambda f: (f / "metrics.parquet").unlink(),
        lambda f: pd.DataFrame({"other": [1]}).to_parquet(f / "metrics.parquet"),
    ],
    ids=["zero-bytes", "cut-short", "metrics-missing", "no-timestep-column"],
)
def test_damaged_tables_are_set_aside_and_count_as_nothing_recorded(tmp_path, caplog, damage):
    folder = tmp_path / "trials" / "a"
    write_tables(folder, [0, 1], [0, 1])
    damage(folder)
    with caplog.at_level(logging.WARNING):
        assert read_tables(Storage(tmp_path), "a") is None
    assert not (folder / "timesteps.parquet").exists() and not (folder / "metrics.parquet").exists()
    assert (folder / "timesteps.parquet.damaged").exists()
    [record] = caplog.records
    assert f"{tmp_path}/trials/a: the recorded tables cannot be read" in record.getMessage()
    assert len(record.getMessage()) < 500
    assert read_tables(Storage(tmp_path), "a") is None  # and the trial starts afresh
