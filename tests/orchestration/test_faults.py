"""Fault injection on a real local Ray (real processes killed, real files damaged), each run checked
against the uninterrupted reduced quickstart (`reduced_quickstart`): same metrics.parquet values,
no duplicate or missing rows. Faults come from TIME_RAY_FAULTS (time_ray/orchestration/faults.py)."""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.e2e import (
    SETS,
    assert_same_results,
    ctrl_c_once,
    kill_once_recorded,
    ray_dir,
    recorded_timesteps,
    run_cli,
)
from time_ray.core.checkpoints import verify


def copy_results(reference: Path, to: Path) -> Path:
    shutil.copytree(reference, to, ignore=shutil.ignore_patterns("ray", "report"))
    return to


def faults_env(monkeypatch, tmp_path, *faults) -> Path:
    marks = tmp_path / "fault-marks"
    marks.mkdir()
    monkeypatch.setenv("TIME_RAY_FAULTS", json.dumps(list(faults)))
    monkeypatch.setenv("TIME_RAY_FAULTS_DIR", str(marks))
    return marks


@pytest.mark.e2e
def test_killed_train_worker_and_merge_actor_give_the_same_answer(reduced_quickstart, cache_dir, tmp_path, monkeypatch):
    """Injected: SIGKILL of sequential-ft's Train worker at step 10 of task 2 (Train's FailureConfig
    starts a new worker, which retrains that expert from its init), ray.kill of best-in-time's
    merge service actor after timestep 1 (the sweep's only one, serving all three trials: Ray restarts
    it; each trial's pool, EMA chain and training info are reopened from storage on its next call), and
    a crash of offline-merge's trial driver after timestep 1 (Tune retries the trial, which resumes after
    its last recorded timestep). Checked: every fault fired, the sweep succeeded, the results equal the
    reference, the retry was one console line, the restarted actor is still the only one."""
    reference, _ = reduced_quickstart
    marks = faults_env(
        monkeypatch,
        tmp_path,
        {"fault": "kill_train_worker", "trial": "sequential-ft", "task": 2, "step": 10},
        {"fault": "kill_merge_actor", "trial": "best-in-time", "after_timestep": 1},
        {"fault": "crash_trial", "trial": "offline-merge", "after_timestep": 1},
    )
    out = tmp_path / "out"
    proc = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS], cache_dir, ray_dir())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert len(list(marks.iterdir())) == 3  # every fault happened
    assert_same_results(out, reference)
    # the killed worker's job went back to the queue and was trained again (Train restarts the service's
    # whole worker group, so every job then in training was started again)
    again = re.search(r"; (\d+) started again after a training worker restarted", proc.stderr)
    assert again and int(again.group(1)) >= 1, proc.stderr[-6000:]
    # the killed merge service actor was restarted (one actor still), not replaced by another
    assert "merge service: 1 actor(s), 1 restarted after a failure" in proc.stderr, proc.stderr[-6000:]
    # Tune retried the crashed trial: one console line saying so, no traceback
    retry = [line for line in proc.stderr.splitlines() if "attempt 2 of 3 after:" in line]
    assert len(retry) == 1 and "policy offline-merge-" in retry[0], proc.stderr[-6000:]
    assert retry[0].endswith(
        "InjectedCrash: injected crash of " + retry[0].split("policy ")[1].split(":")[0] + " after timestep 1"
    ), retry[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_killed_driver_resumes_where_it_stopped(reduced_quickstart, cache_dir, tmp_path):
    """Injected: SIGKILL of the whole `time-ray sweep` process group (driver, embedded Ray and its
    workers) once a trial has recorded timestep 1. Checked: `--resume` finishes only the unfinished
    work (a trial with recorded timesteps does not report timestep 0 again) and the results equal
    the reference."""
    reference, _ = reduced_quickstart
    out = tmp_path / "out"
    kill_once_recorded(["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS], out, cache_dir, ray_dir())
    recorded = recorded_timesteps(out)
    assert any(t >= 1 for t in recorded.values()) and not all(t == 2 for t in recorded.values())

    resumed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *SETS], cache_dir, ray_dir()
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    assert resumed.stderr.count("t=0/2") == 3 - len(recorded)  # recorded timesteps are not redone
    assert_same_results(out, reference)


@pytest.mark.e2e
def test_nan_loss_fails_the_trial_naming_policy_task_and_step(cache_dir, tmp_path, monkeypatch):
    """Injected: the expert's weights turn NaN after step 3 of task 1 of offline-merge. Checked: the
    sweep exits 2 with a message naming the policy, task and step; the trial is marked failed (not
    retried: it would fail the same way); the base model's row was kept."""
    faults_env(monkeypatch, tmp_path, {"fault": "nan", "trial": "offline-merge", "task": 1, "step": 3})
    out = tmp_path / "out"
    proc = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), *SETS, "--set", "policies.presets=[offline-merge]"],
        cache_dir,
        ray_dir(),
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "1 of 1 trials failed" in proc.stderr
    assert "policy offline-merge" in proc.stderr and "task 1: loss is nan at step 4 of 60" in proc.stderr
    trials = pd.read_parquet(out / "trials.parquet")
    assert trials.status.tolist() == ["failed"] and trials.last_timestep.tolist() == [0]
    assert "--resume" in proc.stderr


@pytest.mark.e2e
def test_damaged_checkpoints_are_rebuilt_or_reported(reduced_quickstart, cache_dir, tmp_path):
    """Injected: best-in-time's last timestep undone (as after a crash) and its stored EMA model r_2
    overwritten with other bytes; then, a second time, r_2 removed and its expert 2 truncated.
    Checked: the damaged r_2 is detected by its content hash and rebuilt, giving the reference's
    values; the damaged expert (which cannot be rebuilt without training) is reported by name and
    the trial marked failed; following the message's advice then finishes the sweep."""
    reference, _ = reduced_quickstart
    out = copy_results(reference, tmp_path / "out")
    steps = pd.read_parquet(out / "timesteps.parquet")
    trial = steps[steps.policy == "best-in-time"].trial_id.iloc[0]
    pool = out / "pool" / trial

    def undo_last_timestep():
        for name in ("metrics.parquet", "timesteps.parquet"):
            frame = pd.read_parquet(out / "trials" / trial / name)
            frame[frame.timestep < 2].to_parquet(out / "trials" / trial / name, index=False)

    undo_last_timestep()
    [chain] = [p for p in pool.glob("*_002.safetensors") if not p.name.startswith("expert")]
    chain.write_bytes(chain.read_bytes()[:-64] + bytes(64))
    resumed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *SETS], cache_dir, ray_dir()
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    assert "(2 already finished)" in resumed.stderr
    verify(chain)  # rebuilt, and its hash recorded again
    assert_same_results(out, reference)

    undo_last_timestep()
    chain.unlink()
    expert = (pool / (pool / "expert_002.ref").read_text().strip()).resolve()
    expert.write_bytes(expert.read_bytes()[:1000])
    failed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *SETS], cache_dir, ray_dir()
    )
    assert failed.returncode == 2
    assert f"policy {trial}: timestep 2" in failed.stderr and expert.name in failed.stderr
    assert "altered or truncated" in failed.stderr
    assert pd.read_parquet(out / "trials.parquet").set_index("trial_id").status[trial] == "failed"

    expert.unlink()  # what the message says: delete it and resume; the expert is trained again
    expert.with_name(expert.name + ".sha256").unlink()
    again = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *SETS], cache_dir, ray_dir())
    assert again.returncode == 0, again.stderr[-4000:]
    assert_same_results(out, reference)


@pytest.mark.e2e
def test_a_damaged_trial_table_is_redone_on_resume(reduced_quickstart, cache_dir, tmp_path):
    """Injected: sequential-ft's trials/<id>/timesteps.parquet emptied to 0 bytes (a copy cut short). Checked:
    `--resume` says in one warning that the tables were set aside, redoes that trial's timesteps from its
    pool and the expert cache (no expert trained again) and gives the reference's values."""
    reference, _ = reduced_quickstart
    out = copy_results(reference, tmp_path / "out")
    steps = pd.read_parquet(out / "timesteps.parquet")
    trial = steps[steps.policy == "sequential-ft"].trial_id.iloc[0]
    (out / "trials" / trial / "timesteps.parquet").write_bytes(b"")
    resumed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *SETS], cache_dir, ray_dir()
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-6000:]
    warning = [line for line in resumed.stderr.splitlines() if "cannot be read" in line]
    assert len(warning) == 1 and f"trials/{trial}" in warning[0] and "moved aside as *.damaged" in warning[0]
    assert "(2 already finished)" in resumed.stderr and "experts trained 0," in resumed.stderr
    assert (out / "trials" / trial / "timesteps.parquet.damaged").stat().st_size == 0
    assert_same_results(out, reference)


@pytest.mark.e2e
def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_finishes_it(
    reduced_quickstart, cache_dir, tmp_path, small_disk
):
    """Injected: the output's disk (a real 160 MiB tmpfs) filled up once a trial has recorded timestep 1. Checked:
    the sweep stops at the first write that fails, with one line naming the file and the free space (no
    retries announced as a busy machine); after space is freed, `--resume` gives the reference's values."""
    import subprocess
    import sys
    import time

    reference, _ = reduced_quickstart
    out = small_disk("160m") / "out"
    env = {**os.environ, "TIME_RAY_CACHE": str(cache_dir), "RAY_TMPDIR": ray_dir()}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "time_ray", "sweep", "configs/quickstart.yaml", "--output", str(out), *SETS]
    sweep = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and sweep.poll() is None:
        if any(t >= 1 for t in recorded_timesteps(out).values()):
            break
        time.sleep(0.5)
    filler = out.parent / "filler"
    with open(filler, "wb") as f:  # every byte left, taken
        with contextlib.suppress(OSError):
            while True:
                f.write(bytes(1 << 20))
                f.flush()
    _, stderr = sweep.communicate(timeout=600)
    assert sweep.returncode == 2, stderr[-6000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("time-ray: error: disk full: cannot write " + str(out)), stderr[-6000:]
    assert "free on " in last and "rerun with --resume" in last and "busy machine" not in stderr
    assert "Traceback" not in stderr and "attempt 2 of" not in stderr
    filler.unlink()
    resumed = run_cli(args[3:] + ["--resume"], cache_dir, ray_dir())
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    assert_same_results(out, reference)


# a sweep of many small trials (as benchmarks/sweep_scale.py runs them): 20 init x deploy policies x 2 seeds
MANY = [
    *SETS,
    *("--set", "budget.steps_per_task=20", "--set", "policies.presets=[]"),
    *(
        "--set",
        "policies.grid={init: [zs, ft, ema, all, ft-zs], deploy: [ft, ema, all, ft-zs], merge: [{technique: average}]}",
    ),
    *("--set", "seeds=[0, 1]"),
]


@pytest.mark.e2e
def test_ctrl_c_in_a_sweep_of_many_trials_and_resume_give_the_uninterrupted_rows(cache_dir, tmp_path):
    """Injected: SIGINT to the process group (as a terminal's Ctrl-C, default action restored) of a 40-trial
    sweep once 8 trials have recorded their last timestep. Checked: exit 130 with the --resume advice; the
    console of a sweep this size has no line per timestep; `--resume` finishes it, and every row equals an
    uninterrupted run's, none twice; no trial's row files are left once its tables are written."""
    import sys

    reference = tmp_path / "reference"
    ran = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(reference), *MANY], cache_dir, ray_dir())
    assert ran.returncode == 0, ran.stderr[-6000:]
    assert "t=1/2" not in ran.stderr and "trials, 2 tasks each" in ran.stderr  # a summary, not a line per timestep

    out = tmp_path / "out"
    env = {**os.environ, "TIME_RAY_CACHE": str(cache_dir), "RAY_TMPDIR": ray_dir()}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "time_ray", "sweep", "configs/quickstart.yaml", "--output", str(out), *MANY]
    returncode, _, stderr = ctrl_c_once(args, env, out, lambda done: sum(t == 2 for t in done.values()) >= 8)
    assert returncode == 130 and "interrupted; rerun with --resume" in stderr, stderr[-4000:]
    recorded = recorded_timesteps(out)
    assert 8 <= sum(t == 2 for t in recorded.values()) < 40, recorded

    resumed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *MANY], cache_dir, ray_dir()
    )
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    finished = re.search(r"40 trials, 2 tasks each \((\d+) already finished\)", resumed.stderr)
    assert finished and int(finished[1]) >= 8, resumed.stderr[-3000:]
    assert_same_results(out, reference)
    assert not list(out.glob("trials/*/rows/*.json"))  # every trial's rows are in its tables
