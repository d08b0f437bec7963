"""TIES and its sparsification variants (DARE-TIES, Breadcrumbs-TIES).

They share one mechanism (``SparseConsensus``, the idea of "generalized task arithmetic"): a
sparsification of each tau_k over its whole tower, then the TIES consensus (sign election + disjoint
merge). The variants differ only in the sparsification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from time_ray.core.merging.base import Technique, register
from time_ray.core.merging.executor import Consensus, consensus_chunk
from time_ray.core.merging.lines import LinesOption, lines_depths
from time_ray.core.merging.scorers import HashedScorer, MagnitudeScorer, Scorer
from time_ray.core.merging.select import fraction_count


@dataclass(frozen=True)
class SparseConsensus(LinesOption, Technique):
    """Generalized task arithmetic: sparsify each tau_k over its whole tower, then the TIES consensus.

    A technique of the family is a declaration: its ``scorer`` (what entries are ranked by), ``ranks`` (which
    order statistics bound the kept scores), ``rescale``, ``exact_count``, the ``disjoint`` rule and lambda or
    LiNeS (``consensus``). The executor (``executor.MergeExecutor``) selects the thresholds, chunks and runs
    the kernels; the reference formula is the spec's (``spec.generalized``).

    1) sparsify: each entry of tau_k gets a score (``scorer``); over the expert's tower of N entries,
       entries scored below the ``ranks`` (lo, hi) k-th smallest scores are dropped, then the kept ones are
       multiplied by ``rescale``. Thresholds are global per tower and per expert.
    2) elect: gamma = sign(sum_k tau_k'); where the sum is 0, gamma = sign of the sum of gamma over the tower.
    3) disjoint merge of the tau_k' of gamma's sign: ``mean`` over them, ``sum``, or ``max``: gamma * max |tau_k'|.
    theta = theta_0 + lambda * tau_merged (LiNeS: s(layer) instead of lambda). Strategy weights are not used.

    The inputs are read twice: one selection pass inside brackets of the thresholds (a sample's, or known
    from the scores' distribution; two radix passes when there is none or it misses; no pass for experts
    whose thresholds the executor's cache holds, e.g. computed when they entered a pool: ``warm``), one
    merge pass.
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

    def consensus(self) -> Consensus:
        return Consensus(self.scorer(), self.ranks, self.rescale, self.exact_count, self.disjoint, self.drops_entries())

    # --- run by the executor

    def chunk_size(self, n_models: int) -> int:
        return min(super().chunk_size(n_models), consensus_chunk(n_models))

    def warm(self, expert, base, executor, positions=(0,)):
        """The expert's thresholds against theta_0, for merges where it is the ``positions``-th model."""
        return executor.warm(self.consensus(), expert, base, positions)

    def prepare(self, experts, base, executor):
        depths = lines_depths(experts[0]) if self.lines is not None else None
        return depths, executor.plan(self.consensus(), experts, base)

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        depths, state = prep
        return span.executor.merge_consensus(state, key, thetas, theta_0, self.scale(key, depths), span)

    def finish(self, merged, prep):
        _, state = prep
        state.finish(merged)


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
