"""End to end on a real local Ray: a reduced quickstart through the CLI, then its parquet checked."""

import os
import shutil
import subprocess
import sys
import tempfile
import pandas as pd
import pytest

from time_ray.config import load_config
from time_ray.core.results import METRICS_COLUMNS, TIMESTEP_COLUMNS
from time_ray.plan import make_plan

REDUCED = [
    "stream.tasks=2", "budget.steps_per_task=60", "training.batch_size=32",
    "stream.builtin={adaptation_datasets: 2, heldout_datasets: 2, classes_per_dataset: 5, "
    "pretrain_classes: 10, train_per_class: 20, test_per_class: 10}",
    "model.base_training={steps: 300, batch_size: 64, lr: 2.0e-3}",
]


def run_cli(args, cache_dir, ray_tmp, timeout=600):
    env = {**os.environ, "TIME_RAY_CACHE": str(cache_dir), "RAY_TMPDIR": ray_tmp,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "time_ray", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.e2e
def test_reduced_quickstart_on_local_ray(tmp_path, cache_dir):
    out = tmp_path / "out"
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")  # short path: Ray's socket names are limited
    sets = [arg for s in REDUCED for arg in ("--set", s)]
    proc = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *sets], cache_dir, ray_tmp)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    metrics = pd.read_parquet(out / "metrics.parquet")
    steps = pd.read_parquet(out / "timesteps.parquet")
    assert list(metrics.columns) == METRICS_COLUMNS and list(steps.columns) == TIMESTEP_COLUMNS
    trials, tasks, datasets = 3, 2, 4
    assert len(metrics) == trials * (tasks + 1) * datasets
    assert len(steps) == trials * (tasks + 1)
    assert metrics.value.between(0, 1).all() and steps[["a_ka", "a_zs", "gm"]].stack().between(0, 1).all()
    assert set(metrics.role) == {"adaptation", "heldout"} and set(metrics.metric) == {"accuracy", "recall@5"}

    base = metrics[metrics.timestep == 0].sort_values(["trial_id", "dataset"])
    per_trial = [g.value.to_numpy() for _, g in base.groupby("trial_id")]
    assert all((v == per_trial[0]).all() for v in per_trial)  # timestep 0 = theta_0 for every policy

    seq = steps[steps.policy == "sequential-ft"].set_index("timestep")
    assert seq.loc[tasks, "a_ka"] > seq.loc[0, "a_ka"]
    trained = steps[~steps.expert_cache_hit & (steps.timestep > 0)]
    assert (trained.train_steps == 60).all() and (trained.train_gflops > 0).all()
    assert (steps[steps.timestep > 0].pool_bytes > 0).all()
    # no expert is trained twice: task 1 starts from theta_0 in every policy, so its expert is trained
    # once and reused twice; task 2 starts from three different models (expert 1, r_1, theta_0)
    assert len(list((out / "experts").glob("*.safetensors"))) == 4
    plan = make_plan(load_config("configs/quickstart.yaml", REDUCED), flops_per_step=1e9, model_bytes=1)
    assert plan["unique_experts"] == 4  # what `time-ray plan` predicts is what ran
    hits = steps[steps.expert_cache_hit]
    assert len(hits) == 2 and set(hits.timestep) == {1} and (hits.train_steps == 0).all()
    assert "experts trained 4, reused from the cache 2" in proc.stderr
    assert (out / "config.yaml").exists()
    assert "best-in-time" in proc.stdout and "A_KA" in proc.stdout  # the summary table
    assert "t=2/2" in proc.stderr  # progress lines while it ran
    assert "Ray node 127.0.0.1" in proc.stderr  # the embedded Ray stayed on loopback

    # a second sweep into the same directory is refused; --resume finds everything finished
    again = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *sets], cache_dir, ray_tmp)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *sets],
                      cache_dir, ray_tmp, timeout=120)
    assert resumed.returncode == 0 and "(3 already finished)" in resumed.stderr
    assert len(pd.read_parquet(out / "metrics.parquet")) == len(metrics)
    shutil.rmtree(ray_tmp, ignore_errors=True)
