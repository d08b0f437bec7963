"""The Ray Train run of one trial: a single TorchTrainer run that finetunes every expert of the
stream in turn, asking the merge actor for each task's init weights and handing it each expert, so
the Train start-up (about 25 s here) is paid once per trial, not once per timestep. With the sweep's
expert cache the trial driver links the leading cached experts itself and starts this run only at
the first expert that must be trained, or not at all (trial.py, "lazy Train start")."""

from __future__ import annotations

import contextlib

import ray
import ray.train
import ray.train.torch
import torch

from time_ray.core import models
from time_ray.core.checkpoints import save_atomic
from time_ray.core.experiment import Experiment
from time_ray.core.experts import expert_key
from time_ray.core.finetune import NonFiniteLoss
from time_ray.orchestration import faults
from time_ray.orchestration.expert_cache import expert_file, lease, obtain


def expert_key_of(init: dict, t: int, config: dict) -> str:
    """The cache address of expert t of the trial that ``config`` (the Train loop config) describes."""
    return expert_key(init, t, config["steps"], config["seed"], config["settings"], config["multitask"])


def hit_info() -> dict:
    """The training info of an expert taken from the sweep's cache: no training cost."""
    return {"train_steps": 0, "train_seconds": 0.0, "train_gflops": 0.0, "expert_cache_hit": True}


def train_experts(config: dict) -> None:
    """Train worker loop (every rank): for t = 1..T: init <- actor; the expert from the sweep's cache
    or finetuned now (then cached); rank 0 stores it in the policy's pool."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    actor = config["merge_actor"]
    cache = ray.get_actor(config["expert_cache"]) if config.get("expert_cache") else None
    experiment = Experiment.from_settings(config["settings"], config["multitask"])
    device = ray.train.torch.get_device()
    model = experiment.new_model()
    flops = experiment.flops_per_step(model) if rank == 0 else 0.0
    model = ray.train.torch.prepare_model(model)
    inner = getattr(model, "module", model)
    # a restarted run (Train FailureConfig, a resumed trial) keeps the experts already in the pool:
    # each is a deterministic function of its init and task seed, so nothing is lost
    first, given = config.get("first_init") or (0, None)
    for t in range(ray.get(actor.n_experts.remote()) + 1, experiment.tasks + 1):
        # the trial driver already asked the actor for the first task's init (lazy start): reused,
        # so its merge time is charged once
        init = ray.get(given if t == first else actor.init_weights.remote(t))
        key = expert_key_of(init, t, config)
        decision = [obtain(cache, key, owner=config["trial_id"]) if cache is not None and rank == 0 else "train"]
        if world > 1:
            torch.distributed.broadcast_object_list(decision, src=0)
        if decision[0] == "hit":
            if rank == 0:  # the pool references the cached file (checked against its hash on open)
                ray.get(actor.link_expert.remote(t, expert_file(key), hit_info()))
            continue
        inner.load_state_dict(init)
        try:
            with (
                lease(cache, key, owner=config["trial_id"])
                if cache is not None and rank == 0
                else contextlib.nullcontext()
            ):
                stats = experiment.train_expert(
                    model,
                    t,
                    config["steps"],
                    config["seed"],
                    device,
                    rank,
                    label=config["trial_id"],
                    on_step=faults.train_step_hook(config["trial_id"], t, inner),
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
            info = {
                "train_steps": stats["steps"],
                "train_seconds": stats["seconds"],
                "train_gflops": flops * stats["steps"] * world / 1e9,
                "loss": stats["loss"],
                "expert_cache_hit": False,
            }
            if cache is not None:  # written once into the sweep's cache, referenced by the pool
                storage = config["storage"]
                save_atomic(state, storage.local(expert_file(key)))
                storage.push(expert_file(key))
                ray.get(cache.done.remote(key))
                ray.get(actor.link_expert.remote(t, expert_file(key), info))
            else:
                ray.get(actor.store_expert.remote(t, state, info))
        if world > 1:
            torch.distributed.barrier()
