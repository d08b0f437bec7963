"""The sweep's expert cache as the training service's job queue (expert_cache.py): deduplication,
leases, restarts, withdrawn trials, failures, as units on the plain class (no Ray); the trial driver's
wait for an expert; then a small real sweep in which trials share experts."""

import re
import shutil
import tempfile
import threading

import pandas as pd
import pytest

from tests.helpers.e2e import SETS, run_cli
from time_ray.core.contracts import ExpertInfo
from time_ray.orchestration import expert_cache
from time_ray.orchestration import trial as trial_module
from time_ray.orchestration.expert_cache import STOP, ExpertCache, ExpertJob, obtain

Cache = ExpertCache.__ray_actor_class__  # the plain class: its bookkeeping without Ray


class _Storage:
    def __init__(self, files=()):
        self.files = set(files)

    def exists(self, rel):
        return rel in self.files


def job(key="k", trial="a", t=1):
    return ExpertJob(key=key, t=t, init=None, steps=10, seed=0, multitask=False, trial_id=trial)


TRAINED = ExpertInfo.trained(steps=10, seconds=1.5, gflops=2.0, loss=0.5)


def test_two_trials_needing_one_expert_queue_one_job_and_the_first_is_charged():
    cache = Cache(_Storage())
    assert cache.submit(job(trial="a"), "a") == "queued"
    assert cache.submit(job(trial="b"), "b") == "queued"  # the same key: one more waiter, no second job
    assert cache.take("g0") == job(trial="a")
    assert cache.take("g1") is None  # nothing else to do
    assert cache.status("k", "a") == ("training", None)
    cache.done("k", "g0", TRAINED)
    assert cache.status("k", "b") == ("done", ExpertInfo.cache_hit(TRAINED))
    assert cache.status("k", "a") == ("done", TRAINED)  # the trial that asked first carries the cost, once
    hit = cache.status("k", "a")[1]
    assert hit == ExpertInfo.cache_hit(TRAINED) and (hit.train_steps, hit.expert_train_steps) == (0, 10)
    assert cache.stats()["trained"] == 1


def test_an_expert_already_in_storage_is_a_hit_and_never_queued():
    cache = Cache(_Storage({expert_cache.expert_file("k")}))
    assert cache.submit(job(), "a") == "hit"
    assert cache.take("g0") is None and cache.stats()["hits"] == 1


def test_an_expired_lease_gives_the_job_to_the_next_worker_and_both_may_finish():
    cache = Cache(_Storage())
    cache.submit(job(), "a")
    assert cache.take("g0") == job()
    cache.lease_seconds = 0.0  # g0 stopped renewing (a busy machine)
    assert cache.take("g1") == job()  # taken over: trained again, identically
    assert cache.stats()["taken_over"] == 1
    assert cache.renew("k", "g0") is True  # g0 still finishes: no livelock when every lease runs out
    cache.done("k", "g0", TRAINED)
    cache.done("k", "g1", TRAINED)
    assert cache.status("k", "a") == ("done", TRAINED) and cache.stats()["retrained"] == 1


def test_a_restarted_worker_gives_its_job_back_to_the_front_of_the_queue():
    cache = Cache(_Storage())
    cache.submit(job("k1"), "a")
    cache.submit(job("k2", trial="b"), "b")
    assert cache.take("g0").key == "k1"
    assert cache.register("g0", node="n1") == 1  # Train restarted g0's group after a worker died
    assert cache.take("g1").key == "k1"  # before k2, which was queued later
    assert cache.stats()["workers"] == {"g0": "n1"}


def test_a_withdrawn_trial_drops_the_jobs_only_it_waited_for():
    cache = Cache(_Storage())
    cache.submit(job("mine"), "a")
    cache.submit(job("shared"), "a")
    cache.submit(job("shared", trial="b"), "b")
    cache.submit(job("training"), "a")
    assert [cache.take("g0").key, cache.take("g1").key] == ["mine", "shared"]
    cache.queue.clear()  # (only "training" was left queued: put it in training)
    cache.entries["training"].state, cache.entries["training"].worker = "training", "g2"
    # "mine" is in training by g0; "shared" in training by g1 for a and b
    assert cache.cancel("a") == 0  # nothing queued was a's alone
    assert cache.renew("mine", "g0") is False  # nobody waits: g0 stops training it
    assert cache.renew("training", "g2") is False
    assert cache.renew("shared", "g1") is True  # b still waits
    assert cache.entries["shared"].trainer == "b"  # and carries its cost now
    assert cache.submit(job("new"), "a") == "cancelled"  # an ended trial asks for nothing more
    cache.done("shared", "g1", TRAINED)  # b waits for it: trained for somebody
    assert cache.stats()["for_nobody"] == 0
    cache.done("mine", "g0", TRAINED)  # g0 finished before it renewed: an expert nobody waits for
    assert cache.stats()["for_nobody"] == 1 and cache.stats()["trained"] == 1
    queued = Cache(_Storage())
    queued.submit(job("q"), "a")
    assert queued.cancel("a") == 1 and queued.take("g0") is None


def test_a_deterministic_failure_reaches_every_waiter_and_a_broken_service_too():
    cache = Cache(_Storage())
    cache.submit(job("nan"), "a")
    cache.submit(job("nan", trial="b"), "b")
    cache.take("g0")
    cache.failed("nan", "g0", "policy a: task 1: loss is nan at step 3")
    assert cache.status("nan", "b") == ("failed", "policy a: task 1: loss is nan at step 3")
    cache.submit(job("other"), "a")
    cache.break_down("the expert-training service stopped: TrainingFailedError: ...")
    assert cache.status("other", "a")[0] == "error"
    cache.close()
    assert cache.take("g0") == STOP


class _Local:
    """``actor.method.remote(...)`` on a plain object, for code that talks to an actor."""

    def __init__(self, target, hook=None):
        self.target, self.hook = target, hook

    def __getattr__(self, name):
        method = getattr(self.target, name)

        class _M:
            @staticmethod
            def remote(*args):
                if self.hook:
                    self.hook(name, args)
                return method(*args)

        return _M


def test_obtain_waits_for_the_job_and_submits_again_when_its_init_was_lost(monkeypatch):
    monkeypatch.setattr(expert_cache.ray, "get", lambda value: value)
    cache = Cache(_Storage())
    polls = []

    def worker(name, args):  # a worker that loses the first init and trains the second submission
        if name == "wait_status":
            polls.append(args)
            if len(polls) == 1:
                assert cache.take("g0").key == "k"
                cache.lost("k")  # the init's owner died
            elif len(polls) == 2:
                assert cache.take("g0").key == "k"
                cache.done("k", "g0", TRAINED)

    assert obtain(_Local(cache, worker), job(), "a", wait=0) == ("done", TRAINED)
    assert len(polls) == 2


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class _Actor:
    def __init__(self, experts, failure=None):
        self.experts, self.failure = experts, failure
        self.asked: list[str] = []  # the trial ids the driver called with
        self.n_experts = _Remote(lambda trial_id: self.asked.append(trial_id) or self.experts)
        self.failed = _Remote(lambda trial_id: self.asked.append(trial_id) or self.failure)


def _driver(actor, training):
    driver = object.__new__(trial_module.TrialDriver)
    driver.actor, driver.training, driver.failure, driver.trial_id = actor, training, [], "p"
    driver.progress, driver.events = threading.Condition(), 0
    return driver


def test_a_waiting_call_returns_when_the_job_ends_and_an_idle_take_when_a_job_comes():
    cache = Cache(_Storage())
    cache.submit(job(), "a")
    cache.take("g0")
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(cache.wait_status("k", "a", 30.0)))
    waiter.start()
    cache.done("k", "g0", TRAINED)  # wakes the waiting call at once, long before its 30 s
    waiter.join(10)
    assert answers == [("done", TRAINED)]
    assert cache.take("g0", timeout=0.05) is None  # nothing queued: None after the wait
    taken = []
    taker = threading.Thread(target=lambda: taken.append(cache.take("g1", timeout=30.0)))
    taker.start()
    cache.submit(job("k2", trial="b"), "b")
    taker.join(10)
    assert [j.key for j in taken] == ["k2"]


def test_waiting_for_an_expert_after_the_experts_thread_ended(monkeypatch):
    monkeypatch.setattr(trial_module.ray, "get", lambda value: value)
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    # the thread linked expert 2 and ended: nothing stopped; the merge service was asked for trial "p"
    served = _Actor(2)
    _driver(served, done).wait_for_expert(2)
    assert served.asked and set(served.asked) == {"p"}
    # the thread ended without expert 2
    with pytest.raises(RuntimeError, match="stopped before expert 2"):
        _driver(_Actor(1), done).wait_for_expert(2)
    # a deterministic failure it reported wins
    with pytest.raises(trial_module.NonRetryableFailure, match="nan"):
        _driver(_Actor(1, "loss is nan"), done).wait_for_expert(2)


# Two pairs of policies whose experts are equal (deploy ft serves the latest expert, whatever the
# merging technique; experts depend only on the init strategy), run one trial at a time: the first
# trial of each pair trains, the second finds every expert in the cache. Task 1 starts from theta_0
# for every policy, so the first trial of the second pair finds expert 1 and trains only expert 2.
SHARED = [
    "policies={presets: [], grid: {init: [ft, zs], deploy: [ft], "
    "merge: [{technique: average}, {technique: task_arithmetic}]}}",
    "resources.max_concurrent_trials=1",
    "resources.merge_actors=2",  # the merge service: trials 1 and 3 on one actor, 2 and 4 on the other
]
NONE_TRAINED = re.compile(r"policy (\S+): all 2 experts from the expert cache, none trained")


@pytest.mark.e2e
def test_trials_sharing_experts_train_each_once_in_one_train_run(cache_dir, tmp_path):
    out, ray_tmp = tmp_path / "out", tempfile.mkdtemp(prefix="tr-", dir="/tmp")
    sets = SETS + [arg for s in SHARED for arg in ("--set", s)]
    # --verbose: the trial drivers' lines reach the console (Ray's log_to_driver)
    proc = run_cli(
        ["sweep", "configs/quickstart.yaml", "--output", str(out), "--verbose", *sets], cache_dir, ray_tmp, timeout=600
    )
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    steps = pd.read_parquet(out / "timesteps.parquet")
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(steps) == 4 * 3 and set(steps.init) == {"ft", "zs"}
    # one Train run for the whole sweep (the training service), none per trial
    runs = sorted(d.name for d in (out / "ray" / "train").iterdir())
    assert len(runs) == 1 and runs[0].startswith("experts-"), runs
    assert "training service: 1 worker group(s) of 1 Train worker(s)" in proc.stderr
    cached = set(NONE_TRAINED.findall(proc.stderr))
    assert len(cached) == 2, proc.stderr[-6000:]
    assert "experts trained 3, reused from the cache 5" in proc.stderr
    assert "merge service: 2 actor(s), 0 restarted after a failure; trials served per actor [2, 2]" in proc.stderr
    assert len(list((out / "experts").glob("*.safetensors"))) == 3

    for _, pair in steps.groupby("init"):
        ids = sorted(pair.trial_id.unique())
        assert len(ids) == 2
        [hit] = [i for i in ids if i in cached]  # exactly one trial of each pair: all cached
        [trainer] = [i for i in ids if i not in cached]
        hits = pair[(pair.trial_id == hit) & (pair.timestep > 0)]
        assert len(hits) == 2 and hits.expert_cache_hit.all()
        assert (hits.train_steps == 0).all() and (hits.train_gflops == 0).all() and (hits.train_seconds == 0).all()
        assert (pair[(pair.trial_id == trainer) & (pair.timestep == 2)].train_steps == 60).all()
        # the same experts and deploy ft: the cached trial's metrics equal those of the trial that trained
        a, b = (metrics[metrics.trial_id == i].sort_values(["timestep", "dataset"]) for i in (trainer, hit))
        # 3 timesteps x (4 datasets + a row per task of the 2-task stream)
        assert len(a) == 3 * (4 + 2) and (a.value.to_numpy() == b.value.to_numpy()).all()

    # the first trial of the second pair took expert 1 from the cache and trained expert 2
    first = steps[(steps.timestep == 1) & ~steps.trial_id.isin(cached)]
    assert sorted(first.expert_cache_hit) == [False, True]
    late = first[first.expert_cache_hit].trial_id.iloc[0]
    assert not steps[(steps.trial_id == late) & (steps.timestep == 2)].expert_cache_hit.any()
