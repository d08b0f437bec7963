"""Merging techniques (TIME.md §5). Each technique is a small registered unit that merges
checkpoints tensor by tensor, in fp32, over every parameter of both towers (logit_scale included).

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.errors import ConfigError

TECHNIQUES: dict[str, type["Technique"]] = {}


def register(cls):
    TECHNIQUES[cls.name] = cls
    return cls


@dataclass(frozen=True)
class Technique:
    """Merges experts with weights; ``merge_tensor`` states the formula for one tensor."""

    name: ClassVar[str]
    needs_base: ClassVar[bool] = False  # uses theta_0 as the anchor of task vectors
    max_models: ClassVar[int | None] = None  # e.g. 2 for SLERP and Model Stock

    def merge(self, experts: Sequence[Checkpoint], weights: Sequence[float] | None = None,
              base: Checkpoint | None = None) -> dict[str, torch.Tensor]:
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        if self.max_models is not None and len(experts) > self.max_models:
            raise ValueError(f"{self.name} merges at most {self.max_models} models, got {len(experts)}")
        if self.needs_base and base is None:
            raise ValueError(f"{self.name} needs the base model theta_0 as anchor")
        weights = uniform(len(experts)) if weights is None else [float(w) for w in weights]
        merged = {}
        for key in experts[0]:
            tensors = [e[key] for e in experts]
            if not tensors[0].is_floating_point():  # integer buffers are not merged
                merged[key] = tensors[0].clone()
                continue
            theta_0 = base[key].float() if base is not None else None
            dtype = tensors[0].dtype
            merged[key] = self.merge_tensor([t.float() for t in tensors], weights, theta_0).to(dtype)
        return merged

    def merge_tensor(self, thetas: list[torch.Tensor], weights: list[float],
                     theta_0: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def uniform(n: int) -> list[float]:
    return [1.0 / n] * n


@register
@dataclass(frozen=True)
class WeightAveraging(Technique):
    """theta = sum_k w_k theta_k, with sum_k w_k = 1 (uniform by default)."""

    name: ClassVar[str] = "average"

    def merge_tensor(self, thetas, weights, theta_0):
        merged = torch.zeros_like(thetas[0])
        for w_k, theta_k in zip(weights, thetas):
            merged.add_(theta_k, alpha=w_k)
        return merged


@register
@dataclass(frozen=True)
class TaskArithmetic(Technique):
    """theta = theta_0 + lambda * sum_k tau_k (a sum, not a mean; strategy weights are not used)."""

    name: ClassVar[str] = "task_arithmetic"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0

    def merge_tensor(self, thetas, weights, theta_0):
        tau_sum = torch.zeros_like(theta_0)
        for theta_k in thetas:
            tau_sum.add_(theta_k - theta_0)
        return theta_0 + self.lam * tau_sum


PARAM_ALIASES = {"lambda": "lam"}


def make_technique(name: str, field: str = "merge.technique", **params) -> Technique:
    """Builds a technique by its registered name, with clear errors for unknown names or params."""
    if name not in TECHNIQUES:
        close = difflib.get_close_matches(str(name), TECHNIQUES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{field}: unknown merging technique {name!r}.{hint} Allowed: {', '.join(sorted(TECHNIQUES))}.")
    cls = TECHNIQUES[name]
    allowed = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in params.items():
        attr = PARAM_ALIASES.get(key, key)
        if attr not in allowed:
            shown = sorted({k for k, v in PARAM_ALIASES.items() if v in allowed} | (allowed - set(PARAM_ALIASES.values())))
            raise ConfigError(f"{field.rsplit('.', 1)[0]}.{key}: {name} has no parameter {key!r}. "
                              f"Allowed: {', '.join(shown) or 'none'}.")
        kwargs[attr] = value
    return cls(**kwargs)


def technique_params(technique: Technique) -> dict:
    """Parameters under their config names (``lambda``, not ``lam``)."""
    inverse = {v: k for k, v in PARAM_ALIASES.items()}
    return {inverse.get(k, k): v for k, v in technique.params().items()}
