"""The registry of merging techniques and what they share (docs/method.md §5): the ``Technique`` base class,
parameter checks, tower helpers, seeding, and building a technique from config.

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.errors import CheckpointError, ConfigError, did_you_mean
from time_ray.core.merging.executor import MergeExecutor, Span
from time_ray.core.merging.notation import (  # noqa: F401  (re-exported: the package's notation)
    BLOCK,
    IMAGE_PREFIX,
    LINES,
    PARAM_ALIASES,
    check_weights,
    derived_seed,
    seeded_generator,
    tower_of,
    uniform,
)

TECHNIQUES: dict[str, type["Technique"]] = {}

DISJOINT = ("mean", "sum", "max")


def register(cls):
    TECHNIQUES[cls.name] = cls
    return cls


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
    summary: ClassVar[str] = ""  # one line, for `time-ray list techniques`
    needs_base: ClassVar[bool] = False  # uses theta_0 as the anchor of task vectors
    min_models: ClassVar[int] = 1
    max_models: ClassVar[int | None] = None  # e.g. 2 for SLERP and Model Stock
    elementwise: ClassVar[bool] = True  # each merged entry depends only on that entry of the inputs

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in RULES and not RULES[f.name][0](value):
                raise ConfigError(f"merge.{config_name(f.name)}: {RULES[f.name][1]}, got {value!r}.")

    def merge(
        self,
        experts: Sequence[Checkpoint],
        weights: Sequence[float] | None = None,
        base: Checkpoint | None = None,
        executor: MergeExecutor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The merged model. ``executor`` runs it (threshold cache, scratch buffers); by default a new one
        (an empty cache)."""
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        if len(experts) < self.min_models:
            raise ValueError(f"{self.name} merges exactly {self.min_models} models, got {len(experts)}")
        if self.max_models is not None and len(experts) > self.max_models:
            raise ValueError(f"{self.name} merges at most {self.max_models} models, got {len(experts)}")
        if self.uses_base() and base is None:
            raise ValueError(f"{self.name} needs the base model theta_0 as anchor")
        weights = check_weights(weights, len(experts))
        check_compatible(experts, base if self.uses_base() else None)
        return (MergeExecutor() if executor is None else executor).run(self, experts, weights, base)

    def uses_base(self) -> bool:
        return self.needs_base

    def chunk_size(self, n_models: int) -> int:
        """Entries of a flattened tensor merged at a time (element-wise techniques)."""
        return CHUNK

    def prepare(self, experts: Sequence[Checkpoint], base: Checkpoint | None, executor: MergeExecutor):
        """What a technique must know about whole towers before merging tensor by tensor (passes over the
        inputs, run by ``executor``)."""
        return None

    def warm(
        self, expert: Checkpoint, base: Checkpoint, executor: MergeExecutor, positions: Sequence[int] = (0,)
    ) -> int:
        """Computes now, into ``executor``'s cache, what later merges need to know about ``expert`` alone (as
        the ``positions``-th model of a merge): nothing for most techniques; a sparse technique's thresholds.
        Returns how many selections ran."""
        return 0

    def merge_key(
        self,
        key: str,
        thetas: Sequence[torch.Tensor],
        weights: list[float],
        theta_0: torch.Tensor | None,
        prep,
        span: Span,
    ) -> torch.Tensor:
        """Merges the entries ``span`` of the flattened tensor ``key``: ``thetas`` are those entries of each
        expert (fp32, 1-D, each converted when accessed), ``theta_0`` those of the base. Element-wise
        techniques get the tensor chunk by chunk, in order; the others (``elementwise`` False) whole."""
        return self.merge_tensor(thetas, weights, theta_0)

    def merge_tensor(
        self, thetas: Sequence[torch.Tensor], weights: list[float], theta_0: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, merged: dict[str, torch.Tensor], prep) -> None:
        """Fixes what could be decided only after the last tensor (TIES: sign of zero-sum entries)."""

    def params(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ---------------------------------------------------------------- merging tensor by tensor, chunk by chunk

CHUNK = 1 << 20  # entries of a flattened tensor merged at a time: the working set is O(experts x CHUNK)


def _label(checkpoint: Checkpoint, what: str) -> str:
    path = getattr(checkpoint, "path", None)
    return f"{what} ({path})" if path is not None else what


def tensor_meta(checkpoint: Checkpoint, key: str) -> tuple[torch.dtype, tuple[int, ...]]:
    """dtype and shape of one tensor, from a file's header when the checkpoint has one (nothing read)."""
    meta = getattr(checkpoint, "meta", None)
    if meta is not None:
        return meta(key)
    tensor = checkpoint[key]
    return tensor.dtype, tuple(tensor.shape)


def check_compatible(experts: Sequence[Checkpoint], base: Checkpoint | None = None) -> None:
    """Every expert (and theta_0) holds the same tensors with the same shape and dtype as the first
    expert; else CheckpointError naming the tensor and the checkpoint. Merging mismatched tensors would
    read past a buffer's end, broadcast, or truncate."""
    models = [(_label(e, f"model {i + 1}"), e) for i, e in enumerate(experts)]
    if base is not None:
        models.insert(0, (_label(base, "theta_0"), base))
    (ref_name, ref) = models[0]
    names = list(ref)
    want = {key: tensor_meta(ref, key) for key in names}
    for name, model in models[1:]:
        if len(model) != len(names) or any(key not in want for key in model):
            extra = sorted(set(model) - set(names))
            missing = sorted(set(names) - set(model))
            what = f"has tensor {extra[0]!r}, which" if extra else f"lacks tensor {missing[0]!r}, which"
            raise CheckpointError(
                f"{name} {what} {ref_name} {'lacks' if extra else 'has'}: they are not the same architecture."
            )
        for key in names:
            dtype, shape = tensor_meta(model, key)
            if (dtype, shape) != want[key]:
                raise CheckpointError(
                    f"tensor {key!r}: {name} has shape {list(shape)} and dtype {str(dtype).removeprefix('torch.')}, "
                    f"{ref_name} has shape {list(want[key][1])} and dtype {str(want[key][0]).removeprefix('torch.')}; "
                    "only checkpoints of the same architecture and precision can be merged."
                )


# ---------------------------------------------------------------- building techniques from config


def config_name(attr: str) -> str:
    inverse = {v: k for k, v in PARAM_ALIASES.items()}
    return inverse.get(attr, attr)


def make_technique(name: str, field: str = "merge.technique", **params) -> Technique:
    """Builds a technique by its registered name, with clear errors for unknown names or params."""
    if name not in TECHNIQUES:
        hint = did_you_mean(name, TECHNIQUES)
        raise ConfigError(
            f"{field}: unknown merging technique {name!r}.{hint} Allowed: {', '.join(sorted(TECHNIQUES))}."
        )
    cls = TECHNIQUES[name]
    allowed = {f.name for f in fields(cls)}
    prefix = field.rsplit(".", 1)[0]
    kwargs = {}
    for key, value in params.items():
        attr = PARAM_ALIASES.get(key, key)
        if attr not in allowed:
            shown = sorted(
                {k for k, v in PARAM_ALIASES.items() if v in allowed} | (allowed - set(PARAM_ALIASES.values()))
            )
            raise ConfigError(
                f"{prefix}.{key}: {name} has no parameter {key!r}. Allowed: {', '.join(shown) or 'none'}."
            )
        kwargs[attr] = value
    try:
        return cls(**kwargs)
    except ConfigError as error:  # parameter checks name the field as merge.X; say where it is in the config
        message = str(error)
        if prefix != "merge" and message.startswith("merge."):
            message = prefix + message[len("merge") :]
        raise ConfigError(message) from None


def as_technique(spec, where: str) -> Technique:
    """A technique from a technique, its registered name, or {technique: NAME, param: value, ...}."""
    if isinstance(spec, Technique):
        return spec
    if isinstance(spec, str):
        spec = {"technique": spec}
    if not isinstance(spec, Mapping) or "technique" not in spec:
        raise ConfigError(f"{where}: expected a technique name or {{technique: NAME, ...}}, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "technique"}
    return make_technique(spec["technique"], f"{where}.technique", **params)


def technique_params(technique: Technique) -> dict:
    """Parameters under their config names (``lambda``, not ``lam``)."""
    return {config_name(k): v for k, v in technique.params().items()}
