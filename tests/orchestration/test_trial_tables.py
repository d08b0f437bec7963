"""A trial's recorded tables read back, damaged ones set aside (time_ray/orchestration/trial_tables.py)."""

import logging
from pathlib import Path

import pandas as pd
import pytest

from time_ray.orchestration.storage import Storage
from time_ray.orchestration.trial_tables import read_tables

ROOT = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------- row files: O(1) per recorded timestep


def quickstart_trial():
    from time_ray.config import expand_trials, load_config

    return expand_trials(load_config(ROOT / "configs" / "quickstart.yaml"))[0]


def record_timesteps(recorder, timesteps):
    from time_ray.core.contracts import TimestepCosts

    for t in timesteps:  # values that a decimal round trip would change
        records = [{"dataset": "d", "role": "adaptation", "metric": "accuracy", "value": 0.1 + 0.2 + t, "n_eval": 7}]
        recorder.record(t, records, TimestepCosts(train_seconds=1 / 3 + t, expert_cache_hit=t == 2))


def test_recording_a_timestep_writes_one_row_file_and_never_the_tables(tmp_path):
    from time_ray.orchestration.trial import TrialRecorder

    storage, trial = Storage(tmp_path), quickstart_trial()
    folder = tmp_path / "trials" / trial.trial_id
    recorder = TrialRecorder(storage, trial)
    record_timesteps(recorder, [0, 1])
    first = (folder / "rows" / "00000.json").stat()
    record_timesteps(recorder, [2, 3])
    assert sorted(p.name for p in (folder / "rows").iterdir()) == [f"0000{t}.json" for t in range(4)]
    assert (folder / "rows" / "00000.json").stat().st_mtime_ns == first.st_mtime_ns  # never rewritten
    assert not (folder / "timesteps.parquet").exists() and not (folder / "metrics.parquet").exists()
    steps, metrics = read_tables(storage, trial.trial_id)  # a resumed trial and the sweep read the rows
    assert steps.timestep.tolist() == [0, 1, 2, 3] and metrics.value.tolist() == [0.1 + 0.2 + t for t in range(4)]
    assert steps.train_seconds.tolist() == [1 / 3 + t for t in range(4)]  # bit for bit
    assert steps.expert_cache_hit.tolist() == [False, False, True, False]

    recorder.finish()  # the trial's end: its tables once, its row files gone
    assert not (folder / "rows").exists()
    written = pd.read_parquet(folder / "timesteps.parquet")
    pd.testing.assert_frame_equal(written, steps)
    assert TrialRecorder(storage, trial).last_timestep == 3  # a restarted driver continues after it


def test_row_files_after_the_tables_are_read_with_them_each_timestep_once(tmp_path):
    from time_ray.orchestration.trial import TrialRecorder
    from time_ray.orchestration.trial_tables import collected_tables

    storage, trial = Storage(tmp_path), quickstart_trial()
    folder = tmp_path / "trials" / trial.trial_id
    recorder = TrialRecorder(storage, trial)
    record_timesteps(recorder, [0, 1])
    recorder.finish()
    resumed = TrialRecorder(storage, trial)  # e.g. the tables written, then the driver restarted
    record_timesteps(resumed, [2])
    storage.write_text(  # a crash between writing the tables and removing the row files: timestep 1 twice
        f"trials/{trial.trial_id}/rows/00001.json",
        (folder / "rows" / "00002.json").read_text().replace('"timestep": 2', '"timestep": 1'),
    )
    steps, metrics = read_tables(storage, trial.trial_id)
    assert steps.timestep.tolist() == [0, 1, 2] and metrics.timestep.tolist() == [0, 1, 2]
    assert metrics.value.tolist() == [0.1 + 0.2 + t for t in range(3)]  # the tables' timestep 1, not the file's

    collected = collected_tables(storage, trial.trial_id)  # what the sweep's collect does with a stopped trial
    assert not (folder / "rows").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "timesteps.parquet"), collected[0])


def test_a_damaged_row_file_is_set_aside_with_the_tables(tmp_path, caplog):
    from time_ray.orchestration.trial import TrialRecorder

    storage, trial = Storage(tmp_path), quickstart_trial()
    folder = tmp_path / "trials" / trial.trial_id
    record_timesteps(TrialRecorder(storage, trial), [0, 1])
    (folder / "rows" / "00001.json").write_text('{"timestep": [1, 2')
    with pytest.raises(ValueError):  # a reader beside the running trial leaves the decision to it
        read_tables(storage, trial.trial_id, set_aside=False)
    with caplog.at_level(logging.WARNING):
        assert read_tables(storage, trial.trial_id) is None
    assert (folder / "rows" / "00001.json.damaged").exists() and not (folder / "rows" / "00001.json").exists()
    assert "cannot be read" in caplog.text and read_tables(storage, trial.trial_id) is None
