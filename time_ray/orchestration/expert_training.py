"""The Ray Train run of one trial: a single TorchTrainer run that finetunes every expert of the
stream in turn, asking the merge actor for each task's init weights and handing it each expert, so
the Train start-up (about 25 s here) is paid once per trial, not once per timestep."""

from __future__ import annotations

import ray
import ray.train
import ray.train.torch
import torch

from time_ray.core import models
from time_ray.core.experiment import Experiment


def train_experts(config: dict) -> None:
    """Train worker loop (every rank): for t = 1..T: init <- actor; finetune; rank 0 stores the expert."""
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    actor = config["merge_actor"]
    experiment = Experiment.from_settings(config["settings"], config["multitask"])
    device = ray.train.torch.get_device()
    model = experiment.new_model()
    flops = experiment.flops_per_step(model) if rank == 0 else 0.0
    model = ray.train.torch.prepare_model(model)
    inner = getattr(model, "module", model)
    for t in range(1, experiment.tasks + 1):
        inner.load_state_dict(ray.get(actor.init_weights.remote(t)))
        stats = experiment.train_expert(model, t, config["steps"], config["seed"], device, rank,
                                        label=config["trial_id"])
        if rank == 0:
            info = {"train_steps": stats["steps"], "train_seconds": stats["seconds"],
                    "train_gflops": flops * stats["steps"] * world / 1e9, "loss": stats["loss"]}
            ray.get(actor.store_expert.remote(t, models.state_dict_of(inner), info))
        if world > 1:
            torch.distributed.barrier()
