"""Merging techniques of docs/method.md §5 beyond averaging and task arithmetic: hand-computed cases and invariants."""

import math

import pytest
import torch

from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic
from time_ray.core.errors import ConfigError
from time_ray.core.merging import (
    TECHNIQUES,
    BreadcrumbsTies,
    DareTies,
    MagMax,
    ModelStock,
    RandomPick,
    Slerp,
    TaskArithmetic,
    Ties,
    Towers,
    WeightAveraging,
    make_technique,
    technique_params,
)
from time_ray.core.merging.executor import chunk_spans
from time_ray.core.merging.select import RadixSelect, fraction_count, kth_smallest


def T(*values):
    return torch.tensor(values, dtype=torch.float32)


def zeros_like(state):
    return {k: torch.zeros_like(v) for k, v in state.items()}


def shifted(base, taus):
    """theta = theta_0 + tau, per key."""
    return {k: base[k] + taus[k] for k in base}


def assert_state_close(merged, expected, **tol):
    assert sorted(merged) == sorted(expected)
    for key in expected:
        assert torch.allclose(merged[key], expected[key], **tol), (key, merged[key], expected[key])


# --------------------------------------------------------------------------- registry


def test_registry_names_every_technique():
    assert set(TECHNIQUES) == {
        "average",
        "task_arithmetic",
        "slerp",
        "ties",
        "dare_ties",
        "breadcrumbs_ties",
        "magmax",
        "random",
        "model_stock",
        "towers",
        "tsv_m",
        "iso_c",
    }


def test_every_technique_pickles_by_reference():
    """A policy crosses to Ray's processes pickled: every technique, the generated spec-only ones too
    (TSV-M, Iso-C), must come back equal in a fresh interpreter."""
    import pickle
    import subprocess
    import sys

    techniques = [make_technique(name) for name in sorted(TECHNIQUES)]
    assert pickle.loads(pickle.dumps(techniques)) == techniques
    code = "import pickle, sys; print(*(t.name for t in pickle.loads(sys.stdin.buffer.read())))"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(techniques), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-400:]
    assert out.stdout.decode().split() == sorted(TECHNIQUES)


# --------------------------------------------------------------------------- SLERP


def test_slerp_hand_computed_on_orthogonal_tensors_and_linear_for_parallel_ones():
    a = {"visual.w": T(1.0, 0.0), "t": T(2.0, 0.0)}
    b = {"visual.w": T(0.0, 1.0), "t": T(4.0, 0.0)}  # "t": parallel -> lerp
    merged = Slerp().merge([a, b])
    s = math.sin(math.pi / 4)  # w = pi/2, sin(w/2)/sin(w)
    assert torch.allclose(merged["visual.w"], T(s, s))
    assert torch.allclose(merged["t"], T(3.0, 0.0))
    quarter = Slerp(t=0.25).merge([a, b])
    assert torch.allclose(quarter["visual.w"], T(math.cos(math.pi / 8), math.sin(math.pi / 8)))


def test_slerp_endpoints_return_the_models():
    torch.manual_seed(0)
    a = {"visual.w": torch.randn(5, 3), "t": torch.randn(7)}
    b = {"visual.w": torch.randn(5, 3), "t": torch.randn(7)}
    assert_state_close(Slerp(t=0.0).merge([a, b]), a, atol=1e-6, rtol=1e-6)
    assert_state_close(Slerp(t=1.0).merge([a, b]), b, atol=1e-6, rtol=1e-6)


def test_slerp_on_nearly_parallel_tensors_is_lerp():
    cos = 0.9996  # > 0.9995; the spherical formula would give (a + b) * 0.50005 at t = 0.5
    a, b = {"w": T(1.0, 0.0)}, {"w": T(cos, math.sqrt(1 - cos * cos))}
    merged = Slerp().merge([a, b])["w"]
    assert torch.allclose(merged, 0.5 * (a["w"] + b["w"]), rtol=0, atol=1e-7)


def test_slerp_with_t_set_ignores_weights_and_base_and_takes_two_models():
    a, b = {"w": T(1.0, 0.0)}, {"w": T(0.0, 1.0)}
    plain = Slerp(t=0.5).merge([a, b])["w"]
    assert torch.equal(Slerp(t=0.5).merge([a, b], [0.9, 0.1], base={"w": T(5.0, 5.0)})["w"], plain)
    # t unset: t is the second model's weight (0.1); the base is still ignored
    unset = Slerp().merge([a, b], [0.9, 0.1], base={"w": T(5.0, 5.0)})["w"]
    assert torch.equal(unset, Slerp(t=0.1).merge([a, b])["w"])
    with pytest.raises(ValueError, match="at most 2"):
        Slerp().merge([a, b, a])
    with pytest.raises(ValueError, match="exactly 2"):
        Slerp().merge([a])


# --------------------------------------------------------------------------- TIES

BASE3 = {"visual.w": T(0.0, 0.0, 0.0), "t": T(0.0, 0.0, 0.0, 0.0)}
TAUS3 = [
    {"visual.w": T(-1.0, 2.0, -3.0), "t": T(2.0, -1.0, 1.0, 3.0)},
    {"visual.w": T(-1.0, -2.0, -1.0), "t": T(-1.0, -1.0, 2.0, -3.0)},
    {"visual.w": T(0.0, 0.0, 0.0), "t": T(0.0, 3.0, -0.5, 0.0)},
]
EXPERTS3 = [shifted(BASE3, tau) for tau in TAUS3]


@pytest.mark.parametrize(
    "disjoint, image, text",
    [
        # text: sums [1, 1, 2.5, 0] -> signs [+, +, +, 0]; the 0 takes the text tower's sign (+3) -> +
        # image: sums [-2, 0, -4] -> [-, 0, -]; the 0 takes the image tower's sign (-2) -> -
        ("mean", T(-1.0, -2.0, -2.0), T(2.0, 3.0, 1.5, 3.0)),
        ("sum", T(-2.0, -2.0, -4.0), T(2.0, 3.0, 3.0, 3.0)),
        ("max", T(-1.0, -2.0, -3.0), T(2.0, 3.0, 2.0, 3.0)),
    ],
)
def test_ties_elect_and_disjoint_merge_hand_computed(disjoint, image, text):
    merged = Ties(prune=0.0, disjoint=disjoint).merge(EXPERTS3, base=BASE3)
    assert torch.allclose(merged["visual.w"], image) and torch.allclose(merged["t"], text)
    half = Ties(lam=0.5, prune=0.0, disjoint=disjoint).merge(EXPERTS3, base=BASE3)
    assert torch.allclose(half["t"], 0.5 * text)


def test_ties_zero_sum_entry_follows_a_negative_tower_majority():
    base = {"t": T(1.0, 1.0, 1.0, 1.0)}
    experts = [shifted(base, {"t": T(2.0, -1.0, -1.0, -1.0)}), shifted(base, {"t": T(-2.0, -1.0, -1.0, 0.0)})]
    # sums [0, -2, -2, -1]: the tower sign is -, so entry 0 keeps the agreeing -2
    merged = Ties(prune=0.0).merge(experts, base=base)
    assert torch.allclose(merged["t"], T(-1.0, 0.0, 0.0, 0.0))


def test_ties_threshold_is_global_per_tower_not_per_tensor():
    base = {"visual.w": torch.zeros(4), "t1": torch.zeros(3), "t2": torch.zeros(3)}
    tau = {"visual.w": T(1.0, 2.0, 3.0, 4.0), "t1": T(0.1, -0.2, 0.3), "t2": T(3.0, -4.0, 5.0)}
    merged = Ties(prune=0.5).merge([shifted(base, tau)], base=base)
    # text tower: N = 6, k = 3, 3rd smallest |tau| = 0.3 -> t1 keeps only 0.3 (per tensor: k = 1, t1 kept whole)
    assert torch.allclose(merged["t1"], T(0.0, 0.0, 0.3))
    assert torch.allclose(merged["t2"], tau["t2"])
    # image tower: N = 4, k = 2, 2nd smallest = 2 (one threshold over both towers would be 2 and empty t1)
    assert torch.allclose(merged["visual.w"], T(0.0, 2.0, 3.0, 4.0))


def test_ties_keeps_every_entry_at_the_threshold_and_reads_p_as_written():
    base = {"t": torch.zeros(100)}
    tau = {"t": torch.arange(1, 101, dtype=torch.float32)}
    merged = Ties(prune=0.29).merge([tau], base=base)["t"]  # k = 29 (not floor(28.999..) = 28): keep |tau| >= 29
    assert int((merged == 0).sum()) == 28 and merged[28] == 29.0
    ties = {"t": T(1.0, 1.0, 1.0, 2.0)}
    merged = Ties(prune=0.5).merge([ties], base={"t": torch.zeros(4)})["t"]  # 2nd smallest = 1: all kept
    assert torch.equal(merged, ties["t"])
    assert fraction_count(100, 0.29) == 29 and fraction_count(10, 0.0) == 0


@pytest.mark.parametrize(
    "technique", [Ties(prune=0.0), Ties(prune=0.0, disjoint="max"), MagMax(), WeightAveraging(), RandomPick(seed=3)]
)
def test_merging_copies_of_one_expert_returns_it(technique):
    merged = technique.merge([EXPERTS3[0]] * 3, base=BASE3)
    assert_state_close(merged, EXPERTS3[0])


# --------------------------------------------------------------------------- DARE-TIES


def random_state(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {
        "visual.w": scale * torch.randn(6, 5, generator=g),
        "visual.b": scale * torch.randn(7, generator=g),
        "t": scale * torch.randn(4, 3, generator=g),
        "logit_scale": scale * torch.randn((), generator=g),
        "step": torch.tensor([7]),
    }


@pytest.mark.parametrize("disjoint", ["mean", "sum", "max"])
def test_dare_with_p_zero_equals_ties_with_p_zero(disjoint):
    base = random_state(0)
    experts = [random_state(s) for s in (1, 2, 3)]
    dare = DareTies(prune=0.0, disjoint=disjoint, seed=5).merge(experts, base=base)
    ties = Ties(prune=0.0, disjoint=disjoint).merge(experts, base=base)
    assert_state_close(dare, ties, atol=0, rtol=0)
    crumbs = BreadcrumbsTies(prune=0.0, top=0.0, disjoint=disjoint).merge(experts, base=base)
    assert_state_close(crumbs, ties, atol=0, rtol=0)


def test_dare_drops_exactly_floor_np_per_tower_and_rescales_the_rest():
    base = zeros_like(random_state(0))
    ones = {k: torch.ones_like(v) if v.is_floating_point() else v for k, v in base.items()}
    merged = DareTies(prune=0.3, seed=1).merge([ones], base=base)
    image = torch.cat([merged["visual.w"].flatten(), merged["visual.b"]])  # N = 37 -> 11 dropped
    text = torch.cat([merged["t"].flatten(), merged["logit_scale"].view(1)])  # N = 13 -> 3 dropped
    assert int((image == 0).sum()) == 11 and int((text == 0).sum()) == 3
    kept = torch.cat([image[image != 0], text[text != 0]])
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7))
    assert torch.equal(merged["step"], ones["step"])
    both = DareTies(prune=0.5, disjoint="sum", seed=1).merge([ones, ones], base=base)["visual.w"]
    assert bool((both == 2.0).any())  # each expert draws its own entries: some kept by one of the two only


def test_dare_is_reproducible_by_seed_and_drops_each_entry_about_p_of_the_time():
    base = random_state(0)
    experts = [random_state(1), random_state(2)]
    first = DareTies(prune=0.5, seed=4).merge(experts, base=base)
    assert_state_close(DareTies(prune=0.5, seed=4).merge(experts, base=base), first, atol=0, rtol=0)
    other = DareTies(prune=0.5, seed=5).merge(experts, base=base)
    assert not torch.equal(other["visual.w"], first["visual.w"])
    ones = {"w": torch.ones(20)}
    dropped = sum(
        (DareTies(prune=0.25, seed=s).merge([ones], base={"w": torch.zeros(20)})["w"] == 0).float() for s in range(400)
    )
    assert dropped.sum() == 400 * 5  # exactly 5 of 20 each time
    assert dropped.min() > 60 and dropped.max() < 140  # about 100 each: uniform, not always the same entries


# --------------------------------------------------------------------------- Breadcrumbs-TIES


def test_breadcrumbs_drops_both_tails_per_tower_and_sums_by_default():
    base = {"visual.w": torch.zeros(10), "t": torch.zeros(4)}
    a = {"visual.w": torch.arange(1.0, 11.0), "t": T(1.0, 2.0, 3.0, 4.0)}
    b = {"visual.w": torch.ones(10), "t": T(-1.0, -1.0, -1.0, -1.0)}
    technique = BreadcrumbsTies(prune=0.2, top=0.1)
    assert technique.disjoint == "sum"
    merged = technique.merge([a, b], base=base)
    # image, N = 10: a drops floor(2) = 2 at the bottom (1, 2) and floor(1) = 1 at the top (10), keeping
    # 3rd smallest (3) <= |tau| <= 9th smallest (9); b: all ones, every entry at both thresholds: all kept
    assert torch.allclose(merged["visual.w"], T(1.0, 1.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 1.0))
    # text, N = 4: floor(0.8) = 0 and floor(0.4) = 0 -> nothing dropped (a ceil at the top would drop the 4)
    # sums [0, 1, 2, 3]: entry 0 takes the tower sign (+), agreeing sum: a's 1 -> 1
    assert torch.allclose(merged["t"], T(1.0, 2.0, 3.0, 4.0))


# --------------------------------------------------------------------------- MagMax, Random, Model Stock


def test_magmax_takes_the_largest_magnitude_per_entry():
    merged = MagMax(lam=0.5).merge(EXPERTS3, base=BASE3)
    assert torch.allclose(merged["visual.w"], 0.5 * T(-1.0, 2.0, -3.0))
    assert torch.allclose(merged["t"], 0.5 * T(2.0, 3.0, 2.0, 3.0))  # |3| vs |-3|: the first expert


def test_random_picks_one_experts_tau_per_entry_reproducibly():
    base = random_state(0)
    experts = [random_state(s) for s in (1, 2, 3)]
    merged = RandomPick(seed=7).merge(experts, base=base)
    assert_state_close(RandomPick(seed=7).merge(experts, base=base), merged, atol=0, rtol=0)
    other = RandomPick(seed=8).merge(experts, base=base)
    assert not torch.equal(other["visual.w"], merged["visual.w"])
    stacked = torch.stack([e["visual.w"] for e in experts])
    same = torch.isclose(stacked, merged["visual.w"], rtol=0, atol=1e-6)
    assert bool(same.any(0).all())  # each entry is one expert's value
    picked = same.float().sum((1, 2))
    assert bool((picked > 0).all())  # every expert is drawn somewhere
    doubled = RandomPick(lam=2.0, seed=7).merge(experts, base=base)
    assert torch.allclose(doubled["t"], base["t"] + 2 * (merged["t"] - base["t"]), atol=1e-6)


def test_model_stock_hand_computed():
    base = {"w": T(1.0, 1.0)}
    a, b = {"w": T(2.0, 1.0)}, {"w": T(2.0, 2.0)}  # tau = [1, 0], [1, 1]: cos = 1/sqrt(2)
    cos = 1 / math.sqrt(2)
    r = 2 * cos / (cos + 1)
    expected = r * T(2.0, 1.5) + (1 - r) * T(1.0, 1.0)
    assert torch.allclose(ModelStock().merge([a, b], base=base)["w"], expected)
    orthogonal = ModelStock().merge([{"w": T(2.0, 1.0)}, {"w": T(1.0, 2.0)}], base=base)["w"]
    assert torch.allclose(orthogonal, base["w"])  # cos = 0 -> r = 0 -> theta_0


def test_model_stock_with_identical_task_vectors_is_the_average():
    base = random_state(0)
    a = random_state(1)
    b = {k: (a[k] if not v.is_floating_point() else a[k] + 0.0) for k, v in a.items()}
    merged = ModelStock().merge([a, b], base=base)
    assert_state_close(merged, WeightAveraging().merge([a, b]), atol=1e-6)
    with pytest.raises(ValueError, match="at most 2"):
        ModelStock().merge([a, b, a], base=base)


# --------------------------------------------------------------------------- LiNeS

LINES_BASE = {
    "visual.transformer.resblocks.0.w": T(0.0),
    "visual.transformer.resblocks.1.w": T(0.0),
    "visual.proj": T(0.0),
    "transformer.resblocks.0.w": T(0.0),
    "transformer.resblocks.1.w": T(0.0),
    "transformer.resblocks.2.w": T(0.0),
    "logit_scale": T(1.0),
}
LINES_EXPERTS = [{k: v + 1.0 for k, v in LINES_BASE.items()}, {k: v + 3.0 for k, v in LINES_BASE.items()}]


@pytest.mark.parametrize(
    "lines, text_middle", [("linear", 0.75), ("quadratic", 0.625), ("sqrt", 0.5 + 0.5 * math.sqrt(0.5))]
)
def test_lines_scales_the_task_vector_per_layer_and_tower(lines, text_middle):
    # image: L = 2 -> blocks 0, 1 get 0.5, 1.0; text: L = 3 -> 0.5, f(1/2), 1.0; others alpha = 0.5
    scales = [0.5, 1.0, 0.5, 0.5, text_middle, 1.0, 0.5]
    ta = TaskArithmetic(lam=7.0, lines=lines).merge(LINES_EXPERTS, base=LINES_BASE)  # tau sum = 4, lam unused
    avg = WeightAveraging(lines=lines).merge(LINES_EXPERTS, base=LINES_BASE)  # average tau = 2
    ties = Ties(prune=0.0, lines=lines).merge(LINES_EXPERTS, base=LINES_BASE)  # mean tau = 2
    for (key, theta_0), s in zip(LINES_BASE.items(), scales):
        assert torch.allclose(ta[key], theta_0 + 4 * s), key
        assert torch.allclose(avg[key], theta_0 + 2 * s), key
        assert torch.allclose(ties[key], theta_0 + 2 * s), key


def test_lines_alpha_beta_and_averaging_needs_the_base():
    merged = TaskArithmetic(lines="linear", alpha=0.2, beta=0.6).merge(LINES_EXPERTS, base=LINES_BASE)
    assert torch.allclose(merged["transformer.resblocks.1.w"], T(4 * (0.2 + 0.6 * 0.5)))
    assert torch.allclose(merged["visual.proj"], T(4 * 0.2))
    with pytest.raises(ValueError, match="theta_0"):
        WeightAveraging(lines="linear").merge(LINES_EXPERTS)
    assert technique_params(WeightAveraging()) == {}
    assert technique_params(Ties(lines="sqrt"))["lines"] == "sqrt"


# --------------------------------------------------------------------------- per tower settings


def test_towers_route_image_and_text_to_their_techniques():
    towers = make_technique("towers", image={"technique": "ties", "prune": 0.0, "disjoint": "sum"}, text="average")
    merged = towers.merge(EXPERTS3, base=BASE3)
    assert torch.allclose(merged["visual.w"], T(-2.0, -2.0, -4.0))  # TIES sum, image-only tower sign
    assert torch.allclose(merged["t"], T(1.0 / 3, 1.0 / 3, 2.5 / 3, 0.0), atol=1e-6)  # average
    assert list(merged) == list(EXPERTS3[0])
    params = technique_params(towers)
    assert params == {
        "image": {"technique": "ties", "lambda": 1.0, "prune": 0.0, "disjoint": "sum"},
        "text": {"technique": "average"},
    }
    assert make_technique("towers", **params) == towers
    assert Towers(image={"technique": "ties", "prune": 0.0, "disjoint": "sum"}, text="average") == towers


def test_towers_name_nested_config_errors_where_they_are():
    with pytest.raises(
        ConfigError, match=r"^policies\.grid\.merge\[0\]\.image\.prune: must be in \[0, 1\), got 1\.5\.$"
    ):
        make_technique("towers", "policies.grid.merge[0].technique", image={"technique": "ties", "prune": 1.5})
    with pytest.raises(ConfigError, match=r"merge\.text: expected a technique name"):
        Towers(text=3)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("ties", {"prune": 1.2}, "merge.prune: must be in [0, 1), got 1.2."),
        ("dare_ties", {"prune": -0.1}, "merge.prune: must be in [0, 1), got -0.1."),
        ("breadcrumbs_ties", {"top": 1.0}, "merge.top: must be in [0, 1), got 1.0."),
        ("slerp", {"t": 1.5}, "merge.t: must be in [0, 1], got 1.5."),
        ("ties", {"disjoint": "median"}, "merge.disjoint: must be one of mean, sum, max, got 'median'."),
        (
            "average",
            {"lines": "cubic"},
            "merge.lines: must be null (off) or one of linear, quadratic, sqrt, got 'cubic'.",
        ),
        ("magmax", {"lambda": "big"}, "merge.lambda: must be a number, got 'big'."),
        ("task_arithmetic", {"lambda": True}, "merge.lambda: must be a number, got True."),
        ("random", {"seed": 1.5}, "merge.seed: must be an integer, got 1.5."),
        ("ties", {"alpha": None, "lines": "linear"}, "merge.alpha: must be a number, got None."),
    ],
)
def test_invalid_parameters_name_the_field_and_the_allowed_values(name, params, message):
    with pytest.raises(ConfigError) as error:
        make_technique(name, **params)
    assert str(error.value) == message


def test_config_names_map_to_parameters():
    ties = make_technique("dare_ties", **{"lambda": 0.8, "prune": 0.7, "seed": 2, "disjoint": "max"})
    assert (ties.lam, ties.prune, ties.seed, ties.disjoint) == (0.8, 0.7, 2, "max")
    assert technique_params(ties) == {"lambda": 0.8, "prune": 0.7, "disjoint": "max", "seed": 2}
    with pytest.raises(ConfigError, match="has no parameter 'top'"):
        make_technique("ties", top=0.1)


# --------------------------------------------------------------------------- exact k-th value


@pytest.mark.parametrize("sizes", [[(1,)], [(7,), ()], [(100, 30), (13,), (5, 5, 5)], [(4000,), (1000, 3)]])
@pytest.mark.parametrize("kind", ["normal", "duplicates", "zeros", "wide"])
def test_kth_smallest_equals_torch_kthvalue(sizes, kind):
    g = torch.Generator().manual_seed(len(sizes) * 31 + len(kind))
    make = {
        "normal": lambda s: torch.randn(s, generator=g).abs(),
        "duplicates": lambda s: torch.randint(0, 4, s, generator=g).float() * 0.5,
        "zeros": lambda s: torch.zeros(s),
        "wide": lambda s: torch.randn(s, generator=g).abs() * 10.0 ** torch.randint(-30, 30, s, generator=g).float(),
    }[kind]
    tensors = [make(s) for s in sizes]
    flat = torch.cat([t.flatten() for t in tensors])
    n = flat.numel()
    for k in sorted({1, min(2, n), n // 3 + 1, n // 2 + 1, max(n - 1, 1), n, fraction_count(n, 0.2) or 1}):
        assert kth_smallest(tensors, k).item() == torch.kthvalue(flat, k).values.item(), (k, n)


def test_radix_select_counts_the_values_below_and_rejects_bad_input():
    values = T(3.0, 1.0, 2.0, 2.0, 2.0, 5.0)
    select = RadixSelect()
    keys = values.view(torch.int32)
    select.count_high(keys)
    select.locate([1, 3, 4, 5, 6])
    select.count_low(keys)
    found = [(torch.tensor(k, dtype=torch.int32).view(torch.float32).item(), below) for k, below in select.results()]
    assert found == [(1.0, 0), (2.0, 1), (2.0, 1), (3.0, 4), (5.0, 5)]
    with pytest.raises(ValueError, match="k must be in"):
        kth_smallest([values], 7)
    with pytest.raises(ValueError, match="non-negative"):
        kth_smallest([T(-1.0)], 1)


# --------------------------------------------------------------------------- checkpoints and dtypes

ALL = [
    WeightAveraging(),
    TaskArithmetic(lam=0.5),
    Ties(),
    DareTies(seed=3),
    BreadcrumbsTies(),
    MagMax(),
    RandomPick(seed=1),
    Ties(lines="linear"),
    Towers(image=Ties(prune=0.5), text=MagMax()),
]
TWO = [Slerp(t=0.3), ModelStock()]


@pytest.mark.parametrize("technique", ALL + TWO, ids=lambda t: t.name)
def test_lazy_safetensors_inputs_merge_like_dicts(technique, tmp_path):
    base, experts = random_state(0), [random_state(s, scale=0.5) for s in (1, 2)]
    paths = []
    for i, state in enumerate([base, *experts]):
        save_atomic(state, tmp_path / f"m{i}.safetensors")
        paths.append(tmp_path / f"m{i}.safetensors")
    lazy = [SafetensorsCheckpoint(p) for p in paths]
    from_files = technique.merge(lazy[1:], base=lazy[0])
    assert_state_close(from_files, technique.merge(experts, base=base), atol=0, rtol=0)
    assert torch.equal(from_files["step"], torch.tensor([7]))


@pytest.mark.parametrize("technique", ALL + TWO, ids=lambda t: t.name)
def test_half_precision_in_half_precision_out(technique):
    base = {k: v.half() if v.is_floating_point() else v for k, v in random_state(0).items()}
    experts = [{k: v.half() if v.is_floating_point() else v for k, v in random_state(s).items()} for s in (1, 2)]
    merged = technique.merge(experts, base=base)
    assert all(merged[k].dtype == base[k].dtype and merged[k].shape == base[k].shape for k in base)
    # model_stock too: a scalar (logit_scale) is averaged, not put at the formula's pole cos = -1
    assert all(torch.isfinite(merged[k].float()).all() for k in base)


# --------------------------------------------------------------------------- chunked merging

CHUNKED = [
    WeightAveraging(),
    WeightAveraging(lines="sqrt"),
    TaskArithmetic(lam=0.7),
    TaskArithmetic(lines="linear"),
    Ties(),
    Ties(prune=0.0),
    Ties(disjoint="max"),
    Ties(prune=0.3, disjoint="sum", lines="quadratic"),
    DareTies(prune=0.4, seed=2),
    DareTies(prune=0.5, disjoint="max", seed=9),
    BreadcrumbsTies(prune=0.1, top=0.05),
    MagMax(lam=0.9),
    RandomPick(seed=5),
    Towers(image=DareTies(prune=0.3, seed=1), text=RandomPick(seed=2)),
]


@pytest.mark.parametrize("technique", CHUNKED, ids=lambda t: t.name)
def test_chunking_a_tensor_does_not_change_the_merge(technique, monkeypatch):
    """Element-wise techniques merge a tensor in chunks of base.CHUNK entries: any chunk size gives the same
    bits (the thresholds, DARE's random scores and exact drop count, Random's picks, TIES' signs and sums)."""
    import time_ray.core.merging.base as merging_base

    g = torch.Generator().manual_seed(11)
    shapes = {
        "visual.transformer.resblocks.0.w": (13, 5),
        "visual.transformer.resblocks.1.w": (29,),
        "visual.b": (3,),
        "transformer.resblocks.0.w": (7, 3, 2),
        "transformer.resblocks.1.w": (6,),
        "t": (17,),
        "logit_scale": (),
    }
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base["t"][12:] = 0.0
    taus = [{k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()} for _ in range(4)]
    for k, tau in enumerate(taus):
        tau["t"][:6] = 0.0  # exact zeros and ties of |tau| (threshold ties)
        tau["t"][6:12] = 0.25
        tau["t"][12:] = (1 - 2 * k) * taus[0]["t"][12:] if k < 2 else 0.0  # tau sums exactly 0: sign left to the tower
    experts = [shifted(base, tau) | {"step": torch.tensor([3])} for tau in taus]
    base["step"] = torch.tensor([3])
    whole = technique.merge(experts, base=base)
    for chunk in (1, 7, 16):
        monkeypatch.setattr(merging_base, "CHUNK", chunk)
        chunked = technique.merge(experts, base=base)
        assert sorted(chunked) == sorted(whole)
        for key in whole:
            assert chunked[key].shape == whole[key].shape and torch.equal(chunked[key], whole[key]), (chunk, key)
    assert chunk_spans(17, 16) == [(0, 16), (16, 17)] and chunk_spans(16, 16) == [(0, 16)]
