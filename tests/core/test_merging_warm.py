"""Cold is warm: an expert's thresholds are computed when it enters a pool
(``CheckpointPool.warm_expert``), kept in the executor's cache and in sidecar files, so no merge of the pool
selects thresholds; results equal the cold merge bit for bit; a restarted pool (new cache, sidecars present)
is warm too; a damaged or mismatched sidecar is ignored and the thresholds selected again."""

import json

import pytest
import torch

from time_ray.core.checkpoints import save_atomic
from time_ray.core.merging import BreadcrumbsTies, DareTies, Ties
from time_ray.core.merging.executor import MergeExecutor, ThresholdCache
from time_ray.core.merging.sidecar import ThresholdStore
from time_ray.core.pool import CheckpointPool

TECHNIQUES = [
    Ties(),
    Ties(prune=0.3, disjoint="max"),
    DareTies(prune=0.4, seed=3),
    BreadcrumbsTies(prune=0.1, top=0.05),
]


def states(n: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    shapes = {"visual.transformer.resblocks.0.w": (40, 9), "visual.b": (17,), "transformer.resblocks.0.w": (33, 4)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    experts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]
    for e in experts:
        e["visual.b"][:5] = base["visual.b"][:5] + 0.25  # ties at the thresholds
    return base, experts


def spy(monkeypatch) -> list[int]:
    selected: list[int] = []
    original = MergeExecutor.select
    monkeypatch.setattr(
        MergeExecutor, "select", lambda self, e, *a, **kw: selected.append(len(e)) or original(self, e, *a, **kw)
    )
    return selected


def executor_for(root) -> MergeExecutor:
    return MergeExecutor(ThresholdCache(store=ThresholdStore(root / "thresholds")))


def assert_same_bits(a, b):
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("technique", TECHNIQUES, ids=lambda t: f"{t.name}-{t.disjoint}")
def test_after_an_expert_enters_the_pool_no_merge_selects_thresholds(technique, tmp_path, monkeypatch):
    base, experts = states(4)
    save_atomic(base, tmp_path / "base.safetensors")
    pool = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors", executor=executor_for(tmp_path))
    selected = spy(monkeypatch)
    for t, state in enumerate(experts, start=1):
        pool.add_expert(t, state)
        before = len(selected)
        assert pool.warm_expert(t, technique) >= 1  # the new expert's thresholds, now
        assert len(selected) > before and set(selected[before:]) == {1}  # the new expert alone
        for window in (pool.experts(t), pool.experts(t)[-2:], [pool.base, *pool.experts(t)]):
            before = len(selected)
            warm = technique.merge(window, base=pool.base, executor=pool.executor)
            assert selected[before:] == []  # no threshold selected by the merge
            cold = technique.merge(window, base=pool.base, executor=MergeExecutor())
            assert_same_bits(warm, cold)
    assert pool.warm_expert(len(experts), technique) == 0  # nothing new to compute

    restarted = CheckpointPool(
        tmp_path / "pool", tmp_path / "base.safetensors", executor=executor_for(tmp_path)
    )  # a new cache; the sidecars are there
    before = len(selected)
    again = technique.merge(restarted.experts(4), base=restarted.base, executor=restarted.executor)
    assert selected[before:] == []
    assert restarted.executor.cache.store.loaded > 0
    assert_same_bits(again, technique.merge(pool.experts(4), base=pool.base, executor=MergeExecutor()))


@pytest.mark.parametrize("damage", ["garbage", "number", "identity", "checksum", "shape"])
def test_a_damaged_or_mismatched_sidecar_is_ignored_and_recomputed(damage, tmp_path, monkeypatch):
    base, experts = states(2)
    save_atomic(base, tmp_path / "base.safetensors")
    technique = BreadcrumbsTies(prune=0.2, top=0.1)
    pool = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors", executor=executor_for(tmp_path))
    for t, state in enumerate(experts, start=1):
        pool.add_expert(t, state)
        pool.warm_expert(t, technique)
    reference = technique.merge(pool.experts(2), base=pool.base, executor=MergeExecutor())
    files = sorted((tmp_path / "thresholds").glob("thr-*.json"))
    assert len(files) == 6  # (2 experts + theta_0 as a model) x 2 towers
    first = pool.expert(1).fingerprint
    victim, other = sorted(files, key=lambda f: repr(first) not in json.loads(f.read_text())["id"])[:2]
    assert repr(first) in json.loads(victim.read_text())["id"]
    record = json.loads(victim.read_text())
    if damage == "garbage":
        victim.write_text("{not json")
    elif damage == "number":  # a threshold changed, the checksum left: refused
        record["found"][0][0] += 1
        victim.write_text(json.dumps(record))
    elif damage == "identity":  # another identity's file under this name (checksum valid for it): refused
        victim.write_text(other.read_text())
    elif damage == "checksum":
        record["checksum"] = "0" * 64
        victim.write_text(json.dumps(record))
    else:
        record["found"] = [[1, 2, 3, 4]]
        victim.write_text(json.dumps(record))
    selected = spy(monkeypatch)
    restarted = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors", executor=executor_for(tmp_path))
    merged = technique.merge(restarted.experts(2), base=restarted.base, executor=restarted.executor)
    assert selected == [1]  # the expert with the bad sidecar, selected again
    assert restarted.executor.cache.store.rejected == 1
    assert_same_bits(merged, reference)
    assert json.loads(victim.read_text())["checksum"] != "0" * 64  # rewritten, valid again
    fresh = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors", executor=executor_for(tmp_path))
    technique.merge(fresh.experts(2), base=fresh.base, executor=fresh.executor)
    assert selected == [1] and fresh.executor.cache.store.rejected == 0


def test_dict_experts_have_no_identity_and_are_never_stored(tmp_path):
    base, experts = states(2)
    executor = executor_for(tmp_path)
    assert Ties().warm(experts[0], base, executor) == 0  # no content hash: nothing can be remembered
    Ties().merge(experts, base=base, executor=executor)
    assert not (tmp_path / "thresholds").exists()
