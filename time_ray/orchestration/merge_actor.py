"""The merge service: a fixed number of long-lived merge actors per sweep (``resources.merge_actors``,
default 1), each holding the checkpoint pools of the trials assigned to it and answering "where does task
t start?" (init strategy) and "which model is served after task t?" (deploy strategy + merging technique).

A trial is assigned to one service actor by its index in the sweep's list of trials to run, modulo the
number of actors (``assign``). Its driver calls that actor directly, with its trial id first:
``service.deployed.options(num_returns=2).remote(trial_id, t)``, ``service.n_experts.remote(trial_id)``.
A service actor is a plain (single-threaded) Ray actor: it runs one call at a time, so the calls of one
trial run in the order they arrive.

Per trial the actor keeps a ``TrialPool`` (pool, policy, merge seconds, experts' training info, a
reported failure), opened on the trial's first call from the sweep's storage. The actor's pools share one
``MergeExecutor`` (threshold cache, scratch buffers: one merge runs at a time) and the opened
checkpoint files (``OpenedCheckpoints``): an expert from the sweep's cache that several pools reference,
and theta_0, are mapped and hash-checked once per process.

The merges run on the executor's one backend, the fused numba kernels (docs/merging.md).
"""

from __future__ import annotations

import json
import time

import ray
import torch

from time_ray.core.checkpoints import OpenedCheckpoints, materialize
from time_ray.core.contracts import ExpertInfo, TimestepCosts
from time_ray.core.merging.executor import MergeExecutor, ThresholdCache
from time_ray.core.merging.sidecar import ThresholdStore
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import Policy, deploy_weights, init_weights
from time_ray.orchestration.local_ray import node_strategies
from time_ray.orchestration.served import Served, assign
from time_ray.orchestration.storage import Storage

THRESHOLDS_DIR = "thresholds"  # sidecar files of the experts' thresholds, in the sweep's storage (shared)


def build_executor(storage: Storage) -> MergeExecutor:
    """The executor of a merge actor's pools: a threshold cache of its
    own, backed by the sweep's threshold sidecars (a restarted actor, or another actor whose trial shares an
    expert, reads them instead of selecting again)."""
    store = ThresholdStore(storage.local(THRESHOLDS_DIR), fetch=storage.fetch, publish=storage.push)
    return MergeExecutor(ThresholdCache(store=store))


class TrialPool:
    """One trial's merging state inside a service actor. Its pool lives in ``storage`` under
    ``pool/<trial_id>``; theta_0 is ``base.safetensors``. Everything it knows is in storage (experts, EMA
    chain, each expert's training info in ``info_<t>.json``), so it can be opened again at any time (a
    restarted actor); only the merge seconds so far and a reported failure live in memory."""

    def __init__(
        self,
        storage: Storage,
        trial_id: str,
        policy: Policy,
        executor: MergeExecutor,
        opened: OpenedCheckpoints | None = None,
    ):
        self.storage, self.trial_id, self.policy = storage, trial_id, policy
        self.dir = f"pool/{trial_id}"
        storage.pull_tree(self.dir)
        self.pool = CheckpointPool(
            storage.local(self.dir),
            storage.local("base.safetensors"),
            fetch=storage.fetch,
            publish=storage.push,
            executor=executor,
            opened=opened,
        )
        self.merge_seconds: dict[int, float] = {}
        self.expert_info = {
            t: ExpertInfo.from_json(json.loads(storage.read_text(f"{self.dir}/info_{t:03d}.json") or "{}"))
            for t in range(1, self.pool.n_experts + 1)
        }
        self.failure: str | None = None

    def _timed(self, t: int, fn):
        start = time.perf_counter()
        state = materialize(fn(self.policy, self.pool, t))
        self.merge_seconds[t] = self.merge_seconds.get(t, 0.0) + time.perf_counter() - start
        return state

    def init_weights(self, t: int) -> dict:
        """theta^i_t as an in-memory state dict (merge time is charged to timestep t)."""
        return self._timed(t, init_weights)

    def link_expert(self, t: int, rel: str, info: ExpertInfo) -> int:
        """Appends the cached expert file ``rel`` (in the sweep's storage) as theta^s_t, by reference;
        ``info`` (training steps, seconds, GFLOPs) is kept beside it. A retried call after a restart finds
        expert t stored already and returns 0."""
        if self.pool.n_experts >= t:
            return 0
        self.expert_info[t] = info
        self.storage.write_text(f"{self.dir}/info_{t:03d}.json", json.dumps(info.to_json()))
        self.storage.pull(rel)
        size = self.pool.link_expert(t, self.storage.local(rel))
        self._warm(t)
        return size

    def _warm(self, t: int) -> None:
        """Expert t's thresholds for the policy's technique, computed as it enters the pool (charged to
        timestep t's merge time), so that no merge of it selects them again."""
        start = time.perf_counter()
        self.pool.warm_expert(t, self.policy.technique)
        self.merge_seconds[t] = self.merge_seconds.get(t, 0.0) + time.perf_counter() - start

    def fail(self, message: str) -> None:
        """A deterministic failure of the Train run (e.g. a NaN loss): the driver reports it."""
        self.failure = message

    def failed(self) -> str | None:
        return self.failure

    def n_experts(self) -> int:
        return self.pool.n_experts

    def deployed(self, t: int) -> tuple[dict, TimestepCosts]:
        """theta^o_t plus the costs of timestep t: expert t's training, merge seconds, pool bytes
        (evaluation is the driver's to add)."""
        state = self._timed(t, deploy_weights)
        expert = self.expert_info.get(t, ExpertInfo())
        return state, TimestepCosts.of(expert, self.merge_seconds.get(t, 0.0), self.pool.nbytes())


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=-1)
class MergeService:
    """One actor of the merge service: the pools of the trials in ``policies`` (trial id -> policy).

    Restartable: the constructor's arguments are given again on a restart, and a trial's pool is opened
    again from storage on the trial's next call; calls made meanwhile are retried (``max_task_retries``).
    Every method takes the trial id first and answers for that trial's ``TrialPool``."""

    def __init__(self, storage: Storage, policies: dict[str, Policy], num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.storage, self.policies = storage, policies
        self.executor = build_executor(storage)
        self.opened = OpenedCheckpoints()
        self.trials: dict[str, TrialPool] = {}  # the pools of trials running now
        self.served: set[str] = set()  # every trial opened here (since the last restart)

    def _trial(self, trial_id: str) -> TrialPool:
        """The trial's state, opened from storage on its first call (after a restart too)."""
        found = self.trials.get(trial_id)
        if found is None:
            if trial_id not in self.policies:
                raise KeyError(f"merge service: trial {trial_id!r} is not served here ({sorted(self.policies)})")
            found = self.trials[trial_id] = TrialPool(
                self.storage, trial_id, self.policies[trial_id], self.executor, self.opened
            )
            self.served.add(trial_id)
        return found

    def release(self, trial_id: str) -> None:
        """The trial ended: its pool leaves memory (its files stay in storage; a later call opens it again),
        so the actor's memory follows the trials running, not every trial it served."""
        self.trials.pop(trial_id, None)

    def init_weights(self, trial_id: str, t: int) -> dict:
        return self._trial(trial_id).init_weights(t)

    def link_expert(self, trial_id: str, t: int, rel: str, info: ExpertInfo) -> int:
        return self._trial(trial_id).link_expert(t, rel, info)

    def fail(self, trial_id: str, message: str) -> None:
        self._trial(trial_id).fail(message)

    def failed(self, trial_id: str) -> str | None:
        return self._trial(trial_id).failed()

    def n_experts(self, trial_id: str) -> int:
        return self._trial(trial_id).n_experts()

    def deployed(self, trial_id: str, t: int) -> tuple[dict, TimestepCosts]:
        return self._trial(trial_id).deployed(t)

    def stats(self) -> dict:
        """The trials open here, how the opened checkpoint files were shared, and whether Ray restarted
        this actor after a failure."""
        return {
            "trials": sorted(self.served),
            "opened": self.opened.opened,
            "shared": self.opened.shared,
            "restarted": ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed,
        }


PROCESS_TITLE = f"ray::{MergeService.__ray_actor_class__.__name__}"[:15]  # as /proc/<pid>/stat names it


def start_merge_service(storage: Storage, policies: dict[str, Policy], actors: int) -> Served:
    """Starts ``min(actors, trials)`` service actors; returns them and which serves each trial."""
    where = assign(list(policies), actors)
    n = min(actors, len(policies))
    served: list[dict[str, Policy]] = [{} for _ in range(n)]
    for trial_id, index in where.items():
        served[index][trial_id] = policies[trial_id]
    # one node after the other: each node's CPUs merge for the trials its actor serves
    service = [
        MergeService.options(scheduling_strategy=strategy).remote(storage, served[i])
        for i, strategy in enumerate(node_strategies(n))
    ]
    return Served(tuple(service), where)
