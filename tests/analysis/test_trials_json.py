"""A report knows which trials a sweep owes from DIR/trials.json (written when the sweep starts),
never from the config layer: reporting builds no model, benchmark or config."""

import json

from tests.helpers.synthetic import write_sweep
from time_ray.analysis.load import load_sweep
from time_ray.core.results import TRIAL_COLUMNS, trials_frame, write_parquet_atomic


def test_trials_json_names_the_trials_a_partial_sweep_owes(tmp_path):
    out = tmp_path / "sweep"
    trials = write_sweep(out, skip=2)
    document = json.loads((out / "trials.json").read_text())
    assert document["tasks"] == 3 and [t["trial_id"] for t in document["trials"]] == [t.trial_id for t in trials]
    (out / "config.yaml").unlink()  # not needed by the report any more
    sweep = load_sweep(out)
    assert list(sweep.missing.trial_id) == [t.trial_id for t in trials[:2]]
    assert set(sweep.missing.state) == {"not started"} and sweep.notes == ()


def test_a_sweep_from_before_trials_json_reads_its_trials_parquet(tmp_path):
    out = tmp_path / "sweep"
    trials = write_sweep(out)
    (out / "trials.json").unlink()
    rows = [{**t.columns(), "status": "finished", "last_timestep": 3} for t in trials]
    write_parquet_atomic(trials_frame(rows)[TRIAL_COLUMNS], out / "trials.parquet")
    sweep = load_sweep(out)
    assert sweep.tasks == 3 and len(sweep.progress) == len(trials) and sweep.missing.empty and sweep.notes == ()


def test_missing_or_damaged_trials_json_is_a_note_not_a_failure(tmp_path):
    out = tmp_path / "sweep"
    write_sweep(out)
    (out / "trials.json").write_text('{"trials": [{"policy": "x"}], "tasks": 3}')
    sweep = load_sweep(out)
    assert "DIR/trials.json is damaged (an entry without trial_id)" in sweep.notes[0]
    (out / "trials.json").unlink()
    sweep = load_sweep(out)
    assert "DIR/trials.json is missing" in sweep.notes[0] and not sweep.progress.empty
