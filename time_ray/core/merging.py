"""Merging techniques (TIME.md §5). Each technique is a small registered unit that merges
checkpoints tensor by tensor, in fp32, over every parameter of both towers (logit_scale included).

Notation: theta_0 is the base model (the anchor), theta_k the experts, tau_k = theta_k - theta_0
their task vectors, w_k the weights a strategy asks for (uniform by default), lambda a scaling factor.
Towers: keys starting with ``visual.`` form the image tower, all other keys the text tower.

TIES, DARE-TIES and Breadcrumbs-TIES share one mechanism (``SparseConsensus``, the idea of
"generalized task arithmetic"): a sparsification of each tau_k over its whole tower, then the TIES
consensus (sign election + disjoint merge). The variants differ only in the sparsification.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
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


def _seed(*parts) -> int:
    """A reproducible 63-bit seed from the technique's seed and where it is used (expert, tensor)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big") >> 1


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


# ---------------------------------------------------------------- LiNeS

def lines_depths(keys) -> dict[str, int]:
    """L per tower: the number of distinct l in keys containing ``transformer.resblocks.l.``."""
    blocks: dict[str, set] = {"image": set(), "text": set()}
    for key in keys:
        match = BLOCK.search(key)
        if match:
            blocks[tower_of(key)].add(int(match[1]))
    return {tower: len(ls) for tower, ls in blocks.items()}


class LinesOption:
    """LiNeS (Wang et al. 2025) as an option of a task-vector technique: with ``lines`` set, the merged
    task vector of a tensor in ``transformer.resblocks.l.`` (l of L blocks of its tower) is scaled by
    alpha + beta * f(l / (L - 1)), f = identity (linear), square (quadratic) or sqrt; every other tensor
    by alpha. This replaces lambda. ``alpha`` and ``beta`` are unused while ``lines`` is null."""

    def uses_base(self) -> bool:
        return self.needs_base or self.lines is not None

    def scale(self, key: str, depths: dict[str, int] | None) -> float:
        if self.lines is None:
            return getattr(self, "lam", 1.0)
        match = BLOCK.search(key)
        if match is None:
            return self.alpha
        depth = depths[tower_of(key)]
        return self.alpha + self.beta * LINES[self.lines](int(match[1]) / max(depth - 1, 1))

    def plan(self, experts, base):
        return lines_depths(experts[0]) if self.lines is not None else None

    def params(self) -> dict:
        params = super().params()
        if self.lines is None:  # inactive: keeps params (and trial ids) of plain techniques unchanged
            for name in ("lines", "alpha", "beta"):
                params.pop(name)
        return params


# ---------------------------------------------------------------- averaging and task arithmetic

@register
@dataclass(frozen=True)
class WeightAveraging(LinesOption, Technique):
    """theta = sum_k w_k theta_k, with sum_k w_k = 1 (uniform by default).
    With LiNeS: theta = theta_0 + s(layer) * (sum_k w_k theta_k - theta_0) (needs the base)."""

    name: ClassVar[str] = "average"
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    def merge_key(self, key, thetas, weights, theta_0, plan):
        average = self.merge_tensor(thetas, weights, theta_0)
        if self.lines is None:
            return average
        return theta_0 + self.scale(key, plan) * (average - theta_0)

    def merge_tensor(self, thetas, weights, theta_0):
        merged = torch.zeros_like(thetas[0])
        for w_k, theta_k in zip(weights, thetas):
            merged.add_(theta_k, alpha=w_k)
        return merged


@register
@dataclass(frozen=True)
class TaskArithmetic(LinesOption, Technique):
    """theta = theta_0 + lambda * sum_k tau_k (a sum, not a mean; strategy weights are not used).
    With LiNeS, s(layer) replaces lambda."""

    name: ClassVar[str] = "task_arithmetic"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    def merge_key(self, key, thetas, weights, theta_0, plan):
        tau_sum = torch.zeros_like(theta_0)
        for theta_k in thetas:
            tau_sum.add_(theta_k - theta_0)
        return theta_0 + self.scale(key, plan) * tau_sum


# ---------------------------------------------------------------- SLERP, MagMax, Random, Model Stock

@register
@dataclass(frozen=True)
class Slerp(Technique):
    """Spherical interpolation of two models a, b (the weights themselves), per tensor: with the unit
    directions of a and b, if |cos| > 0.9995 then (1-t) a + t b, else
    sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b with w = arccos(cos). Strategy weights are not used.
    A zero tensor has no direction; it is interpolated linearly."""

    name: ClassVar[str] = "slerp"
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2
    t: float = 0.5

    def merge_tensor(self, thetas, weights, theta_0):
        a, b = thetas
        t = self.t
        norm_a, norm_b = a.norm(), b.norm()
        if norm_a == 0 or norm_b == 0:
            return (1 - t) * a + t * b
        cos = torch.dot(a.flatten() / norm_a, b.flatten() / norm_b).clamp(-1.0, 1.0)
        if cos.abs() > 0.9995:
            return (1 - t) * a + t * b
        w = torch.arccos(cos)
        return torch.sin((1 - t) * w) / torch.sin(w) * a + torch.sin(t * w) / torch.sin(w) * b


@register
@dataclass(frozen=True)
class MagMax(Technique):
    """Per entry the tau_k of largest magnitude (first expert on ties): theta = theta_0 + lambda * tau_max."""

    name: ClassVar[str] = "magmax"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0

    def merge_tensor(self, thetas, weights, theta_0):
        tau_max = thetas[0] - theta_0
        for theta_k in thetas[1:]:
            tau_k = theta_k - theta_0
            tau_max = torch.where(tau_k.abs() > tau_max.abs(), tau_k, tau_max)
        return theta_0 + self.lam * tau_max


@register
@dataclass(frozen=True)
class RandomPick(Technique):
    """Per entry the tau of a uniformly drawn expert: theta = theta_0 + lambda * tau_pick. The draw of a
    tensor is seeded from ``seed`` and the tensor's name, so the same seed gives the same merge."""

    name: ClassVar[str] = "random"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0
    seed: int = 0

    def merge_key(self, key, thetas, weights, theta_0, plan):
        pick = torch.randint(len(thetas), theta_0.shape, generator=_generator(self.seed, key))
        taus = torch.stack([theta_k - theta_0 for theta_k in thetas])
        return theta_0 + self.lam * taus.gather(0, pick.unsqueeze(0)).squeeze(0)


@register
@dataclass(frozen=True)
class ModelStock(Technique):
    """Two models; per tensor cos = <tau_1, tau_2> / (|tau_1| |tau_2| + 1e-8), r = 2 cos / (cos + 1 + 1e-8),
    theta = r (theta_1 + theta_2) / 2 + (1 - r) theta_0."""

    name: ClassVar[str] = "model_stock"
    needs_base: ClassVar[bool] = True
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2

    def merge_tensor(self, thetas, weights, theta_0):
        theta_1, theta_2 = thetas
        tau_1, tau_2 = theta_1 - theta_0, theta_2 - theta_0
        cos = (tau_1 * tau_2).sum() / (tau_1.norm() * tau_2.norm() + 1e-8)
        r = 2 * cos / (cos + 1 + 1e-8)
        return r * (theta_1 + theta_2) / 2 + (1 - r) * theta_0


# ---------------------------------------------------------------- exact k-th value over a tower

class RadixSelect:
    """Exact k-th smallest values of a stream of non-negative int32 keys, in two passes, holding only
    histograms of 2^16 bins (never the stream): pass 1 counts the keys by their high 16 bits, which
    locates the bin of each wanted rank; pass 2 counts the low 16 bits of the keys in that bin, which
    gives the exact key. Non-negative float32 values are ordered like their IEEE 754 bit patterns, so
    ``x.abs().view(torch.int32)`` are keys ordered like |x|; duplicates need no special care."""

    BINS = 1 << 16

    def __init__(self):
        self.high = torch.zeros(self.BINS, dtype=torch.int64)
        self.ranks: list[int] = []
        self.low: dict[int, torch.Tensor] = {}

    @property
    def total(self) -> int:
        return int(self.high.sum())

    def count_high(self, keys: torch.Tensor) -> None:
        self.high += torch.bincount((keys.flatten() >> 16).long(), minlength=self.BINS)

    def locate(self, ranks: Sequence[int]) -> None:
        """Ranks are 1-based, 1 <= rank <= total."""
        cumulative = self.high.cumsum(0)
        self.ranks = list(ranks)
        self.bins = [int(torch.searchsorted(cumulative, rank)) for rank in self.ranks]  # first bin reaching rank
        self.low = {b: torch.zeros(self.BINS, dtype=torch.int64) for b in self.bins}

    def count_low(self, keys: torch.Tensor) -> None:
        keys = keys.flatten()
        high = keys >> 16
        for b, counts in self.low.items():
            counts += torch.bincount((keys[high == b] & 0xFFFF).long(), minlength=self.BINS)

    def results(self) -> list[tuple[int, int]]:
        """Per rank: (the k-th smallest key, how many keys are smaller)."""
        out = []
        for rank, b in zip(self.ranks, self.bins):
            below_bin = int(self.high[:b].sum())
            cumulative = self.low[b].cumsum(0)
            low = int(torch.searchsorted(cumulative, rank - below_bin))
            out.append(((b << 16) | low, below_bin + int(cumulative[low] - self.low[b][low])))
        return out


def _magnitude_keys(x: torch.Tensor) -> torch.Tensor:
    return x.float().abs().contiguous().view(torch.int32)


def kth_smallest(tensors: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th smallest (1-based) of all entries of the non-negative ``tensors`` taken together, exactly
    as ``torch.kthvalue(torch.cat([t.flatten() for t in tensors]), k)`` but without concatenating
    (``RadixSelect``: two histogram passes over the tensors)."""
    if any(bool((t < 0).any()) for t in tensors):
        raise ValueError("kth_smallest takes non-negative values (magnitudes)")
    select = RadixSelect()
    for t in tensors:
        select.count_high(_magnitude_keys(t))
    if not 1 <= k <= select.total:
        raise ValueError(f"k must be in [1, {select.total}], got {k}")
    select.locate([k])
    for t in tensors:
        select.count_low(_magnitude_keys(t))
    key, _ = select.results()[0]
    return torch.tensor(key, dtype=torch.int32).view(torch.float32)


def fraction_count(n: int, q: float) -> int:
    """floor(n * q), with q taken as the decimal it is written as (floor(100 * 0.29) = 29, not 28)."""
    return math.floor(n * Fraction(str(q)))


# ---------------------------------------------------------------- TIES and its sparsification variants

@dataclass
class _Bounds:
    """Keep the entries of one expert's tower whose score s has lo <= s <= hi (None: no bound)."""

    lo: int | None = None
    hi: int | None = None
    ties_to_drop: int = 0  # exact-count variants: how many entries with s == lo are still to drop


@dataclass
class _ConsensusPlan:
    bounds: dict[tuple[int, str], _Bounds]
    depths: dict[str, int] | None
    sign_sum: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    undecided: list = field(default_factory=list)  # (key, flat index, value if +, value if -)


def _task_vectors(experts, base) -> Iterator[tuple[str, list[torch.Tensor]]]:
    for key in experts[0]:
        thetas = [e[key] for e in experts]
        if thetas[0].is_floating_point():
            theta_0 = base[key].float()
            yield key, [theta_k.float() - theta_0 for theta_k in thetas]


@dataclass(frozen=True)
class SparseConsensus(LinesOption, Technique):
    """Generalized task arithmetic: sparsify each tau_k over its whole tower, then the TIES consensus.

    1) sparsify: each entry of tau_k gets a score (``scores``); over the expert's tower of N entries,
       entries scored below the ``ranks`` (lo, hi) k-th smallest scores are dropped, then the kept ones are
       multiplied by ``rescale``. Thresholds are global per tower and per expert (``RadixSelect``).
    2) elect: gamma = sign(sum_k tau_k'); where the sum is 0, gamma = sign of the sum of gamma over the tower.
    3) disjoint merge of the tau_k' of gamma's sign: ``mean`` over them, ``sum``, or ``max``: gamma * max |tau_k'|.
    theta = theta_0 + lambda * tau_merged (LiNeS: s(layer) instead of lambda). Strategy weights are not used.
    """

    needs_base: ClassVar[bool] = True
    exact_count: ClassVar[bool] = False  # drop exactly the lo smallest scores (ties at the threshold by position)
    lam: float = 1.0
    prune: float = 0.2
    disjoint: str = "mean"
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    # --- the sparsification: what differs between TIES, DARE and Breadcrumbs

    def scores(self, tau: torch.Tensor, k: int, key: str) -> torch.Tensor:
        """Non-negative int32 scores of the entries of tau_k; here |tau| (as its float32 bit pattern)."""
        return _magnitude_keys(tau)

    def ranks(self, n: int) -> tuple[int, int]:
        """1-based ranks (lo, hi) among the n scores of a tower: keep lo-th smallest <= s <= hi-th smallest."""
        return fraction_count(n, self.prune), n

    @property
    def rescale(self) -> float:
        return 1.0

    def drops_entries(self) -> bool:
        return self.prune > 0

    # --- the shared mechanism

    def plan(self, experts, base):
        depths = lines_depths(experts[0]) if self.lines is not None else None
        if not self.drops_entries():  # nothing to drop: no pass over the inputs
            return _ConsensusPlan(defaultdict(_Bounds), depths)
        selects: dict[tuple[int, str], RadixSelect] = {}
        for key, taus in _task_vectors(experts, base):  # pass 1: high-bit histograms of every expert and tower
            for k, tau in enumerate(taus):
                selects.setdefault((k, tower_of(key)), RadixSelect()).count_high(self.scores(tau, k, key))
        wanted = {}
        for (k, tower), select in selects.items():
            n = select.total
            lo, hi = self.ranks(n)
            wanted[k, tower] = (lo if lo >= 1 else None, hi if 1 <= hi < n else None, hi < 1)
            select.locate([r for r in wanted[k, tower][:2] if r is not None])
        if any(select.ranks for select in selects.values()):  # pass 2: low bits inside the located bins
            for key, taus in _task_vectors(experts, base):
                for k, tau in enumerate(taus):
                    select = selects[k, tower_of(key)]
                    if select.ranks:
                        select.count_low(self.scores(tau, k, key))
        bounds = {}
        for (k, tower), select in selects.items():
            lo_rank, hi_rank, keep_none = wanted[k, tower]
            found = iter(select.results())
            b = _Bounds()
            if lo_rank is not None:
                b.lo, smaller = next(found)
                b.ties_to_drop = lo_rank - smaller
            if hi_rank is not None:
                b.hi, _ = next(found)
            if keep_none:
                b.hi = -1
            bounds[k, tower] = b
        return _ConsensusPlan(bounds, depths)

    def sparsify(self, tau: torch.Tensor, k: int, key: str, plan: _ConsensusPlan) -> torch.Tensor:
        b = plan.bounds[k, tower_of(key)]
        scores = self.scores(tau, k, key)
        keep = torch.ones_like(scores, dtype=torch.bool)
        if b.lo is not None and not self.exact_count:
            keep = scores >= b.lo
        elif b.lo is not None:  # drop exactly the lo smallest: all below b.lo, the first ties at b.lo
            keep = scores > b.lo
            ties = (scores == b.lo).flatten().nonzero().squeeze(1)
            dropped = min(b.ties_to_drop, ties.numel())
            keep.view(-1)[ties[dropped:]] = True
            b.ties_to_drop -= dropped
        if b.hi is not None:
            keep &= scores <= b.hi
        return torch.where(keep, tau, 0.0) * self.rescale

    def disjoint_merge(self, sparse: torch.Tensor, gamma) -> torch.Tensor:
        """sparse: the tau_k' stacked on dim 0; gamma: the elected sign (tensor or +-1)."""
        agree = sparse * gamma > 0
        picked = torch.where(agree, sparse, 0.0)
        if self.disjoint == "sum":
            return picked.sum(0)
        if self.disjoint == "mean":
            return picked.sum(0) / agree.sum(0).clamp(min=1)
        return gamma * picked.abs().amax(0)

    def merge_key(self, key, thetas, weights, theta_0, plan):
        sparse = torch.stack([self.sparsify(theta_k - theta_0, k, key, plan) for k, theta_k in enumerate(thetas)])
        gamma = torch.sign(sparse.sum(0))
        plan.sign_sum[tower_of(key)] += int(gamma.sum(dtype=torch.float64))
        scale = self.scale(key, plan.depths)
        undecided = ((gamma == 0) & (sparse != 0).any(0)).flatten().nonzero().squeeze(1)
        if undecided.numel():  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            cols, anchor = sparse.reshape(len(thetas), -1)[:, undecided], theta_0.flatten()[undecided]
            plan.undecided.append((key, undecided, anchor + scale * self.disjoint_merge(cols, 1.0),
                                   anchor + scale * self.disjoint_merge(cols, -1.0)))
        return theta_0 + scale * self.disjoint_merge(sparse, gamma)

    def finish(self, merged, plan):
        for key, index, if_positive, if_negative in plan.undecided:
            majority = plan.sign_sum[tower_of(key)]
            if majority == 0:  # no elected sign: no entry agrees, the merged task vector stays 0
                continue
            flat = merged[key].flatten()
            flat[index] = (if_positive if majority > 0 else if_negative).to(flat.dtype)
            merged[key] = flat.view(merged[key].shape)


@register
@dataclass(frozen=True)
class Ties(SparseConsensus):
    """TIES (Yadav et al. 2023): trim each tau_k to the entries with |tau| >= the k-th smallest |tau| of
    its tower, k = floor(N p) (p = ``prune``, the fraction removed; 0 keeps everything), then elect + disjoint merge."""

    name: ClassVar[str] = "ties"


@register
@dataclass(frozen=True)
class DareTies(SparseConsensus):
    """DARE-TIES (Yu et al. 2024): per expert drop exactly floor(N p) entries of the tower chosen uniformly
    at random (the smallest of i.i.d. random scores seeded from ``seed``, the expert index and the tensor
    name), rescale the kept ones by 1/(1-p), then elect + disjoint merge."""

    name: ClassVar[str] = "dare_ties"
    exact_count: ClassVar[bool] = True
    seed: int = 0

    def scores(self, tau, k, key):
        return torch.randint(0, 2**31 - 1, tau.shape, dtype=torch.int32, generator=_generator(self.seed, k, key))

    @property
    def rescale(self) -> float:
        return 1.0 / (1.0 - self.prune)


@register
@dataclass(frozen=True)
class BreadcrumbsTies(SparseConsensus):
    """Model Breadcrumbs with TIES (Davari & Belilovsky 2024): per expert drop the entries of the tower
    below the p-quantile (the floor(N p)-th smallest |tau|, as TIES) and above the (1-top)-quantile
    (the floor(N (1-top))-th smallest |tau|) of |tau|, then elect + disjoint merge (sum by default)."""

    name: ClassVar[str] = "breadcrumbs_ties"
    disjoint: str = "sum"
    top: float = 0.01

    def ranks(self, n):
        return fraction_count(n, self.prune), n - math.ceil(n * Fraction(str(self.top)))

    def drops_entries(self) -> bool:
        return self.prune > 0 or self.top > 0


# ---------------------------------------------------------------- different settings per tower

class _TowerView(Mapping):
    """The tensors of one tower of a checkpoint, still loaded one at a time."""

    def __init__(self, checkpoint: Checkpoint, tower: str):
        self.checkpoint = checkpoint
        self.keys_ = [key for key in checkpoint if tower_of(key) == tower]
        self.known = set(self.keys_)

    def __getitem__(self, key):
        if key not in self.known:
            raise KeyError(key)
        return self.checkpoint[key]

    def __iter__(self):
        return iter(self.keys_)

    def __len__(self):
        return len(self.keys_)


def _as_technique(spec, where: str) -> Technique:
    if isinstance(spec, Technique):
        return spec
    if isinstance(spec, str):
        spec = {"technique": spec}
    if not isinstance(spec, Mapping) or "technique" not in spec:
        raise ConfigError(f"{where}: expected a technique name or {{technique: NAME, ...}}, got {spec!r}.")
    params = {k: v for k, v in spec.items() if k != "technique"}
    return make_technique(spec["technique"], f"{where}.technique", **params)


@register
@dataclass(frozen=True)
class Towers(Technique):
    """Image tower (keys ``visual.*``) merged by ``image``, text tower (all other keys) by ``text``.
    Each is a technique, a registered name, or {technique: NAME, param: value, ...}."""

    name: ClassVar[str] = "towers"
    image: Technique = field(default_factory=WeightAveraging)
    text: Technique = field(default_factory=WeightAveraging)

    def __post_init__(self):
        super().__post_init__()
        for side in ("image", "text"):
            object.__setattr__(self, side, _as_technique(getattr(self, side), f"merge.{side}"))

    def merge(self, experts, weights=None, base=None):
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        parts = {}
        for tower, technique in (("image", self.image), ("text", self.text)):
            views = [_TowerView(e, tower) for e in experts]
            parts.update(technique.merge(views, weights, None if base is None else _TowerView(base, tower)))
        return {key: parts[key] for key in experts[0]}

    def params(self) -> dict:
        return {side: {"technique": t.name, **technique_params(t)} for side, t in (("image", self.image), ("text", self.text))}


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
