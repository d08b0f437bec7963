"""Experiment tracking (orchestration/tracking.py): the Tune callback driven with stand-ins for Tune's trials
and results, against a real MLflow file store and W&B's offline mode (no network), read back from disk;
the config section; and one real sweep with both trackers, resumed."""

import json
import logging
import shutil
import struct
import tempfile
from pathlib import Path

import pytest

from tests.helpers.e2e import SETS, run_cli
from time_ray.config import expand_trials, load_config
from time_ray.core.errors import ConfigError
from time_ray.core.results import row_file, row_file_text
from time_ray.orchestration.storage import Storage
from time_ray.orchestration.sweep import EXECUTION, collect, prepare_output
from time_ray.orchestration.tracking import (
    ARTIFACTS,
    FINGERPRINT_TAG,
    ROLE_TAG,
    TRIAL_TAG,
    TrackingCallback,
    sweep_fingerprint,
)
from time_ray.orchestration.trial import REPORTED

QUICKSTART = "configs/quickstart.yaml"
TWO_POLICIES = "policies.presets=[sequential-ft, best-in-time]"
TASKS = 4  # the quickstart's


@pytest.fixture(autouse=True)
def _trackers_offline(tmp_path, monkeypatch):
    """W&B offline and silent, its files under tmp_path; MLflow's file store as the tracker leaves it."""
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI"):  # the tracker sets the first for a file store
        monkeypatch.setenv(name, "")  # so that the test's end restores it, whether it was set or not
        monkeypatch.delenv(name)


def tracked(tmp_path, *overrides):
    """The quickstart with two policies, tracked by an MLflow file store and offline W&B under tmp_path."""
    return load_config(
        QUICKSTART,
        [
            TWO_POLICIES,
            f"tracking.mlflow=file://{tmp_path}/mlruns",
            f"tracking.wandb={{project: time-ray-tests, dir: {tmp_path}/wandb}}",
            *overrides,
        ],
    )


class FakeTrial:
    """What the callback reads of a Tune trial."""

    def __init__(self, trial_id):
        self.config = {"trial_id": trial_id}


def row(trial, t):
    """Timestep t's row of trial's timesteps.parquet (numbers made up, each distinct)."""
    return {
        **trial.columns(),
        "timestep": t,
        "a_ka": 0.5 + t / 100,
        "a_zs": 0.8 - t / 100,
        "gm": 0.6 + t / 1000,
        "train_steps": 200 * (t > 0),
        "train_gflops": 1.5 * t,
        "train_seconds": 2.0 * t,
        "merge_seconds": 0.25 * t,
        "eval_seconds": 0.5,
        "pool_bytes": 0,
        "expert_cache_hit": t == 2,
        "expert_train_steps": 200 * (t > 0),
        "expert_train_gflops": 1.5 * t,
        "expert_train_seconds": 2.0 * t,
    }


def record(storage, trial, last):
    """What a trial's driver has written before it reports timestep ``last``: the row files of timesteps
    0..last (trial.TrialRecorder)."""
    for t in range(last + 1):
        storage.write_text(f"trials/{trial.trial_id}/{row_file(t)}", row_file_text(row(trial, t), []))


def report(trial, t):
    """What the trial reports with tune.report at timestep t (trial._report, plus the cache hit)."""
    r = row(trial, t)
    return {k: r[k] for k in (*REPORTED, "expert_cache_hit")} | {"tasks": TASKS}


def drive(callback, storage, trial, timesteps, end="complete"):
    """Tune's calls for a trial that records and reports ``timesteps``, then ends (or not: end=None)."""
    for t in timesteps:
        record(storage, trial, t)
        callback.on_trial_result(t, [], FakeTrial(trial.trial_id), report(trial, t))
    if end is not None:
        getattr(callback, f"on_trial_{end}")(len(timesteps), [], FakeTrial(trial.trial_id))


def crash(callback):
    """What a killed driver leaves: W&B's runs end with its process (wandb's exit hook), MLflow's stay RUNNING."""
    for tracker in callback.trackers:
        for run in getattr(tracker, "runs", {}).values():
            if tracker.name == "W&B":
                run.finish(exit_code=1)


def run_sweep_of_callbacks(cfg, storage, resume=False):
    """Every trial of ``cfg`` through the callback, then the sweep's tables and its end."""
    trials = expand_trials(cfg)
    prepare_output(cfg, storage, resume)
    callback = TrackingCallback(cfg, trials, storage, resume)
    for trial in trials:
        drive(callback, storage, trial, range(TASKS + 1))
    collect(storage, trials, TASKS)
    callback.finish()
    return trials


# ---------------------------------------------------------------- reading the trackers back


def mlflow_runs(uri, name, role):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{role}'")
    return client, runs


def history(client, run, metric):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]


def wandb_records(path):
    """The records of a W&B offline run file (run-<id>.wandb): a LevelDB-style log of 32 KiB blocks, each
    record a 7-byte header (checksum, length, type) and a protobuf ``Record``, after a 7-byte file header."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = Path(path).read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    position, pending = header, b""
    while position + header <= len(data):
        if block - position % block < header:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + header])
        if kind == 0 and length == 0:
            position += block - position % block
            continue
        pending += data[position + header : position + header + length]
        position += header + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def key(item):
    """The key of a W&B record's item: written as ``key`` or as ``nested_key``."""
    return item.key or "/".join(item.nested_key)


def wandb_runs(directory):
    """{run id: [what each offline run directory of that id holds]}: display name, group, job type, config,
    history {step: {key: value}}, artifacts {name: [files]}, exit code. W&B's service process writes the
    files after ``finish`` returns; ``teardown`` waits until it has written everything and stops it (the
    next ``wandb.init`` starts another), so on a busy machine no file is read half written."""
    import wandb

    wandb.teardown()
    runs: dict = {}
    for path in sorted(Path(directory).glob("wandb/offline-run-*/run-*.wandb")):
        run = {"history": {}, "artifacts": {}, "exit": None}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                config = {key(i): json.loads(i.value_json) for i in record.run.config.update}
                run.update(
                    id=record.run.run_id,
                    name=record.run.display_name,
                    group=record.run.run_group,
                    job_type=record.run.job_type,
                    config=config,
                )
            elif kind == "history":
                values = {key(i): json.loads(i.value_json) for i in record.history.item if not key(i).startswith("_")}
                run["history"][record.history.step.num] = values
            elif kind == "artifact":
                run["artifacts"][record.artifact.name] = sorted(e.path for e in record.artifact.manifest.contents)
            elif kind == "exit":
                run["exit"] = record.exit.exit_code
        runs.setdefault(run["id"], []).append(run)
    return runs


# ---------------------------------------------------------------- the callback, against both trackers


def test_each_trial_is_a_run_with_its_policy_and_its_metrics_by_timestep(tmp_path):
    cfg = tracked(tmp_path)
    storage = Storage(tmp_path / "out")
    trials = run_sweep_of_callbacks(cfg, storage)

    client, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "trial")
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == sorted(t.trial_id for t in trials)
    by_id = {t.trial_id: t for t in trials}
    for run in runs:
        trial = by_id[run.data.tags[TRIAL_TAG]]
        assert run.info.status == "FINISHED" and run.info.run_name == trial.trial_id
        assert run.data.tags[FINGERPRINT_TAG] == sweep_fingerprint(cfg)
        for name in ("init", "deploy", "merge", "merge_params", "budget_steps", "seed", "trial_id"):
            assert run.data.params[name] == str(trial.columns()[name]), name
        assert run.data.params["sweep"] == "quickstart"
        assert run.data.params["sweep_fingerprint"] == sweep_fingerprint(cfg)
        expected = [row(trial, t) for t in range(TASKS + 1)]
        for metric in ("a_ka", "a_zs", "gm", "train_steps", "train_gflops", "train_seconds", "merge_seconds"):
            assert history(client, run, metric) == [(r["timestep"], pytest.approx(r[metric])) for r in expected]
        assert history(client, run, "expert_cache_hit") == [(t, float(t == 2)) for t in range(TASKS + 1)]

    wandb = wandb_runs(tmp_path / "wandb")
    trial_runs = [runs[0] for runs in wandb.values() if runs[0]["job_type"] == "trial"]
    assert sorted(r["name"] for r in trial_runs) == sorted(by_id)
    for run in trial_runs:
        trial = by_id[run["name"]]
        assert run["group"] == "quickstart" and run["exit"] == 0
        assert {k: run["config"][k] for k in ("init", "deploy", "merge", "budget_steps", "seed", "trial_id")} == {
            k: trial.columns()[k] for k in ("init", "deploy", "merge", "budget_steps", "seed", "trial_id")
        }
        assert sorted(run["history"]) == list(range(TASKS + 1))
        assert run["history"][3]["gm"] == pytest.approx(row(trial, 3)["gm"])
        assert run["history"][3]["train_gflops"] == pytest.approx(4.5)


def test_the_sweep_run_holds_the_result_tables(tmp_path):
    cfg = tracked(tmp_path)
    run_sweep_of_callbacks(cfg, Storage(tmp_path / "out"))

    client, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "sweep")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].info.run_name == "quickstart"
    assert runs[0].data.params["trials"] == "2" and runs[0].data.params["tasks"] == str(TASKS)
    files = {f.path: f.file_size for f in client.list_artifacts(runs[0].info.run_id)}
    assert sorted(files) == sorted(ARTIFACTS) and all(size > 0 for size in files.values())
    config = Path(client.download_artifacts(runs[0].info.run_id, "config.yaml", str(tmp_path / "down")))
    assert config.read_text() == (tmp_path / "out" / "config.yaml").read_text()

    sweep_runs = [runs[0] for runs in wandb_runs(tmp_path / "wandb").values() if runs[0]["job_type"] == "sweep"]
    assert len(sweep_runs) == 1 and sweep_runs[0]["artifacts"] == {"quickstart-results": sorted(ARTIFACTS)}


def test_a_failed_trial_ends_its_run_as_failed_and_an_unended_one_as_killed(tmp_path):
    cfg = tracked(tmp_path)
    storage = Storage(tmp_path / "out")
    trials = expand_trials(cfg)
    prepare_output(cfg, storage, resume=False)
    callback = TrackingCallback(cfg, trials, storage)
    drive(callback, storage, trials[0], range(2), end="error")
    drive(callback, storage, trials[1], range(2), end=None)  # Tune never ended it (the sweep was stopped)
    collect(storage, trials, TASKS)
    callback.finish(failed=True)

    _, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "trial")
    assert {r.data.tags[TRIAL_TAG]: r.info.status for r in runs} == {
        trials[0].trial_id: "FAILED",
        trials[1].trial_id: "KILLED",
    }
    _, (sweep_run,) = mlflow_runs(cfg.tracking.mlflow, cfg.name, "sweep")
    assert sweep_run.info.status == "FAILED"
    assert {runs[0]["name"]: runs[0]["exit"] for runs in wandb_runs(tmp_path / "wandb").values()} == {
        trials[0].trial_id: 1,
        trials[1].trial_id: 1,
        "quickstart": 1,
    }


def test_a_resumed_sweep_continues_its_runs_and_logs_each_timestep_once(tmp_path):
    """The first run stops after timestep 1 was reported and timestep 2 recorded (its result never came);
    --resume continues the same MLflow run (found by its tags) from timestep 2, and the same W&B run id."""
    cfg = tracked(tmp_path)
    storage = Storage(tmp_path / "out")
    trials = expand_trials(cfg)
    prepare_output(cfg, storage, resume=False)
    first = TrackingCallback(cfg, trials, storage)
    drive(first, storage, trials[0], range(2), end=None)
    record(storage, trials[0], 2)  # recorded, then the driver was killed before Tune saw the result
    crash(first)

    # resumed with one more tracker option changed: the same sweep (its fingerprint without `tracking`)
    resumed_cfg = tracked(tmp_path, "tracking.wandb.entity=someone-else")
    assert resumed_cfg.fingerprint() == cfg.fingerprint()
    assert (
        sweep_fingerprint(resumed_cfg)
        == sweep_fingerprint(cfg)
        == load_config(QUICKSTART, [TWO_POLICIES]).fingerprint()
    )
    prepare_output(resumed_cfg, storage, resume=True)
    resumed = TrackingCallback(resumed_cfg, trials, storage, resume=True)
    drive(resumed, storage, trials[0], range(3, TASKS + 1))
    drive(resumed, storage, trials[1], range(TASKS + 1))
    collect(storage, trials, TASKS)
    resumed.finish()

    client, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "trial")
    assert sorted(r.data.tags[TRIAL_TAG] for r in runs) == sorted(t.trial_id for t in trials)  # one run each
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [step for step, _ in history(client, run, "gm")] == list(range(TASKS + 1))  # each step once
        assert [step for step, _ in history(client, run, "train_steps")] == list(range(TASKS + 1))
    _, sweep_runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "sweep")
    assert len(sweep_runs) == 1

    wandb = wandb_runs(tmp_path / "wandb")
    continued = [runs for runs in wandb.values() if runs[0]["name"] == trials[0].trial_id]
    assert len(continued) == 1 and len(continued[0]) == 2  # one run id, written by both processes (offline)
    assert sorted(continued[0][0]["history"]) == [0, 1] and continued[0][1]["exit"] == 0
    assert sorted(continued[0][1]["history"]) == list(range(TASKS + 1))  # offline: each directory complete


def test_a_new_sweep_in_another_directory_starts_runs_of_its_own(tmp_path):
    cfg = tracked(tmp_path)
    run_sweep_of_callbacks(cfg, Storage(tmp_path / "a"))
    run_sweep_of_callbacks(cfg, Storage(tmp_path / "b"))
    _, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "trial")
    assert len(runs) == 4
    assert len([runs for runs in wandb_runs(tmp_path / "wandb").values() if runs[0]["job_type"] == "trial"]) == 4


# ---------------------------------------------------------------- a tracker that fails


def warnings_of(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("time_ray")]


def test_an_unreachable_mlflow_server_is_one_warning_and_the_sweep_goes_on(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = tracked(tmp_path, "tracking.mlflow=http://127.0.0.1:9")  # nothing listens on the discard port
    storage = Storage(tmp_path / "out")
    with caplog.at_level(logging.INFO, logger="time_ray"):
        trials = run_sweep_of_callbacks(cfg, storage)
    (warning,) = warnings_of(caplog)
    assert warning.startswith("time-ray: tracking: MLflow (http://127.0.0.1:9) failed, the sweep goes on without it: ")
    assert "\n" not in warning
    assert len([r for r in wandb_runs(tmp_path / "wandb").values()]) == len(trials) + 1  # W&B went on


def test_a_tracker_failing_mid_sweep_is_one_warning_and_left_out(tmp_path, monkeypatch, caplog):
    import wandb

    calls = []

    def failing_init(**kwargs):
        calls.append(kwargs["name"])
        raise wandb.errors.CommError("the server said no")

    monkeypatch.setattr(wandb, "init", failing_init)
    cfg = tracked(tmp_path)
    with caplog.at_level(logging.INFO, logger="time_ray"):
        trials = run_sweep_of_callbacks(cfg, Storage(tmp_path / "out"))
    assert warnings_of(caplog) == [
        f"time-ray: tracking: W&B (project time-ray-tests, offline, {tmp_path}/wandb) failed, the sweep goes on "
        "without it: CommError: the server said no"
    ]
    assert len(calls) == 1  # left out after its failure
    _, runs = mlflow_runs(cfg.tracking.mlflow, cfg.name, "trial")
    assert len(runs) == len(trials)  # MLflow went on


def test_a_tracker_not_installed_is_one_warning_saying_how_to_install_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # import wandb raises ImportError
    cfg = tracked(tmp_path)
    with caplog.at_level(logging.INFO, logger="time_ray"):
        run_sweep_of_callbacks(cfg, Storage(tmp_path / "out"))
    (warning,) = warnings_of(caplog)
    assert warning.startswith("time-ray: tracking: W&B (project time-ray-tests) failed, the sweep goes on without it")
    assert warning.endswith("install the trackers with pip install 'time-ray[tracking]'")


def test_the_callback_pickles_without_its_trackers(tmp_path):
    """Tune pickles its run config, callbacks included, when the Tuner is built."""
    import pickle

    cfg = tracked(tmp_path)
    callback = TrackingCallback(cfg, expand_trials(cfg), Storage(tmp_path / "out"))
    assert len(callback.trackers) == 2
    assert pickle.loads(pickle.dumps(callback)).trackers == []


# ---------------------------------------------------------------- the config section


def test_tracking_at_its_default_leaves_the_config_and_its_fingerprint_alone():
    plain = load_config(QUICKSTART)
    assert "tracking" in EXECUTION
    for sets in (["tracking={}"], ["tracking=null"], ["tracking={mlflow: null, wandb: null}"]):
        cfg = load_config(QUICKSTART, sets)
        assert cfg.to_dict() == plain.to_dict() and cfg.fingerprint() == plain.fingerprint()
    assert not plain.tracking.enabled


def test_tracking_paths_are_made_absolute_and_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).resolve().parents[2] / QUICKSTART, tmp_path / "quickstart.yaml")
    cfg = load_config("quickstart.yaml", ["tracking.mlflow=runs/mlflow", "tracking.wandb={project: p, dir: ./wb}"])
    assert cfg.tracking.mlflow == str(tmp_path / "runs" / "mlflow")
    assert cfg.tracking.wandb.dir == str(tmp_path / "wb") and cfg.tracking.wandb.mode == "offline"
    assert cfg.to_dict()["tracking"]["mlflow"] == str(tmp_path / "runs" / "mlflow")
    for uri in ("file:///x/mlruns", "http://host:5000", "https://host", "databricks", "databricks://profile"):
        assert load_config("quickstart.yaml", [f"tracking.mlflow={uri}"]).tracking.mlflow == uri


@pytest.mark.parametrize(
    "override, message",
    [
        ("tracking.mlfow=x", "tracking.mlfow: unknown field. Did you mean mlflow? Allowed: mlflow, wandb."),
        ("tracking.wandb={project: p, mode: offlne}", "tracking.wandb.mode: 'offlne' is not allowed."),
        ("tracking.wandb={project: p, group: g}", "tracking.wandb.group: unknown field."),
        ("tracking.wandb={mode: offline}", "tracking.wandb.project: required."),
        ("tracking.wandb={project: a/b}", "tracking.wandb.project: 'a/b' is not a W&B project name"),
        ("tracking.mlflow=sqlite:///mlflow.db", "tracking.mlflow: 'sqlite:///mlflow.db' is not an MLflow tracking URI"),
        ("tracking.mlflow=s3://bucket/runs", "tracking.mlflow: 's3://bucket/runs' is not an MLflow tracking URI"),
        ("tracking.mlflow=http:/host", "tracking.mlflow: 'http:/host' is not an MLflow tracking URI"),
        ("tracking.mlflow=''", "tracking.mlflow: '' is not an MLflow tracking URI"),
        ("tracking.mlflow=5000", "tracking.mlflow: expected a string, got 5000."),
    ],
)
def test_a_bad_tracking_section_is_refused_naming_the_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(QUICKSTART, [override])
    assert str(error.value).startswith(message), str(error.value)


def test_resume_accepts_a_change_of_tracking(tmp_path, caplog):
    plain = load_config(QUICKSTART)
    prepare_output(plain, Storage(tmp_path), resume=False)
    with caplog.at_level(logging.INFO, logger="time_ray"):
        prepare_output(load_config(QUICKSTART, ["tracking.mlflow=mlruns"]), Storage(tmp_path), resume=True)
    assert "tracking changed since the sweep started" in caplog.text


# ---------------------------------------------------------------- a real sweep


@pytest.mark.e2e
def test_a_sweep_logs_to_both_trackers_and_its_resume_adds_no_run(tmp_path, cache_dir, monkeypatch):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short path: Ray's socket names are limited
    tracking = [
        "--set",
        f"tracking.mlflow=file://{tmp_path}/mlruns",
        "--set",
        f"tracking.wandb={{project: time-ray-e2e, dir: {tmp_path}/wandb}}",
    ]
    args = ["sweep", QUICKSTART, "--output", str(out), *SETS, "--set", "policies.presets=[sequential-ft]", *tracking]
    try:
        proc = run_cli(args, cache_dir, ray_tmp)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        lines = [line for line in proc.stderr.splitlines() if "time-ray: tracking: " in line]
        assert len(lines) == 1 and "MLflow (file://" in lines[0] and "W&B (project time-ray-e2e" in lines[0], lines
        resumed = run_cli([*args, "--resume"], cache_dir, ray_tmp)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the store here (the sweep set it for itself)
    uri = f"file://{tmp_path}/mlruns"
    client, (run,) = mlflow_runs(uri, "quickstart", "trial")
    assert run.info.status == "FINISHED" and run.data.params["init"] == "ft"
    assert [step for step, _ in history(client, run, "gm")] == [0, 1, 2]
    assert [value for _, value in history(client, run, "train_steps")] == [0.0, 60.0, 60.0]
    _, (sweep_run,) = mlflow_runs(uri, "quickstart", "sweep")  # the resume's artifacts went to the same run
    assert sorted(f.path for f in client.list_artifacts(sweep_run.info.run_id)) == sorted(ARTIFACTS)
    wandb = wandb_runs(tmp_path / "wandb")
    (trial_run,) = [runs[0] for runs in wandb.values() if runs[0]["job_type"] == "trial"]
    assert trial_run["name"] == run.data.tags[TRIAL_TAG] and sorted(trial_run["history"]) == [0, 1, 2]
    # Tune's own event files, which TensorBoard reads (docs/tracking.md)
    assert list((out / "ray" / "tune" / run.data.tags[TRIAL_TAG]).glob("events.out.tfevents.*"))
