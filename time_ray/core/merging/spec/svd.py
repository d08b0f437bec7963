"""SVD-based merging (beyond the paper): TSV-M and Iso-C, each a spec that is also an executable
technique (``@spec(..., executable=True)``).

Both work per weight *matrix*: every floating-point tensor with two dimensions (linear and attention
projections, embeddings, the towers' projections) is merged through its singular value decomposition;
every other tensor (biases, LayerNorm, 1-D and scalar tensors such as ``logit_scale``, the patch
convolution) takes the mean of the task vectors, as the authors' code does (FusionBench follows it).
Neither uses the strategy's weights w_k: like task arithmetic, they have their own coefficient
(``alpha``), so every expert enters with the same weight whatever the strategy asks for (in the EMA
chain M(theta^s_t, r_{t-1}) the new expert and r_{t-1} count alike; in ``ft-zs`` theta_0's task vector is
zero, so it adds nothing but the mean halves the non-matrix tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from time_ray.core.merging.spec import State, spec

# singular values at most this many float32 ulps of the largest, times the matrix's larger side, count
# as zero (torch.linalg.matrix_rank's default tolerance)
_EPS = torch.finfo(torch.float32).eps


def _svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x = U diag(S) Vh, the thin decomposition."""
    return torch.linalg.svd(x, full_matrices=False)


def polar(x: torch.Tensor) -> torch.Tensor:
    """The orthonormal factor of ``x`` (its nearest matrix with orthonormal columns, the orthogonal
    Procrustes solution): P Q^T for x = P S Q^T; equal to x (x^T x)^(-1/2) when x has full column rank."""
    p, _, qh = _svd(x)
    return p @ qh


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(tensors)).mean(0)


# ---------------------------------------------------------------- TSV-M


def tsv_components(
    taus: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TSV-M on one matrix: the orthogonalised bases and the concatenated singular values (U_perp, S,
    V_perp), so that the merged update is U_perp diag(S) V_perp^T.

    Each tau_k = U_k diag(S_k) V_k^T keeps its top floor(r / k) components (r = min(rows, cols), k
    experts); components whose singular value is zero up to round-off carry nothing and have arbitrary
    singular vectors, so they are left out (a task vector of theta_0 itself, as in ``ft-zs``, adds
    nothing). U = [U_1 .. U_k] and V = [V_1 .. V_k] (kept columns) are replaced by their orthonormal
    factors U_perp = P_U Q_U^T, V_perp = P_V Q_V^T (SVD U = P_U S_U Q_U^T): the whitening of the paper."""
    rows, cols = taus[0].shape
    keep = min(rows, cols) // len(taus)
    us, ss, vs = [], [], []
    for tau in taus:
        u, s, vh = _svd(tau)
        tol = float(s[0]) * max(rows, cols) * _EPS if s.numel() else 0.0
        n = int(((s[:keep] > tol) & (s[:keep] > 0)).sum())
        us.append(u[:, :n])
        ss.append(s[:n])
        vs.append(vh[:n].T)
    u_cat, s_cat, v_cat = torch.cat(us, 1), torch.cat(ss), torch.cat(vs, 1)
    if s_cat.numel() == 0:
        return u_cat, s_cat, v_cat
    return polar(u_cat), s_cat, polar(v_cat)


def tsv_matrix(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """The TSV-M update of one matrix: U_perp diag(S) V_perp^T (zero when nothing is kept)."""
    u, s, v = tsv_components(taus)
    return (u * s) @ v.T


@spec("tsv_m", executable=True)
def tsv_m(taus: list[State], weights: list[float], theta_0: State, *, alpha: float = 1.0) -> State:
    """TSV-M, Task Singular Vectors: Merging (Gargiulo et al., CVPR 2025).

    Per weight matrix (2-D tensor), with k experts and r = min(rows, cols):
      tau_k = U_k S_k V_k^T; keep each task's top floor(r / k) singular components;
      U = [U_1 .. U_k], S = diag(S_1 .. S_k), V = [V_1 .. V_k] (concatenated kept components);
      U_perp = P_U Q_U^T (SVD U = P_U Sigma_U Q_U^T), likewise V_perp: the orthogonalised bases;
      tau_M = U_perp S V_perp^T.
    Every other tensor: tau_M = (1/k) sum_k tau_k (the authors' code; FusionBench the same).
    theta = theta_0 + alpha tau_M; alpha = 1.0 (the authors' and FusionBench's default).
    The strategy's weights w_k are ignored (like task arithmetic). With one expert every component is
    kept and U, V are already orthonormal: theta = theta_0 + alpha tau_1."""
    return _per_matrix(taus, theta_0, alpha, tsv_matrix)


def _per_matrix(taus: list[State], theta_0: State, alpha: float, matrix_update) -> State:
    """theta_0 + alpha tau_M with tau_M = ``matrix_update`` of the task vectors of every 2-D tensor and
    their mean for every other tensor (TSV-M and Iso-C share this frame)."""
    out = {}
    for key, base in theta_0.items():
        ts = [tau[key] for tau in taus]
        out[key] = base + alpha * (matrix_update(ts) if base.dim() == 2 else _mean(ts))
    return out


# ---------------------------------------------------------------- Iso-C


def iso_matrix(taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """The Iso-C update of one matrix: sum_k tau_k = U diag(S) V^T -> mean(S) U V^T."""
    u, s, vh = _svd(torch.stack(list(taus)).sum(0))
    return s.mean() * (u @ vh)


@spec("iso_c", executable=True)
def iso_c(taus: list[State], weights: list[float], theta_0: State, *, alpha: float = 1.0) -> State:
    """Iso-C, isotropic merging in the common subspace (Marczak et al., ICML 2025).

    Per weight matrix (2-D tensor), with r = min(rows, cols):
      tau_TA = sum_k tau_k = U diag(sigma_1 .. sigma_r) V^T;
      tau_M = sigma_bar U V^T with sigma_bar = (1/r) sum_i sigma_i: the task-arithmetic update with its
      spectrum flattened (every singular value replaced by their mean; singular vectors kept).
    Every other tensor: tau_M = (1/k) sum_k tau_k (the authors' code; FusionBench the same).
    theta = theta_0 + alpha tau_M; alpha = 1.0 (FusionBench's default; the paper tunes it on validation
    data, e.g. 1.5 in FusionBench's examples). The strategy's weights w_k are ignored (like task
    arithmetic). For a rank-deficient sum the spectrum is flattened over all r directions (the paper's
    definition), so its null directions are the SVD's choice."""
    return _per_matrix(taus, theta_0, alpha, iso_matrix)
