"""Everything one process needs to train experts on, and evaluate models over, a task stream.

Built from ``ExperimentSettings`` (core.contracts), so the trial driver, the Train workers and a single-process
simulation construct the same thing deterministically without shipping data around.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass

import torch

from time_ray.core import models
from time_ray.core.batches import CaptionTokens, TrainBatches
from time_ray.core.benchmark import Benchmark, build_benchmark
from time_ray.core.contracts import ExperimentSettings, TrainingRecipe
from time_ray.core.evaluate import evaluate_all
from time_ray.core.finetune import NonFiniteLoss, TrainSettings, finetune, flops_per_step
from time_ray.core.stream import Mixture, MixtureSampler, make_stream


@functools.lru_cache(maxsize=2)
def _real_benchmark(kind: str, options_json: str, image_size: int):
    """Real data's catalog, scanned once per process (images are read per batch)."""
    from time_ray.core.real_data import load_real_benchmark

    return load_real_benchmark(kind, json.loads(options_json), image_size)


@functools.lru_cache(maxsize=2)
def _pool_paths(spec_json: str) -> tuple:
    """The pretraining pool's shard files (``pretrain_shards`` brace-expanded), once per process."""
    from time_ray.core.real_data.shards import expand_shards

    return tuple(expand_shards(json.loads(spec_json)))


def task_seed(seed: int, t: int, rank: int = 0) -> int:
    """The per-task seed of the spec (§6), distinct per data-parallel rank."""
    return (seed * 1_000_003 + t * 7919 + rank * 104_729) % (2**31 - 1)


@dataclass
class Experiment:
    arch: str
    bench: Benchmark
    stream: list[list[int]]
    mixture: Mixture
    training: TrainingRecipe
    per_image_captions: bool = False
    # the stream's tasks that evaluation reports one ``task`` record each for (None: ``stream``); the
    # multitask reference trains on one task, the union, and is still evaluated on the stream's tasks
    eval_tasks: list[list[int]] | None = None
    augment: bool = False  # RandomResizedCrop on training images (real data)
    pool_shards: tuple = ()  # the pretraining pool's tar shards (real data's pretrain_shards)
    settings: ExperimentSettings | None = None  # what it was built from (from_settings): its experts' address
    multitask: bool = False  # the multitask reference's experiment (from_settings)

    @classmethod
    def from_settings(cls, s: ExperimentSettings, multitask: bool = False) -> Experiment:
        """``multitask``: the reference run of the spec, one task holding the union of the stream."""
        if s.benchmark_kind == "builtin":
            bench, pairs = build_benchmark(s.benchmark), None
        else:
            bench, pairs = _real_benchmark(
                s.benchmark_kind, json.dumps(s.data, sort_keys=True), models.image_size(s.arch)
            )
        tasks = make_stream(bench, s.tasks, s.order, s.stream_seed, pairs)
        stream = [[c for task in tasks for c in task]] if multitask else tasks
        data = s.data or {}
        shards = data.get("pretrain_shards") if s.benchmark_kind != "builtin" else None
        return cls(
            augment=s.benchmark_kind != "builtin" and bool(data.get("augment", True)),
            pool_shards=_pool_paths(json.dumps(shards)) if shards else (),
            arch=s.arch,
            bench=bench,
            stream=stream,
            eval_tasks=tasks,
            mixture=s.mixture,
            training=s.training,
            per_image_captions=s.captions == "image",
            settings=s,
            multitask=multitask,
        )

    @property
    def tasks(self) -> int:
        return len(self.stream)

    def new_model(self, state: dict | None = None) -> torch.nn.Module:
        model = models.create_model(self.arch)
        if state is not None:
            model.load_state_dict(state)
        return model

    def tokenize(self, texts):
        return models.tokenizer(self.arch)(texts)

    def captions(self) -> CaptionTokens:
        """Caption tokens of train samples, made per batch (class template, or per-image captions)."""
        if not hasattr(self, "_captions"):
            self._captions = CaptionTokens(self.bench, models.tokenizer(self.arch), self.per_image_captions)
        return self._captions

    def sampler(self, t: int, seed: int, rank: int = 0) -> MixtureSampler:
        return MixtureSampler(
            self.bench,
            self.stream,
            t,
            self.mixture,
            self.training.batch_size,
            seed=task_seed(seed, t, rank),
            pool=bool(self.pool_shards),
        )

    def batches(self, t: int, seed: int, rank: int = 0, device="cpu", steps: int | None = None) -> TrainBatches:
        """The training batches of task t: the sampler's, the pretraining pool's share (its shards in an
        order of the task's seed, starting at shard t - 1), RandomResizedCrop when ``augment``."""
        pool = None
        if self.pool_shards:
            from time_ray.core.real_data.shards import ShardStream

            pool = ShardStream(list(self.pool_shards), seed=task_seed(seed, t, rank), start_shard=t - 1)
        return TrainBatches(
            self.bench,
            self.sampler(t, seed, rank),
            self.captions(),
            device,
            models.image_size(self.arch),
            crop_seed=task_seed(seed, t, rank) if self.augment else None,
            pool=pool,
            steps=steps,
        )

    def train_expert(
        self, model, t: int, steps: int, seed: int, device="cpu", rank: int = 0, label: str = "", on_step=None
    ) -> dict:
        """Finetunes ``model`` in place on task t; a non-finite loss names the policy, task and step.
        ``on_step(step, loss)`` is called after every step."""
        settings = TrainSettings(steps=steps, seed=task_seed(seed, t, rank), **asdict(self.training))
        try:
            with self.batches(t, seed, rank, device, steps) as batches:
                return finetune(model, batches, settings, device, on_step=on_step)
        except NonFiniteLoss as exc:
            raise NonFiniteLoss(f"policy {label or '?'}: task {t}: {exc}") from exc

    def flops_per_step(self, model, device="cpu") -> float:
        """FLOPs of one training step (a synthetic batch of the first task's batch length; no image read)."""
        size, context = models.image_size(self.arch), models.context_length(self.arch)
        return flops_per_step(model, self.sampler(1, 0).batch_len, size, context, device)

    def evaluate(
        self, model, device="cpu", subset: bool = False, seed: int = 0, predictions: dict | None = None
    ) -> list[dict]:
        """A record per dataset (roles 'adaptation' / 'heldout'), then one per task j of the stream
        (role 'task', dataset ``task_01``..: accuracy on task j's classes, from the same predictions);
        ``subset``: the class-balanced FoMo-size subsets used during the stream (the task records
        then cover the subsets' images of each task's classes)."""
        tasks = self.eval_tasks if self.eval_tasks is not None else self.stream
        records = evaluate_all(model, self.bench, self.tokenize, device, subset, seed, tasks, predictions)
        if predictions is not None:  # names too: the process that reads the predictions holds no benchmark
            names = self.bench.class_names
            predictions["predicted_name"] = [names[p] if p >= 0 else None for p in predictions.get("predicted", [])]
        return records
