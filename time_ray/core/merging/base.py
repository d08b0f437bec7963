"""The registry of merging techniques and what they share (docs/method.md §5): the ``Technique`` base class,
parameter checks, tower helpers, seeding, and building a technique from config.

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.errors import CheckpointError, ConfigError, did_you_mean

if TYPE_CHECKING:
    from time_ray.core.merging.executor import MergeExecutor

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
        """The merged model. ``executor`` runs it (backend, threshold cache, scratch buffers); by default a
        new one (``executor.default_backend()``, an empty cache)."""
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
        if executor is None:
            from time_ray.core.merging.executor import MergeExecutor

            executor = MergeExecutor()
        return executor.run(self, experts, weights, base)

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
        span: "Span",
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


def chunk_spans(numel: int, size: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of the consecutive chunks of at most ``size`` (default ``CHUNK``) entries of a flattened tensor."""
    size = CHUNK if size is None else size
    return [(start, min(start + size, numel)) for start in range(0, numel, size)]


@dataclass
class Span:
    """The entries start:stop of the flattened tensor being merged; ``memo`` is shared by all chunks of
    the tensor (e.g. a random generator drawing the chunks in order); ``executor`` runs the merge (its
    backend and scratch buffers)."""

    start: int
    stop: int
    memo: dict
    executor: MergeExecutor | None = None

    @property
    def size(self) -> int:
        return self.stop - self.start


class Chunks(Sequence):
    """The entries start:stop of each expert's flattened tensor, as fp32, converted one at a time when
    accessed (never all experts' fp32 copies at once unless a technique keeps them)."""

    def __init__(self, flats: list[torch.Tensor], start: int, stop: int):
        self.flats, self.start, self.stop = flats, start, stop

    def __len__(self) -> int:
        return len(self.flats)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(len(self))[k]]
        return self.flats[k][self.start : self.stop].float()

    def __iter__(self):
        return (flat[self.start : self.stop].float() for flat in self.flats)


class CascadeSum:
    """Sums ``n`` tensors fed one at a time, adding them in the order ``torch.stack(xs).sum(0)`` does
    along dim 0 on CPU (sequential runs of 2^p, p = max(4, ceil(log2 n) // 4), cascaded over 4 levels;
    plain sequential for n <= 16), so a running sum matches the stacked one bit for bit without stacking.
    (torch adds the few trailing columns its vectorized loop leaves over in another order: this order, not
    torch's, is the definition, the same bits for any chunking.) A level holds its own copy once something
    is added to it (an empty level adds nothing: x + 0 = x)."""

    LEVELS = 4

    def __init__(self, n: int, like: torch.Tensor):
        self.power = max(4, math.ceil(math.log2(n)) // self.LEVELS) if n > 1 else 4
        self.like = like
        self.acc: list[torch.Tensor | None] = [None] * self.LEVELS
        self.count = 0

    def _into(self, level: int, x: torch.Tensor) -> None:
        acc = self.acc[level]
        if acc is None:
            self.acc[level] = x.clone()
        else:
            acc += x

    def add(self, x: torch.Tensor) -> None:
        self._into(0, x)
        self.count += 1
        step = 1 << self.power
        if self.count % step:
            return
        for j in range(1, self.LEVELS):  # a run of 2^p is complete: carry it up the levels
            carried = self.acc[j - 1]
            assert carried is not None  # a complete run of 2^p left its sum at level j - 1
            self._into(j, carried)
            self.acc[j - 1] = None
            if self.count & ((step - 1) << (j * self.power)):
                break

    def result(self) -> torch.Tensor:
        levels = [level for level in self.acc if level is not None]
        if not levels:
            return torch.zeros_like(self.like)
        total = levels[0] if len(levels) == 1 else levels[0].clone()
        for level in levels[1:]:
            total += level
        return total


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """The weights w_k as floats (uniform when None): one finite number per expert."""
    if weights is None:
        return uniform(n)
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} models")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise ValueError(f"weights must be finite numbers, got {bad[0]} in {weights}")
    return weights


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


def technique_params(technique: Technique) -> dict:
    """Parameters under their config names (``lambda``, not ``lam``)."""
    return {config_name(k): v for k, v in technique.params().items()}
