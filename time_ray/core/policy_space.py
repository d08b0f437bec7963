"""The policy space of a sweep (docs/method.md §2-6) expanded into trials: presets and grids of init x deploy
x merging technique (with chain/recency settings and searched hyperparameters), crossed with budget
multipliers and seeds; and the compute budget turned into training steps per task.

Works on the config's typed values (the config layer, ``time_ray.config``, validates them first and
calls these); errors name the config field. Each trial is parsed here once into a ``Trial``."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections.abc import Sequence
from typing import Protocol

from time_ray.core.contracts import Trial
from time_ray.core.errors import ConfigError
from time_ray.core.merging import make_technique, technique_params
from time_ray.core.strategies import Policy

logger = logging.getLogger(__name__)

PRESETS = {
    "sequential-ft": ("ft", "ft"),
    "offline-merge": ("zs", "all"),
    "zs-merge": ("zs", "ema"),
    "ft-merge": ("ft-zs", "ft-zs"),
    "best-in-time": ("ema", "ema"),
    "ema-merge": ("ema", "ema"),
}
CHAIN_KEYS = ("ema_weight", "ema_with_base", "all_with_base", "recency")
DEFAULT_STEPS_PER_TASK = 200


# ---------------------------------------------------------------- policies


class MergeVariant(Protocol):
    """A technique of a grid and its parameters, each a value or a list (config.MergeVariant)."""

    @property
    def technique(self) -> str: ...
    @property
    def params(self) -> dict: ...


class Grid(Protocol):
    """One grid of policies, typed and checked by the config layer (config.Grid): every field a tuple of values."""

    @property
    def init(self) -> Sequence[str]: ...
    @property
    def deploy(self) -> Sequence[str]: ...
    @property
    def merge(self) -> Sequence[str | MergeVariant]: ...
    def chain(self) -> dict[str, tuple]: ...


def _grid_values(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _merge_variants(entries: Sequence[str | MergeVariant], path: str) -> list[tuple[str, dict]]:
    """Each technique of a grid at each combination of its parameters' values, as (name, its parameters)."""
    variants = []
    for i, entry in enumerate(entries):
        name, given = (entry, {}) if isinstance(entry, str) else (entry.technique, entry.params)
        params = {k: _grid_values(v) for k, v in given.items()}
        for combo in itertools.product(*params.values()):
            technique = make_technique(name, f"{path}[{i}].technique", **dict(zip(params, combo)))
            variants.append((name, technique_params(technique)))
    return variants


def _max_models(technique) -> int | None:
    """The most models a technique merges (per-tower techniques: the stricter side)."""
    sides = [getattr(technique, side) for side in ("image", "text") if hasattr(technique, side)]
    limits = [s.max_models for s in sides or [technique] if s.max_models is not None]
    return min(limits) if limits else None


def _expand_grid(grid: Grid, where: str) -> list[dict]:
    """The policies of one grid: init x deploy x merge variants x chain/recency settings."""
    inits, deploys = list(grid.init), list(grid.deploy)
    merges = _merge_variants(grid.merge, f"{where}.merge")
    pairwise_only = sorted({m for m, p in merges if _max_models(make_technique(m, **p)) == 2})
    if pairwise_only and "all" in inits + deploys:
        raise ConfigError(
            f"{where}.merge: {', '.join(pairwise_only)} merge exactly two models, but the 'all' "
            "strategy merges every expert in the pool. Use them with the pairwise strategies (ema, "
            "ft-zs), or put them in a separate grid without 'all'."
        )
    extras = grid.chain()
    return [
        {
            "policy": f"{init}/{deploy}",
            "init": init,
            "deploy": deploy,
            "merge": merge,
            "merge_params": params,
            **dict(zip(extras, rest)),
        }
        for init, deploy, (merge, params), *rest in itertools.product(inits, deploys, merges, *extras.values())
    ]


def expand_policies(
    presets: Sequence[str], grids: Sequence[tuple[str, Grid]], multitask: bool, points: Sequence[dict] = ()
) -> list[dict]:
    """Every policy the config names, as JSON-able specs (hashed into trial ids): presets (weight
    averaging) plus each grid (with its config path, ``policies.grid[1]``) crossed with the search
    ``points``, plus the multitask reference; deduplicated."""
    out: list[dict] = []
    for name in presets:
        init, deploy = PRESETS[name]
        out.append({"policy": name, "init": init, "deploy": deploy, "merge": "average", "merge_params": {}})
    for where, grid in grids:
        out += [v for p in _expand_grid(grid, where) for v in _apply_search(p, points)]
    if multitask:
        out.append(
            {
                "policy": "multitask",
                "init": "zs",
                "deploy": "ft",
                "merge": "average",
                "merge_params": {},
                "multitask": True,
            }
        )
    unique, seen = [], set()
    for p in out:
        key = json.dumps({k: v for k, v in p.items() if k != "policy"}, sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


# ---------------------------------------------------------------- search


def search_points(space: dict, samples: int, method: str = "sobol", seed: int = 0) -> list[dict]:
    """``samples`` points of the search ``space`` (name -> [low, high]): scrambled Sobol
    (low-discrepancy) or uniform random, seeded. The same points serve every policy (common random
    numbers), so techniques are compared at the same draws. Values are rounded to 4 significant digits
    (readable trial ids and tables)."""
    import torch

    names = list(space)
    if not names or samples == 0:
        return []
    if method == "sobol":
        unit = torch.quasirandom.SobolEngine(len(names), scramble=True, seed=seed).draw(samples)
    else:
        unit = torch.rand(samples, len(names), generator=torch.Generator().manual_seed(seed))
    points = []
    for row in unit.double().tolist():
        point = {}
        for name, u in zip(names, row):
            low, high = space[name]
            point[name] = float(f"{low + u * (high - low):.4g}")
        points.append(point)
    return points


def _apply_search(policy: dict, points: Sequence[dict]) -> list[dict]:
    """The policy at each search point, for the searched parameters it has (merge parameters of its
    technique; ema_weight when an EMA strategy is used); unchanged when it has none of them."""
    accepted = set(technique_params(make_technique(policy["merge"], **policy["merge_params"])))
    # LiNeS' alpha and beta change nothing while its depth scaling is off (TSV-M's, Iso-C's alpha do)
    if "lines" in accepted and not policy["merge_params"].get("lines"):
        accepted -= {"alpha", "beta"}
    uses_ema = "ema" in (policy["init"], policy["deploy"])
    variants = []
    for point in points:
        params = {k: v for k, v in point.items() if k in accepted}
        ema = {"ema_weight": point["ema_weight"]} if uses_ema and "ema_weight" in point else {}
        if not params and not ema:
            return [policy]
        merge_params = {**policy["merge_params"], **params}
        make_technique(policy["merge"], "search.space.technique", **merge_params)  # in range for this technique
        variants.append({**policy, "merge_params": merge_params, **ema})
    return variants or [policy]


# ---------------------------------------------------------------- budget and trials


class Budget(Protocol):
    """Compute per task in one unit (config.BudgetConfig; docs/method.md §6)."""

    @property
    def steps_per_task(self) -> int | None: ...
    @property
    def samples_per_task(self) -> int | None: ...
    @property
    def gflops_per_task(self) -> float | None: ...
    @property
    def total_steps(self) -> int | None: ...


def steps_per_task(budget: Budget, tasks: int, batch_size: int, flops_per_step: float | None = None) -> int:
    """Training steps per task from the budget, in whichever unit it was given. A GFLOPs budget needs
    the FLOPs of one training step (``flops_per_step``, measured on the real model and batch)."""
    if budget.samples_per_task is not None:
        return max(1, math.ceil(budget.samples_per_task / batch_size))
    if budget.gflops_per_task is not None:
        if flops_per_step is None:
            raise ValueError("a GFLOPs budget needs the FLOPs of one training step")
        return max(1, round(budget.gflops_per_task * 1e9 / flops_per_step))
    if budget.total_steps is not None:
        return max(1, round(budget.total_steps / tasks))
    return budget.steps_per_task if budget.steps_per_task is not None else DEFAULT_STEPS_PER_TASK


def make_trial(spec: dict) -> Trial:
    """The typed trial of an expanded spec (its policy parsed here, once)."""
    policy = Policy(
        init=spec["init"],
        deploy=spec["deploy"],
        technique=make_technique(spec["merge"], **spec["merge_params"]),
        **{k: spec[k] for k in CHAIN_KEYS if k in spec},
    )
    return Trial(
        trial_id=spec["trial_id"],
        name=spec["policy"],
        policy=policy,
        merge=spec["merge"],
        merge_params=dict(spec["merge_params"]),
        budget_steps=spec["budget_steps"],
        seed=spec["seed"],
        multitask=bool(spec.get("multitask")),
    )


def expand_trials(
    policies: Sequence[dict], per_task: int, multipliers: Sequence[float], seeds: Sequence[int], tasks: int
) -> list[Trial]:
    """One trial per policy x budget multiplier x seed. A trial's id hashes its spec, so the same spec
    twice (e.g. two multipliers rounding to the same steps) is one trial, run once."""
    trials: dict[str, Trial] = {}
    merged: dict[int, list[float]] = {}
    for policy, mult, seed in itertools.product(policies, multipliers, seeds):
        steps = max(1, round(per_task * mult))
        merged.setdefault(steps, [])
        if mult not in merged[steps]:
            merged[steps].append(mult)
        if policy.get("multitask"):
            steps *= tasks  # the same total compute as the stream
        spec = {**policy, "budget_steps": steps, "seed": seed}
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:8]
        trial_id = f"{policy['policy'].replace('/', '-')}-{policy['merge']}-{digest}"
        if trial_id not in trials:
            trials[trial_id] = make_trial({**spec, "trial_id": trial_id})
    for steps, mults in merged.items():
        if len(mults) > 1:
            logger.warning(
                "time-ray: budget.multipliers %s all give %d steps per task (of %d): their trials are the same "
                "and run once",
                ", ".join(f"{m:g}" for m in mults),
                steps,
                per_task,
            )
    return list(trials.values())
