"""OPCM, Orthogonal Projection-based Continual Merging (Tang et al., 2025, "Merging Models on the Fly
Without Retraining: A Sequential Approach to Scalable Continual Model Merging"): a temporal rule, not a
technique. The merged model m_t is a function of m_{t-1}, the new expert theta^s_t and theta_0 (plus two
numbers carried along), so ``core.strategies`` keeps the chain m_1..m_t in the pool like the EMA chain
(deploy ``opcm``: m_t; init ``opcm``: m_{t-1}). The policy's merging technique is not used.

With tau_t = theta^s_t - theta_0, T_{t-1} = m_{t-1} - theta_0 (the merged task vector) and
n_t = (1/t) sum_{i<=t} ||tau_i|| (the mean norm of the task vectors so far, over the whole model):

  t = 1:   m_1 = theta^s_1, lambda_1 = 1.
  t > 1:   per weight matrix (2-D tensor) W, with the thin SVD T_{t-1}[W] = U diag(s) V^T (r = min(rows, cols)):
             P = U^T tau_t[W] V (r x r), the new task vector in the merged update's singular bases;
             s_split = first 0-based i with (s_1 + .. + s_{i+1}) / sum(s) > alpha;
             zero P_ii for every i (the new vector's part along each rank-one direction u_i v_i^T) and the
             block P_ij, i, j < s_split (the dominant subspace of the merged update);
             tau~_t[W] = tau_t[W] - U (P - P_kept) V^T, i.e. tau_t with those components projected away.
           every other tensor: tau~_t = tau_t (no projection).
           D_t = lambda_{t-1} T_{t-1} + tau~_t (the sum of the projected task vectors so far);
           lambda_t = ||D_t|| / n_t (adaptive scaling: the merged task vector keeps the mean norm n_t);
           m_t = theta_0 + D_t / lambda_t.

This is the authors' implementation (FusionBench's ``OPCMForCLIP``, by the first author), alpha = 0.5
its default. Where it differs from FusionBench's prose: the documentation writes the split as the
smallest 1-based k whose share exceeds alpha (a k x k block); the code, which produced the paper's
numbers and is followed here, zeroes the (k - 1) x (k - 1) block. Where it differs from FusionBench's
code: FusionBench projects only ``nn.Linear`` weights (embedding tables count as "other"), here every
2-D tensor is a weight matrix, as for TSV-M and Iso-C; and a merged update that is zero in a matrix
(nothing to project away from) leaves tau_t unprojected there, where FusionBench divides 0 by 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from time_ray.core.merging.spec import State, task_vectors

OPCM_ALPHA = 0.5  # the share of the merged update's singular-value mass whose subspace is protected


def task_vector_norm(tau: Mapping[str, torch.Tensor]) -> float:
    """||tau||, the Euclidean norm over every tensor of the model (float64 accumulation)."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in tau.values()))


def opcm_mask(s: torch.Tensor, alpha: float = OPCM_ALPHA) -> torch.Tensor:
    """The r x r entries of P removed: the diagonal and the top-left s_split x s_split block."""
    r = s.numel()
    split = int((s.cumsum(0) / s.sum() > alpha).float().argmax())
    removed = torch.eye(r, dtype=torch.bool)
    removed[:split, :split] = True
    return removed


def opcm_project(merged: torch.Tensor, tau: torch.Tensor, alpha: float = OPCM_ALPHA) -> torch.Tensor:
    """tau~ for one matrix: ``tau`` without its components u_i v_j^T, (i, j) in ``opcm_mask``, in the
    singular bases of ``merged`` (T_{t-1}); ``tau`` itself when ``merged`` is zero."""
    u, s, vh = torch.linalg.svd(merged, full_matrices=False)
    if not float(s.sum()) > 0:
        return tau.clone()
    p = u.T @ tau @ vh.T
    return tau - u @ (p * opcm_mask(s, alpha)) @ vh


def opcm_step(
    merged: Mapping[str, torch.Tensor],
    lam_prev: float,
    tau: Mapping[str, torch.Tensor],
    mean_norm: float,
    *,
    alpha: float = OPCM_ALPHA,
) -> tuple[State, float]:
    """One OPCM step on task vectors: (T_t, lambda_t) from T_{t-1} = ``merged``, lambda_{t-1}, tau_t and
    n_t = ``mean_norm`` (the mean of ||tau_1|| .. ||tau_t||)."""
    d = {
        key: lam_prev * merged[key] + (opcm_project(merged[key], t, alpha) if t.dim() == 2 else t)
        for key, t in tau.items()
    }
    norm = task_vector_norm(d)
    if norm == 0:  # every task vector so far is zero: so is the merge
        return d, lam_prev
    lam = norm / mean_norm
    return {key: v / lam for key, v in d.items()}, lam


def opcm_sequence(taus: Sequence[Mapping[str, torch.Tensor]], *, alpha: float = OPCM_ALPHA) -> list[State]:
    """The merged task vectors T_1 .. T_n of a sequence of task vectors (m_t = theta_0 + T_t)."""
    out: list[State] = [dict(taus[0])]
    lam, norms = 1.0, [task_vector_norm(taus[0])]
    for tau in taus[1:]:
        norms.append(task_vector_norm(tau))
        merged, lam = opcm_step(out[-1], lam, tau, sum(norms) / len(norms), alpha=alpha)
        out.append(merged)
    return out


def opcm_update(
    merged: Mapping[str, torch.Tensor],
    expert: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    lam_prev: float,
    mean_norm_prev: float,
    t: int,
    *,
    alpha: float = OPCM_ALPHA,
) -> tuple[State, float, float]:
    """m_t from m_{t-1} = ``merged`` and theta^s_t = ``expert`` (t >= 2), on models: returns (m_t,
    lambda_t, n_t). Floating-point tensors are merged in fp32 and cast back to their dtype; integer
    buffers are theta_0's."""
    tau = task_vectors([expert], base)[0]
    prev = task_vectors([merged], base)[0]
    mean_norm = (mean_norm_prev * (t - 1) + task_vector_norm(tau)) / t
    merged_tau, lam = opcm_step(prev, lam_prev, tau, mean_norm, alpha=alpha)
    state = {
        key: (base[key].float() + merged_tau[key]).to(v.dtype) if key in merged_tau else v.clone()
        for key, v in ((k, base[k]) for k in base)
    }
    return state, lam, mean_norm
