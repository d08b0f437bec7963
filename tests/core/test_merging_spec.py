"""The executable merging techniques (time_ray/core/merging: chunked, fused kernels) equal their specs
(time_ray/core/merging/spec: whole tensors, paper-like), for every technique in TECHNIQUES that has a spec,
x chunking (7, 64 entries / default) x k in {1, 2, 5}
x a few parameter values x three kinds of inputs:

* ``grid``: theta_0 and tau_k on a dyadic grid (multiples of 1/64, |tau| <= 1/8): every subtraction and
  addition is exact, few distinct magnitudes (ties at every threshold) and many task-vector sums exactly 0
  (their sign is the tower's majority);
* ``gaussian``: theta_0 ~ N(0, 1), tau_k ~ N(0, 0.1^2);
* ``wide``: theta_0 and theta_k drawn apart, ~ N(0, 1): theta_k - theta_0 often rounds (theta_0 + tau_k
  computed from a rounded sum theta_k = theta_0 + tau would give theta_k back: not these).

Bit-identical (``torch.equal``) everywhere but one place: a spec sees the experts only as task vectors
(``spec_merge`` passes tau_k = theta_k - theta_0), so the techniques on the weights themselves (averaging,
SLERP, Model Stock) merge theta_0 + tau_k, which is theta_k only when no rounding got in the way. On
``grid`` and ``gaussian`` inputs (theta_k made as theta_0 + tau) it gives theta_k back, and they are
bit-identical there too; on ``wide`` inputs theta_0 + tau_k is off by an ulp of theta_k in about a third of
the entries, hence a tolerance there (a few ulps of |theta| ~ 1).
"""

from dataclasses import fields

import pytest
import torch

import time_ray.core.merging.base as merging_base
import time_ray.core.merging.spec.dense  # noqa: F401  (registers the dense specs)
import time_ray.core.merging.spec.generalized  # noqa: F401  (registers TIES & co. and towers)
from time_ray.core.merging import TECHNIQUES, make_technique
from time_ray.core.merging.executor import MergeExecutor
from time_ray.core.merging.spec import SPECS, spec_merge
from time_ray.core.merging.spec.generalized import count
from time_ray.core.merging.spec_technique import SpecTechnique

SHAPES = {
    "visual.transformer.resblocks.0.attn.in_proj_weight": (12, 5),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (12,),
    "visual.transformer.resblocks.1.mlp.c_fc.weight": (8, 4),
    "visual.transformer.resblocks.2.ln_1.weight": (9,),
    "visual.proj": (6, 4),
    "transformer.resblocks.0.attn.out_proj.weight": (7, 3, 2),
    "transformer.resblocks.1.mlp.c_proj.bias": (11,),
    "token_embedding.weight": (10, 3),
    "ln_final.bias": (5,),
    "logit_scale": (),
}
KINDS = ("grid", "gaussian", "wide")
RAW_WEIGHTS = {"average", "slerp", "model_stock"}  # techniques on theta_k itself, not on tau_k

# (technique, parameters): a few values of each parameter; unlisted techniques with a spec run with defaults
CASES = [
    ("average", {}),
    ("average", {"lines": "linear"}),
    ("average", {"lines": "sqrt", "alpha": 0.2, "beta": 1.0}),
    ("task_arithmetic", {}),
    ("task_arithmetic", {"lam": 0.3}),
    ("task_arithmetic", {"lam": 0.3, "lines": "quadratic", "alpha": 0.3, "beta": 0.7}),
    ("slerp", {}),
    ("slerp", {"t": 0.3}),
    ("slerp", {"t": 1.0}),
    ("magmax", {}),
    ("magmax", {"lam": 0.5}),
    ("random", {}),
    ("random", {"seed": 3, "lam": 0.7}),
    ("model_stock", {}),
    ("ties", {"prune": 0.0}),
    ("ties", {}),
    ("ties", {"prune": 0.5, "disjoint": "sum", "lam": 0.8}),
    ("ties", {"prune": 0.3, "disjoint": "max", "lines": "linear"}),
    ("dare_ties", {"prune": 0.0}),
    ("dare_ties", {"prune": 0.3, "seed": 2}),
    ("dare_ties", {"prune": 0.6, "disjoint": "max", "seed": 9}),
    ("dare_ties", {"prune": 0.4, "disjoint": "sum", "lines": "sqrt", "alpha": 0.1, "beta": 0.9}),
    ("breadcrumbs_ties", {}),
    ("breadcrumbs_ties", {"prune": 0.1, "top": 0.1, "disjoint": "mean"}),
    ("breadcrumbs_ties", {"prune": 0.3, "top": 0.0, "disjoint": "max", "lam": 0.6}),
    ("breadcrumbs_ties", {"prune": 0.5, "top": 0.6}),  # the thresholds cross: only ties survive
    ("towers", {"image": {"technique": "ties", "prune": 0.3}, "text": {"technique": "random", "seed": 2}}),
    (
        "towers",
        {
            "image": {"technique": "average", "lines": "sqrt"},
            "text": {"technique": "dare_ties", "prune": 0.4, "seed": 1, "lines": "linear"},
        },
    ),
]


def has_oracle(name: str) -> bool:
    """A spec that is not itself the executable technique (spec-only techniques are their own spec)."""
    return name in SPECS and not issubclass(TECHNIQUES[name], SpecTechnique)


def matrix():
    listed = {name for name, _ in CASES}
    cases = CASES + [(name, {}) for name in sorted(TECHNIQUES) if has_oracle(name) and name not in listed]
    for name, params in cases:
        if name not in TECHNIQUES or not has_oracle(name):
            continue
        cls = TECHNIQUES[name]
        for k in (1, 2, 5):
            if k >= cls.min_models and (cls.max_models is None or k <= cls.max_models):
                label = ",".join(f"{p}={v if not isinstance(v, dict) else v['technique']}" for p, v in params.items())
                yield pytest.param(name, params, k, id=f"{name}[{label}]-k{k}")


def models(kind: str, k: int, seed: int = 0):
    """theta_0 and k experts over both towers (an integer buffer included, copied, never merged)."""
    g = torch.Generator().manual_seed(seed)

    def draw(shape, scale, grid):
        if kind == "grid":
            return torch.randint(-grid, grid + 1, shape, generator=g).float() / 64
        return torch.randn(shape, generator=g) * scale

    base = {key: draw(shape, 1.0, 64) for key, shape in SHAPES.items()}
    if kind == "wide":  # theta_k drawn on its own, not as theta_0 + tau (whose difference is exact)
        experts = [{key: draw(v.shape, 1.0, 0) for key, v in base.items()} for _ in range(k)]
    else:
        experts = [{key: v + draw(v.shape, 0.1, 8) for key, v in base.items()} for _ in range(k)]
    buffer = {"visual.bn.num_batches_tracked": torch.tensor(7)}
    return [e | buffer for e in experts], base | buffer


def weights_for(k: int) -> list[float]:
    """Non-uniform weights summing to 1 (SLERP without t takes t = the second weight)."""
    w = torch.arange(k, 0, -1, dtype=torch.float64)
    return (w / w.sum()).tolist()


@pytest.fixture(params=[7, 64, None], ids=["chunk7", "chunk64", "chunk-default"])
def chunking(request, monkeypatch):
    if request.param is not None:
        monkeypatch.setattr(merging_base, "CHUNK", request.param)


def on_raw_weights(name: str, params: dict) -> bool:
    if name == "towers":
        sides = [params.get(side, "average") for side in ("image", "text")]
        return any((s if isinstance(s, str) else s["technique"]) in RAW_WEIGHTS for s in sides)
    return name in RAW_WEIGHTS


@pytest.mark.parametrize("name, params, k", list(matrix()))
def test_technique_equals_its_spec(name, params, k, chunking):
    technique = make_technique(name, **params)
    for kind in KINDS:
        experts, base = models(kind, k, seed=k)
        weights = weights_for(k)
        ours = technique.merge(experts, weights, base=base, executor=MergeExecutor())
        spec = spec_merge(name, experts, weights, base, **technique.params())
        assert list(ours) == list(spec) == list(base)
        for key in base:
            assert ours[key].dtype == spec[key].dtype and ours[key].shape == spec[key].shape, key
            if kind == "wide" and on_raw_weights(name, params):
                # theta_0 + tau_k is theta_k to within an ulp (|theta_k| ~ 1 here): see the docstring
                torch.testing.assert_close(ours[key], spec[key], rtol=1e-6, atol=1e-6, msg=f"{kind} {key}")
            else:
                assert torch.equal(ours[key], spec[key]), (kind, key, (ours[key] - spec[key]).abs().max())


def test_the_grid_inputs_have_ties_at_the_thresholds_and_zero_sums():
    """What makes the grid inputs hard: the thresholds fall inside runs of equal magnitudes, and some
    task-vector sums are exactly 0 while their entries are not (the tower's majority decides their sign)."""
    experts, base = models("grid", 5, seed=5)
    image = [k for k in base if k.startswith("visual.") and base[k].is_floating_point()]
    taus = torch.stack([torch.cat([(e[k] - base[k]).flatten() for k in image]) for e in experts])
    magnitudes = taus[0].abs()
    for prune in (0.2, 0.3, 0.5):
        kth = torch.kthvalue(magnitudes, count(magnitudes.numel(), prune)).values
        assert int((magnitudes == kth).sum()) > 1, prune
    assert bool(((taus.sum(0) == 0) & (taus != 0).any(0)).any())


def test_every_technique_with_a_spec_has_its_parameters_and_defaults():
    """A spec takes the technique's dataclass fields as keyword parameters, with the same defaults; the
    dense and TIES-family techniques all have one."""
    assert {"average", "task_arithmetic", "slerp", "magmax", "random", "model_stock"} <= set(SPECS)
    assert {"ties", "dare_ties", "breadcrumbs_ties", "towers"} <= set(SPECS)
    for name in filter(has_oracle, TECHNIQUES):
        technique = TECHNIQUES[name]()
        defaults = {f.name: getattr(technique, f.name) for f in fields(technique)}
        if name == "towers":  # technique instances; the spec takes their names
            defaults = {side: t.name for side, t in defaults.items()}
        assert SPECS[name].params == defaults, name
        assert (SPECS[name].min_models, SPECS[name].max_models) == (technique.min_models, technique.max_models)
