"""The merge service without Ray: a trial's handle forwards each call with its trial id, trials are assigned
to actors deterministically, and one actor's per-trial state (the plain class behind the Ray actor) serves
several pools, shares their opened expert files, repeats nothing on a retried call and reopens everything
from storage after a restart."""

import importlib.util
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch

from time_ray.core.checkpoints import save_atomic
from time_ray.core.contracts import ExpertInfo
from time_ray.core.strategies import Policy
from time_ray.orchestration import faults
from time_ray.orchestration import merge_actor as service_module
from time_ray.orchestration.merge_actor import PROCESS_TITLE, PoolHandle, assign, start_merge_service
from time_ray.orchestration.storage import Storage

Service = service_module.MergeService.__ray_actor_class__  # the plain class: its bookkeeping without Ray


class _Call:
    def __init__(self, log, name, options=None):
        self.log, self.name, self.options_ = log, name, options or {}

    def options(self, **options):
        return _Call(self.log, self.name, {**self.options_, **options})

    def remote(self, *args, **kwargs):
        self.log.append((self.name, self.options_, args, kwargs))
        return f"ref-{len(self.log)}"


class _FakeService:
    """Records what the handle asks of the actor (picklable: a module-level class)."""

    def __init__(self):
        self.log = []

    def __getattr__(self, name):
        if name.startswith("__") or name == "log":
            raise AttributeError(name)
        return _Call(self.log, name)


def test_a_handle_forwards_each_method_with_the_trial_id_first():
    service = _FakeService()
    handle = PoolHandle(service, "p-1")
    assert handle.n_experts.remote() == "ref-1"
    handle.init_weights.remote(3)
    handle.deployed.options(num_returns=2).remote(2)
    handle.link_expert.remote(1, "experts/k.safetensors", info="i")
    handle.store_expert.options(name="x").options(num_returns=1).remote(4, {}, "i")
    handle.fail.remote("nan")
    handle.failed.remote()
    assert service.log == [
        ("n_experts", {}, ("p-1",), {}),
        ("init_weights", {}, ("p-1", 3), {}),
        ("deployed", {"num_returns": 2}, ("p-1", 2), {}),
        ("link_expert", {}, ("p-1", 1, "experts/k.safetensors"), {"info": "i"}),
        ("store_expert", {"name": "x", "num_returns": 1}, ("p-1", 4, {}, "i"), {}),
        ("fail", {}, ("p-1", "nan"), {}),
        ("failed", {}, ("p-1",), {}),
    ]


def test_a_handle_pickles_with_its_service_and_trial():
    handle = pickle.loads(pickle.dumps(PoolHandle(_FakeService(), "p-2")))
    assert handle.trial_id == "p-2"
    handle.init_weights.remote(1)
    assert handle.service.log == [("init_weights", {}, ("p-2", 1), {})]
    with pytest.raises(AttributeError):
        PoolHandle.n_experts  # noqa: B018 - on the class there is no trial to forward for


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
        return _FakeService()


def test_the_service_starts_at_most_one_actor_per_trial_each_knowing_only_its_trials(monkeypatch):
    fake = _FakeActorClass()
    monkeypatch.setattr(service_module, "MergeService", fake)
    policies = {f"t{i}": Policy("ft", "ft") for i in range(3)}
    actors, pools = start_merge_service("storage", policies, 2)
    assert len(actors) == 2 and [sorted(p) for p in fake.started] == [["t0", "t2"], ["t1"]]
    assert pools["t0"].service is actors[0] and pools["t2"].service is actors[0] and pools["t1"].service is actors[1]
    assert all(pools[t].trial_id == t for t in policies)
    fake.started.clear()
    actors, pools = start_merge_service("storage", policies, 8)
    assert len(actors) == 3 and [sorted(p) for p in fake.started] == [["t0"], ["t1"], ["t2"]]


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
    monkeypatch.setenv("TIME_RAY_MERGE_KERNELS", "0")
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
    # store_expert writes the expert into the trial's own pool directory
    assert restarted.store_expert("a", 2, {"w": torch.full((4,), 3.0), "b": torch.ones(2)}, info) > 0
    assert (sweep_dir / "pool" / "a" / "expert_002.safetensors").exists()
    assert json.loads((sweep_dir / "pool" / "a" / "info_002.json").read_text())["train_steps"] == 60
    assert restarted.n_experts("a") == 2 and restarted.n_experts("b") == 1


class _Killable:
    service = "the service actor"


def test_kill_merge_actor_kills_the_service_actor_behind_the_handle(tmp_path, monkeypatch):
    import ray

    killed = []
    monkeypatch.setattr(ray, "kill", lambda actor, no_restart: killed.append((actor, no_restart)))
    fault = {"fault": "kill_merge_actor", "trial": "best-in-time", "after_timestep": 1}
    monkeypatch.setenv("TIME_RAY_FAULTS", json.dumps([fault]))
    monkeypatch.setenv("TIME_RAY_FAULTS_DIR", str(tmp_path))
    faults.after_timestep("best-in-time-x", 0, _Killable())
    assert killed == []
    faults.after_timestep("best-in-time-x", 1, _Killable())
    faults.after_timestep("best-in-time-x", 1, _Killable())  # fires once
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
