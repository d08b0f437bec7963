"""Pure parts of the sweep layer (no Ray started)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from time_ray.config import SweepConfig, expand_trials, load_config
from time_ray.core.errors import TimeRayError
from time_ray.core.results import METRICS_COLUMNS, TIMESTEP_COLUMNS, write_parquet_atomic
from time_ray.orchestration.storage import Storage
from time_ray.orchestration.sweep import (
    prepare_output,
    summary_table,
    trials_at_once,
    worker_resources,
    write_trials,
)

# a sweep directory written before schema versions (version 1: no schema_version in its files)
VERSION_1_SWEEP = Path(__file__).resolve().parents[2] / "analysis/reports/findings-t20/sweeps/findings-t20"


def test_worker_resources_fit_the_cluster():
    cfg = SweepConfig()
    per_worker, concurrent = worker_resources(cfg, {"CPU": 2.0}, n_trials=3)
    # 3 worker groups of the training service and 3 trial drivers: 3 x 0.65 + 3 x 0.01 <= 2
    assert per_worker == {"CPU": 0.65} and concurrent == 3
    assert trials_at_once(cfg, concurrent, 3) == 3
    per_worker, concurrent = worker_resources(cfg, {"CPU": 2.0}, n_trials=12)
    # 4 x (0.5 + 2 x 0.01) would not fit in 2; 3 groups and 6 drivers: (2 - 6 x 0.01) / 3 = 0.646 -> 0.64
    assert per_worker == {"CPU": 0.64} and concurrent == 3
    assert trials_at_once(cfg, concurrent, 12) == 6  # twice the groups: a group always finds a job
    limited = load_config("configs/quickstart.yaml", ["resources.max_concurrent_trials=4"])
    assert trials_at_once(limited, 3, 12) == 4
    per_worker, concurrent = worker_resources(cfg, {"CPU": 16.0}, n_trials=2)
    assert per_worker == {"CPU": 7.99} and concurrent == 2
    two_workers = load_config("configs/quickstart.yaml", ["resources.workers_per_expert=2"])
    per_worker, concurrent = worker_resources(two_workers, {"CPU": 2.0}, n_trials=3)
    assert concurrent == 1 and 2 * per_worker["CPU"] + 0.01 <= 2


def test_use_gpu_without_gpus_is_refused():
    cfg = load_config("configs/quickstart.yaml", ["resources.use_gpu=true"])
    with pytest.raises(TimeRayError, match="no GPU"):
        worker_resources(cfg, {"CPU": 2.0}, 3)


def test_output_of_another_sweep_is_refused(tmp_path):
    a = load_config("configs/quickstart.yaml")
    b = load_config("configs/quickstart.yaml", ["budget.steps_per_task=7"])
    prepare_output(a, Storage(tmp_path), resume=False)
    with pytest.raises(TimeRayError, match="another sweep"):
        prepare_output(b, Storage(tmp_path), resume=True)
    with pytest.raises(TimeRayError, match="--resume"):
        prepare_output(a, Storage(tmp_path), resume=False)
    prepare_output(a, Storage(tmp_path), resume=True)


def test_resume_may_change_resources_and_nothing_else(tmp_path, caplog):
    """``resources`` says where the trials run, never what they compute: --resume accepts a change there."""
    a = load_config("configs/quickstart.yaml")
    prepare_output(a, Storage(tmp_path), resume=False)
    wider = load_config(
        "configs/quickstart.yaml",
        ["resources.max_concurrent_trials=1", "resources.evaluators=0", "resources.merge_actors=2"],
    )
    assert wider.fingerprint() == a.fingerprint()  # what it computes is the same (docs/config.md "Identity")
    with caplog.at_level("INFO"):
        prepare_output(wider, Storage(tmp_path), resume=True)
    assert "time-ray: resources changed since the sweep started" in caplog.text
    assert "'max_concurrent_trials': 1" in caplog.text
    with pytest.raises(TimeRayError, match="--resume"):  # still this sweep: without --resume it is refused
        prepare_output(wider, Storage(tmp_path), resume=False)
    both = load_config("configs/quickstart.yaml", ["resources.max_concurrent_trials=1", "training.lr=0.5"])
    with pytest.raises(TimeRayError, match="another sweep"):  # a change beyond resources is another sweep
        prepare_output(both, Storage(tmp_path), resume=True)


def test_a_sweep_directory_of_schema_version_1_resumes_and_is_rewritten_in_version_2(tmp_path, caplog):
    """docs/config.md "Schema versions": a directory whose sweep.json holds version 1's fingerprint (it hashed
    resources too) is still this config's sweep; --resume rewrites its sweep.json, config.yaml and trials.json
    in version 2, and its trials keep their ids (they never hashed the fingerprint)."""
    old = tmp_path / "old"
    shutil.copytree(VERSION_1_SWEEP, old)
    assert "schema_version" not in json.loads((old / "sweep.json").read_text())
    assert "schema_version" not in yaml.safe_load((old / "config.yaml").read_text())
    cfg = load_config("configs/findings-t20.yaml", ["resources.merge_actors=2"])  # version 1 hashed resources
    with pytest.raises(TimeRayError, match="Pass --resume"):
        prepare_output(cfg, Storage(old), resume=False)
    with caplog.at_level("INFO"):
        prepare_output(cfg, Storage(old), resume=True)
    assert "written in sweep schema version 1; it is rewritten in version 2" in caplog.text
    trials = expand_trials(cfg)
    write_trials(Storage(old), cfg, trials)
    assert json.loads((old / "sweep.json").read_text()) == {
        "name": "findings-t20",
        "fingerprint": cfg.fingerprint(),
        "schema_version": 2,
    }
    assert yaml.safe_load((old / "config.yaml").read_text())["schema_version"] == 2
    assert json.loads((old / "trials.json").read_text())["schema_version"] == 2
    recorded = pd.read_parquet(old / "trials.parquet").trial_id
    assert sorted(t.trial_id for t in trials) == sorted(recorded)  # every recorded trial is found again

    # only its sweep.json (no config.yaml): recognised by version 1's fingerprint
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(VERSION_1_SWEEP / "sweep.json", bare / "sweep.json")
    prepare_output(load_config("configs/findings-t20.yaml"), Storage(bare), resume=True)
    # another config is another sweep, whichever version wrote the directory
    other = tmp_path / "other"
    shutil.copytree(VERSION_1_SWEEP, other)
    with pytest.raises(
        TimeRayError, match=r"another sweep \('findings-t20', config fingerprint 0fbb968f17e27ce0, schema "
    ):
        prepare_output(load_config("configs/findings-t20.yaml", ["seeds=[5]"]), Storage(other), resume=True)


def test_a_version_1_directory_is_recognised_by_what_its_config_yaml_computes(tmp_path):
    """Its sweep.json's fingerprint hashed the config as written then (here a grid's scalar, ``init: zs``,
    which version 2 reads as a list of one): its config.yaml, read as a config, still says it is this sweep."""
    cfg = load_config("configs/quickstart.yaml", ["policies.grid={init: [zs], deploy: [ema]}"])
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("schema_version", "outputs", "tracking")}
    old["policies"]["grid"] = {"init": "zs", "deploy": "ema"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "quickstart", "fingerprint": "0123456789abcdef"}))
    prepare_output(cfg, Storage(tmp_path), resume=True)
    assert json.loads((tmp_path / "sweep.json").read_text())["fingerprint"] == cfg.fingerprint()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    (other / "sweep.json").write_text(json.dumps({"name": "quickstart", "fingerprint": "0123456789abcdef"}))
    with pytest.raises(TimeRayError, match="another sweep"):
        prepare_output(load_config("configs/quickstart.yaml", ["policies.grid={init: [ft]}"]), Storage(other), True)


def test_a_sweep_directory_of_a_newer_schema_version_is_refused_in_one_line(tmp_path):
    cfg = load_config("configs/quickstart.yaml")
    prepare_output(cfg, Storage(tmp_path), resume=False)
    owner = json.loads((tmp_path / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps({**owner, "schema_version": 3}))
    with pytest.raises(TimeRayError) as error:
        prepare_output(cfg, Storage(tmp_path), resume=True)
    message = str(error.value)
    assert "\n" not in message and "written in sweep schema version 3" in message
    assert "reads versions 1 to 2" in message and "another --output directory" in message


def test_summary_table_lists_the_base_then_policies_by_gm():
    rows = []
    for trial, policy, gm in (("a", "sequential-ft", 0.5), ("b", "best-in-time", 0.7)):
        for t, value in ((0, 0.3), (2, gm)):
            rows.append(
                {c: None for c in TIMESTEP_COLUMNS}
                | {
                    "trial_id": trial,
                    "policy": policy,
                    "init": "x",
                    "deploy": "y",
                    "merge": "ties",
                    "merge_params": '{"prune": 0.2}',
                    "ema_weight": "running-mean",
                    "ema_with_base": True,
                    "all_with_base": False,
                    "recency": "uniform",
                    "budget_steps": 10,
                    "seed": 0,
                    "timestep": t,
                    "a_ka": value,
                    "a_zs": 0.9,
                    "gm": value,
                }
            )
    lines = summary_table(pd.DataFrame(rows)).splitlines()
    assert lines[1].startswith("base model") and lines[2].startswith("best-in-time")
    assert lines[3].startswith("sequential-ft") and "0.900   0.500" in lines[3]
    assert lines[3].endswith("prune=0.2 ema_weight=running-mean steps=10 seed=0")  # what tells trials apart


def test_parquet_writes_are_atomic(tmp_path):
    write_parquet_atomic(pd.DataFrame({"x": [1, 2]}), tmp_path / "f.parquet")
    write_parquet_atomic(pd.DataFrame({"x": [3]}), tmp_path / "f.parquet")
    assert pd.read_parquet(tmp_path / "f.parquet").x.tolist() == [3]
    assert [p.name for p in tmp_path.iterdir()] == ["f.parquet"]


def test_gpu_slices_go_to_workers_and_evaluation_never_to_waiting_drivers():
    cfg = load_config("configs/quickstart.yaml", ["resources.use_gpu=true"])
    # 1 GPU, 3 trials: each Train worker (1/3 - 0.05 eval slice) -> 0.28 GPU; 3 x 0.33 <= 1 GPU
    per_worker, concurrent = worker_resources(cfg, {"CPU": 8.0, "GPU": 1.0}, n_trials=3)
    assert per_worker["GPU"] == 0.28 and concurrent == 3
    assert concurrent * (per_worker["GPU"] + 0.05) <= 1.0
    # 8 GPUs, 3 trials: a whole GPU per worker
    per_worker, concurrent = worker_resources(cfg, {"CPU": 8.0, "GPU": 8.0}, n_trials=3)
    assert per_worker["GPU"] == 1.0 and concurrent == 3
    # an explicit half GPU per worker on 1 GPU: only one trial fits (0.5 + 0.05) x 2 > 1
    half = load_config("configs/quickstart.yaml", ["resources.use_gpu=true", "resources.gpus_per_worker=0.5"])
    per_worker, concurrent = worker_resources(half, {"CPU": 8.0, "GPU": 1.0}, n_trials=3)
    assert per_worker["GPU"] == 0.5 and concurrent == 1


def test_explicit_cpus_per_worker_limits_concurrency_and_too_big_is_explained():
    cfg = load_config("configs/quickstart.yaml", ["resources.cpus_per_worker=1.5"])
    per_worker, concurrent = worker_resources(cfg, {"CPU": 4.0}, n_trials=3)
    assert per_worker == {"CPU": 1.5} and concurrent == 2
    big = load_config("configs/quickstart.yaml", ["resources.cpus_per_worker=3"])
    with pytest.raises(TimeRayError, match=r"needs 1 Train worker\(s\) x \(3.0 CPU\).*has 2 CPU"):
        worker_resources(big, {"CPU": 2.0}, n_trials=3)


def test_gpus_per_worker_needs_use_gpu_and_a_valid_amount():
    from time_ray.config import ConfigError

    with pytest.raises(ConfigError, match="gpus_per_worker.*use_gpu: False"):
        load_config("configs/quickstart.yaml", ["resources.gpus_per_worker=0.5"])
    with pytest.raises(ConfigError, match="whole number"):
        load_config("configs/quickstart.yaml", ["resources.use_gpu=true", "resources.gpus_per_worker=1.5"])


def test_worker_shares_fit_node_by_node():
    cfg = load_config("configs/quickstart.yaml", ["resources.use_gpu=true"])
    # a CPU-only head (0 CPUs offered) + two 8-CPU nodes with one GPU each, 3 trials: an equal share
    # of the 16 CPUs (5.32) would fit once per node; 2 trials fit, each worker on its own node and GPU
    nodes = [{"CPU": 0.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]
    per_worker, concurrent = worker_resources(cfg, {"CPU": 16.0, "GPU": 2.0, "nodes": nodes}, n_trials=3)
    assert concurrent == 2 and per_worker["GPU"] == 0.61 and per_worker["CPU"] <= 8.0
    # CPU only: the shares shrink until 3 workers fit on two 3-CPU nodes (2 x floor(3 / 1.5) >= 3)
    cpu = SweepConfig()
    per_worker, concurrent = worker_resources(cpu, {"CPU": 6.0, "nodes": [{"CPU": 3.0}, {"CPU": 3.0}]}, n_trials=3)
    assert concurrent == 3 and per_worker["CPU"] == 1.5


def test_quiet_console_drops_the_raylet_worker_count_warning_only(capsys):
    """local_ray.quiet_console filters Ray's driver-side printer of raylet messages (a private API: this
    test fails if Ray renames it) unless --verbose."""
    import logging

    from ray._private import worker

    from time_ray.orchestration.local_ray import TOKEN_NOTICE_LOGGER, quiet_console

    many = "WARNING: 12 PYTHON worker processes have been started on node: abc with address: 127.0.0.1, ..."
    oom = "Task was killed due to the node running low on memory."
    try:
        quiet_console(verbose=False)
        quiet_console(verbose=False)  # twice: still one filter
        worker.print_to_stdstream({"lines": [many], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        worker.print_to_stdstream({"lines": [oom], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        out = capsys.readouterr()
        assert "worker processes" not in out.out + out.err and "low on memory" in out.out + out.err
        assert logging.getLogger(TOKEN_NOTICE_LOGGER).level == logging.ERROR
    finally:
        quiet_console(verbose=True)
    worker.print_to_stdstream({"lines": [many], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr()
    assert "worker processes" in out.out + out.err and not hasattr(worker.print_to_stdstream, "__wrapped__")


def test_init_ray_puts_the_clis_sigterm_handler_back(monkeypatch):
    """ray.init installs a C-level SIGTERM handler that dumps a stack and aborts (seen by hand: a
    stopped sweep printed '*** SIGTERM received' and make said 'Aborted'); the CLI's handler, a stop
    like Ctrl-C, must be the one in force afterwards."""
    import signal

    import ray

    from time_ray.orchestration import local_ray

    def ours(signum, frame):
        raise KeyboardInterrupt

    def ray_init(**kwargs):  # as Ray's core worker does: another handler for SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    previous = signal.signal(signal.SIGTERM, ours)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", ray_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(local_ray, "_node_address", lambda: "127.0.0.1")
    monkeypatch.setattr(local_ray, "_nodes", lambda: [])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        local_ray.init_ray()
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
        local_ray.quiet_console(verbose=True)


def test_a_resume_reads_each_trials_timesteps_once_and_counts_from_them(tmp_path, monkeypatch):
    """--resume: the finished trials are skipped, the others' progress starts after their last recorded
    timestep, and each trial's timesteps.parquet is read once for both (many trials on S3 add up)."""
    from time_ray.orchestration import sweep

    cfg = load_config("configs/quickstart.yaml")
    trials = sweep.expand_trials(cfg)
    storage = Storage(tmp_path)
    prepare_output(cfg, storage, resume=False)
    (tmp_path / "base.safetensors").write_bytes(b"")  # theta_0 is there: nothing to build
    done, half = trials[0].trial_id, trials[1].trial_id
    for trial_id, last in ((done, cfg.stream.tasks), (half, 2)):
        rows = [{c: 0 for c in TIMESTEP_COLUMNS} | {"timestep": t} for t in range(last + 1)]
        (tmp_path / "trials" / trial_id).mkdir(parents=True)
        write_parquet_atomic(pd.DataFrame(rows), tmp_path / "trials" / trial_id / "timesteps.parquet")
        metrics = [{c: 0 for c in METRICS_COLUMNS} | {"timestep": t} for t in range(last + 1)]
        write_parquet_atomic(pd.DataFrame(metrics), tmp_path / "trials" / trial_id / "metrics.parquet")
    reads, seen = [], {}
    real = sweep.recorded
    monkeypatch.setattr(sweep, "recorded", lambda storage, trial: reads.append(trial.trial_id) or real(storage, trial))

    def run_trials(cfg, todo, storage, verbose, ray_temp_dir, last, *more, **options):
        seen.update(todo=[t.trial_id for t in todo], last=last)
        return {}

    monkeypatch.setattr(sweep, "_run_trials", run_trials)
    monkeypatch.setattr(sweep, "collect", lambda *args: pd.DataFrame())
    sweep.run_sweep(cfg, str(tmp_path), resume=True)
    assert sorted(reads) == sorted(t.trial_id for t in trials)  # once each
    assert seen["todo"] == [t.trial_id for t in trials if t.trial_id != done]
    assert seen["last"][half] == 2 and seen["last"][trials[2].trial_id] == -1
