"""Generalized task arithmetic (docs/method.md §5): sparsify each task vector over its tower, elect a sign per
entry, merge the entries that agree with it, scale. TIES, DARE-TIES and Breadcrumbs-TIES are instances
that differ only in the sparsifier; ``towers`` routes each tower to a spec of its own.

Each spec is the oracle of the executable technique of the same name (``time_ray.core.merging.sparse``,
``towers``): whole towers at once, ``torch.kthvalue`` / sorted thresholds, no selection passes, no kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import torch

from time_ray.core.merging.base import CascadeSum, derived_seed, tower_of
from time_ray.core.merging.kernels import hashed_scores
from time_ray.core.merging.spec import SPECS, State, spec
from time_ray.core.merging.spec.dense import scales
from time_ray.core.merging.towers import _as_technique

Layout = list[tuple[str, int]]  # a tower's tensors, in order: (name, number of entries)
Sparsifier = Callable[[torch.Tensor, int, Layout], torch.Tensor]  # (tau_k's flattened tower, k, layout) -> tau_k'


def count(n: int, fraction: float) -> int:
    """floor(n * fraction), the fraction read as the decimal it is written as (floor(100 * 0.29) = 29)."""
    return math.floor(n * Fraction(str(fraction)))


# ---------------------------------------------------------------- sparsifiers: tau_k -> tau_k', per tower


def magnitude_trim(prune: float) -> Sparsifier:
    """TIES trim: keep |tau| >= the m-th smallest |tau| of the tower, m = floor(N p) (all of them if m = 0).
    Every entry equal to the threshold is kept: m - 1 entries are dropped, or fewer with ties."""

    def trim(tau, k, layout):
        m = count(tau.numel(), prune)
        return tau if m == 0 else torch.where(tau.abs() >= torch.kthvalue(tau.abs(), m).values, tau, 0.0)

    return trim


def random_drop(prune: float, seed: int) -> Sparsifier:
    """DARE: drop exactly floor(N p) entries drawn uniformly, the smallest of i.i.d. scores (a hash of the
    flat index seeded by (seed, k, tensor name); equal scores by position in the tower), and rescale the
    kept ones by 1 / (1 - p)."""

    def drop(tau, k, layout):
        scores = torch.cat([hashed_scores(derived_seed(seed, k, key), 0, n) for key, n in layout])
        keep = torch.ones_like(tau, dtype=torch.bool)
        keep[torch.sort(scores, stable=True).indices[: count(tau.numel(), prune)]] = False
        return torch.where(keep, tau, 0.0) * (1.0 / (1.0 - prune))

    return drop


def two_sided_cut(prune: float, top: float) -> Sparsifier:
    """Breadcrumbs: with |tau| sorted ascending (0-based), keep sorted[floor(N p)] <= |tau| <= sorted[N -
    floor(N top) - 1]: floor(N p) entries dropped at the bottom, floor(N top) at the top, fewer with ties."""

    def cut(tau, k, layout):
        n, ordered = tau.numel(), tau.abs().sort().values
        low, high = ordered[count(n, prune)], ordered[n - count(n, top) - 1]
        return torch.where((tau.abs() >= low) & (tau.abs() <= high), tau, 0.0)

    return cut


# ---------------------------------------------------------------- consensus: sign election + disjoint merge


def expert_sum(rows: torch.Tensor) -> torch.Tensor:
    """sum_k rows[k] in the project's documented order (``CascadeSum``: in order up to 16 experts)."""
    total = CascadeSum(len(rows), rows[0])
    for row in rows:
        total.add(row)
    return total.result()


def elect(sparse: torch.Tensor) -> torch.Tensor:
    """gamma = sign(sum_k tau_k') per entry of a [K, N] tower; where the sum is exactly 0 while some tau_k' is
    not, the sign of the tower's sum of gamma (0 if that is 0 too)."""
    gamma = torch.sign(expert_sum(sparse))
    majority = torch.sign(gamma.sum(dtype=torch.float64)).float()
    return torch.where((gamma == 0) & (sparse != 0).any(0), majority, gamma)


def disjoint_merge(sparse: torch.Tensor, gamma: torch.Tensor, disjoint: str) -> torch.Tensor:
    """The tau_k' agreeing with gamma (same sign, non-zero): their mean, their sum, or gamma * max |tau_k'|."""
    agree = sparse * gamma > 0
    kept = torch.where(agree, sparse, 0.0)
    if disjoint == "max":
        return gamma * kept.abs().amax(0)
    total = expert_sum(kept)
    return total if disjoint == "sum" else total / agree.sum(0).clamp(min=1)


def generalized_task_arithmetic(
    taus: list[State], theta_0: State, sparsify: Sparsifier, disjoint: str, scale: dict[str, float]
) -> State:
    """Per tower: tau_k' = sparsify(tau_k) over the flattened tower, gamma = elect(tau'),
    theta = theta_0 + s * disjoint_merge(tau', gamma), s per tensor (lambda or LiNeS)."""
    merged = {}
    for tower in ("image", "text"):
        layout = [(key, t.numel()) for key, t in theta_0.items() if tower_of(key) == tower]
        if not layout:
            continue
        flat = [torch.cat([tau[key].flatten() for key, _ in layout]) for tau in taus]
        sparse = torch.stack([sparsify(tau, k, layout) for k, tau in enumerate(flat)])
        tau_merged = disjoint_merge(sparse, elect(sparse), disjoint)
        for (key, _), part in zip(layout, tau_merged.split([n for _, n in layout])):
            merged[key] = theta_0[key] + scale[key] * part.view(theta_0[key].shape)
    return {key: merged[key] for key in theta_0}


# ---------------------------------------------------------------- the instances


@spec("ties")
def ties(taus, weights, theta_0, *, lam=1.0, prune=0.2, disjoint="mean", lines=None, alpha=0.5, beta=0.5) -> State:
    """TIES (Yadav et al. 2023): magnitude trim, elect, disjoint merge; theta_0 + lambda * tau_merged."""
    s = scales(theta_0, lam, lines, alpha, beta)
    return generalized_task_arithmetic(taus, theta_0, magnitude_trim(prune), disjoint, s)


@spec("dare_ties")
def dare_ties(
    taus, weights, theta_0, *, lam=1.0, prune=0.2, disjoint="mean", lines=None, alpha=0.5, beta=0.5, seed=0
) -> State:
    """DARE-TIES (Yu et al. 2024): random drop and rescale, elect, disjoint merge."""
    s = scales(theta_0, lam, lines, alpha, beta)
    return generalized_task_arithmetic(taus, theta_0, random_drop(prune, seed), disjoint, s)


@spec("breadcrumbs_ties")
def breadcrumbs_ties(
    taus, weights, theta_0, *, lam=1.0, prune=0.2, disjoint="sum", lines=None, alpha=0.5, beta=0.5, top=0.01
) -> State:
    """Model Breadcrumbs with TIES (Davari & Belilovsky 2024): two-sided magnitude cut, elect, disjoint merge."""
    s = scales(theta_0, lam, lines, alpha, beta)
    return generalized_task_arithmetic(taus, theta_0, two_sided_cut(prune, top), disjoint, s)


@spec("towers", needs_base=False)
def towers(taus, weights, theta_0, *, image="average", text="average") -> State:
    """The image tower (``visual.*``) merged by the spec of technique ``image``, the text tower (every other
    tensor) by that of ``text``: each a technique, its name, or {technique: NAME, param: value, ...}."""
    merged: State = {}
    for tower, side in (("image", image), ("text", text)):
        technique = _as_technique(side, f"merge.{tower}")
        keys = [key for key in theta_0 if tower_of(key) == tower]
        part = [{key: tau[key] for key in keys} for tau in taus]
        params = {**SPECS[technique.name].params, **technique.params()}
        merged |= SPECS[technique.name].fn(part, weights, {key: theta_0[key] for key in keys}, **params)
    return {key: merged[key] for key in theta_0}
