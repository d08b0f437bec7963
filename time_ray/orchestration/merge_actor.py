"""The merge actor: holds one policy's checkpoint pool and answers "where does task t start?"
(init strategy) and "which model is served after task t?" (deploy strategy + merging technique).

Its merges run on one ``MergeExecutor`` it builds and owns, with its own threshold cache. The backend is
the fused numba kernels when numba is importable; the environment variable ``TIME_RAY_MERGE_KERNELS=0``
(also ``false``, ``off``; read here, when the actor is built) runs torch ops instead (bit-identical, slower:
for comparison or debugging).
"""

from __future__ import annotations

import json
import os
import time

import ray
import torch

from time_ray.core.checkpoints import materialize
from time_ray.core.contracts import ExpertInfo, TimestepCosts
from time_ray.core.merging.executor import Backend, MergeExecutor, ThresholdCache, default_backend
from time_ray.core.merging.sidecar import ThresholdStore
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import Policy, deploy_weights, init_weights
from time_ray.orchestration.storage import Storage

KERNELS_SWITCH = "TIME_RAY_MERGE_KERNELS"


def backend_from_environment() -> Backend:
    """``torch`` when ``TIME_RAY_MERGE_KERNELS`` is 0 / false / off, else the default (numba if importable)."""
    if os.environ.get(KERNELS_SWITCH, "1").strip().lower() in ("0", "false", "off"):
        return "torch"
    return default_backend()


THRESHOLDS_DIR = "thresholds"  # sidecar files of the experts' thresholds, in the sweep's storage (shared)


def build_executor(storage: Storage) -> MergeExecutor:
    """The executor of a merge actor's pool: its backend from the environment, a threshold cache of its own,
    backed by the sweep's threshold sidecars (a restarted actor, or another trial sharing an expert, reads
    them instead of selecting again)."""
    store = ThresholdStore(storage.local(THRESHOLDS_DIR), fetch=storage.fetch, publish=storage.push)
    return MergeExecutor(backend_from_environment(), ThresholdCache(store=store))


@ray.remote(num_cpus=0, max_restarts=3, max_task_retries=-1)
class MergeActor:
    """The pool lives in ``storage`` under ``pool/<trial_id>``; theta_0 is ``base.safetensors``.

    Restartable: everything it knows is in storage (experts, EMA chain, each expert's training info
    in ``info_<t>.json``), so a restarted actor reloads its pool and calls made meanwhile are retried."""

    def __init__(self, storage: Storage, trial_id: str, policy: Policy, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        self.storage = storage
        storage.pull_tree(f"pool/{trial_id}")
        self.pool = CheckpointPool(
            storage.local(f"pool/{trial_id}"),
            storage.local("base.safetensors"),
            fetch=storage.fetch,
            publish=storage.push,
            executor=build_executor(storage),
        )
        self.policy = policy
        self.dir = f"pool/{trial_id}"
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

    def _keep_info(self, t: int, info: ExpertInfo) -> None:
        self.expert_info[t] = info
        self.storage.write_text(f"{self.dir}/info_{t:03d}.json", json.dumps(info.to_json()))

    def store_expert(self, t: int, state: dict, info: ExpertInfo) -> int:
        """Appends theta^s_t to the pool; ``info`` holds training steps, seconds and GFLOPs."""
        if self.pool.n_experts >= t:  # a retried call after a restart: already stored
            return 0
        self._keep_info(t, info)
        size = self.pool.add_expert(t, state)
        self._warm(t)
        return size

    def link_expert(self, t: int, rel: str, info: ExpertInfo) -> int:
        """Appends the cached expert file ``rel`` (in the sweep's storage) as theta^s_t, by reference."""
        if self.pool.n_experts >= t:
            return 0
        self._keep_info(t, info)
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
