import pytest
import torch

from time_ray.core.checkpoints import save_atomic
from time_ray.core.merging import TaskArithmetic
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import Policy, deploy_weights, init_weights, recency_weights

THETA_0 = torch.tensor([0.0, 8.0])


def expert(k: int) -> dict:
    return {"w": torch.tensor([float(k), 8.0 + k])}


def make_pool(tmp_path, n: int) -> CheckpointPool:
    save_atomic({"w": THETA_0}, tmp_path / "base.safetensors")
    pool = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors")
    for k in range(1, n + 1):
        pool.add_expert(k, expert(k))
    return pool


def w(checkpoint) -> torch.Tensor:
    return checkpoint["w"]


@pytest.mark.parametrize("init", ["zs", "ft", "ema", "all", "ft-zs"])
def test_every_init_strategy_starts_at_theta_0_at_t1(tmp_path, init):
    pool = make_pool(tmp_path, 0)
    assert torch.equal(w(init_weights(Policy(init, "ft"), pool, 1)), THETA_0)


def test_init_strategies_on_a_pool_of_two(tmp_path):
    pool = make_pool(tmp_path, 2)
    t = 3
    assert torch.equal(w(init_weights(Policy("zs", "ft"), pool, t)), THETA_0)
    assert torch.equal(w(init_weights(Policy("ft", "ft"), pool, t)), expert(2)["w"])
    assert torch.allclose(w(init_weights(Policy("all", "ft"), pool, t)), torch.tensor([1.5, 9.5]))
    assert torch.allclose(w(init_weights(Policy("ft-zs", "ft"), pool, t)), torch.tensor([1.0, 9.0]))
    # r_2 = 1/4 theta_0 + 1/4 theta_1 + 1/2 theta_2 = [0 + .25 + 1, 2 + 2.25 + 5]
    assert torch.allclose(w(init_weights(Policy("ema", "ft"), pool, t)), torch.tensor([1.25, 9.25]))


def test_ema_chain_equals_its_closed_form_for_five_experts(tmp_path):
    pool = make_pool(tmp_path, 5)
    policy = Policy("ema", "ema")
    for t in range(1, 6):
        closed = 2.0**-t * THETA_0 + sum(2.0 ** -(t - k + 1) * expert(k)["w"] for k in range(1, t + 1))
        assert torch.allclose(w(deploy_weights(policy, pool, t)), closed)


def test_ema_chain_without_theta_0_and_running_mean(tmp_path):
    pool = make_pool(tmp_path, 3)
    no_base = Policy("ema", "ema", ema_with_base=False)
    assert torch.equal(w(deploy_weights(no_base, pool, 1)), expert(1)["w"])
    # r_3 = 1/2 theta_3 + 1/4 theta_2 + 1/4 theta_1
    assert torch.allclose(w(deploy_weights(no_base, pool, 3)), torch.tensor([2.25, 10.25]))
    mean = Policy("ema", "ema", ema_weight="running-mean")  # mean of theta_0..theta_t
    assert torch.allclose(w(deploy_weights(mean, pool, 3)), torch.tensor([1.5, 9.5]))


def test_deploy_strategies_on_a_single_expert(tmp_path):
    pool = make_pool(tmp_path, 1)
    assert torch.equal(w(deploy_weights(Policy("zs", "ft"), pool, 0)), THETA_0)
    assert torch.equal(w(deploy_weights(Policy("zs", "ft"), pool, 1)), expert(1)["w"])
    assert torch.equal(w(deploy_weights(Policy("zs", "all"), pool, 1)), expert(1)["w"])
    assert torch.allclose(w(deploy_weights(Policy("zs", "ft-zs"), pool, 1)), torch.tensor([0.5, 8.5]))
    with_base = Policy("zs", "all", all_with_base=True)
    assert torch.allclose(w(deploy_weights(with_base, pool, 1)), torch.tensor([0.5, 8.5]))


def test_deploy_all_of_five_with_recency_weights(tmp_path):
    pool = make_pool(tmp_path, 5)
    linear = Policy("zs", "all", recency="linear")
    expected = sum(wk * expert(k)["w"] for k, wk in zip(range(1, 6), recency_weights(5, "linear")))
    assert torch.allclose(w(deploy_weights(linear, pool, 5)), expected)
    assert torch.allclose(w(deploy_weights(Policy("zs", "all"), pool, 5)), torch.tensor([3.0, 11.0]))


def test_ema_with_task_arithmetic_half_equals_averaging(tmp_path):
    pool = make_pool(tmp_path, 3)
    ta = Policy("ema", "ema", technique=TaskArithmetic(lam=0.5))
    avg = Policy("ema", "ema")
    assert torch.allclose(w(deploy_weights(ta, pool, 3)), w(deploy_weights(avg, make_pool(tmp_path / "b", 3), 3)))


def test_recency_weights_match_the_spec():
    assert [round(x, 3) for x in recency_weights(5, "linear")] == [0.067, 0.133, 0.2, 0.267, 0.333]
    assert [round(x, 3) for x in recency_weights(5, "exp")] == [0.032, 0.065, 0.129, 0.258, 0.516]
    assert recency_weights(5, "linear-reversed") == recency_weights(5, "linear")[::-1]
    assert recency_weights(4) == [0.25] * 4


def test_pool_rejects_experts_out_of_order(tmp_path):
    pool = make_pool(tmp_path, 1)
    with pytest.raises(ValueError, match="out of order"):
        pool.add_expert(3, expert(3))


def test_a_registered_strategy_is_used_for_init_and_unknown_names_are_refused(tmp_path, monkeypatch):
    from time_ray.core.strategies import STRATEGIES, register

    pool = make_pool(tmp_path, 2)
    monkeypatch.setitem(STRATEGIES, "init", dict(STRATEGIES["init"]))
    register(STRATEGIES["init"], "first", "theta^s_1: the first expert")(lambda policy, pool, n: pool.expert(1))
    assert torch.equal(w(init_weights(Policy("first", "ft"), pool, 3)), expert(1)["w"])
    assert torch.equal(w(init_weights(Policy("first", "ft"), pool, 1)), THETA_0)  # no expert yet: theta_0
    with pytest.raises(ValueError, match="unknown deploy strategy 'first'"):
        deploy_weights(Policy("ft", "first"), pool, 1)
