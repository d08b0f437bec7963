"""Specs of the dense techniques (docs/method.md §5): every entry of every expert counts. Averaging, task
arithmetic, SLERP, MagMax, Random, Model Stock, and LiNeS, the scale option of the task-vector techniques.

Each spec is the oracle of the executable technique of the same name (``time_ray.core.merging.basic``):
whole tensors, no chunking, no kernels. Techniques on the weights themselves (averaging, SLERP, Model
Stock) see theta_k as theta_0 + tau_k: the expert's own bits unless theta_k - theta_0 rounded.
"""

from __future__ import annotations

import torch

from time_ray.core.merging.notation import BLOCK, LINES, seeded_generator, tower_of
from time_ray.core.merging.spec import State, spec


def lines_depths(keys) -> dict[str, int]:
    """L per tower: the number of distinct l among the keys containing ``transformer.resblocks.l.``."""
    blocks: dict[str, set[int]] = {"image": set(), "text": set()}
    for key in keys:
        if match := BLOCK.search(key):
            blocks[tower_of(key)].add(int(match[1]))
    return {tower: len(ls) for tower, ls in blocks.items()}


def lines_scale(key: str, depths: dict[str, int], lines: str, alpha: float, beta: float) -> float:
    """LiNeS (Wang et al. 2025): s = alpha + beta * f(l / (L - 1)) for a tensor of ``transformer.resblocks.l.``
    (L = ``depths`` of its tower; f: linear, quadratic or sqrt), s = alpha for every other tensor."""
    match = BLOCK.search(key)
    if match is None:
        return alpha
    return alpha + beta * LINES[lines](int(match[1]) / max(depths[tower_of(key)] - 1, 1))


def scales(keys, lam: float = 1.0, lines: str | None = None, alpha: float = 0.5, beta: float = 0.5) -> dict[str, float]:
    """The factor of each tensor's merged task vector: lambda; with LiNeS (``lines`` set) ``lines_scale``
    over the blocks of ``keys``. LiNeS replaces lambda."""
    if lines is None:
        return {key: lam for key in keys}
    depths = lines_depths(keys)
    return {key: lines_scale(key, depths, lines, alpha, beta) for key in keys}


def models(taus: list[State], theta_0: State, key: str) -> list[torch.Tensor]:
    """theta_k = theta_0 + tau_k of one tensor, for every expert."""
    return [theta_0[key] + tau[key] for tau in taus]


@spec("average", needs_base=False)
def average(taus, weights, theta_0, *, lines=None, alpha=0.5, beta=0.5) -> State:
    """Weight averaging: theta = sum_k w_k theta_k (sum_k w_k = 1, uniform by default).
    With LiNeS: theta = theta_0 + s(layer) * (sum_k w_k theta_k - theta_0)."""
    s = scales(theta_0, 1.0, lines, alpha, beta)
    merged = {}
    for key in theta_0:
        thetas = models(taus, theta_0, key)
        mean = thetas[0] * weights[0]
        for w_k, theta_k in zip(weights[1:], thetas[1:]):
            mean = torch.add(mean, theta_k, alpha=w_k)  # + w_k theta_k, rounded once per expert
        merged[key] = mean if lines is None else theta_0[key] + s[key] * (mean - theta_0[key])
    return merged


@spec("task_arithmetic")
def task_arithmetic(taus, weights, theta_0, *, lam=1.0, lines=None, alpha=0.5, beta=0.5) -> State:
    """Task arithmetic: theta = theta_0 + lambda * sum_k tau_k (a sum, not a mean; weights unused).
    With LiNeS, s(layer) replaces lambda."""
    s = scales(theta_0, lam, lines, alpha, beta)
    merged = {}
    for key in theta_0:
        tau_sum = taus[0][key]
        for tau in taus[1:]:  # tau_1 + tau_2 + ..., in order
            tau_sum = tau_sum + tau[key]
        merged[key] = theta_0[key] + s[key] * tau_sum
    return merged


@spec("slerp", needs_base=False, min_models=2, max_models=2)
def slerp(taus, weights, theta_0, *, t=None) -> State:
    """Spherical interpolation of two models a, b, per tensor: with cos = <a/|a|, b/|b|> and w = arccos(cos),
    theta = sin((1-t) w)/sin(w) a + sin(t w)/sin(w) b; linear, (1-t) a + t b, if |cos| > 0.9995 or a or b
    is 0. t: as set, else the weight of b (weights (1 - t, t), summing to 1)."""
    if t is None:
        w_a, t = weights
        if abs(w_a + t - 1.0) > 1e-6 or not 0.0 <= t <= 1.0:
            raise ValueError(f"slerp without t takes t from the weights (1 - t, t), got {list(weights)}")
    merged = {}
    for key in theta_0:
        a, b = (theta.flatten() for theta in models(taus, theta_0, key))
        norm_a, norm_b = a.norm(), b.norm()
        cos = torch.dot(a / norm_a, b / norm_b).clamp(-1.0, 1.0) if norm_a != 0 and norm_b != 0 else None
        if cos is None or cos.abs() > 0.9995:
            theta = (1 - t) * a + t * b
        else:
            w = torch.arccos(cos)
            theta = torch.sin((1 - t) * w) / torch.sin(w) * a + torch.sin(t * w) / torch.sin(w) * b
        merged[key] = theta.view(theta_0[key].shape)
    return merged


@spec("magmax")
def magmax(taus, weights, theta_0, *, lam=1.0) -> State:
    """MagMax: per entry the tau_k of largest magnitude (the first such expert on ties),
    theta = theta_0 + lambda * tau_max."""
    merged = {}
    for key in theta_0:
        stacked = torch.stack([tau[key] for tau in taus])
        largest = stacked.abs().argmax(0, keepdim=True)  # argmax: the first index of the maximum
        merged[key] = theta_0[key] + lam * stacked.gather(0, largest)[0]
    return merged


@spec("random")
def random(taus, weights, theta_0, *, lam=1.0, seed=0) -> State:
    """Random: per entry the tau of a uniformly drawn expert, theta = theta_0 + lambda * tau_pick. The picks
    of a tensor: torch.randint over its flattened entries, in order, from a generator seeded by (seed, name)."""
    merged = {}
    for key, anchor in theta_0.items():
        generator = seeded_generator(seed, key)
        pick = torch.randint(len(taus), (anchor.numel(),), generator=generator).view(anchor.shape)
        picked = torch.stack([tau[key] for tau in taus]).gather(0, pick[None])[0]
        merged[key] = anchor + lam * picked
    return merged


@spec("model_stock", min_models=2, max_models=2)
def model_stock(taus, weights, theta_0) -> State:
    """Model Stock, two models, per tensor: cos = <tau_1, tau_2> / (|tau_1| |tau_2| + 1e-8),
    r = 2 cos / (cos + 1 + 1e-8), theta = r (theta_1 + theta_2) / 2 + (1 - r) theta_0.
    A one-entry tensor (logit_scale) has no angle: theta = (theta_1 + theta_2) / 2 (the executable
    technique's deliberate departure from the authors, who apply the formula there too)."""
    merged = {}
    for key, anchor in theta_0.items():
        theta_1, theta_2 = models(taus, theta_0, key)
        if anchor.numel() <= 1:
            merged[key] = (theta_1 + theta_2) / 2
            continue
        tau_1, tau_2 = taus[0][key].flatten(), taus[1][key].flatten()
        cos = (tau_1 * tau_2).sum() / (tau_1.norm() * tau_2.norm() + 1e-8)
        r = 2 * cos / (cos + 1 + 1e-8)
        merged[key] = r * (theta_1 + theta_2) / 2 + (1 - r) * anchor
    return merged
