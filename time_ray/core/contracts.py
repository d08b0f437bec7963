"""The data that crosses process boundaries (docs/architecture.md "Contracts"), as frozen dataclasses that
pickle for Ray: what a process needs to rebuild the stream (``ExperimentSettings``), one trial of a
sweep (``Trial``), what training an expert cost (``ExpertInfo``) and the costs of one timestep
(``TimestepCosts``). A misspelt field fails at construction (or at the type checker), not as a
missing key on a Ray worker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from time_ray.core.benchmark import BenchmarkSpec
from time_ray.core.strategies import Policy
from time_ray.core.stream import Mixture


@dataclass(frozen=True)
class TrainingRecipe:
    """The optimiser settings every expert is finetuned with (docs/method.md §6)."""

    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.2
    warmup: float = 0.1
    grad_clip: float = 1.0


@dataclass(frozen=True)
class ExperimentSettings:
    """What every process needs to rebuild the benchmark, the task stream and the training recipe
    deterministically (core.experiment.Experiment), without shipping data around."""

    arch: str
    tasks: int
    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)  # the built-in benchmark's spec
    benchmark_kind: str = "builtin"  # builtin | fomo | folders | table
    data: dict | None = None  # the real-data reader's options (absolute paths)
    order: str = "dataset"
    stream_seed: int = 0
    mixture: Mixture = field(default_factory=Mixture)
    training: TrainingRecipe = field(default_factory=TrainingRecipe)
    captions: str = "template"  # template | image

    def to_dict(self) -> dict:
        """JSON-able; the expert cache hashes it into every expert's address (core.experts), so its
        shape is part of the cache's contract."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> ExperimentSettings:
        """From ``to_dict()``'s shape (nested mappings; ``training`` may be partial)."""
        return cls(
            **{
                **d,
                "benchmark": BenchmarkSpec(**d.get("benchmark", {})),
                "mixture": Mixture(**d.get("mixture", {})),
                "training": TrainingRecipe(**d.get("training", {})),
            }
        )


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a policy at one budget and seed, parsed once when the config is
    expanded (core.policy_space). ``merge``/``merge_params`` are the technique as the config names it;
    ``policy`` is the parsed core object the merge actor runs."""

    trial_id: str
    name: str  # the preset's name, or init/deploy for a grid policy
    policy: Policy
    merge: str
    merge_params: dict
    budget_steps: int  # training steps per expert (the multitask reference: the stream's total)
    seed: int
    multitask: bool = False  # the multitask reference: one expert on the union of all tasks

    @property
    def init(self) -> str:
        return self.policy.init

    @property
    def deploy(self) -> str:
        return self.policy.deploy

    def columns(self) -> dict:
        """The policy columns of the results schema (core.results.POLICY_COLUMNS)."""
        return {
            "trial_id": self.trial_id,
            "policy": self.name,
            "init": self.init,
            "deploy": self.deploy,
            "merge": self.merge,
            "merge_params": json.dumps(self.merge_params, sort_keys=True),
            "ema_weight": str(self.policy.ema_weight),
            "ema_with_base": self.policy.ema_with_base,
            "all_with_base": self.policy.all_with_base,
            "recency": self.policy.recency,
            "budget_steps": self.budget_steps,
            "seed": self.seed,
        }

    def to_json(self) -> dict:
        """``trials.json``'s entry: the policy columns plus ``multitask``; what a report reads."""
        return {**self.columns(), "multitask": self.multitask}


@dataclass(frozen=True)
class ExpertInfo:
    """What obtaining expert t cost this trial (``train_*``: training, or nothing when it came from the
    sweep's expert cache) and what training the expert took, whoever paid for it (``expert_train_*``).
    Kept beside the pool (``info_<t>.json``) so a restarted merge actor still knows it."""

    train_steps: int = 0
    train_seconds: float = 0.0
    train_gflops: float = 0.0
    loss: float | None = None
    expert_cache_hit: bool = False
    expert_train_steps: int = 0
    expert_train_seconds: float = 0.0
    expert_train_gflops: float = 0.0

    @classmethod
    def trained(cls, steps: int, seconds: float, gflops: float, loss: float | None) -> ExpertInfo:
        """Trained for this trial: it paid what the expert took."""
        return cls(steps, seconds, gflops, loss, False, steps, seconds, gflops)

    @classmethod
    def cache_hit(cls, own: ExpertInfo | None = None) -> ExpertInfo:
        """From the cache: nothing paid; ``own``, the info of the training that made it (None: unknown, an
        expert cached before its info was kept)."""
        if own is None:
            return cls(expert_cache_hit=True)
        return cls(
            loss=own.loss,
            expert_cache_hit=True,
            expert_train_steps=own.expert_train_steps or own.train_steps,
            expert_train_seconds=own.expert_train_seconds or own.train_seconds,
            expert_train_gflops=own.expert_train_gflops or own.train_gflops,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ExpertInfo:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class TimestepCosts:
    """The cost columns of one timestep's row (core.results.TIMESTEP_COLUMNS)."""

    train_steps: int = 0
    train_gflops: float = 0.0
    train_seconds: float = 0.0
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    pool_bytes: int = 0
    expert_cache_hit: bool = False
    # what training the deployed timestep's expert took, whoever paid for it (a cache hit's train_* are 0)
    expert_train_steps: int = 0
    expert_train_gflops: float = 0.0
    expert_train_seconds: float = 0.0

    @classmethod
    def of(cls, expert: ExpertInfo, merge_seconds: float, pool_bytes: int) -> TimestepCosts:
        return cls(
            train_steps=expert.train_steps,
            train_gflops=expert.train_gflops,
            train_seconds=expert.train_seconds,
            merge_seconds=merge_seconds,
            pool_bytes=pool_bytes,
            expert_cache_hit=expert.expert_cache_hit,
            expert_train_steps=expert.expert_train_steps,
            expert_train_gflops=expert.expert_train_gflops,
            expert_train_seconds=expert.expert_train_seconds,
        )

    def to_row(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunContext:
    """What every trial of a sweep shares: where results go, how to rebuild the stream, the expert
    cache's actor name and the resources of its Train workers (orchestration.sweep builds it)."""

    storage: Any  # orchestration.storage.Storage (core does not import the orchestration layer)
    settings: ExperimentSettings
    driver_cpu: float  # what a trial's driver (and its evaluation tasks) holds: orchestration.sweep.DRIVER_CPU
    expert_cache: str | None = None  # the name of the sweep's ExpertCache actor
    workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict = field(default_factory=lambda: {"CPU": 1.0})
    eval_gpu: float = 0.0  # > 0: evaluations run as tasks holding this slice of a GPU
    loopback: bool = False  # Train's process group listens on 127.0.0.1 only
    predictions: bool = False  # each trial writes its per-image predictions of the final timestep
