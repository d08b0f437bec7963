"""TIES and its sparsification variants (DARE-TIES, Breadcrumbs-TIES).

They share one mechanism (``SparseConsensus``, the idea of "generalized task arithmetic"): a
sparsification of each tau_k over its whole tower, then the TIES consensus (sign election + disjoint
merge). The variants differ only in the sparsification.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.merging import kernels
from time_ray.core.merging.base import CascadeSum, Technique, register, tower_of
from time_ray.core.merging.executor import Scratch, Selection, pointers
from time_ray.core.merging.lines import LinesOption, lines_depths
from time_ray.core.merging.scorers import HashedScorer, MagnitudeScorer, Scorer
from time_ray.core.merging.select import fraction_count


@dataclass
class _Bounds:
    """Keep the entries of one expert's tower whose score s has lo <= s <= hi (None: no bound)."""

    lo: int | None = None
    hi: int | None = None
    ties_to_drop: int = 0  # exact-count variants: how many entries with s == lo are still to drop
    equal: int = 0  # how many entries of the tower have s == lo


WORKING_SET = 1 << 19  # entries of the [experts x chunk] block of task vectors merged at a time (2 MiB)...
MIN_CHUNK = 1 << 16  # ...unless chunks would get shorter than this (per-operation overhead)


@dataclass
class _ConsensusPrep:
    """One merge's state: the bounds per (expert, tower), LiNeS depths, the scorer, whether the fused kernels
    merge, the sums of the elected signs per tower and the entries left undecided until ``finish``."""

    bounds: dict[tuple[int, str], _Bounds]
    depths: dict[str, int] | None
    scorer: Scorer
    kernel: bool = False  # the fused kernels merge (kernels.merge_block)
    sign_sum: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    undecided: list = field(default_factory=list)  # (key, flat index, value if +, value if -)
    tower_bounds: dict = field(default_factory=dict)  # the kernel's bound arrays per tower (ties count down)

    def kernel_bounds(self, tower: str, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lo, hi, ties) per expert as int64 arrays: keep lo <= s <= hi (lo < s for exact counts, but for
        the scores equal to lo after the first ``ties``, which the kernel counts down); -1 / NO_HI: no bound."""
        if tower not in self.tower_bounds:
            bounds = [self.bounds[j, tower] for j in range(k)]
            self.tower_bounds[tower] = (
                np.array([-1 if b.lo is None else b.lo for b in bounds], np.int64),
                np.array([kernels.NO_HI if b.hi is None else b.hi for b in bounds], np.int64),
                np.array([b.ties_to_drop for b in bounds], np.int64),
            )
        return self.tower_bounds[tower]


def blocks(scratch: Scratch, k: int, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two reused [k x n] work blocks (allocated for chunks of ``size``)."""
    return tuple(scratch.tensor(name, k * size)[: k * n].view(k, n) for name in ("taus", "work"))  # type: ignore[return-value]


def kernel_buffers(scratch: Scratch, k: int, n: int, size: int) -> dict:
    """Contiguous views of n entries of the kernel's reused buffers (allocated for chunks of ``size``)."""
    return {
        "work": scratch.array("work", (k * size,), np.float32)[: k * n].reshape(k, n),
        "acc": scratch.array("acc", (4 * size,), np.float32)[: 4 * n].reshape(4, n),
        "gamma": scratch.array("gamma", (size,), np.float32)[:n],
        "total": scratch.array("total", (size,), np.float32)[:n],
        "count": scratch.array("count", (size,), np.float32)[:n],
        "keys": scratch.array("keys", (size,), np.int32)[:n],
        "undecided": scratch.array("undecided", (size,), np.int64),
        "undecided_taus": scratch.array("undecided_taus", (size, k), np.float32),
    }


def _float(key: int) -> float:
    """The float32 whose bit pattern is ``key``."""
    return torch.tensor(key, dtype=torch.int32).view(torch.float32).item()


@dataclass(frozen=True)
class SparseConsensus(LinesOption, Technique):
    """Generalized task arithmetic: sparsify each tau_k over its whole tower, then the TIES consensus.

    A technique of the family is a declaration: its ``scorer`` (what entries are ranked by), ``ranks`` (which
    order statistics bound the kept scores), ``rescale``, ``exact_count``, the ``disjoint`` rule and lambda or
    LiNeS. The executor (``executor.MergeExecutor``) selects the thresholds, chunks and picks the backend.

    1) sparsify: each entry of tau_k gets a score (``scorer``); over the expert's tower of N entries,
       entries scored below the ``ranks`` (lo, hi) k-th smallest scores are dropped, then the kept ones are
       multiplied by ``rescale``. Thresholds are global per tower and per expert (see ``select``).
    2) elect: gamma = sign(sum_k tau_k'); where the sum is 0, gamma = sign of the sum of gamma over the tower.
    3) disjoint merge of the tau_k' of gamma's sign: ``mean`` over them, ``sum``, or ``max``: gamma * max |tau_k'|.
    theta = theta_0 + lambda * tau_merged (LiNeS: s(layer) instead of lambda). Strategy weights are not used.

    The inputs are read twice: one selection pass inside brackets of the thresholds (a sample's, or known
    from the scores' distribution; two radix passes when there is none or it misses; no pass for experts
    whose thresholds the executor's cache holds, e.g. computed when they entered a pool: ``warm``), one
    merge pass; each time as [experts x chunk] blocks of task vectors (or one fused kernel loop). Sums over
    experts keep the order of ``CascadeSum``.
    """

    needs_base: ClassVar[bool] = True
    exact_count: ClassVar[bool] = False  # drop exactly the lo smallest scores (ties at the threshold by position)
    lam: float = 1.0
    prune: float = 0.2
    disjoint: str = "mean"
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    # --- the declaration: what differs between TIES, DARE and Breadcrumbs

    def scorer(self) -> Scorer:
        """What the entries of tau_k are ranked by: here |tau| (``scorers.MagnitudeScorer``)."""
        return MagnitudeScorer()

    def ranks(self, n: int) -> tuple[int, int]:
        """1-based ranks (lo, hi) among the n scores of a tower: keep lo-th smallest <= s <= hi-th smallest
        (lo = 0: no lower bound; hi = n: no upper bound). TIES: lo = floor(N p), which keeps the floor(N p)-th
        smallest itself (the authors' ``TIES.sparsify``: kthvalue(k), keep >= it)."""
        return fraction_count(n, self.prune), n

    @property
    def rescale(self) -> float:
        return 1.0

    def drops_entries(self) -> bool:
        return self.prune > 0

    def chunk_size(self, n_models: int) -> int:
        return min(super().chunk_size(n_models), max(MIN_CHUNK, WORKING_SET // n_models))

    # --- what a merge needs before its merge pass

    def wanted_ranks(self, model: Checkpoint, n_experts: int) -> tuple[dict, Selection | None]:
        """Per (expert, tower): (lo rank or None, hi rank or None, keep nothing); and what to select for them
        (None: nothing to drop, no selection). ``model``: any of the merged models (for the layout)."""
        if not self.drops_entries():
            return {}, None
        sizes: dict[str, int] = defaultdict(int)  # entries per tower
        for key in model:
            if model[key].is_floating_point():
                sizes[tower_of(key)] += model[key].numel()
        wanted = {}
        for k in range(n_experts):
            for tower, n in sizes.items():
                lo, hi = self.ranks(n)
                wanted[k, tower] = (lo if lo >= 1 else None, hi if 1 <= hi < n else None, hi < 1)
        ranks = {at: [r for r in w[:2] if r is not None] for at, w in wanted.items()}
        return wanted, Selection(self.scorer(), ranks, dict(sizes), self.chunk_size(n_experts))

    def warm(self, expert, base, executor, positions=(0,)):
        """The expert's thresholds against theta_0, for merges where it is the ``positions``-th model (|tau|
        thresholds do not depend on the position: one selection; DARE's depend on it alone)."""
        _, selection = self.wanted_ranks(expert, 1)
        return 0 if selection is None else executor.prefetch(expert, base, selection, positions)

    def prepare(self, experts, base, executor):
        depths = lines_depths(experts[0]) if self.lines is not None else None
        scorer = self.scorer()
        kernel = executor.fused and scorer.kernel_mode is not None
        wanted, selection = self.wanted_ranks(experts[0], len(experts))
        if selection is None:  # nothing to drop: no pass over the inputs
            return _ConsensusPrep(defaultdict(_Bounds), depths, scorer, kernel=kernel)
        found = executor.thresholds(experts, base, selection)
        bounds = {}
        for at, (lo_rank, hi_rank, keep_none) in wanted.items():
            results = iter(found[at])
            b = _Bounds()
            if lo_rank is not None:
                b.lo, smaller, *equal = next(results)
                b.ties_to_drop = lo_rank - smaller
                b.equal = equal[0] if equal else -1  # -1: not counted
            if hi_rank is not None:
                b.hi, *_ = next(results)
            if keep_none:
                b.hi = -1
            bounds[at] = b
        return _ConsensusPrep(bounds, depths, scorer, kernel=kernel)

    # --- the consensus: sparsify, elect, disjoint merge (torch ops; ``kernels.merge_block`` fused)

    def sparsify(self, tau: torch.Tensor, k: int, key: str, prep: _ConsensusPrep, scores: torch.Tensor) -> torch.Tensor:
        """tau: a chunk of the flattened tau_k (chunks of a tower come in order); scores: its scores."""
        b = prep.bounds[k, tower_of(key)]
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

    def sparsify_magnitudes(self, tau: torch.Tensor, b: _Bounds) -> None:
        """``sparsify`` for |tau| scores, in place: hardshrink(x, l) keeps |x| > l, and for floats |x| >= v
        is |x| > the float just below v (bit pattern v - 1)."""
        if b.hi is not None and b.hi < 0:
            tau.zero_()
            return
        if b.hi is not None:
            tau.sub_(torch.hardshrink(tau, _float(b.hi)))  # drop |tau| > hi
        if b.lo is not None and b.lo > 0:
            torch.hardshrink(tau, _float(b.lo - 1), out=tau)  # drop |tau| < lo
        if self.rescale != 1.0:
            tau.mul_(self.rescale)

    def disjoint_merge(self, sparse: list[torch.Tensor], gamma) -> torch.Tensor:
        """sparse: the tau_k' (same shape); gamma: the elected sign (tensor or +-1). Running sums, counts
        and maxima, one expert at a time (sums in ``CascadeSum``'s order)."""
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

    def disjoint_merge_block(self, taus: torch.Tensor, gamma: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        """``disjoint_merge`` of a [k, n] block: where(tau' * gamma > 0, tau', 0) is gamma * relu(tau' * gamma),
        and a sum of negated terms is the negated sum, bit for bit."""
        agree = torch.mul(taus, gamma, out=work).relu_()  # |tau'| where tau' has gamma's sign, else 0
        if self.disjoint == "max":
            return gamma * agree.amax(0)
        total = CascadeSum(len(agree), gamma)
        for row in agree:
            total.add(row)
        merged = gamma * total.result()
        if self.disjoint == "sum":
            return merged
        return merged / agree.sign_().sum(0).clamp_(min=1)  # counts as sums of 0/1 floats: exact in any order

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        if prep.kernel:
            return self._kernel_merge_key(key, thetas, theta_0, prep, span)
        tower = tower_of(key)
        taus, work = blocks(span.executor.scratch, len(thetas), span.size, self.chunk_size(len(thetas)))
        if not prep.scorer.magnitudes and "scores" not in span.memo:  # one stream per expert, over the chunks
            span.memo["scores"] = [prep.scorer.stream(k, key) for k in range(len(thetas))]
        for k, (tau, theta_k) in enumerate(zip(taus, thetas)):
            torch.sub(theta_k, theta_0, out=tau)
            if prep.scorer.magnitudes:
                self.sparsify_magnitudes(tau, prep.bounds[k, tower])
            else:
                tau.copy_(self.sparsify(tau, k, key, prep, span.memo["scores"][k](tau)))
        total = CascadeSum(len(taus), theta_0)
        for tau in taus:
            total.add(tau)
        gamma = torch.sign(total.result())
        prep.sign_sum[tower] += int(gamma.sum(dtype=torch.float64))
        scale = self.scale(key, prep.depths)
        zero = gamma == 0
        if zero.any():  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            zero = zero.nonzero().squeeze(1)
            undecided = zero[(taus[:, zero] != 0).any(0)]
            if undecided.numel():
                cols, anchor = list(taus[:, undecided]), theta_0[undecided]
                prep.undecided.append(
                    (
                        key,
                        undecided + span.start,
                        anchor + scale * self.disjoint_merge(cols, 1.0),
                        anchor + scale * self.disjoint_merge(cols, -1.0),
                    )
                )
        return theta_0 + scale * self.disjoint_merge_block(taus, gamma, work)

    def _kernel_merge_key(self, key, thetas, theta_0, prep, span):
        """``merge_key`` in one fused pass (kernels.merge_block): the same arithmetic in the same order."""
        n_experts, n = len(thetas), span.size
        chunks = [t.contiguous() for t in thetas]
        theta_0 = theta_0.contiguous()
        b = kernel_buffers(span.executor.scratch, n_experts, n, self.chunk_size(n_experts))
        lo, hi, ties = prep.kernel_bounds(tower_of(key), n_experts)
        if "seeds" not in span.memo:
            span.memo["seeds"] = prep.scorer.seeds(range(n_experts), key)
        scale = self.scale(key, prep.depths)
        out = torch.empty(n)
        sign_sum, n_undecided = kernels.merge_block(
            prep.scorer.kernel_mode,
            pointers(chunks),
            theta_0.numpy(),
            span.memo["seeds"],
            span.start,
            lo,
            hi,
            ties,
            self.exact_count,
            np.float32(self.rescale),
            CascadeSum(n_experts, theta_0).power,
            kernels.DISJOINT_CODES[self.disjoint],
            np.float32(scale),
            b["work"],
            b["acc"],
            b["gamma"],
            b["total"],
            b["count"],
            b["keys"],
            out.numpy(),
            b["undecided"],
            b["undecided_taus"],
        )
        prep.sign_sum[tower_of(key)] += int(sign_sum)
        if n_undecided:  # sum exactly 0 with non-zero entries: the tower's sign decides, in finish()
            index = torch.from_numpy(b["undecided"][:n_undecided].copy())
            cols = list(torch.from_numpy(b["undecided_taus"][:n_undecided].copy()).T)
            anchor = theta_0[index]
            prep.undecided.append(
                (
                    key,
                    index + span.start,
                    anchor + scale * self.disjoint_merge(cols, 1.0),
                    anchor + scale * self.disjoint_merge(cols, -1.0),
                )
            )
        return out

    def finish(self, merged, prep):
        for key, index, if_positive, if_negative in prep.undecided:
            majority = prep.sign_sum[tower_of(key)]
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
    summary: ClassVar[str] = "TIES: trim each tau_k to its largest entries, elect signs, disjoint merge"


@register
@dataclass(frozen=True)
class DareTies(SparseConsensus):
    """DARE-TIES (Yu et al. 2024): per expert drop exactly floor(N p) entries of the tower chosen uniformly
    at random (the smallest of i.i.d. random scores seeded from ``seed``, the expert index and the tensor
    name), rescale the kept ones by 1/(1-p), then elect + disjoint merge."""

    name: ClassVar[str] = "dare_ties"
    summary: ClassVar[str] = "DARE-TIES: drop entries at random and rescale, elect signs, disjoint merge"
    exact_count: ClassVar[bool] = True
    seed: int = 0

    def scorer(self) -> Scorer:
        return HashedScorer(self.seed)

    def scores(self, tau: torch.Tensor, k: int, key: str, offset: int = 0) -> torch.Tensor:
        """Scores of the entries offset, offset + 1, ... of the flattened tensor: a counter-based hash of the
        flat index seeded from (seed, k, key) (``kernels.hashed_scores``), so any chunking draws the same."""
        return HashedScorer(self.seed).scores(tau, k, key, offset)

    @property
    def rescale(self) -> float:
        return 1.0 / (1.0 - self.prune)


@register
@dataclass(frozen=True)
class BreadcrumbsTies(SparseConsensus):
    """Model Breadcrumbs with TIES (Davari & Belilovsky 2024): per expert, over the N entries of its tower
    (flattened, as every ``SparseConsensus``), ranked by |tau|, drop floor(N p) entries at the bottom and
    floor(N top) at the top, then elect + disjoint merge (sum by default).

    Kept: the (floor(N p) + 1)-th smallest |tau| <= |tau| <= the (N - floor(N top))-th smallest |tau|
    (nothing dropped at an end whose count is 0). With distinct magnitudes at the two thresholds exactly
    floor(N p) and floor(N top) entries go; entries equal to a threshold are all kept (ties can only
    make fewer drops, never depend on position). This is the rule of the TIME authors' code
    (``BreadcrumbsTIES.filter_tensor_nd_magnitude`` in fomo_in_flux ``continual_lib/merge.py``: sorted
    |tau|, keep sorted[bottom_k] <= |tau| <= sorted[-top_k - 1], bottom_k = int(p N), top_k = int(top N),
    over each merged module's flattened state dict, i.e. per tower). Unlike TIES, whose trim keeps the
    floor(N p)-th smallest and so drops one entry fewer. If floor(N p) + floor(N top) >= N, the two
    thresholds cross and (ties aside) nothing of the tower is kept (the authors raise an error there)."""

    name: ClassVar[str] = "breadcrumbs_ties"
    summary: ClassVar[str] = "Breadcrumbs-TIES: cut the smallest and the largest entries, elect signs, merge"
    disjoint: str = "sum"
    top: float = 0.01

    def ranks(self, n):
        bottom, top = fraction_count(n, self.prune), fraction_count(n, self.top)
        return (bottom + 1 if bottom else 0), n - top

    def drops_entries(self) -> bool:
        return self.prune > 0 or self.top > 0
