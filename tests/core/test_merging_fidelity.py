"""Fidelity of three merging techniques to the TIME authors' code (fomo_in_flux ``continual_lib/merge.py``),
pinned against hand-computed values on small tensors:

* Breadcrumbs-TIES drops exactly floor(N p) entries at the bottom and floor(N top) at the top of each
  expert's tower ranked by |tau| (``BreadcrumbsTIES.filter_tensor_nd_magnitude``), in the executor's
  kernels and in the spec alike;
* SLERP with t unset takes t from the strategy's weights (the second model's weight); a set t wins;
* Model Stock plainly averages one-entry tensors (logit_scale) and keeps its formula for the others.
"""

import math

import pytest
import torch

from time_ray.config import expand_trials, load_config
from time_ray.core.checkpoints import save_atomic
from time_ray.core.merging import BreadcrumbsTies, ModelStock, Slerp, make_technique, technique_params
from time_ray.core.merging.spec import spec_merge
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import Policy, deploy_weights, init_weights


def T(*values):
    return torch.tensor(values, dtype=torch.float32)


def kept_magnitudes(technique, tau):
    """The |tau| one expert keeps (theta_0 = 0, so the merge of one expert is its sparsified tau)."""
    merged = technique.merge([tau], base={k: torch.zeros_like(v) for k, v in tau.items()})
    return {k: v.abs() for k, v in merged.items()}


# --------------------------------------------------------------------------- Breadcrumbs-TIES

# |tau| = 1..10 in scrambled order with mixed signs: the ranks, not the positions, decide
SCRAMBLED = T(-7.0, 3.0, 10.0, -1.0, 5.0, -9.0, 2.0, 8.0, -6.0, 4.0)


@pytest.mark.parametrize(
    "prune, top, kept",
    [
        (0.15, 0.25, range(2, 9)),  # floor(1.5) = 1 at the bottom, floor(2.5) = 2 at the top (old: 0 and ceil = 3)
        (0.2, 0.1, range(3, 10)),  # floor(2) = 2 and floor(1) = 1 (old: 1 at the bottom)
        (0.29, 0.0, range(3, 11)),  # floor(2.9) = 2, nothing at the top (old: 1)
        (0.0, 0.05, range(1, 11)),  # floor(0) = 0 and floor(0.5) = 0: nothing dropped (old: ceil(0.5) = 1 at the top)
        (0.05, 0.3, range(1, 8)),  # 0 at the bottom, floor(3) = 3 at the top
    ],
)
def test_breadcrumbs_drops_floor_np_at_the_bottom_and_floor_n_top_at_the_top(prune, top, kept):
    technique = BreadcrumbsTies(prune=prune, top=top)
    got = kept_magnitudes(technique, {"visual.w": SCRAMBLED})["visual.w"]
    expected = torch.where(torch.isin(SCRAMBLED.abs(), T(*kept)), SCRAMBLED.abs(), 0.0)
    assert torch.equal(got, expected), (got, expected)


def test_breadcrumbs_n10_p015_top025_drops_one_bottom_and_two_top_entries():
    merged = BreadcrumbsTies(prune=0.15, top=0.25).merge([{"visual.w": SCRAMBLED}], base={"visual.w": torch.zeros(10)})
    w = merged["visual.w"]
    assert int((w == 0).sum()) == 3
    assert w[3] == 0 and w[2] == 0 and w[5] == 0  # |tau| = 1 (bottom), 10 and 9 (top)
    assert torch.equal(w[w != 0], T(-7.0, 3.0, 5.0, 2.0, 8.0, -6.0, 4.0))  # kept entries untouched (sum, one expert)


def test_breadcrumbs_reads_p_as_written_on_a_tower_of_100():
    tau = {"t": torch.arange(1, 101, dtype=torch.float32)}
    got = kept_magnitudes(BreadcrumbsTies(prune=0.29, top=0.07), tau)["t"]  # floor(29) = 29, floor(7) = 7
    assert torch.equal(got, torch.where((tau["t"] >= 30) & (tau["t"] <= 93), tau["t"], 0.0))


def test_breadcrumbs_ranks_over_the_whole_tower_not_per_tensor():
    """The authors flatten each merged module (vision backbone, text head) into one vector: thresholds are
    per expert and tower. Image tower: a = 1..5, b = 6..10 (N = 10): p = 0.2 drops 1, 2 (both in a), top =
    0.1 drops 10 (in b); per tensor (N = 5) it would drop one entry of each tensor at the bottom and none
    at the top. Text tower: N = 4, floor(0.8) = floor(0.4) = 0: nothing."""
    tau = {"visual.a": T(3.0, 1.0, 5.0, 2.0, 4.0), "visual.b": T(6.0, 10.0, 8.0, 7.0, 9.0), "t": T(4.0, 3.0, 2.0, 1.0)}
    got = kept_magnitudes(BreadcrumbsTies(prune=0.2, top=0.1), tau)
    assert torch.equal(got["visual.a"], T(3.0, 0.0, 5.0, 0.0, 4.0))
    assert torch.equal(got["visual.b"], T(6.0, 0.0, 8.0, 7.0, 9.0))
    assert torch.equal(got["t"], tau["t"])


def test_breadcrumbs_keeps_every_entry_equal_to_a_threshold():
    """As the authors' masks (|tau| >= sorted[bottom_k], |tau| <= sorted[-top_k - 1]), ties never depend on
    position: N = 10, sorted |tau| = 1 2 2 2 3 4 5 7 9 9. p = 0.2: the 3rd smallest is 2, all three 2s stay
    (one entry dropped, not two); top = 0.1: the 9th smallest is 9, both 9s stay (none dropped, not one)."""
    tau = {"visual.w": T(2.0, -1.0, 9.0, 2.0, 5.0, -2.0, 9.0, 3.0, 7.0, 4.0)}
    got = kept_magnitudes(BreadcrumbsTies(prune=0.2, top=0.1), tau)["visual.w"]
    assert torch.equal(got, T(2.0, 0.0, 9.0, 2.0, 5.0, 2.0, 9.0, 3.0, 7.0, 4.0))


def test_breadcrumbs_kernels_and_spec_give_the_same_bits_with_several_experts():
    g = torch.Generator().manual_seed(5)
    base = {
        "visual.w": torch.randn(40, 7, generator=g),
        "visual.b": torch.randn(20, generator=g),
        "t": torch.randn(57, generator=g),
        "logit_scale": torch.tensor(4.6),
    }
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(3)]
    for technique in (BreadcrumbsTies(prune=0.15, top=0.25), BreadcrumbsTies(prune=0.3, top=0.05, disjoint="mean")):
        fused = technique.merge(experts, base=base)
        reference = spec_merge(technique.name, experts, None, base, **technique.params())
        for key in base:
            assert torch.equal(fused[key], reference[key]), key
        alone = technique.merge(experts[:1], base=base)  # one expert: dropped entries are theta_0 exactly
        image = torch.cat([(alone[k] - base[k]).flatten() for k in ("visual.w", "visual.b")])
        tau = torch.cat([(experts[0][k] - base[k]).flatten() for k in ("visual.w", "visual.b")])
        order = tau.abs().argsort()  # N = 300: 45 + 75 and 90 + 15 entries dropped (N top an integer)
        bottom, top = round(300 * technique.prune), round(300 * technique.top)
        assert bool((image[order[:bottom]] == 0).all()) and bool((image[order[-top:]] == 0).all())
        assert int((image == 0).sum()) == bottom + top


# --------------------------------------------------------------------------- SLERP


def slerp_by_hand(a, b, t):
    """The spec's formula for two 1-D tensors that are not parallel."""
    w = math.acos(float(torch.dot(a / a.norm(), b / b.norm())))
    return math.sin((1 - t) * w) / math.sin(w) * a + math.sin(t * w) / math.sin(w) * b


A = {"visual.w": T(1.0, 0.0), "t": T(2.0, 1.0, 0.0)}
B = {"visual.w": T(0.0, 1.0), "t": T(0.0, 1.0, 3.0)}


@pytest.mark.parametrize("w", [0.5, 0.3, 0.9])
def test_slerp_without_t_takes_the_second_models_weight_as_t(w):
    merged = Slerp().merge([A, B], [1 - w, w])
    for key in A:
        assert torch.allclose(merged[key], slerp_by_hand(A[key], B[key], w), atol=1e-6), key
        assert torch.equal(merged[key], Slerp(t=w).merge([A, B])[key])  # the same as t = w set by hand
    quarter = Slerp().merge([A, B], [0.75, 0.25])["visual.w"]
    assert torch.allclose(quarter, T(math.cos(math.pi / 8), math.sin(math.pi / 8)))  # w = pi/2, a quarter of it


def test_slerp_with_t_set_ignores_the_weights():
    explicit = Slerp(t=0.2).merge([A, B], [0.1, 0.9])
    for key in A:
        assert torch.allclose(explicit[key], slerp_by_hand(A[key], B[key], 0.2), atol=1e-6), key
    assert torch.equal(Slerp().merge([A, B])["visual.w"], Slerp(t=0.5).merge([A, B])["visual.w"])  # uniform: 1/2


def test_slerp_refuses_weights_that_give_no_t():
    with pytest.raises(ValueError, match="sum to 1"):
        Slerp().merge([A, B], [0.5, 0.7])
    with pytest.raises(ValueError, match="sum to 1"):
        Slerp().merge([A, B], [1.5, -0.5])
    Slerp(t=0.4).merge([A, B], [0.5, 0.7])  # t set: the weights are not used


def make_pool(tmp_path, experts):
    base = {"w": T(1.0, 0.0, 0.0)}
    save_atomic(base, tmp_path / "base.safetensors")
    pool = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors")
    for k, e in enumerate(experts, start=1):
        pool.add_expert(k, {"w": e})
    return pool, base["w"]


def test_slerp_in_the_ema_chain_follows_the_ema_weight(tmp_path):
    """r_1 = M(theta^s_1, theta_0) with weights (w, 1 - w): slerp at t = 1 - w toward theta_0; r_2 likewise."""
    e1, e2 = T(0.0, 1.0, 0.0), T(0.0, 0.0, 2.0)
    pool, theta_0 = make_pool(tmp_path, [e1, e2])
    ema_weight = 0.8
    r_1 = slerp_by_hand(e1, theta_0, 1 - ema_weight)
    r_2 = slerp_by_hand(e2, r_1, 1 - ema_weight)
    got = Policy("ema", "ema", technique=Slerp(), ema_weight=ema_weight)
    assert torch.allclose(deploy_weights(got, pool, 1)["w"], r_1, atol=1e-6)
    assert torch.allclose(deploy_weights(got, pool, 2)["w"], r_2, atol=1e-6)
    assert torch.allclose(init_weights(got, pool, 3)["w"], r_2, atol=1e-6)
    fixed = Policy("ema", "ema", technique=Slerp(t=0.5), ema_weight=ema_weight)  # explicit t: weight unused
    assert torch.allclose(deploy_weights(fixed, pool, 1)["w"], slerp_by_hand(e1, theta_0, 0.5), atol=1e-6)
    running = Policy("ema", "ema", technique=Slerp(), ema_weight="running-mean")  # w_1 = 1/2, w_2 = 1/3
    half = slerp_by_hand(e1, theta_0, 0.5)
    assert torch.allclose(deploy_weights(running, pool, 2)["w"], slerp_by_hand(e2, half, 2 / 3), atol=1e-6)
    ftzs = Policy("ft-zs", "ft-zs", technique=Slerp())  # (1/2, 1/2)
    assert torch.allclose(deploy_weights(ftzs, pool, 2)["w"], slerp_by_hand(e2, theta_0, 0.5), atol=1e-6)


def test_slerp_t_unset_round_trips_through_config_and_trials(tmp_path):
    assert Slerp().t is None and technique_params(Slerp()) == {"t": None}
    assert make_technique("slerp", **technique_params(Slerp())) == Slerp()
    assert make_technique("slerp", t=0.3) == Slerp(t=0.3)
    cfg = load_config(
        "configs/quickstart.yaml",
        [
            "policies.presets=[]",
            "policies.grid={init: [ema], deploy: [ema], merge: [slerp, {technique: slerp, t: 0.3}]}",
        ],
    )
    trials = expand_trials(cfg, flops_per_step=1e9)
    assert sorted(str(t.merge_params["t"]) for t in trials) == ["0.3", "None"]
    assert len({t.trial_id for t in trials}) == len(trials) == 2


# --------------------------------------------------------------------------- Model Stock


def test_model_stock_averages_logit_scale_and_keeps_the_formula_for_a_matrix():
    base = {
        "visual.w": T(1.0, 1.0, 1.0, 1.0).view(2, 2),
        "logit_scale": torch.tensor(1.05),
        "b": T(0.5),
        "visual.bias": T(0.0, 0.0),
    }
    a = {
        "visual.w": T(2.0, 1.0, 1.0, 1.0).view(2, 2),
        "logit_scale": torch.tensor(1.2),
        "b": T(0.7),
        "visual.bias": T(1.0, 0.0),
    }
    b = {
        "visual.w": T(2.0, 2.0, 1.0, 1.0).view(2, 2),
        "logit_scale": torch.tensor(1.0),
        "b": T(0.4),
        "visual.bias": T(0.6, 0.8),
    }
    merged = ModelStock().merge([a, b], base=base)
    # scalar and one-entry tensors, tau of opposite signs: the plain average (the formula would give r ~ -1e7)
    assert torch.allclose(merged["logit_scale"], torch.tensor(1.1))
    assert torch.allclose(merged["b"], T(0.55))
    # matrix: tau_1 = [1, 0, 0, 0], tau_2 = [1, 1, 0, 0]: cos = 1 / (sqrt(2) + 1e-8), r = 2 cos / (cos + 1 + 1e-8)
    cos = 1 / (math.sqrt(2) + 1e-8)
    r = 2 * cos / (cos + 1 + 1e-8)  # 0.8284...
    expected = r * T(2.0, 1.5, 1.0, 1.0) + (1 - r) * T(1.0, 1.0, 1.0, 1.0)
    assert torch.allclose(merged["visual.w"], expected.view(2, 2))
    assert abs(float(merged["visual.w"][0, 1]) - (1 + 0.5 * r)) < 1e-6 and abs(r - 0.828427) < 1e-5
    # a 1-D tensor of two entries keeps the formula (as the authors: every tensor, biases included):
    # tau_1 = [1, 0], tau_2 = [0.6, 0.8]: cos = 0.6 / (1 + 1e-8), r = 2 cos / (cos + 1 + 1e-8) = 0.75
    cos = 0.6 / (1 + 1e-8)
    r = 2 * cos / (cos + 1 + 1e-8)
    assert abs(r - 0.75) < 1e-6
    assert torch.allclose(merged["visual.bias"], r * T(0.8, 0.4))  # not the average [0.8, 0.4]
