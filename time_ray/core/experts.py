"""Content addresses of experts: an expert is determined by what produced it (the init weights, the
task, the budget, the seed and every training and stream setting), so identical experts, wherever
a sweep needs them, are trained once (docs/architecture.md "Checkpoints")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

from time_ray.core.benchmark import without_added_defaults
from time_ray.core.contracts import ExperimentSettings


def expert_key(
    init_state: Mapping[str, torch.Tensor],
    task: int,
    steps: int,
    seed: int,
    settings: ExperimentSettings,
    multitask: bool = False,
) -> str:
    """sha256 over the init weights (names, dtypes, shapes, bytes) and the training recipe: the task, the
    steps, the seed, every stream and training setting (``settings.to_dict()``, whose shape is part of the
    address) and whether the expert is the multitask reference's. The one address of an expert: the sweep's
    expert cache (orchestration.trial) and a single-process simulation's (core.simulate) both use it."""
    digest = hashlib.sha256()
    for name in sorted(init_state):
        tensor = init_state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    described = settings.to_dict()
    # a benchmark field added since experts were first addressed, at its earlier value, is left out: an expert
    # of such settings keeps the address it had (its cached file stays found)
    described["benchmark"] = without_added_defaults(described["benchmark"])
    recipe = {"task": task, "steps": steps, "seed": seed, "settings": described, "multitask": multitask}
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]
