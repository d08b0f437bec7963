"""The merge service without Ray: trials are assigned to actors deterministically, each trial is given the
actor serving it, and one actor's per-trial state (the plain class behind the Ray actor) serves
several pools, shares their opened expert files, repeats nothing on a retried call and reopens everything
from storage after a restart."""

import gc
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from time_ray.core.checkpoints import save_atomic
from time_ray.core.contracts import ExpertInfo
from time_ray.core.strategies import Policy
from time_ray.orchestration import faults
from time_ray.orchestration import merge_actor as service_module
from time_ray.orchestration.merge_actor import PROCESS_TITLE, start_merge_service
from time_ray.orchestration.served import assign
from time_ray.orchestration.storage import Storage

Service = service_module.MergeService.__ray_actor_class__  # the plain class: its bookkeeping without Ray


def test_trials_are_assigned_by_their_index_modulo_the_actors():
    ids = [f"t{i}" for i in range(5)]
    assert assign(ids, 1) == dict.fromkeys(ids, 0)
    assert assign(ids, 2) == {"t0": 0, "t1": 1, "t2": 0, "t3": 1, "t4": 0}
    assert assign(ids, 2) == assign(list(ids), 2)  # deterministic
    assert assign(ids[:2], 4) == {"t0": 0, "t1": 1}
    with pytest.raises(ValueError, match="at least 1"):
        assign(ids, 0)


class _FakeActorClass:
    def __init__(self):
        self.started, self.options_given = [], []

    def options(self, **options):
        self.options_given.append(options)
        return self

    def remote(self, storage, policies):
        self.started.append(policies)
        return object()  # an actor handle


def test_the_service_starts_at_most_one_actor_per_trial_each_knowing_only_its_trials(monkeypatch):
    fake = _FakeActorClass()
    monkeypatch.setattr(service_module, "MergeService", fake)
    policies = {f"t{i}": Policy("ft", "ft") for i in range(3)}
    served = start_merge_service("storage", policies, 2)
    actors = served.actors
    assert len(actors) == 2 and [sorted(p) for p in fake.started] == [["t0", "t2"], ["t1"]]
    assert served.of("t0") is actors[0] and served.of("t2") is actors[0] and served.of("t1") is actors[1]
    assert served.index == {"t0": 0, "t1": 1, "t2": 0}  # ints: what every trial's driver unpickles
    fake.started.clear()
    assert len(start_merge_service("storage", policies, 8).actors) == 3
    assert [sorted(p) for p in fake.started] == [["t0"], ["t1"], ["t2"]]


def test_the_service_actors_go_to_the_nodes_with_cpus_in_turn(monkeypatch):
    """Strict node affinity: Ray's SPREAD and soft affinity are hints that it often ignores for 0-CPU actors."""
    fake = _FakeActorClass()
    monkeypatch.setattr(service_module, "MergeService", fake)
    monkeypatch.setattr(service_module.ray, "is_initialized", lambda: True)
    a, b, head, gone = ("%02x" % i * 28 for i in range(4))  # node ids: 56 hex digits
    nodes = [
        {"NodeID": b, "Alive": True, "Resources": {"CPU": 1.0}},
        {"NodeID": head, "Alive": True, "Resources": {}},  # a head started with --num-cpus 0
        {"NodeID": gone, "Alive": False, "Resources": {"CPU": 8.0}},
        {"NodeID": a, "Alive": True, "Resources": {"CPU": 2.0}},
    ]
    monkeypatch.setattr(service_module.ray, "nodes", lambda: nodes)
    start_merge_service("storage", {f"t{i}": Policy("ft", "ft") for i in range(3)}, 3)
    strategies = [o["scheduling_strategy"] for o in fake.options_given]
    assert [(s.node_id, s.soft) for s in strategies] == [(a, False), (b, False), (a, False)]


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sweep_dir(tmp_path, monkeypatch):
    save_atomic({"w": torch.zeros(4), "b": torch.zeros(2)}, tmp_path / "base.safetensors")
    save_atomic({"w": torch.full((4,), 2.0), "b": torch.ones(2)}, tmp_path / "experts" / "k1.safetensors")
    return tmp_path


def test_one_actor_serves_several_pools_sharing_their_opened_experts(sweep_dir, one_thread):
    storage = Storage(str(sweep_dir))
    policies = {"a": Policy("ft", "ft"), "b": Policy("zs", "all", all_with_base=True)}
    service = Service(storage, policies)
    info = ExpertInfo(train_steps=60, train_seconds=1.5, train_gflops=2.0)
    assert service.n_experts("a") == 0 and service.n_experts("b") == 0
    assert service.link_expert("a", 1, "experts/k1.safetensors", info) > 0
    assert service.link_expert("b", 1, "experts/k1.safetensors", ExpertInfo.cache_hit()) > 0
    assert service.link_expert("a", 1, "experts/k1.safetensors", info) == 0  # a retried call: stored already
    pool_a, pool_b = service.trials["a"].pool, service.trials["b"].pool
    assert pool_a.expert(1) is pool_b.expert(1)  # one opened (mapped, hash-checked) file for both pools
    assert pool_a.base is pool_b.base and pool_a.executor is pool_b.executor
    assert service.stats()["trials"] == ["a", "b"] and service.stats()["shared"] >= 2

    state_a, costs_a = service.deployed("a", 1)
    state_b, costs_b = service.deployed("b", 1)
    assert torch.equal(state_a["w"], torch.full((4,), 2.0))
    assert torch.equal(state_b["w"], torch.full((4,), 1.0))  # zs / all: the average of theta_0 and expert 1
    assert costs_a.train_steps == 60 and costs_b.train_steps == 0 and costs_b.expert_cache_hit
    assert costs_a.merge_seconds > 0 and costs_a.pool_bytes > 0

    service.fail("b", "loss is nan")
    assert service.failed("b") == "loss is nan" and service.failed("a") is None
    with pytest.raises(KeyError, match="not served here"):
        service.n_experts("c")

    restarted = Service(storage, policies)  # what Ray does on a restart: the same constructor arguments
    assert restarted.trials == {}
    assert restarted.n_experts("a") == 1  # reopened from storage on its first call
    assert restarted.trials["a"].expert_info[1] == info
    assert torch.equal(restarted.init_weights("a", 2)["w"], torch.full((4,), 2.0))  # ft: starts from expert 1
    state, costs = restarted.deployed("a", 1)
    assert torch.equal(state["w"], state_a["w"]) and costs.train_steps == 60
    # a second expert linked after the restart: its training info is kept in the trial's own pool directory
    save_atomic({"w": torch.full((4,), 3.0), "b": torch.ones(2)}, sweep_dir / "experts" / "k2.safetensors")
    assert restarted.link_expert("a", 2, "experts/k2.safetensors", info) > 0
    assert json.loads((sweep_dir / "pool" / "a" / "info_002.json").read_text())["train_steps"] == 60
    assert torch.equal(restarted.deployed("a", 2)[0]["w"], torch.full((4,), 3.0))
    assert restarted.n_experts("a") == 2 and restarted.n_experts("b") == 1

    # a trial that ended leaves memory, with its opened files when no other pool holds them
    del pool_a, pool_b, state, state_a, state_b
    restarted.release("b")
    assert sorted(restarted.trials) == ["a"] and restarted.stats()["trials"] == ["a", "b"]
    open_before = len(restarted.opened)
    restarted.release("a")
    restarted.release("a")  # twice: nothing more
    gc.collect()
    assert restarted.trials == {} and len(restarted.opened) < open_before
    assert restarted.n_experts("a") == 2  # opened again from storage when asked


def test_kill_merge_actor_kills_the_service_actor_serving_the_trial(tmp_path, monkeypatch):
    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append((actor, no_restart)))
    fault = {"fault": "kill_merge_actor", "trial": "best-in-time", "after_timestep": 1}
    monkeypatch.setenv("TIME_RAY_FAULTS", json.dumps([fault]))
    monkeypatch.setenv("TIME_RAY_FAULTS_DIR", str(tmp_path))
    faults.after_timestep("best-in-time-x", 0, "the service actor")
    assert killed == []
    faults.after_timestep("best-in-time-x", 1, "the service actor")
    faults.after_timestep("best-in-time-x", 1, "the service actor")  # fires once
    assert killed == [("the service actor", False)]


def test_the_efficiency_benchmark_names_the_service_actors_process():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_efficiency.py"
    spec = importlib.util.spec_from_file_location("sweep_efficiency_under_test", path)
    module = importlib.util.module_from_spec(spec)
    saved = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    assert module.ROLES["merge"] == (PROCESS_TITLE,) and PROCESS_TITLE == "ray::MergeServi"
    from time_ray.orchestration.evaluator import PROCESS_TITLE as EVALUATOR

    assert EVALUATOR in module.ROLES["eval"] and EVALUATOR == "ray::Evaluator"
    # evaluation's CPU is the evaluators' unless the sweep says its drivers evaluated (its console line)
    import inspect

    from time_ray.orchestration import sweep

    assert module.DRIVERS_EVALUATE in inspect.getsource(sweep)
    assert module._roles("eval", "1 shared evaluator(s)") == ("ray::Evaluator",)
    assert module._roles("eval", module.DRIVERS_EVALUATE) == ("ray::ImplicitFu",)
