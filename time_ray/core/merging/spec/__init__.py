"""The spec layer: every merging technique as a small definition that reads like its paper.

A spec takes whole models and returns the merged model:

    fn(taus, weights, theta_0, **params) -> dict[str, Tensor]

with ``taus`` the experts' task vectors tau_k = theta_k - theta_0 (fp32 state dicts, original shapes,
integer buffers left out), ``weights`` the strategy's w_k (floats, one per expert), ``theta_0`` the
base model (fp32) and ``params`` the technique's parameters under their attribute names (``lam`` for
lambda). Specs are the oracle: the executable techniques of ``time_ray.core.merging`` (optimised,
chunked, kernels) must equal them (tests/core/test_merging_spec.py). They favour legibility over speed
and memory; never call them on a real sweep's models.

A spec registered with ``executable=True`` (a technique that exists only here) is also registered as a
technique in ``TECHNIQUES`` by an adapter (``spec_technique.SpecTechnique``) that materialises the models
and calls it: adding such a technique touches only the spec layer. Its keyword-only parameters, with their
defaults and annotations, become the technique's config parameters (checked by ``base.RULES`` by name).

The spec layer imports nothing of the implementation (only ``notation``): the implementation uses it.

Modules (every module of this package is imported, and so registered, with it): ``dense`` (averaging,
task arithmetic, SLERP, MagMax, Random, Model Stock), ``generalized`` (generalized task arithmetic:
sparsifier x consensus x scale; TIES, DARE-TIES, Breadcrumbs as instances), ``svd`` (TSV-M, Iso-C),
``opcm`` (the OPCM step of the ``opcm`` strategy).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from time_ray.core.merging.notation import check_weights

State = dict[str, torch.Tensor]
SpecFn = Callable[..., State]


@dataclass(frozen=True)
class Spec:
    """A registered spec: its function and what the technique accepts."""

    name: str
    fn: SpecFn
    needs_base: bool = True
    min_models: int = 1
    max_models: int | None = None
    params: Mapping[str, Any] = field(default_factory=dict)  # keyword-only parameters and their defaults
    executable: bool = False  # also a technique (``spec_technique``): it exists only as a spec


SPECS: dict[str, Spec] = {}


def spec(
    name: str, *, needs_base: bool = True, min_models: int = 1, max_models: int | None = None, executable: bool = False
) -> Callable[[SpecFn], SpecFn]:
    """Registers ``fn`` as the spec of technique ``name`` (and, with ``executable``, as a technique)."""

    def wrap(fn: SpecFn) -> SpecFn:
        kw = {
            p.name: p.default
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        SPECS[name] = Spec(name, fn, needs_base, min_models, max_models, kw, executable)
        return fn

    return wrap


def task_vectors(experts: Sequence[Mapping[str, torch.Tensor]], base: Mapping[str, torch.Tensor]) -> list[State]:
    """tau_k = theta_k - theta_0 for every floating-point tensor, in fp32."""
    return [{k: e[k].float() - base[k].float() for k in base if base[k].is_floating_point()} for e in experts]


def spec_merge(
    name: str,
    experts: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float] | None,
    base: Mapping[str, torch.Tensor],
    **params,
) -> State:
    """The merged model by the spec of ``name``: theta_0's integer buffers kept, every floating-point
    tensor merged in fp32 and cast back to its dtype."""
    s = SPECS[name]
    w = check_weights(weights, len(experts))
    theta_0 = {k: v.float() for k, v in base.items() if v.is_floating_point()}
    merged = s.fn(task_vectors(experts, base), w, theta_0, **{**s.params, **params})
    return {k: (merged[k].to(v.dtype) if k in merged else experts[0][k].clone()) for k, v in base.items()}


def _import_every_spec_module() -> None:
    """Every module of this package registers its specs when imported: a new technique is one new module
    here (with ``@spec(executable=True)`` when only its spec exists), touching nothing else."""
    import importlib
    import pkgutil

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{module}")


_import_every_spec_module()
