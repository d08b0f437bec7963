"""TIES and its sparsification variants (DARE-TIES, Breadcrumbs-TIES).

They share one mechanism (``SparseConsensus``, the idea of "generalized task arithmetic"): a
sparsification of each tau_k over its whole tower, then the TIES consensus (sign election + disjoint
merge). The variants differ only in the sparsification.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import torch

from time_ray.core.merging.base import CascadeSum, Technique, chunk_spans, register, seeded_generator, tower_of
from time_ray.core.merging.lines import LinesOption, lines_depths
from time_ray.core.merging.select import RadixSelect, fraction_count, magnitude_keys


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


def _task_vector_chunks(experts, base) -> Iterator[tuple[str, int, Iterator[torch.Tensor]]]:
    """Per floating-point key and expert k: the chunks of the flattened tau_k, in order (one at a time)."""
    for key in experts[0]:
        if not experts[0][key].is_floating_point():
            continue
        flat_0 = base[key].reshape(-1)
        for k, expert in enumerate(experts):
            flat = expert[key].reshape(-1)
            yield key, k, (flat[a:b].float() - flat_0[a:b].float() for a, b in chunk_spans(flat.numel()))


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
        return magnitude_keys(tau)

    def score_stream(self, k: int, key: str):
        """The scores of consecutive chunks of the flattened tau_k of ``key``, given in order: a function
        of a chunk. Element-wise scores need no state across chunks."""
        return lambda tau: self.scores(tau, k, key)

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
        for key, k, taus in _task_vector_chunks(experts, base):  # pass 1: high-bit histograms per expert, tower
            select, stream = selects.setdefault((k, tower_of(key)), RadixSelect()), self.score_stream(k, key)
            for tau in taus:
                select.count_high(stream(tau))
        wanted = {}
        for (k, tower), select in selects.items():
            n = select.total
            lo, hi = self.ranks(n)
            wanted[k, tower] = (lo if lo >= 1 else None, hi if 1 <= hi < n else None, hi < 1)
            select.locate([r for r in wanted[k, tower][:2] if r is not None])
        if any(select.ranks for select in selects.values()):  # pass 2: low bits inside the located bins
            for key, k, taus in _task_vector_chunks(experts, base):
                select, stream = selects[k, tower_of(key)], self.score_stream(k, key)
                if select.ranks:
                    for tau in taus:
                        select.count_low(stream(tau))
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

    def sparsify(self, tau: torch.Tensor, k: int, key: str, plan: _ConsensusPlan, scores: torch.Tensor) -> torch.Tensor:
        """tau: a chunk of the flattened tau_k (chunks of a tower come in order); scores: its scores."""
        b = plan.bounds[k, tower_of(key)]
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

    def disjoint_merge(self, sparse: list[torch.Tensor], gamma) -> torch.Tensor:
        """sparse: the tau_k' (same shape); gamma: the elected sign (tensor or +-1). Running sums, counts
        and maxima, one expert at a time (sums in the order of a sum over the stacked tau_k')."""
        if self.disjoint == "max":
            top = torch.zeros_like(sparse[0])
            for tau in sparse:
                top = torch.maximum(top, torch.where(tau * gamma > 0, tau, 0.0).abs())
            return gamma * top
        total = CascadeSum(len(sparse), sparse[0])
        count = torch.zeros(sparse[0].shape, dtype=torch.int64)
        for tau in sparse:
            agree = tau * gamma > 0
            total.add(torch.where(agree, tau, 0.0))
            count += agree
        if self.disjoint == "sum":
            return total.result()
        return total.result() / count.clamp(min=1)

    def merge_key(self, key, thetas, weights, theta_0, plan, span):
        if "scores" not in span.memo:  # one stream per expert, over the chunks of this tensor
            span.memo["scores"] = [self.score_stream(k, key) for k in range(len(thetas))]
        streams = span.memo["scores"]
        sparse, total = [], CascadeSum(len(thetas), theta_0)
        nonzero = torch.zeros(theta_0.shape, dtype=torch.bool)
        for k, theta_k in enumerate(thetas):
            tau = theta_k - theta_0
            sparse.append(self.sparsify(tau, k, key, plan, streams[k](tau)))
            total.add(sparse[-1])
            nonzero |= sparse[-1] != 0
        gamma = torch.sign(total.result())
        plan.sign_sum[tower_of(key)] += int(gamma.sum(dtype=torch.float64))
        scale = self.scale(key, plan.depths)
        undecided = ((gamma == 0) & nonzero).nonzero().squeeze(1)
        if undecided.numel():  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            cols, anchor = [tau[undecided] for tau in sparse], theta_0[undecided]
            plan.undecided.append((key, undecided + span.start, anchor + scale * self.disjoint_merge(cols, 1.0),
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

    def scores(self, tau, k, key, generator=None):
        generator = seeded_generator(self.seed, k, key) if generator is None else generator
        return torch.randint(0, 2**31 - 1, tau.shape, dtype=torch.int32, generator=generator)

    def score_stream(self, k, key):
        """The chunks of a tensor draw in order from one generator: the same scores as the whole tensor."""
        if type(self).scores is not DareTies.scores:  # a subclass's own (element-wise) scores
            return super().score_stream(k, key)
        generator = seeded_generator(self.seed, k, key)
        return lambda tau: self.scores(tau, k, key, generator)

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
