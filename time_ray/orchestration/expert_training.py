"""The sweep's expert-training service: one Ray Train run, started once per sweep, whose workers train
every trial's experts.

Its workers form ``groups`` worker groups of ``workers_per_expert`` workers each (a group of one is a
plain worker; a larger group trains one expert data-parallel over its own torch process subgroup). Each
group's leader takes jobs from the sweep's expert cache, which is the job queue (expert_cache.py): the
init weights a trial's pool chose for task t, the task, budget and seed. The group trains the expert,
the leader publishes it in the cache and the waiting trials link it into their pools. So Train's
start-up (controller, placement group, workers, process group: seconds of CPU) is paid once per sweep,
not once per trial, and the workers stay busy with whichever trial has work.

Faults: a killed worker makes Train restart the group (``FailureConfig``); each leader re-registers and
its job goes back to the queue, to be trained again identically. A NaN loss is deterministic: the job
fails and every trial waiting for it records that failure instead of retrying. A worker killed for memory
(or out of memory) would be killed again: Train's controller tells the queue (``MemoryKills``), which keeps
the job from being trained again and stops the service, and the sweep ends with that error (memory.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from time_ray.core import models
from time_ray.core.checkpoints import save_atomic
from time_ray.core.contracts import ExperimentSettings, ExpertInfo
from time_ray.core.disk import DiskFull, is_disk_full
from time_ray.core.experiment import Experiment
from time_ray.core.finetune import NonFiniteLoss
from time_ray.orchestration import faults, memory
from time_ray.orchestration.expert_cache import STOP, TAKE_WAIT_SECONDS, ExpertJob, expert_file, expert_info_file, lease
from time_ray.orchestration.storage import Storage

logger = logging.getLogger(__name__)
SERVICE_MAX_FAILURES = 10  # restarts of the service's worker groups after a worker died, per sweep


@dataclass(frozen=True)
class ServiceConfig:
    """What the service's Train workers get (``train_loop_config={"service": ...}``)."""

    settings: ExperimentSettings
    storage: Storage
    queue: str  # the sweep's ExpertCache actor name
    workers_per_expert: int = 1


class Unwanted(Exception):
    """Nobody waits for the job being trained any more (its trials ended)."""


def serve_experts(loop: dict) -> None:
    """Train worker loop (every rank): the group's leader takes a job, the group trains it, the
    leader publishes it; until the sweep closes the queue."""
    config: ServiceConfig = loop["service"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    k = config.workers_per_expert
    group, local = divmod(rank, k)
    leader = group * k
    subgroup = None
    if k > 1:  # every rank creates every group's process group, in the same order
        subgroups = [torch.distributed.new_group(list(range(g * k, (g + 1) * k))) for g in range(world // k)]
        subgroup = subgroups[group]
    worker = f"group-{group}"
    queue = ray.get_actor(config.queue)
    device = ray.train.torch.get_device()
    experiments: dict[bool, Experiment] = {}
    flops: dict[bool, float] = {}
    model = inner = None
    if local == 0:
        node = ray.get_runtime_context().get_node_id()
        ray.get(queue.register.remote(worker, node, ray.util.get_node_ip_address(), memory.node_memory()))
    while True:
        job, init = _next_job(queue, worker) if local == 0 else (None, None)
        if k > 1:  # the leader's answer to the whole group (also when there is none: no idle collective)
            # without the init's ObjectRef: a reference pickled outside Ray cannot be resolved by the others
            box = [replace(job, init=None) if isinstance(job, ExpertJob) else job]
            torch.distributed.broadcast_object_list(box, src=leader, group=subgroup)
            job = box[0]
        if job == STOP:
            return
        if job is None:  # none within TAKE_WAIT_SECONDS: ask again
            continue
        assert isinstance(job, ExpertJob)
        if job.multitask not in experiments:
            experiments[job.multitask] = Experiment.from_settings(config.settings, job.multitask)
        experiment = experiments[job.multitask]
        if model is None:
            inner = experiment.new_model().to(device)
            model = torch.nn.parallel.DistributedDataParallel(inner, process_group=subgroup) if k > 1 else inner
        if local == 0:
            if job.multitask not in flops:
                flops[job.multitask] = experiment.flops_per_step(inner, device)
            inner.load_state_dict(init)
        if k > 1:  # the leader's init weights to the group, tensor by tensor
            for tensor in inner.state_dict().values():
                torch.distributed.broadcast(tensor, src=leader, group=subgroup)
        _train(config, queue, worker, job, experiment, model, inner, device, local, k, flops.get(job.multitask, 0.0))
        if k > 1:
            torch.distributed.barrier(group=subgroup)


def _next_job(queue, worker: str) -> tuple[ExpertJob | str | None, dict | None]:
    """The leader's next job and its init weights: (job, init), (None, None) when there is none (or its
    init is gone: its trial's driver died, and the trial submits it again), (STOP, None) at the end."""
    job = ray.get(queue.take.remote(worker, TAKE_WAIT_SECONDS))
    if not isinstance(job, ExpertJob):
        return job, None
    try:
        return job, ray.get(job.init)
    except ray.exceptions.ObjectLostError:
        ray.get(queue.lost.remote(job.key))
        return None, None


def _train(config, queue, worker, job, experiment, model, inner, device, local, k, flops) -> None:
    """One job: trained by the group, published by its leader (or failed / given back)."""
    fault = faults.train_step_hook(job.trial_id, job.t, inner)
    try:
        with lease(queue, job.key, worker) if local == 0 else contextlib.nullcontext(threading.Event()) as unwanted:

            def on_step(step: int, loss: float) -> None:
                if fault is not None:
                    fault(step, loss)
                if k == 1 and unwanted.is_set():  # a group stops together or not at all
                    raise Unwanted(job.key)

            stats = experiment.train_expert(
                model, job.t, job.steps, job.seed, device, local, label=job.trial_id, on_step=on_step
            )
    except Unwanted:
        logger.debug("time-ray: expert %s of %s: nobody waits for it any more", job.t, job.trial_id)
        return
    except NonFiniteLoss as exc:  # deterministic: a restart would fail the same way, so no retry
        if local == 0:
            ray.get(queue.failed.remote(job.key, worker, str(exc)))
        return
    except BaseException as exc:
        if local == 0 and is_disk_full(exc):  # the machine's fault: a retry would fill the same disk
            ray.get(queue.disk_full.remote(job.key, worker, str(exc)))
            return
        if local == 0 and not memory.is_out_of_memory(exc):  # a memory kill is not retried (MemoryKills)
            ray.get(queue.release.remote(job.key, worker))
        raise
    if local == 0:
        info = ExpertInfo.trained(stats["steps"], stats["seconds"], flops * stats["steps"] * k / 1e9, stats["loss"])
        storage = config.storage
        try:
            save_atomic(models.state_dict_of(inner), storage.local(expert_file(job.key)))
            storage.push(expert_file(job.key))
            storage.write_text(expert_info_file(job.key), json.dumps(info.to_json()))
        except DiskFull as exc:  # the machine's fault: a retry would fill the same disk
            ray.get(queue.disk_full.remote(job.key, worker, str(exc)))
            return
        ray.get(queue.done.remote(job.key, worker, info))


class MemoryKills(ray.train.UserCallback):
    """Runs in Train's controller when workers failed. A worker killed for memory (Ray's memory monitor;
    a memory error it raised; or, on the controller's node, a plain death while the Linux OOM killer
    struck: ``memory.KernelOomKills``) is reported to the job queue, which keeps its job from being trained
    again and winds the service down, instead of Train retrying it up to ``SERVICE_MAX_FAILURES`` times."""

    def __init__(self, queue: str, workers_per_expert: int):
        self.queue, self.workers_per_expert = queue, workers_per_expert
        self.kernel = memory.KernelOomKills()  # built on the controller's node (run_service's)
        self.node = ray.util.get_node_ip_address()

    def after_exception(self, run_context, worker_exceptions: dict) -> None:
        kernel = None
        for rank, error in sorted(worker_exceptions.items()):
            report, probable = memory.memory_report(error), False
            died = any(isinstance(e, ray.exceptions.RayActorError) for e in memory.causes(error))
            if report is None and died and memory.node_of(str(error)) == self.node:
                kernel = self.kernel.increased() if kernel is None else kernel
                report, probable = (str(error), True) if kernel else (None, False)
            if report is None:
                continue
            try:
                queue = ray.get_actor(self.queue)
                group = f"group-{rank // self.workers_per_expert}"
                ray.get(queue.out_of_memory.remote(group, rank, report, probable), timeout=60)
            except Exception as exc:  # noqa: BLE001 - then Train retries it, as any failure
                logger.warning("time-ray: a worker killed for memory could not be reported: %s", exc)


@ray.remote(num_cpus=0, max_retries=0)
def run_service(config: ServiceConfig, trainer_kwargs: dict) -> None:
    """The service's Train run (its ``fit`` blocks here until the queue is closed). If it stops for good,
    the waiting trials are told why."""
    from ray.train.torch import TorchTrainer

    faults.note_training_service()
    # Train's controller runs on this node: the Linux OOM killer's count is read here
    trainer_kwargs["run_config"].callbacks.append(MemoryKills(config.queue, config.workers_per_expert))
    try:
        TorchTrainer(serve_experts, train_loop_config={"service": config}, **trainer_kwargs).fit()
    except BaseException as exc:
        queue = ray.get_actor(config.queue)
        ray.get(queue.break_down.remote(f"the expert-training service stopped: {type(exc).__name__}: {exc}"))
        raise


def start_service(run, queue: str, groups: int) -> Any:
    """Starts the service's Train run (``groups`` x ``run.workers`` workers, spread over the nodes) and
    returns the ObjectRef of the task that holds it."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from time_ray.orchestration.loopback_torch import torch_config

    config = ServiceConfig(settings=run.settings, storage=run.storage, queue=queue, workers_per_expert=run.workers)
    kwargs = dict(
        torch_config=torch_config(run.loopback),
        scaling_config=ScalingConfig(
            num_workers=groups * run.workers,
            use_gpu=run.use_gpu,
            resources_per_worker=run.resources_per_worker,
            placement_strategy="SPREAD",
        ),
        run_config=RunConfig(
            name=f"experts-{int(time.time())}",
            storage_path=run.storage.ray_path("ray/train"),
            failure_config=FailureConfig(max_failures=SERVICE_MAX_FAILURES),
        ),
    )
    return run_service.remote(config, kwargs)
