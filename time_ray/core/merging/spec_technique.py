"""Techniques that exist only as specs (``spec(..., executable=True)``, e.g. TSV-M, Iso-C): each is
registered as a technique by an adapter that materialises the models and runs the spec itself."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import field, make_dataclass
from typing import Any, ClassVar

from time_ray.core.checkpoints import Checkpoint
from time_ray.core.merging.base import TECHNIQUES, Technique, check_compatible, register
from time_ray.core.merging.spec import SPECS, Spec, State, spec_merge


class SpecTechnique(Technique):
    """An executable technique that runs its spec on materialised models (no chunking, no kernels)."""

    spec_name: ClassVar[str]
    elementwise: ClassVar[bool] = False

    def merge(
        self,
        experts: Sequence[Checkpoint],
        weights: Sequence[float] | None = None,
        base: Checkpoint | None = None,
        executor=None,
    ) -> State:
        """Runs the spec itself (``executor`` is not used: no chunking, no kernels)."""
        s = SPECS[self.spec_name]
        if not experts:
            raise ValueError("merge needs at least one checkpoint")
        if len(experts) < s.min_models or (s.max_models is not None and len(experts) > s.max_models):
            raise ValueError(f"{self.name} merges {s.min_models}..{s.max_models or 'any'} models, got {len(experts)}")
        if base is None:
            raise ValueError(f"{self.name} needs the base model theta_0 as anchor")
        check_compatible(experts, base)
        models = [{k: e[k] for k in e} for e in experts]
        return spec_merge(self.spec_name, models, weights, {k: base[k] for k in base}, **self.params())


def register_executable(s: Spec) -> None:
    """A frozen dataclass technique named ``s.name`` whose fields are the spec's parameters."""
    if s.name in TECHNIQUES:
        raise ValueError(f"technique {s.name!r} is registered twice")
    annotations = inspect.get_annotations(s.fn, eval_str=True)
    cls = make_dataclass(
        "".join(part.title() for part in s.name.split("_")),
        [(p, annotations.get(p, Any), field(default=d)) for p, d in s.params.items()],
        bases=(SpecTechnique,),
        frozen=True,
        namespace={
            "name": s.name,
            "spec_name": s.name,
            "needs_base": True,
            "min_models": s.min_models,
            "max_models": s.max_models,
            "__doc__": inspect.getdoc(s.fn),
            "__module__": __name__,
        },
    )
    globals()[cls.__name__] = cls  # found where its __module__ says: pickle (Ray) refers to it by name
    register(cls)


for _spec in list(SPECS.values()):  # the spec package imported every spec module: all are known here
    if _spec.executable:
        register_executable(_spec)
