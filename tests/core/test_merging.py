import pytest
import torch

from time_ray.core.errors import ConfigError
from time_ray.core.merging import TaskArithmetic, WeightAveraging, make_technique, technique_params

BASE = {"w": torch.tensor([0.0, 1.0, 2.0]), "logit_scale": torch.tensor(1.0), "step": torch.tensor([3])}
A = {"w": torch.tensor([1.0, 1.0, 4.0]), "logit_scale": torch.tensor(2.0), "step": torch.tensor([3])}
B = {"w": torch.tensor([3.0, -1.0, 2.0]), "logit_scale": torch.tensor(4.0), "step": torch.tensor([3])}


def test_average_hand_computed_uniform_and_weighted():
    merged = WeightAveraging().merge([A, B])
    assert torch.equal(merged["w"], torch.tensor([2.0, 0.0, 3.0]))
    assert merged["logit_scale"].item() == 3.0  # logit_scale is merged like every parameter
    weighted = WeightAveraging().merge([A, B], [0.25, 0.75])
    assert torch.allclose(weighted["w"], torch.tensor([2.5, -0.5, 2.5]))


def test_integer_buffers_are_copied_not_averaged():
    assert torch.equal(WeightAveraging().merge([A, B])["step"], torch.tensor([3]))


def test_task_arithmetic_is_a_sum_of_task_vectors():
    # tau_A = [1, 0, 2], tau_B = [3, -2, 0]; theta_0 + 0.5 * (tau_A + tau_B) = [2, 0, 3]
    merged = TaskArithmetic(lam=0.5).merge([A, B], base=BASE)
    assert torch.allclose(merged["w"], torch.tensor([2.0, 0.0, 3.0]))
    full = TaskArithmetic(lam=1.0).merge([A, B], base=BASE)
    assert torch.allclose(full["w"], torch.tensor([4.0, -1.0, 4.0]))  # accumulates, no shrinking


def test_task_arithmetic_with_lambda_one_over_k_equals_averaging():
    experts = [A, B, BASE]
    ta = TaskArithmetic(lam=1 / 3).merge(experts, base=BASE)
    avg = WeightAveraging().merge(experts)
    for key in ("w", "logit_scale"):
        assert torch.allclose(ta[key], avg[key])


def test_averaging_k_copies_returns_the_expert():
    merged = WeightAveraging().merge([A, A, A, A])
    assert torch.allclose(merged["w"], A["w"])


def test_task_arithmetic_needs_the_base():
    with pytest.raises(ValueError, match="theta_0"):
        TaskArithmetic().merge([A, B])


def test_make_technique_suggests_close_names_and_maps_lambda():
    with pytest.raises(ConfigError, match=r"Did you mean average"):
        make_technique("averge")
    with pytest.raises(ConfigError, match=r"has no parameter 'prune'"):
        make_technique("task_arithmetic", prune=0.2)
    ta = make_technique("task_arithmetic", **{"lambda": 0.3})
    assert ta.lam == 0.3 and technique_params(ta) == {"lambda": 0.3}
