"""The registry of merging techniques and what they share (TIME.md §5): the ``Technique`` base class,
parameter checks, tower helpers, seeding, and building a technique from config.

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.errors import ConfigError

TECHNIQUES: dict[str, type["Technique"]] = {}

IMAGE_PREFIX = "visual."
BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
DISJOINT = ("mean", "sum", "max")
LINES = {"linear": lambda x: x, "quadratic": lambda x: x * x, "sqrt": math.sqrt}


def register(cls):
    TECHNIQUES[cls.name] = cls
    return cls


def tower_of(key: str) -> str:
    return "image" if key.startswith(IMAGE_PREFIX) else "text"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Parameter checks by field name: (test, rule stated in the error message).
RULES = {
    "lam": (_is_number, "must be a number"),
    "alpha": (_is_number, "must be a number"),
    "beta": (_is_number, "must be a number"),
    "prune": (lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "top": (lambda v: _is_number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "t": (lambda v: _is_number(v) and 0 <= v <= 1, "must be in [0, 1]"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "must be an integer"),
    "disjoint": (lambda v: v in DISJOINT, f"must be one of {', '.join(DISJOINT)}"),
    "lines": (lambda v: v is None or v in tuple(LINES), f"must be null (off) or one of {', '.join(LINES)}"),
}


@dataclass(frozen=True)
class Technique:
    """Merges experts with weights; ``merge_tensor`` states the formula for one tensor."""

    name: ClassVar[str]
    needs_base: ClassVar[bool] = False  # uses theta_0 as the anchor of task vectors
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None  # e.g. 2 for SLERP and Model Stock

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in RULES and not RULES[f.name][0](value):
                raise ConfigError(f"merge.{config_name(f.name)}: {RULES[f.name][1]}, got {value!r}.")

    def merge(self, experts: Sequence[Checkpoint], weights: Sequence[float] | None = None,
              base: Checkpoint | None = None) -> dict[str, torch.Tensor]:
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        if len(experts) < self.min_models:
            raise ValueError(f"{self.name} merges exactly {self.min_models} models, got {len(experts)}")
        if self.max_models is not None and len(experts) > self.max_models:
            raise ValueError(f"{self.name} merges at most {self.max_models} models, got {len(experts)}")
        if self.uses_base() and base is None:
            raise ValueError(f"{self.name} needs the base model theta_0 as anchor")
        weights = uniform(len(experts)) if weights is None else [float(w) for w in weights]
        plan = self.plan(experts, base)
        merged = {}
        for key in experts[0]:
            tensors = [e[key] for e in experts]
            if not tensors[0].is_floating_point():  # integer buffers are not merged
                merged[key] = tensors[0].clone()
                continue
            theta_0 = base[key].float() if base is not None else None
            dtype = tensors[0].dtype
            merged[key] = self.merge_key(key, [t.float() for t in tensors], weights, theta_0, plan).to(dtype)
        self.finish(merged, plan)
        return merged

    def uses_base(self) -> bool:
        return self.needs_base

    def plan(self, experts: Sequence[Checkpoint], base: Checkpoint | None):
        """What a technique must know about whole towers before merging tensor by tensor (passes over the inputs)."""
        return None

    def merge_key(self, key: str, thetas: list[torch.Tensor], weights: list[float],
                  theta_0: torch.Tensor | None, plan) -> torch.Tensor:
        return self.merge_tensor(thetas, weights, theta_0)

    def merge_tensor(self, thetas: list[torch.Tensor], weights: list[float],
                     theta_0: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, merged: dict[str, torch.Tensor], plan) -> None:
        """Fixes what could be decided only after the last tensor (TIES: sign of zero-sum entries)."""

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def uniform(n: int) -> list[float]:
    return [1.0 / n] * n


def derived_seed(*parts) -> int:
    """A reproducible 63-bit seed from the technique's seed and where it is used (expert, tensor)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def seeded_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(*parts))


# ---------------------------------------------------------------- building techniques from config

PARAM_ALIASES = {"lambda": "lam"}


def config_name(attr: str) -> str:
    inverse = {v: k for k, v in PARAM_ALIASES.items()}
    return inverse.get(attr, attr)


def make_technique(name: str, field: str = "merge.technique", **params) -> Technique:
    """Builds a technique by its registered name, with clear errors for unknown names or params."""
    if name not in TECHNIQUES:
        close = difflib.get_close_matches(str(name), TECHNIQUES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{field}: unknown merging technique {name!r}.{hint} Allowed: {', '.join(sorted(TECHNIQUES))}.")
    cls = TECHNIQUES[name]
    allowed = {f.name for f in fields(cls)}
    prefix = field.rsplit(".", 1)[0]
    kwargs = {}
    for key, value in params.items():
        attr = PARAM_ALIASES.get(key, key)
        if attr not in allowed:
            shown = sorted({k for k, v in PARAM_ALIASES.items() if v in allowed} | (allowed - set(PARAM_ALIASES.values())))
            raise ConfigError(f"{prefix}.{key}: {name} has no parameter {key!r}. "
                              f"Allowed: {', '.join(shown) or 'none'}.")
        kwargs[attr] = value
    try:
        return cls(**kwargs)
    except ConfigError as error:  # parameter checks name the field as merge.X; say where it is in the config
        message = str(error)
        if prefix != "merge" and message.startswith("merge."):
            message = prefix + message[len("merge"):]
        raise ConfigError(message) from None


def technique_params(technique: Technique) -> dict:
    """Parameters under their config names (``lambda``, not ``lam``)."""
    return {config_name(k): v for k, v in technique.params().items()}
