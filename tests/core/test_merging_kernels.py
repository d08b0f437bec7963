"""The merge executor (its kernels, time_ray/core/merging/kernels.py) against the spec layer: the same bits
for every TIES-family variant, task arithmetic and MagMax, the DARE score hash against its written
definition, the documented order of sums over experts, and the exact fall-backs (a bracket that misses or
overflows, ties an exact count must split by position)."""

import pytest
import torch

import time_ray.core.merging.base as merging_base
import time_ray.core.merging.executor as executor_module
from time_ray.core.merging import BreadcrumbsTies, DareTies, MagMax, TaskArithmetic, Ties, kernels, scorers, select
from time_ray.core.merging.executor import MergeExecutor, ThresholdCache
from time_ray.core.merging.notation import derived_seed
from time_ray.core.merging.spec import spec_merge
from time_ray.core.merging.spec.generalized import expert_sum, hashed_scores

VARIANTS = [
    Ties(),
    Ties(prune=0.0),
    Ties(disjoint="max"),
    Ties(prune=0.3, disjoint="sum", lines="quadratic"),
    DareTies(prune=0.4, seed=2),
    DareTies(prune=0.5, disjoint="max", seed=9),
    DareTies(prune=0.0),
    BreadcrumbsTies(prune=0.1, top=0.05),
    BreadcrumbsTies(prune=0.2, top=0.1, disjoint="mean", lam=0.7),
]


def models(n_experts: int, seed: int = 11):
    """A base and experts over both towers, with exact zeros in tau, ties of |tau| at the thresholds, and
    entries whose task vectors sum to exactly 0 (their sign is left to the tower's majority)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "visual.transformer.resblocks.0.w": (130, 5),
        "visual.transformer.resblocks.1.w": (290,),
        "visual.b": (3,),
        "transformer.resblocks.0.w": (70, 3, 2),
        "transformer.resblocks.1.w": (60,),
        "t": (170,),
        "logit_scale": (),
    }
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    taus = [{k: torch.randn(s, generator=g) * 0.1 for k, s in shapes.items()} for _ in range(n_experts)]
    for k, tau in enumerate(taus):
        tau["t"][:30] = 0.0
        tau["t"][30:90] = 0.25
        tau["t"][90:130] = (1 - 2 * (k % 2)) * taus[0]["t"][90:130] if k < n_experts // 2 * 2 else 0.0
    experts = [{key: base[key] + tau[key] for key in base} | {"step": torch.tensor([3])} for tau in taus]
    return experts, base | {"step": torch.tensor([3])}


def merge_both(technique, experts, base, monkeypatch, kernel="merge_block"):
    """(the executor's result, the spec's, how many chunks the kernel ``kernel`` merged)."""
    calls = []
    merge_block = getattr(kernels, kernel)
    monkeypatch.setattr(kernels, kernel, lambda *a: calls.append(1) or merge_block(*a))
    fused = technique.merge(experts, base=base, executor=MergeExecutor())
    reference = spec_merge(technique.name, experts, None, base, **technique.params())
    return fused, reference, len(calls)


def assert_same_bits(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())


@pytest.mark.parametrize("n_experts", [1, 3, 17, 40])  # 17, 40: the sum carries runs of 16 up its levels
@pytest.mark.parametrize("technique", VARIANTS, ids=lambda t: f"{t.name}-{t.disjoint}")
def test_kernels_give_the_specs_bits(technique, n_experts, monkeypatch):
    experts, base = models(n_experts)
    fused, reference, chunks = merge_both(technique, experts, base, monkeypatch)
    assert chunks > 0  # the kernel did merge
    assert_same_bits(fused, reference)


@pytest.mark.parametrize("technique", [Ties(), DareTies(prune=0.3, seed=1), BreadcrumbsTies()], ids=lambda t: t.name)
def test_kernels_give_the_same_bits_in_any_chunking(technique, monkeypatch):
    experts, base = models(5)
    whole, _, _ = merge_both(technique, experts, base, monkeypatch)
    for chunk in (1, 7, 64):
        monkeypatch.setattr(merging_base, "CHUNK", chunk)
        monkeypatch.setattr(executor_module, "MIN_CHUNK", 1)
        chunked, reference, _ = merge_both(technique, experts, base, monkeypatch)
        assert_same_bits(chunked, whole)
        assert_same_bits(reference, whole)


def test_hashed_scores_follow_their_written_definition():
    def score(j, seed):  # the docstring's formula, in Python integers
        x = (j + seed) * 0x9E3779B97F4A7C15 % 2**64
        x ^= x >> 32
        x = x * 0xD6E8FEB86659FD93 % 2**64
        x ^= x >> 32
        return x >> 33

    seed = derived_seed(4, 1, "visual.w")
    expected = [score(j, seed) for j in range(1000, 1010)]
    assert hashed_scores(seed, 1000, 10).tolist() == expected
    big = 2**63 - 5  # j + seed past 2^63: the sums and products wrap mod 2^64
    assert hashed_scores(big, 0, 10).tolist() == [score(j, big) for j in range(10)]
    many = hashed_scores(seed, 0, 100_000)
    assert many.dtype == torch.int32 and int(many.min()) >= 0
    assert torch.equal(
        torch.cat([hashed_scores(seed, 0, 40_000), hashed_scores(seed, 40_000, 60_000)]), many
    )  # a function of the index: any chunking draws the same scores
    assert abs(float(many.double().mean()) / 2**31 - 0.5) < 0.01  # uniform on [0, 2^31)
    assert not torch.equal(hashed_scores(seed + 1, 0, 100), many[:100])


def test_dare_scores_are_the_hash_of_seed_expert_and_tensor_in_any_chunking():
    stream = DareTies(seed=7).scorer().stream(2, "visual.w")  # what the radix selection reads, chunk by chunk
    chunks = [stream(torch.zeros(5)), stream(torch.zeros(3, 4)).flatten()]
    assert torch.equal(torch.cat(chunks), hashed_scores(derived_seed(7, 2, "visual.w"), 0, 17))
    assert not torch.equal(torch.cat(chunks), hashed_scores(derived_seed(7, 1, "visual.w"), 0, 17))


def test_sums_over_experts_cascade_runs_of_16_as_documented(monkeypatch):
    """33 rows, runs of 2^4: (r_0 + ... + r_15) + (r_16 + ... + r_31) at the level above, r_32 at the bottom.
    With r_0 = 2^24 and ones after it, each one added to 2^24 in order is lost (float32 rounds 2^24 + 1 to
    2^24), but the second run's 16 ones add up to 16 first: 2^24 + 16, not the sequential 2^24."""
    rows = torch.ones(33, 1)
    rows[0], rows[32] = 2.0**24, 0.0
    assert float(expert_sum(rows)[0]) == 2.0**24 + 16
    sequential = rows[0].clone()
    for row in rows[1:]:
        sequential += row
    assert float(sequential[0]) == 2.0**24  # the order matters
    assert float(expert_sum(rows[:16])[0]) == 2.0**24  # up to 16 rows: in order
    experts, base = models(33)
    merged, reference, _ = merge_both(Ties(disjoint="sum"), experts, base, monkeypatch)
    assert_same_bits(merged, reference)  # the kernel's sums take the same order


def test_a_bracket_that_misses_or_overflows_falls_back_to_exact_radix_selection(monkeypatch):
    experts, base = models(4)
    technique = BreadcrumbsTies(prune=0.2, top=0.1)
    _, reference, _ = merge_both(technique, experts, base, monkeypatch)
    radix = []
    results = select.RadixSelect.results
    monkeypatch.setattr(select.RadixSelect, "results", lambda self, **kw: radix.append(1) or results(self, **kw))
    monkeypatch.setattr(
        scorers.MagnitudeScorer,
        "brackets",
        lambda self, e, b, ranks, sizes: {at: [(0, 1, 0.0) for _ in wanted] for at, wanted in ranks.items()},
    )  # holds no threshold
    missed, _, _ = merge_both(technique, experts, base, monkeypatch)
    assert_same_bits(missed, reference)
    assert radix  # the radix selection found the thresholds
    radix.clear()
    monkeypatch.setattr(
        scorers.MagnitudeScorer,
        "brackets",
        lambda self, e, b, ranks, sizes: {at: [(0, 2**31 - 1, 0.0) for _ in wanted] for at, wanted in ranks.items()},
    )  # holds everything...
    monkeypatch.setattr(executor_module, "INSIDE_SLACK", 3)  # ...with room for 3 scores
    overflowed, _, _ = merge_both(technique, experts, base, monkeypatch)
    assert_same_bits(overflowed, reference)
    assert radix


def test_ties_of_an_exact_count_at_the_threshold_are_split_by_position_as_in_torch(monkeypatch):
    """DARE drops exactly floor(N p) entries: when more scores equal the threshold than are to drop, the
    first ones (in flat order, across chunks) go. 2^20 random 31-bit scores hold a few hundred equal
    pairs: p is chosen so that the threshold is one of them."""
    from fractions import Fraction

    n = 1 << 20
    scores = torch.sort(hashed_scores(derived_seed(3, 0, "visual.w"), 0, n)).values
    rank = int((scores[1:] == scores[:-1]).nonzero()[0]) + 1  # the rank-th and (rank+1)-th smallest are equal
    prune = float(Fraction(2 * rank + 1, 2 * n))  # floor(n * prune) = rank
    g = torch.Generator().manual_seed(0)
    base = {"visual.w": torch.randn(n, generator=g), "t": torch.randn(5, generator=g)}
    experts = [{k: v + torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(2)]
    technique = DareTies(prune=prune, seed=3)
    _, state = technique.prepare(experts, base, MergeExecutor())
    assert state.bounds[0, "image"].ties_to_drop < state.bounds[0, "image"].equal  # ties split by position
    for chunk in (1 << 20, 1000):
        monkeypatch.setattr(merging_base, "CHUNK", chunk)
        monkeypatch.setattr(executor_module, "MIN_CHUNK", 1)
        fused, reference, chunks = merge_both(technique, experts, base, monkeypatch)
        assert chunks > 0
        assert_same_bits(fused, reference)
    alone = technique.merge(experts[:1], base=base)  # one expert: dropped entries are theta_0 exactly
    assert int((alone["visual.w"] == base["visual.w"]).sum()) == rank


@pytest.mark.parametrize(
    "technique",
    [TaskArithmetic(), TaskArithmetic(lam=0.3), TaskArithmetic(lines="sqrt")],
    ids=["lam1", "lam0.3", "lines"],
)
def test_task_arithmetic_kernel_gives_the_specs_bits(technique, monkeypatch):
    experts, base = models(6)
    fused, reference, chunks = merge_both(technique, experts, base, monkeypatch, kernel="task_sum_block")
    assert chunks and chunks == len([k for k in base if base[k].is_floating_point()])
    assert_same_bits(fused, reference)


def test_thresholds_of_file_experts_are_remembered_and_only_new_experts_are_read(tmp_path, monkeypatch):
    """A pool merges the same experts again at every timestep: their |tau| thresholds are found once (per
    content, base and rank); a new expert is the only one read for thresholds; results are unchanged."""
    from time_ray.core.checkpoints import SafetensorsCheckpoint, save_atomic

    experts, base = models(4)
    for i, state in enumerate([base] + experts):
        save_atomic(state, tmp_path / f"m{i}.safetensors")
    files = [SafetensorsCheckpoint(tmp_path / f"m{i}.safetensors") for i in range(5)]
    selected = spy_selections(monkeypatch)
    executor = MergeExecutor()
    technique = BreadcrumbsTies(prune=0.2, top=0.1)
    first = technique.merge(files[1:4], base=files[0], executor=executor)
    assert selected == [3]
    again = technique.merge(files[1:4], base=files[0], executor=executor)
    assert selected == [3] and all(torch.equal(first[k], again[k]) for k in first)
    grown = technique.merge(files[1:5], base=files[0], executor=executor)
    assert selected == [3, 1]  # only the new expert
    sharing = MergeExecutor(executor.cache)
    assert_same_bits(grown, technique.merge(experts, base=base, executor=sharing))  # dicts: no fingerprint
    assert selected == [3, 1, 4]
    Ties(prune=0.3).merge(files[1:3], base=files[0], executor=executor)  # another rank: found afresh
    assert selected == [3, 1, 4, 2]
    technique.merge(files[1:4], base=files[0], executor=MergeExecutor())  # a new executor: a new, empty cache
    assert selected == [3, 1, 4, 2, 3]


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_magmax_kernel_gives_the_specs_bits_ties_included(lam, monkeypatch):
    experts, base = models(5)
    experts[1]["t"] = experts[1]["t"].clone()
    experts[1]["t"][130:150] = base["t"][130:150] - (experts[0]["t"][130:150] - base["t"][130:150])  # +m, -m
    zero = {k: torch.zeros_like(v) for k, v in base.items()}
    signs = [
        {k: (s * torch.ones_like(v)).to(v.dtype) for k, v in base.items()} for s in (-1.0, 1.0, -1.0)
    ]  # exact ties
    technique = MagMax(lam=lam)
    calls = []
    magmax = kernels.magmax_block
    monkeypatch.setattr(kernels, "magmax_block", lambda *a: calls.append(1) or magmax(*a))
    for models_, anchor in ((experts, base), (signs, zero)):
        fused = technique.merge(models_, base=anchor, executor=MergeExecutor())
        assert_same_bits(fused, spec_merge("magmax", models_, None, anchor, lam=lam))
    assert calls
    assert torch.equal(fused["t"], -lam * torch.ones_like(base["t"]))  # the first expert reaching m decides


def test_dare_thresholds_depend_on_seed_index_and_layout_only_and_are_remembered(monkeypatch):
    experts, base = models(5)
    selected = spy_selections(monkeypatch)
    executor = MergeExecutor()
    technique = DareTies(prune=0.3, seed=4)
    technique.merge(experts[:3], base=base, executor=executor)
    grown = technique.merge(experts, base=base, executor=executor)
    assert selected == [3, 2]  # experts 4 and 5 only, drawn as the 4th and 5th
    other = [{k: v + 1.0 if v.is_floating_point() else v for k, v in e.items()} for e in experts]
    technique.merge(other, base=base, executor=executor)  # other content, same seed, indices, tensors: none
    assert selected == [3, 2]
    executor.cache.clear()
    assert_same_bits(grown, technique.merge(experts, base=base, executor=executor))
    assert selected == [3, 2, 5]
    DareTies(prune=0.3, seed=5).merge(experts[:2], base=base, executor=executor)
    assert selected == [3, 2, 5, 2]


def test_an_injected_cache_is_used_and_a_new_executor_has_its_own(monkeypatch):
    experts, base = models(4)
    selected = spy_selections(monkeypatch)
    cache = ThresholdCache()
    technique = DareTies(prune=0.3, seed=1)
    first = technique.merge(experts, base=base, executor=MergeExecutor(cache=cache))
    assert selected == [4] and len(cache) == 4 * 2 and cache.stores == 8  # (expert, tower)
    again = technique.merge(experts, base=base, executor=MergeExecutor(cache=cache))  # the cache's owner
    assert selected == [4] and cache.hits == 8
    assert_same_bits(first, again)
    fresh = MergeExecutor()
    assert fresh.cache is not cache and len(fresh.cache) == 0
    technique.merge(experts, base=base, executor=fresh)
    assert selected == [4, 4] and len(fresh.cache) == 8
    assert MergeExecutor().cache is not MergeExecutor().cache


def test_no_environment_is_read_in_the_merging_core():
    """Caches are chosen where an executor is built, never from the environment here."""
    import pathlib

    root = pathlib.Path(merging_base.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, path


def spy_selections(monkeypatch) -> list[int]:
    """How many experts each threshold selection (a pass over the inputs) reads, in order."""
    selected: list[int] = []
    original = MergeExecutor.select
    monkeypatch.setattr(
        MergeExecutor, "select", lambda self, e, *a, **kw: selected.append(len(e)) or original(self, e, *a, **kw)
    )
    return selected


def test_a_consensus_the_kernels_cannot_run_is_refused_when_declared():
    """Exact counts are split by position for hashed scores only (magnitude ties are all kept or all go)."""
    from time_ray.core.merging.executor import Consensus

    class ExactTies(Ties):
        exact_count = True

    with pytest.raises(ValueError, match="exact counts"):
        ExactTies().consensus()
    with pytest.raises(ValueError, match="disjoint"):
        Consensus(scorers.MagnitudeScorer(), Ties().ranks, disjoint="median")
    assert DareTies().consensus().exact_count and not Ties().consensus().exact_count
