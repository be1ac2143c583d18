"""Errors and comparisons of decoupled models, up to the symmetries of the decomposition.

A decoupled function ``b + W g(Vᵀx)`` is unchanged when its branches are permuted, when
``v_r`` is scaled by ``α`` and ``g_r`` re-parametrised as ``t ↦ g_r(t/α)``, when ``w_r`` is
scaled by ``β`` and ``g_r`` divided by ``β``, and when a constant moves between ``g_r`` and
``b``. Recovered factors are therefore compared to the truth after aligning these
symmetries (Kolda & Bader 2009, §3.2; Dreesen et al. 2015).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from tenflex.model import DecoupledFunction

__all__ = [
    "BranchAlignment",
    "align_branches",
    "congruence_matrix",
    "kruskal_rank",
    "relative_error",
]


def _np(A) -> np.ndarray:
    if isinstance(A, torch.Tensor):
        return A.detach().cpu().double().numpy()
    return np.asarray(A, dtype=np.float64)


def relative_error(estimate, reference) -> float:
    """``‖estimate − reference‖_F / ‖reference‖_F`` for arrays or tensors of equal shape."""
    estimate, reference = _np(estimate), _np(reference)
    if estimate.shape != reference.shape:
        raise ValueError(
            f"estimate has shape {estimate.shape} but reference has shape {reference.shape}"
        )
    norm = np.linalg.norm(reference)
    if norm == 0:
        raise ValueError("reference is zero: the relative error is undefined")
    return float(np.linalg.norm(estimate - reference) / norm)


def congruence_matrix(A, B) -> np.ndarray:
    """Absolute cosines between the columns of ``A`` (p, R1) and ``B`` (p, R2): shape (R1, R2)."""
    A, B = _np(A), _np(B)
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must be matrices with equal row counts, got {A.shape}, {B.shape}")
    A = A / np.maximum(np.linalg.norm(A, axis=0, keepdims=True), np.finfo(float).tiny)
    B = B / np.maximum(np.linalg.norm(B, axis=0, keepdims=True), np.finfo(float).tiny)
    return np.abs(A.T @ B)


def kruskal_rank(A, *, rtol: float = 1e-10) -> int:
    """Kruskal rank (k-rank) of a matrix: the largest ``k`` such that EVERY set of ``k``
    columns is linearly independent (Kruskal 1977).

    Every subset of columns is tested (``2^R`` subsets), so this is for the small ranks of
    uniqueness checks (``R <= 16``).

    Parameters
    ----------
    A : array or tensor, shape (p, R)
    rtol : float
        A subset counts as dependent when its smallest singular value is below
        ``rtol`` times the largest singular value of ``A``.

    Returns
    -------
    int
    """
    from itertools import combinations

    A = _np(A)
    if A.ndim != 2:
        raise ValueError(f"A must be a matrix (p, R), got shape {A.shape}")
    R = A.shape[1]
    if R > 16:
        raise ValueError(f"kruskal_rank tests every column subset; R = {R} > 16 is too many")
    scale = np.linalg.norm(A, 2)
    if scale == 0:
        return 0
    k = 0
    for size in range(1, min(A.shape) + 1):
        for subset in combinations(range(R), size):
            if np.linalg.svd(A[:, subset], compute_uv=False)[-1] <= rtol * scale:
                return k
        k = size
    return k


@dataclass
class BranchAlignment:
    """How the branches of an estimate map onto those of a reference model.

    Attributes
    ----------
    permutation : ndarray of int, shape (R,)
        Estimated branch ``permutation[r]`` matches reference branch ``r``.
    input_scale : ndarray, shape (R,)
        ``α_r`` with ``V_est[:, permutation[r]] ≈ α_r V_ref[:, r]``.
    output_scale : ndarray, shape (R,)
        ``β_r`` with ``W_est[:, permutation[r]] ≈ β_r W_ref[:, r]``.
    congruence_W, congruence_V : ndarray, shape (R,)
        Absolute cosine between matched columns (1 means identical directions).
    """

    permutation: np.ndarray
    input_scale: np.ndarray
    output_scale: np.ndarray
    congruence_W: np.ndarray
    congruence_V: np.ndarray

    @property
    def min_congruence(self) -> float:
        """The worst matched column over both factors."""
        return float(min(self.congruence_W.min(), self.congruence_V.min()))

    def branch_function(self, estimate: DecoupledFunction, r: int, t) -> np.ndarray:
        """The estimate's branch matched to reference branch ``r``, in the reference's units.

        Returns ``β_r g̃_p(α_r t)`` with ``p = permutation[r]``; it equals the reference
        ``g_r(t)`` up to an additive constant (absorbed by the bias).

        Parameters
        ----------
        estimate : DecoupledFunction
        r : int
            Reference branch index.
        t : array, shape (T,)
            Arguments in the reference branch's input units.

        Returns
        -------
        ndarray, shape (T,)
        """
        t = _np(t).reshape(-1)
        p = int(self.permutation[r])
        Z = np.zeros((t.size, estimate.rank))
        Z[:, p] = self.input_scale[r] * t
        G = _np(estimate.branch_outputs(torch.as_tensor(Z, dtype=estimate.dtype)))
        return self.output_scale[r] * G[:, p]


def align_branches(estimate: DecoupledFunction, reference: DecoupledFunction) -> BranchAlignment:
    """Match the branches of ``estimate`` to those of ``reference``.

    The permutation maximises the summed product of the ``W`` and ``V`` column
    congruences (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`); the
    scales are least-squares fits of the matched columns.

    Parameters
    ----------
    estimate, reference : DecoupledFunction
        Models with equal ``m``, ``n`` and rank ``R``.

    Returns
    -------
    BranchAlignment
    """
    if (estimate.m, estimate.n, estimate.rank) != (reference.m, reference.n, reference.rank):
        raise ValueError(
            "estimate and reference must have equal (m, n, R), got "
            f"{(estimate.m, estimate.n, estimate.rank)} and "
            f"{(reference.m, reference.n, reference.rank)}"
        )
    cong_W = congruence_matrix(reference.W, estimate.W)
    cong_V = congruence_matrix(reference.V, estimate.V)
    rows, cols = linear_sum_assignment(-(cong_W * cong_V))
    permutation = cols[np.argsort(rows)]
    W_ref, V_ref = _np(reference.W), _np(reference.V)
    W_est, V_est = _np(estimate.W)[:, permutation], _np(estimate.V)[:, permutation]
    output_scale = np.sum(W_est * W_ref, axis=0) / np.sum(W_ref * W_ref, axis=0)
    input_scale = np.sum(V_est * V_ref, axis=0) / np.sum(V_ref * V_ref, axis=0)
    R = reference.rank
    return BranchAlignment(
        permutation=permutation,
        input_scale=input_scale,
        output_scale=output_scale,
        congruence_W=cong_W[np.arange(R), permutation],
        congruence_V=cong_V[np.arange(R), permutation],
    )
