"""The Ray Train run of one trial: a single TorchTrainer run that finetunes every expert of the
stream in turn, asking the trial's pool in the merge service for each task's init weights and handing
it each expert, so the Train start-up (about 25 s here) is paid once per trial, not once per timestep. With the sweep's
expert cache the trial driver links the leading cached experts itself and starts this run only at
the first expert that must be trained, or not at all (trial.py, "lazy Train start")."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from time_ray.core import models
from time_ray.core.checkpoints import save_atomic
from time_ray.core.contracts import ExperimentSettings, ExpertInfo
from time_ray.core.experiment import Experiment
from time_ray.core.experts import expert_key
from time_ray.core.finetune import NonFiniteLoss
from time_ray.orchestration import faults
from time_ray.orchestration.expert_cache import expert_file, lease, obtain
from time_ray.orchestration.storage import Storage


@dataclass(frozen=True)
class TrainLoopConfig:
    """What the Train workers of one trial's run get (``train_loop_config={"job": ...}``)."""

    merge_actor: Any  # the trial's PoolHandle (merge_actor.py): its pool in the sweep's merge service
    settings: ExperimentSettings
    steps: int
    seed: int
    trial_id: str
    multitask: bool
    storage: Storage
    expert_cache: str | None = None  # the sweep's ExpertCache actor name (None: no cache)
    first_init: tuple[int, Any] | None = None  # lazy start: (t, ObjectRef of theta^i_t) the driver asked for

    def expert_key(self, init: dict, t: int) -> str:
        """The cache address of expert t of this trial."""
        return expert_key(init, t, self.steps, self.seed, self.settings.to_dict(), self.multitask)


def take_cached(cache, actor, key: str, t: int, owner: str) -> bool:
    """Asks the sweep's cache for expert ``key`` (waiting while another trial trains it); a hit is
    linked into the pool as theta^s_t by reference (checked against its hash on open) and True is
    returned; False: the caller holds the claim and trains it. The trial driver (lazy start) and the
    Train worker both obtain experts this way."""
    if obtain(cache, key, owner=owner) != "hit":
        return False
    ray.get(actor.link_expert.remote(t, expert_file(key), ExpertInfo.cache_hit()))
    return True


def train_experts(loop: dict) -> None:
    """Train worker loop (every rank): for t = 1..T: init <- actor; the expert from the sweep's cache
    or finetuned now (then cached); rank 0 stores it in the policy's pool."""
    config: TrainLoopConfig = loop["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    actor = config.merge_actor
    cache = ray.get_actor(config.expert_cache) if config.expert_cache else None
    experiment = Experiment.from_settings(config.settings, config.multitask)
    device = ray.train.torch.get_device()
    model = experiment.new_model()
    flops = experiment.flops_per_step(model) if rank == 0 else 0.0
    model = ray.train.torch.prepare_model(model)
    inner = getattr(model, "module", model)
    # a restarted run (Train FailureConfig, a resumed trial) keeps the experts already in the pool:
    # each is a deterministic function of its init and task seed, so nothing is lost
    first, given = config.first_init or (0, None)
    for t in range(ray.get(actor.n_experts.remote()) + 1, experiment.tasks + 1):
        # the trial driver already asked the actor for the first task's init (lazy start): reused,
        # so its merge time is charged once
        init = ray.get(given if t == first else actor.init_weights.remote(t))
        key = config.expert_key(init, t)
        cached = [cache is not None and rank == 0 and take_cached(cache, actor, key, t, config.trial_id)]
        if world > 1:
            torch.distributed.broadcast_object_list(cached, src=0)
        if cached[0]:
            continue
        inner.load_state_dict(init)
        try:
            with (
                lease(cache, key, owner=config.trial_id)
                if cache is not None and rank == 0
                else contextlib.nullcontext()
            ):
                stats = experiment.train_expert(
                    model,
                    t,
                    config.steps,
                    config.seed,
                    device,
                    rank,
                    label=config.trial_id,
                    on_step=faults.train_step_hook(config.trial_id, t, inner),
                )
        except NonFiniteLoss as exc:  # deterministic: a restart would fail the same way, so no retry
            if cache is not None and rank == 0:
                ray.get(cache.release.remote(key))
            ray.get(actor.fail.remote(str(exc)))
            return
        except BaseException:
            if cache is not None and rank == 0:
                ray.get(cache.release.remote(key))
            raise
        if rank == 0:
            state = models.state_dict_of(inner)
            info = ExpertInfo(
                train_steps=stats["steps"],
                train_seconds=stats["seconds"],
                train_gflops=flops * stats["steps"] * world / 1e9,
                loss=stats["loss"],
            )
            if cache is not None:  # written once into the sweep's cache, referenced by the pool
                storage = config.storage
                save_atomic(state, storage.local(expert_file(key)))
                storage.push(expert_file(key))
                ray.get(cache.done.remote(key))
                ray.get(actor.link_expert.remote(t, expert_file(key), info))
            else:
                ray.get(actor.store_expert.remote(t, state, info))
        if world > 1:
            torch.distributed.barrier()
