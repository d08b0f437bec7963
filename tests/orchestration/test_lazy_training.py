"""Lazy Train start (issue 8): a trial whose experts are all in the sweep's expert cache links them
from its driver and starts no TorchTrainer; one whose first experts are cached starts its Train run
at the first expert to train. Units (the cache's lease handoff, waiting for an expert without a
Train run), then a small real sweep."""

import re
import shutil
import tempfile
import threading

import pandas as pd
import pytest

from tests.orchestration.e2e_helpers import SETS, run_cli
from time_ray.orchestration import trial as trial_module
from time_ray.orchestration.expert_cache import ExpertCache

Cache = ExpertCache.__ray_actor_class__  # the plain class: its bookkeeping without Ray


class _Storage:
    def exists(self, rel):
        return False


def test_a_trial_takes_its_own_claim_back_and_renews_only_what_it_holds():
    cache = Cache(_Storage())
    assert cache.claim("k", owner="a") == "train"  # the driver of trial a
    assert cache.claim("k", owner="b") == "wait"
    assert cache.claim("k", owner="a") == "train"  # a's Train worker: the same owner takes it at once
    cache.release("k")  # a's worker failed; b claims it
    assert cache.claim("k", owner="b") == "train"
    claimed_at = cache.claimed["k"][1]
    cache.renew("k", owner="a")  # a's driver still renewing: must not extend b's claim
    assert cache.claimed["k"] == ("b", claimed_at)
    cache.renew("k", owner="b")
    assert cache.claimed["k"][0] == "b" and cache.claimed["k"][1] >= claimed_at
    cache.renew("k")  # without an owner: as before
    assert cache.claimed["k"][0] == "b"


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _Actor:
    def __init__(self, experts, failure=None):
        self.experts, self.failure = experts, failure
        self.n_experts = _Remote(lambda: self.experts)
        self.failed = _Remote(lambda: self.failure)


def _driver(actor, training):
    driver = object.__new__(trial_module.TrialDriver)
    driver.actor, driver.training, driver.failure, driver.trial_id = actor, training, [], "p"
    return driver


def test_waiting_for_an_expert_linked_without_a_train_run(monkeypatch):
    monkeypatch.setattr(trial_module.ray, "get", lambda value: value)
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    # the lazy start linked expert 2 and its thread ended: no Train run was needed, nothing stopped
    _driver(_Actor(2), done).wait_for_expert(2)
    # the thread ended without expert 2: the Train run stopped
    with pytest.raises(RuntimeError, match="stopped before expert 2"):
        _driver(_Actor(1), done).wait_for_expert(2)
    # a deterministic failure it reported wins
    with pytest.raises(trial_module.NonRetryableFailure, match="nan"):
        _driver(_Actor(1, "loss is nan"), done).wait_for_expert(2)


# Two pairs of policies whose experts are equal (deploy ft serves the latest expert, whatever the
# merging technique; experts depend only on the init strategy), run one trial at a time: the first
# trial of each pair trains, the second finds every expert in the cache. Task 1 starts from theta_0
# for every policy, so the first trial of the second pair finds expert 1 and starts Train at task 2.
LAZY = [
    "policies={presets: [], grid: {init: [ft, zs], deploy: [ft], "
    "merge: [{technique: average}, {technique: task_arithmetic}]}}",
    "resources.max_concurrent_trials=1",
    "resources.merge_actors=2",  # the merge service: trials 1 and 3 on one actor, 2 and 4 on the other
]
NO_TRAIN = re.compile(r"policy (\S+): all 2 experts from the expert cache, no Train run")


@pytest.mark.e2e
def test_trials_with_every_expert_cached_start_no_train_run(cache_dir, tmp_path):
    out, ray_tmp = tmp_path / "out", tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    sets = SETS + [arg for s in LAZY for arg in ("--set", s)]
    # --verbose: the trial drivers' lines reach the console (Ray's log_to_driver)
    proc = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--verbose", *sets], cache_dir, ray_tmp, timeout=600
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    steps = pd.read_parquet(out / "timesteps.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(steps) == 4 * 3 and set(steps.init) == {"ft", "zs"}
    # the TorchTrainer runs' directories, ray/train/<trial_id>-<time>
    train_runs = {
        trial_id: [d for d in (out / "ray" / "train").iterdir() if re.fullmatch(re.escape(trial_id) + r"-\d+", d.name)]
        for trial_id in steps.trial_id.unique()
    }
    no_train = {trial_id for trial_id, runs in train_runs.items() if not runs}
    assert len(no_train) == 2, train_runs  # (each trial started a Train run before lazy start)
    assert set(NO_TRAIN.findall(proc.stderr)) == no_train, proc.stderr[-6000:]  # and said so
    assert "experts trained 3, reused from the cache 5" in proc.stderr
    assert "merge service: 2 MergeService actor(s) in Ray; trials served per actor [2, 2]" in proc.stderr
    assert len(list((out / "experts").glob("*.safetensors"))) == 3

    for _, pair in steps.groupby("init"):
        ids = sorted(pair.trial_id.unique())
        assert len(ids) == 2
        [cached] = [i for i in ids if i in no_train]  # exactly one trial of each pair: all cached
        [trainer] = [i for i in ids if i not in no_train]
        assert len(train_runs[trainer]) == 1  # the other one started exactly one
        hits = pair[(pair.trial_id == cached) & (pair.timestep > 0)]
        assert len(hits) == 2 and hits.expert_cache_hit.all()
        assert (hits.train_steps == 0).all() and (hits.train_gflops == 0).all() and (hits.train_seconds == 0).all()
        assert (pair[(pair.trial_id == trainer) & (pair.timestep == 2)].train_steps == 60).all()
        # the same experts and deploy ft: the cached trial's metrics equal those of the trial that trained
        a, b = (metrics[metrics.trial_id == i].sort_values(["timestep", "dataset"]) for i in (trainer, cached))
        # 3 timesteps x (4 datasets + a row per task of the 2-task stream)
        assert len(a) == 3 * (4 + 2) and (a.value.to_numpy() == b.value.to_numpy()).all()

    # the first trial of the second pair took expert 1 from the cache and started Train at task 2
    first = steps[(steps.timestep == 1) & ~steps.trial_id.isin(no_train)]
    assert sorted(first.expert_cache_hit) == [False, True]
    late = first[first.expert_cache_hit].trial_id.iloc[0]
    assert (
        len(train_runs[late]) == 1
        and not steps[(steps.trial_id == late) & (steps.timestep == 2)].expert_cache_hit.any()
    )
