"""Different techniques (or settings) for the image and the text tower."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.merging.base import (
    Technique,
    as_technique,
    check_compatible,
    register,
    technique_params,
    tower_of,
)
from time_ray.core.merging.basic import WeightAveraging


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


@register
@dataclass(frozen=True)
class Towers(Technique):
    """Image tower (keys ``visual.*``) merged by ``image``, text tower (all other keys) by ``text``.
    Each is a technique, a registered name, or {technique: NAME, param: value, ...}."""

    name: ClassVar[str] = "towers"
    summary: ClassVar[str] = "a technique per tower: image (visual.*) and text"
    image: Technique = field(default_factory=WeightAveraging)
    text: Technique = field(default_factory=WeightAveraging)

    def __post_init__(self):
        super().__post_init__()
        for side in ("image", "text"):
            object.__setattr__(self, side, as_technique(getattr(self, side), f"merge.{side}"))

    def merge(self, experts, weights=None, base=None, executor=None):
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        check_compatible(experts, base if self.uses_base() else None)
        parts = {}
        for tower, technique in (("image", self.image), ("text", self.text)):
            views = [_TowerView(e, tower) for e in experts]
            parts.update(technique.merge(views, weights, None if base is None else _TowerView(base, tower), executor))
        return {key: parts[key] for key in experts[0]}

    def params(self) -> dict:
        return {
            side: {"technique": t.name, **technique_params(t)}
            for side, t in (("image", self.image), ("text", self.text))
        }
