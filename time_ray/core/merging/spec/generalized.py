"""Generalized task arithmetic (docs/method.md §5): sparsify each task vector over its tower, elect a sign per
entry, merge the entries that agree with it, scale. TIES, DARE-TIES and Breadcrumbs-TIES are instances
that differ only in the sparsifier; ``towers`` routes each tower to a spec of its own.

Each spec is the oracle of the executable technique of the same name (``time_ray.core.merging.sparse``,
``towers``): whole towers at once, ``torch.kthvalue`` / sorted thresholds, no selection passes, no kernels.
Two definitions here are also the implementation's: DARE's scores (``hashed_scores``) and the order of
sums over experts (``expert_sum``); the executor's kernels compute the same, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction

import torch

from time_ray.core.merging.notation import attribute_name, derived_seed, tower_of
from time_ray.core.merging.spec import SPECS, State, spec
from time_ray.core.merging.spec.dense import scales

Layout = list[tuple[str, int]]  # a tower's tensors, in order: (name, number of entries)
Sparsifier = Callable[[torch.Tensor, int, Layout], torch.Tensor]  # (tau_k's flattened tower, k, layout) -> tau_k'


def count(n: int, fraction: float) -> int:
    """floor(n * fraction), the fraction read as the decimal it is written as (floor(100 * 0.29) = 29)."""
    return math.floor(n * Fraction(str(fraction)))


# ---------------------------------------------------------------- DARE's scores

M32 = 0xFFFFFFFF
GOLDEN, MIX = 0x9E3779B97F4A7C15, 0xD6E8FEB86659FD93  # odd 64-bit constants of the hash


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def hashed_scores(seed: int, start: int, n: int) -> torch.Tensor:
    """int32 scores in [0, 2^31) of flat indices j = start .. start + n - 1 for a 63-bit ``seed``, all
    arithmetic mod 2^64: x = (j + seed) * 0x9E3779B97F4A7C15; x ^= x >> 32; x *= 0xD6E8FEB86659FD93;
    x ^= x >> 32; score = x >> 33 (a multiply-xorshift hash of a counter: any chunking draws the same)."""
    x = (torch.arange(start, start + n, dtype=torch.int64) + _signed(seed)) * _signed(GOLDEN)  # int64 wraps
    x = x ^ ((x >> 32) & M32)  # >> of int64 is arithmetic: the mask makes it logical
    x = x * _signed(MIX)
    x = x ^ ((x >> 32) & M32)
    return ((x >> 33) & 0x7FFFFFFF).to(torch.int32)


# ---------------------------------------------------------------- sums over experts

LEVELS = 4  # levels of the cascade


def cascade_power(n: int) -> int:
    """p of the cascade for n experts: runs of 2^p rows, p = max(4, ceil(log2 n) // 4) (4 for n <= 1)."""
    return max(4, math.ceil(math.log2(n)) // LEVELS) if n > 1 else 4


def _in_order(rows: list[torch.Tensor]) -> torch.Tensor:
    total = rows[0].clone()
    for row in rows[1:]:
        total += row
    return total


def expert_sum(rows) -> torch.Tensor:
    """sum_k rows[k] in the order ``torch.stack(rows).sum(0)`` takes on CPU: the rows in consecutive runs of
    2^p (``cascade_power``), each run summed in order; the runs' sums again in runs of 2^p, up to the top of
    ``LEVELS`` levels, where all are summed in order. Each level's incomplete last run is summed in order and
    the result is these partial sums from the lowest level up (in order up to 16 experts). torch adds the
    few trailing columns of its vectorized loop in another order: this order, not torch's, is the definition."""
    step, items, partial = 1 << cascade_power(len(rows)), list(rows), []  # partial: one sum per level
    for level in range(LEVELS):
        top = level == LEVELS - 1
        whole = 0 if top else len(items) // step * step
        if whole < len(items):
            partial.append(_in_order(items[whole:]))
        items = [_in_order(items[i : i + step]) for i in range(0, whole, step)]
    return _in_order(partial)  # the lowest level first


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


def elect(sparse: torch.Tensor) -> torch.Tensor:
    """gamma = sign(sum_k tau_k') per entry of a [K, N] tower; where the sum is exactly 0 while some tau_k' is
    not, the sign of the tower's sum of gamma (0 if that is 0 too)."""
    gamma = torch.sign(expert_sum(sparse))
    majority = torch.sign(gamma.sum(dtype=torch.float64)).float()
    return torch.where((gamma == 0) & (sparse != 0).any(0), majority, gamma)


def disjoint_merge(sparse: torch.Tensor, gamma: torch.Tensor | float, disjoint: str) -> torch.Tensor:
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
        name, chosen = side_spec(side)
        keys = [key for key in theta_0 if tower_of(key) == tower]
        part = [{key: tau[key] for key in keys} for tau in taus]
        merged |= SPECS[name].fn(part, weights, {key: theta_0[key] for key in keys}, **{**SPECS[name].params, **chosen})
    return {key: merged[key] for key in theta_0}


def side_spec(side) -> tuple[str, dict]:
    """(spec name, parameters under their attribute names) of a tower's technique: a name, a mapping
    {technique: NAME, param: value, ...}, or a technique (anything with ``name`` and ``params()``)."""
    if isinstance(side, str):
        return side, {}
    if isinstance(side, Mapping):
        return side["technique"], {attribute_name(k): v for k, v in side.items() if k != "technique"}
    return side.name, dict(side.params())
