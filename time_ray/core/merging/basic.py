"""Dense techniques: every entry of every expert counts (averaging, task arithmetic, SLERP, MagMax,
Random, Model Stock)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from time_ray.core.merging.base import Technique, register
from time_ray.core.merging.lines import LinesOption
from time_ray.core.merging.notation import seeded_generator

CACHED_CHUNK = 1 << 17  # entries per chunk for techniques passing over a chunk several times: fits a core's L2


@register
@dataclass(frozen=True)
class WeightAveraging(LinesOption, Technique):
    """theta = sum_k w_k theta_k, with sum_k w_k = 1 (uniform by default).
    With LiNeS: theta = theta_0 + s(layer) * (sum_k w_k theta_k - theta_0) (needs the base)."""

    name: ClassVar[str] = "average"
    summary: ClassVar[str] = "weight averaging: sum_k w_k theta_k (the strategy's weights)"
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        average = self.merge_tensor(thetas, weights, theta_0)
        if self.lines is None:
            return average
        return theta_0 + self.scale(key, prep) * (average - theta_0)

    def merge_tensor(self, thetas, weights, theta_0):
        merged = None
        for w_k, theta_k in zip(weights, thetas):  # a running sum: one expert's entries at a time
            if merged is None:
                merged = theta_k * w_k
            else:
                merged.add_(theta_k, alpha=w_k)
        return merged


@register
@dataclass(frozen=True)
class TaskArithmetic(LinesOption, Technique):
    """theta = theta_0 + lambda * sum_k tau_k (a sum, not a mean; strategy weights are not used).
    With LiNeS, s(layer) replaces lambda."""

    name: ClassVar[str] = "task_arithmetic"
    summary: ClassVar[str] = "task arithmetic: theta_0 + lambda * sum_k tau_k"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0
    lines: str | None = None
    alpha: float = 0.5
    beta: float = 0.5

    def chunk_size(self, n_models):
        return min(super().chunk_size(n_models), CACHED_CHUNK)

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        """tau_1 + tau_2 + ..., in order (the executor's sum, one pass per expert)."""
        return span.executor.task_sum(thetas, theta_0, self.scale(key, prep), span)


# ---------------------------------------------------------------- SLERP, MagMax, Random, Model Stock


@register
@dataclass(frozen=True)
class Slerp(Technique):
    """Spherical interpolation of two models a, b (the weights themselves), per tensor: with the unit
    directions of a and b, if |cos| > 0.9995 then (1-t) a + t b, else
    sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b with w = arccos(cos). A zero tensor has no direction; it is
    interpolated linearly.

    t: when set (a number in [0, 1]) it is used as is and the strategy's weights are ignored. When unset
    (None, the default) t is the weight of the second model b: the strategies call a merge with weights
    (w_a, w_b) = (1 - t, t) (EMA chain: (w, 1 - w) for (theta^s_t, r_{t-1}), so t = 1 - w; ``ft-zs``:
    (1/2, 1/2), so t = 1/2), and without weights they are uniform, t = 1/2. Weights that do not sum to 1
    or give t outside [0, 1] are refused (ValueError). (The TIME authors' ``SLERP`` takes its t from its
    weight list too, as ``weight_coefficients[0]``, uniform by default.)"""

    name: ClassVar[str] = "slerp"
    summary: ClassVar[str] = "spherical interpolation of two models (t: the second model's share)"
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2
    elementwise: ClassVar[bool] = False  # norms and cosine over the whole tensor (two models: whole is fine)
    t: float | None = None

    def __post_init__(self):
        if self.t is not None:  # None (take t from the weights) is valid; numbers are checked by RULES["t"]
            super().__post_init__()

    def interpolation(self, weights) -> float:
        """t for this merge: the set ``t``, else the weight of the second model."""
        if self.t is not None:
            return self.t
        w_a, w_b = weights
        if abs(w_a + w_b - 1.0) > 1e-6 or not 0.0 <= w_b <= 1.0:
            raise ValueError(
                f"slerp without t takes t from the weights (w_a, w_b) = (1 - t, t): they must sum to 1 "
                f"with t in [0, 1], got {list(weights)}"
            )
        return w_b

    def merge_tensor(self, thetas, weights, theta_0):
        a, b = thetas
        t = self.interpolation(weights)
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
    """Per entry the tau_k of largest magnitude (first expert on ties): theta = theta_0 + lambda * tau_max.

    tau_max is the largest or the smallest tau_k, and x -> x - theta_0 is monotone in floating point, so
    max_k tau_k = max_k(theta_k) - theta_0 exactly: a running max and min of the experts (two passes over
    each, no per-expert subtraction); only entries where +m and -m both occur look for the first expert."""

    name: ClassVar[str] = "magmax"
    summary: ClassVar[str] = "MagMax: per entry the task vector of largest magnitude, times lambda"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0

    def chunk_size(self, n_models):
        return min(super().chunk_size(n_models), CACHED_CHUNK)

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        """The executor's running extremes; where +m and -m both occur, ``tied`` picks the first expert."""
        merged = span.executor.magmax(thetas, theta_0, self.lam, span)
        return self.merge_tensor(thetas, weights, theta_0) if merged is None else merged

    def merge_tensor(self, thetas, weights, theta_0):
        experts = iter(thetas)
        high = low = next(experts)
        for theta_k in experts:
            if high is low:  # the first two: new tensors, updated in place from then on
                high, low = torch.maximum(high, theta_k), torch.minimum(low, theta_k)
            else:
                torch.maximum(high, theta_k, out=high)
                torch.minimum(low, theta_k, out=low)
        up, down = high - theta_0, low - theta_0  # the largest and the smallest tau_k
        balance = up + down  # up >= down, so |up| >= |down| exactly where up + down >= 0
        tau_max = torch.where(balance >= 0, up, down)
        tied = balance == 0
        if tied.any():  # +m and -m (m > 0) both occur: the first expert reaching m decides the sign
            tied = (tied & (up != 0)).nonzero().squeeze(1)
            found = torch.zeros(tied.shape, dtype=torch.bool)
            for theta_k in thetas:
                tau_k = theta_k[tied] - theta_0[tied]
                hit = (tau_k.abs() == up[tied]) & ~found
                tau_max[tied[hit]] = tau_k[hit]
                found |= hit
        return theta_0 + self.lam * tau_max


@register
@dataclass(frozen=True)
class RandomPick(Technique):
    """Per entry the tau of a uniformly drawn expert: theta = theta_0 + lambda * tau_pick. The draw of a
    tensor is seeded from ``seed`` and the tensor's name, so the same seed gives the same merge (the chunks
    of a tensor draw in order from one generator: the same picks as drawing the whole tensor at once)."""

    name: ClassVar[str] = "random"
    summary: ClassVar[str] = "per entry the task vector of a randomly drawn expert, times lambda"
    needs_base: ClassVar[bool] = True
    lam: float = 1.0
    seed: int = 0

    def merge_key(self, key, thetas, weights, theta_0, prep, span):
        if "pick" not in span.memo:
            span.memo["pick"] = seeded_generator(self.seed, key)
        pick = torch.randint(len(thetas), theta_0.shape, generator=span.memo["pick"])
        picked = torch.zeros_like(theta_0)
        for k, theta_k in enumerate(thetas):
            picked = torch.where(pick == k, theta_k - theta_0, picked)
        return theta_0 + self.lam * picked


@register
@dataclass(frozen=True)
class ModelStock(Technique):
    """Two models; per tensor cos = <tau_1, tau_2> / (|tau_1| |tau_2| + 1e-8), r = 2 cos / (cos + 1 + 1e-8),
    theta = r (theta_1 + theta_2) / 2 + (1 - r) theta_0.

    The formula applies to every tensor of more than one entry, 1-D ones (biases, LayerNorm weights)
    included, as in the TIME authors' ``ModelStock.compute_angle`` / ``compute_ratio`` (per state-dict key,
    whatever its shape). A scalar or one-entry tensor (e.g. ``logit_scale``) is plainly averaged,
    theta = (theta_1 + theta_2) / 2: its cos is sign(tau_1 tau_2) * |tau_1 tau_2| / (|tau_1 tau_2| + 1e-8),
    about +-1, which carries no angle and, for opposite signs, puts r near the formula's pole at cos = -1
    (r of order -1e8 |tau_1 tau_2|: a 1.05 logit scale became 98,800). Here we deliberately differ from the
    authors, who apply the formula to those too (for task vectors of the same sign their r is about 1, the
    average; for opposite signs they blow up the same way)."""

    name: ClassVar[str] = "model_stock"
    summary: ClassVar[str] = "Model Stock: two models interpolated toward theta_0 by their angle"
    needs_base: ClassVar[bool] = True
    min_models: ClassVar[int] = 2
    max_models: ClassVar[int | None] = 2
    elementwise: ClassVar[bool] = False  # cosine over the whole tensor (two models: whole is fine)

    def merge_tensor(self, thetas, weights, theta_0):
        theta_1, theta_2 = thetas
        if theta_0.numel() <= 1:  # no angle between one-entry task vectors: the plain average
            return (theta_1 + theta_2) / 2
        tau_1, tau_2 = theta_1 - theta_0, theta_2 - theta_0
        cos = (tau_1 * tau_2).sum() / (tau_1.norm() * tau_2.norm() + 1e-8)
        r = 2 * cos / (cos + 1 + 1e-8)
        return r * (theta_1 + theta_2) / 2 + (1 - r) * theta_0
