"""End to end on a real local Ray: a reduced quickstart through the CLI, then its parquet checked."""

import re
import shutil
import tempfile

import pandas as pd
import pytest

from tests.helpers.e2e import SETS, run_cli
from time_ray.config import load_config
from time_ray.core.results import METRICS_COLUMNS, TIMESTEP_COLUMNS
from time_ray.plan import make_plan
from time_ray.reduced import REDUCED


@pytest.mark.e2e
def test_reduced_quickstart_on_local_ray(reduced_quickstart, cache_dir):
    out, proc = reduced_quickstart
    ray_tmp = tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    sets = SETS

    metrics = pd.read_parquet(out / "metrics.parquet")
    steps = pd.read_parquet(out / "timesteps.parquet")
    assert list(metrics.columns) == METRICS_COLUMNS and list(steps.columns) == TIMESTEP_COLUMNS
    trials, tasks, datasets = 3, 2, 4
    assert len(metrics) == trials * (tasks + 1) * (datasets + tasks)  # a row per dataset, then per task
    assert len(steps) == trials * (tasks + 1)
    assert metrics.value.between(0, 1).all() and steps[["a_ka", "a_zs", "gm"]].stack().between(0, 1).all()
    assert set(metrics.role) == {"adaptation", "heldout", "task"} and set(metrics.metric) == {"accuracy", "recall@5"}
    # two adaptation datasets cut into two tasks (order: dataset): task j's row is dataset j's
    rows = metrics.set_index(["trial_id", "timestep", "dataset"]).value
    task_rows = metrics[metrics.role == "task"]
    assert sorted(task_rows.dataset.unique()) == ["task_01", "task_02"]
    for r in task_rows.itertuples():
        same = rows[(r.trial_id, r.timestep, f"adapt-{int(r.dataset[-2:]) - 1:02d}")]
        assert r.value == pytest.approx(same, abs=1e-6)

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
    # one merge service actor (resources.merge_actors: 1) served the three trials' pools; theta_0 and the
    # task-1 expert all three link were opened once, the other pools found them open
    served = "merge service: 1 actor(s), 0 restarted after a failure; trials served per actor [3]"
    assert served in proc.stderr, proc.stderr
    assert int(re.search(r"found open by another pool (\d+)", proc.stderr).group(1)) >= 4
    assert (out / "config.yaml").exists()
    assert "best-in-time" in proc.stdout and "A_KA" in proc.stdout  # the summary table
    assert "t=2/2" in proc.stderr  # progress lines while it ran
    assert proc.stderr.count("(expert from the cache)") == 2  # the two reused experts, shown as such
    assert "Ray node 127.0.0.1" in proc.stderr  # the embedded Ray stayed on loopback

    # a second sweep into the same directory is refused; --resume finds everything finished
    again = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *sets], cache_dir, ray_tmp)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--resume", *sets], cache_dir, ray_tmp, timeout=120
    )
    assert resumed.returncode == 0 and "(3 already finished)" in resumed.stderr
    assert len(pd.read_parquet(out / "metrics.parquet")) == len(metrics)
    shutil.rmtree(ray_tmp, ignore_errors=True)

    # the analysis layer on this real sweep: every output, the three policies, no trial missing
    report = run_cli(["report", str(out)], cache_dir, ray_tmp, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    summary = (out / "report" / "summary.md").read_text()
    assert "3 of 3 trials finished." in summary and "Missing trials" not in summary
    assert all(p in summary for p in ("| sequential-ft | 60 |", "| offline-merge | 60 |", "| best-in-time | 60 |"))
    assert summary.count("### Finding ") == 5 and "Finding 4: " in summary
    # all but the technique spread (one technique) and GM vs budget (one budget); the two matrices
    assert len(list((out / "report").glob("*.png"))) == 6
    assert "*Task x task accuracy matrix of " in summary and "Not drawn: the sweep has one budget" in summary
    assert (out / "report" / "report.html").read_text().count("data:image/png;base64,") == 6


@pytest.mark.e2e
def test_the_final_numbers_are_reproduced_image_by_image_from_the_manifest_and_predictions(reduced_quickstart):
    """DIR/test_split.parquet lists every test image; trials/<id>/predictions.parquet what each trial's final
    model predicted for each: joined, they give metrics.parquet's final accuracy of every dataset exactly."""
    out, _ = reduced_quickstart
    split = pd.read_parquet(out / "test_split.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert split.test_index.is_monotonic_increasing and split.test_index.is_unique
    assert split.path.isna().all()  # the built-in benchmark's images are generated, not files
    assert set(split.role) == {"adaptation", "heldout", "retrieval"}
    final = metrics[(metrics.timestep == 2) & (metrics.role != "task")]
    for trial_id, rows in final.groupby("trial_id"):
        predictions = pd.read_parquet(out / "trials" / trial_id / "predictions.parquet")
        joined = predictions.merge(split, on="test_index", validate="one_to_one")
        assert len(joined) == len(split)  # every test image, once (the final timestep uses the full test sets)
        classified = joined[joined.role != "retrieval"]
        assert (classified.correct == (classified.predicted == classified.label)).all()
        assert (joined[joined.role == "retrieval"].predicted == -1).all()
        accuracy = classified.groupby("dataset").correct.mean()
        for row in rows[rows.metric == "accuracy"].itertuples():
            assert accuracy[row.dataset] == pytest.approx(row.value, abs=1e-6), (trial_id, row.dataset)
    steps = pd.read_parquet(out / "timesteps.parquet")
    hits = steps[steps.expert_cache_hit]
    # a cache hit paid nothing, but its expert's own training is there: the 60 steps the first trial paid
    assert (hits.train_steps == 0).all() and (hits.expert_train_steps == 60).all()
    assert (hits.expert_train_gflops > 0).all()
    trained = steps[~steps.expert_cache_hit & (steps.timestep > 0)]
    assert (trained.expert_train_steps == trained.train_steps).all()


@pytest.mark.e2e
def test_data_parallel_experts_in_the_training_service(reduced_quickstart, cache_dir, tmp_path):
    """workers_per_expert: 2 with 0.45 CPU per worker: the service runs 2 worker groups of 2 workers in
    one Train run (4 workers, a torch process subgroup per group); each expert is trained by a group
    (both ranks run its steps, so its GFLOPs are twice one worker's: the reference run's exactly), the
    sweep finishes with every row and the same experts deduplicated; the shared evaluator evaluates."""
    reference, _ = reduced_quickstart
    out, ray_tmp = tmp_path / "out", tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    sets = SETS + ["--set", "resources.workers_per_expert=2", "--set", "resources.cpus_per_worker=0.45"]
    proc = run_cli(["sweep", "configs/quickstart.yaml", "--output", str(out), *sets], cache_dir, ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "training service: 2 worker group(s) of 2 Train worker(s)" in proc.stderr, proc.stderr
    assert "1 shared evaluator(s)" in proc.stderr
    steps = pd.read_parquet(out / "timesteps.parquet")
    want = pd.read_parquet(reference / "timesteps.parquet")
    assert len(steps) == len(want) and "experts trained 4, reused from the cache 2" in proc.stderr
    trained = steps[(steps.timestep > 0) & ~steps.expert_cache_hit]
    one = want[(want.timestep > 0) & ~want.expert_cache_hit].train_gflops.unique()  # the same model and batch
    assert len(trained) == 4 and (trained.train_steps == 60).all() and len(one) == 1
    assert (trained.train_gflops == 2 * one[0]).all()
    assert steps[["a_ka", "a_zs", "gm"]].stack().between(0, 1).all()
