"""Beyond the paper: TSV-M, Iso-C (spec-only techniques) and the OPCM chain (a strategy):
hand-computed cases, their defining properties, and their use through the technique registry, the
strategies and the config."""

import math

import pytest
import torch

from time_ray.config import expand_policies, expand_trials, load_config
from time_ray.core.checkpoints import save_atomic
from time_ray.core.merging import TECHNIQUES, make_technique
from time_ray.core.merging.spec import SPECS
from time_ray.core.merging.spec.opcm import opcm_mask, opcm_project, opcm_sequence, opcm_step, task_vector_norm
from time_ray.core.merging.spec.svd import iso_c, iso_matrix, tsv_components, tsv_m
from time_ray.core.pool import CheckpointPool
from time_ray.core.strategies import DEPLOY_STRATEGIES, INIT_STRATEGIES, Policy, deploy_weights, init_weights
from time_ray.plan import init_lineage

C = 2**-0.5


def M(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def zeros_2x2():
    return {"w": torch.zeros(2, 2)}


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- TSV-M


def test_tsv_m_hand_computed_orthogonal_tasks():
    # k = 2, r = 2: each task keeps floor(2/2) = 1 component. tau_1 = diag(3, 1) keeps 3 e1 e1^T,
    # tau_2 = diag(0, 2) keeps 2 e2 e2^T; U = V = [e1 e2] is already orthonormal, so
    # tau_M = diag(3, 2) (task arithmetic would give diag(3, 3)); the bias is averaged: (1+3)/2, (2+0)/2.
    taus = [{"w": M([3, 0], [0, 1]), "b": M(1, 2)}, {"w": M([0, 0], [0, 2]), "b": M(3, 0)}]
    base = {"w": M([1, 1], [1, 1]), "b": M(0, 0)}
    merged = tsv_m(taus, [0.5, 0.5], base, alpha=0.5)
    assert torch.allclose(merged["w"], base["w"] + 0.5 * M([3, 0], [0, 2]))
    assert torch.allclose(merged["b"], 0.5 * M(2, 1))


def test_tsv_m_hand_computed_whitening_of_overlapping_tasks():
    # tau_1 = 2 e1 e1^T (u = v = e1 at 0 degrees), tau_2 = [[2, 2], [2, 2]] = 4 a a^T (a = (1, 1)/sqrt2, at
    # 45 degrees). U = V = [e1 a]; its orthonormal factor turns the two unit vectors symmetrically apart
    # to -22.5 and 67.5 degrees: p1 = (cos, -sin)22.5, p2 = (sin, cos)22.5. tau_M = 2 p1 p1^T + 4 p2 p2^T:
    # [0,0] = 2 cos^2 + 4 sin^2 = 3 - C, [1,1] = 3 + C, [0,1] = (4 - 2) sin cos = C  (C = 1/sqrt2).
    merged = tsv_m([{"w": M([2, 0], [0, 0])}, {"w": M([2, 2], [2, 2])}], [0.5, 0.5], zeros_2x2())
    assert torch.allclose(merged["w"], M([3 - C, C], [C, 3 + C]), atol=1e-6)


def test_tsv_m_one_expert_is_task_arithmetic_and_components_are_orthonormal():
    tau = randn(6, 4, seed=0)
    base = {"w": randn(6, 4, seed=1)}
    merged = tsv_m([{"w": tau}], [1.0], base, alpha=0.7)
    assert torch.allclose(merged["w"], base["w"] + 0.7 * tau, atol=1e-5)
    # k = 3 experts on 9 x 7: each keeps its top floor(7/3) = 2 components; the bases are orthonormal, so
    # the merged update's singular values are exactly the 6 kept per-task ones
    taus = [randn(9, 7, seed=s) for s in range(3)]
    u, s, v = tsv_components(taus)
    assert u.shape == (9, 6) and v.shape == (7, 6)
    assert torch.allclose(u.T @ u, torch.eye(6), atol=1e-5) and torch.allclose(v.T @ v, torch.eye(6), atol=1e-5)
    kept = torch.cat([torch.linalg.svdvals(t)[:2] for t in taus])
    assert torch.allclose(s, kept)
    merged = tsv_m([{"w": t} for t in taus], [1 / 3] * 3, {"w": torch.zeros(9, 7)})
    assert torch.allclose(torch.linalg.svdvals(merged["w"])[:6], kept.sort(descending=True).values, atol=1e-4)


def test_tsv_m_ignores_the_zero_task_vector_of_theta_0():
    # ft-zs merges theta^s with theta_0: tau = 0 adds no component, so the update is tau's top half
    tau = randn(4, 4, seed=2)
    u, s, vh = torch.linalg.svd(tau)
    merged = tsv_m([{"w": tau}, {"w": torch.zeros(4, 4)}], [0.5, 0.5], {"w": torch.zeros(4, 4)})
    assert torch.allclose(merged["w"], (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)


# --------------------------------------------------------------------------- Iso-C


def test_iso_c_hand_computed():
    # sum = diag(3, 0) + diag(0, 1) = diag(3, 1): singular values 3, 1 -> both 2, vectors I: 2 I.
    # the bias is averaged; alpha scales everything
    taus = [{"w": M([3, 0], [0, 0]), "b": M(2)}, {"w": M([0, 0], [0, 1]), "b": M(4)}]
    merged = iso_c(taus, [0.5, 0.5], {"w": M([1, 0], [0, 1]), "b": M(1)}, alpha=1.5)
    assert torch.allclose(merged["w"], M([1, 0], [0, 1]) + 1.5 * M([2, 0], [0, 2]))
    assert torch.allclose(merged["b"], M(1 + 1.5 * 3))


def test_iso_c_flattens_the_spectrum_and_keeps_the_singular_vectors():
    taus = [randn(7, 5, seed=s) for s in range(3)]
    total = sum(taus)
    iso = iso_matrix(taus)
    s_sum, s_iso = torch.linalg.svdvals(total), torch.linalg.svdvals(iso)
    assert torch.allclose(s_iso, torch.full((5,), float(s_sum.mean())), atol=1e-5)
    u, _, vh = torch.linalg.svd(total, full_matrices=False)
    # same singular vectors: U^T iso V = mean(S) I
    assert torch.allclose(u.T @ iso @ vh.T, float(s_sum.mean()) * torch.eye(5), atol=1e-4)
    # same Frobenius inner product with the sum as task arithmetic's trace: <iso, sum> = mean(S) sum(S)
    assert math.isclose(float((iso * total).sum()), float(s_sum.mean() * s_sum.sum()), rel_tol=1e-4)


# --------------------------------------------------------------------------- through the registry


@pytest.mark.parametrize("name", ["tsv_m", "iso_c"])
def test_spec_only_techniques_merge_checkpoints_and_keep_integer_buffers(name):
    assert name in TECHNIQUES and name in SPECS
    base = {"visual.w": randn(4, 3, seed=0), "b": randn(3, seed=1), "ids": torch.arange(5)}
    experts = [
        {"visual.w": base["visual.w"] + randn(4, 3, seed=2 + k), "b": base["b"] + k, "ids": torch.arange(5)}
        for k in range(2)
    ]
    technique = make_technique(name, alpha=0.5)
    merged = technique.merge(experts, [0.5, 0.5], base)
    spec = (tsv_m if name == "tsv_m" else iso_c)(
        [{k: e[k] - base[k] for k in ("visual.w", "b")} for e in experts],
        [0.5, 0.5],
        {k: base[k] for k in ("visual.w", "b")},
        alpha=0.5,
    )
    assert torch.equal(merged["ids"], torch.arange(5)) and merged["ids"].dtype == torch.int64
    assert torch.allclose(merged["visual.w"], spec["visual.w"]) and torch.allclose(merged["b"], base["b"] + 0.25)
    with pytest.raises(ValueError, match="theta_0"):
        technique.merge(experts, None, None)
    with pytest.raises(Exception, match="alpha: must be a number"):
        make_technique(name, alpha="big")


# --------------------------------------------------------------------------- OPCM


def test_opcm_hand_computed_step():
    # T_1 = tau_1 = diag(3, 1): U = V = I, s = (3, 1), shares (.75, 1) > .5 from index 0: split 0, so only
    # the diagonal of P = U^T tau_2 V = tau_2 is removed: tau~_2 = [[0, 2], [3, 0]].
    # D = 1 * T_1 + tau~_2 = [[3, 2], [3, 1]], ||D|| = sqrt(23); n_2 = (sqrt10 + sqrt30)/2;
    # lambda_2 = sqrt(23) / n_2, T_2 = D / lambda_2.
    tau_1, tau_2 = {"w": M([3, 0], [0, 1])}, {"w": M([1, 2], [3, 4])}
    n_2 = (math.sqrt(10) + math.sqrt(30)) / 2
    merged, lam = opcm_step(tau_1, 1.0, tau_2, n_2)
    assert math.isclose(lam, math.sqrt(23) / n_2, rel_tol=1e-6)
    assert torch.allclose(merged["w"], M([3, 2], [3, 1]) * (n_2 / math.sqrt(23)))
    assert math.isclose(task_vector_norm(merged), n_2, rel_tol=1e-6)  # adaptive scaling: the mean norm
    seq = opcm_sequence([tau_1, tau_2])
    assert torch.equal(seq[0]["w"], tau_1["w"]) and torch.allclose(seq[1]["w"], merged["w"])


def test_opcm_split_block_and_the_projection_is_orthogonal_to_the_protected_subspace():
    # s = (1, 1, 1, 1): shares .25 .5 .75 1 exceed .5 first at index 2: the 2 x 2 block and the diagonal
    mask = opcm_mask(torch.ones(4))
    expected = torch.eye(4, dtype=torch.bool)
    expected[:2, :2] = True
    assert torch.equal(mask, expected)
    merged, tau = randn(6, 5, seed=3), randn(6, 5, seed=4)
    projected = opcm_project(merged, tau, alpha=0.8)
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    coords = u.T @ projected @ vh.T
    removed = opcm_mask(s, alpha=0.8)
    assert removed.sum() > 5  # the block reaches beyond the diagonal here
    assert torch.allclose(coords[removed], torch.zeros(int(removed.sum())), atol=1e-5)
    # what is kept is untouched, and the removed part is orthogonal (Frobenius) to what is kept
    assert torch.allclose(coords[~removed], (u.T @ tau @ vh.T)[~removed], atol=1e-5)
    assert abs(float(((tau - projected) * projected).sum())) < 1e-4
    # a zero merged update protects nothing
    assert torch.equal(opcm_project(torch.zeros(6, 5), tau), tau)


def test_opcm_non_matrix_tensors_add_the_whole_task_vector():
    taus = [{"w": randn(3, 3, seed=5), "b": M(1, 0)}, {"w": randn(3, 3, seed=6), "b": M(0, 1)}]
    seq = opcm_sequence(taus)
    d_b = M(1, 1)  # lambda_1 T_1[b] + tau_2[b]
    lam = task_vector_norm({"w": taus[0]["w"] + opcm_project(taus[0]["w"], taus[1]["w"]), "b": d_b}) / (
        (task_vector_norm(taus[0]) + task_vector_norm(taus[1])) / 2
    )
    assert torch.allclose(seq[1]["b"], d_b / lam)


# --------------------------------------------------------------------------- strategies and config

THETA_0 = {"w": M([1, 0], [0, 1]), "b": M(0, 0), "ids": torch.arange(3)}
TAUS = [
    {"w": M([3, 0], [0, 1]), "b": M(1, 0)},
    {"w": M([1, 2], [3, 4]), "b": M(0, 1)},
    {"w": M([0, 1], [1, 0]), "b": M(1, 1)},
]


def make_pool(tmp_path, n):
    save_atomic(THETA_0, tmp_path / "base.safetensors")
    pool = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors")
    for k in range(n):
        pool.add_expert(k + 1, {"w": THETA_0["w"] + TAUS[k]["w"], "b": TAUS[k]["b"], "ids": torch.arange(3)})
    return pool


def test_opcm_strategies_follow_the_chain_and_keep_it_in_the_pool(tmp_path):
    assert "opcm" in INIT_STRATEGIES and "opcm" in DEPLOY_STRATEGIES
    pool = make_pool(tmp_path, 3)
    policy = Policy("opcm", "opcm", technique=make_technique("tsv_m"))  # the technique is not used
    assert torch.equal(init_weights(policy, pool, 1)["w"], THETA_0["w"])
    assert torch.equal(deploy_weights(policy, pool, 1)["w"], THETA_0["w"] + TAUS[0]["w"])  # m_1 = theta^s_1
    assert torch.equal(init_weights(policy, pool, 2)["w"], THETA_0["w"] + TAUS[0]["w"])
    expected = opcm_sequence(TAUS)
    for t in (2, 3):
        m_t = deploy_weights(policy, pool, t)
        assert torch.allclose(m_t["w"], THETA_0["w"] + expected[t - 1]["w"], atol=1e-6)
        assert torch.allclose(m_t["b"], expected[t - 1]["b"], atol=1e-6)
        assert torch.equal(m_t["ids"], torch.arange(3))
        assert torch.allclose(init_weights(policy, pool, t + 1)["w"], m_t["w"])
    stored = sorted(p.name for p in (tmp_path / "pool").glob("opcm-*.safetensors"))
    assert len(stored) == 4  # m_2, m_3 and their (lambda_t, n_t)
    # a fresh pool object reads the chain back; the same for every technique
    again = CheckpointPool(tmp_path / "pool", tmp_path / "base.safetensors")
    other = Policy("opcm", "opcm", technique=make_technique("average"))
    assert torch.equal(deploy_weights(other, again, 3)["w"], deploy_weights(policy, pool, 3)["w"])


def test_config_accepts_opcm_strategies_and_the_svd_techniques():
    cfg = load_config(
        "configs/quickstart.yaml", ["policies.grid={init: [opcm], deploy: [opcm, ema], merge: [tsv_m, iso_c]}"]
    )
    grid = [p for p in expand_policies(cfg) if p["init"] == "opcm"]
    assert {(p["deploy"], p["merge"]) for p in grid} == {(d, m) for d in ("opcm", "ema") for m in ("tsv_m", "iso_c")}
    trials = [t for t in expand_trials(cfg, 1e9) if t.init == "opcm"]
    assert len(trials) == 4
    # an opcm init does not depend on the technique: every opcm trial trains the same experts
    assert len({init_lineage(t, 2) for t in trials}) == 1


def test_a_searched_alpha_reaches_the_svd_techniques_but_not_averaging_without_lines():
    from time_ray.config import Grid
    from time_ray.core import policy_space

    grid = Grid.model_validate({"init": ["ema"], "deploy": ["ema"], "merge": ["tsv_m", "iso_c", "average"]})
    policies = policy_space.expand_policies([], [("policies.grid", grid)], False, [{"alpha": 0.3}, {"alpha": 0.7}])
    alphas = {(p["merge"], p["merge_params"].get("alpha")) for p in policies}
    assert alphas == {("tsv_m", 0.3), ("tsv_m", 0.7), ("iso_c", 0.3), ("iso_c", 0.7), ("average", None)}


def test_every_spec_module_registers_itself_with_the_merging_package():
    """Adding a technique is one new module in ``core/merging/spec``: importing ``time_ray.core.merging``
    imports every module there (so its ``@spec(executable=True)`` registers), with no list to extend."""
    import ast
    import pkgutil
    import subprocess
    import sys

    import time_ray.core.merging.spec as spec_package

    modules = sorted(f"{spec_package.__name__}.{m.name}" for m in pkgutil.iter_modules(spec_package.__path__))
    assert {"time_ray.core.merging.spec.svd", "time_ray.core.merging.spec.dense"} <= set(modules)
    code = "import sys, time_ray.core.merging as m; print(sorted(n for n in sys.modules if n.startswith(sys.argv[1])))"
    out = subprocess.run(
        [sys.executable, "-c", code, f"{spec_package.__name__}."], capture_output=True, text=True, check=True
    ).stdout
    assert ast.literal_eval(out) == modules
