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

from tenflex.checks import check_float, check_int
from tenflex.model import DecoupledFunction

__all__ = [
    "BranchAlignment",
    "align_branches",
    "congruence_matrix",
    "kruskal_rank",
    "relative_error",
]


def _np(A, name: str) -> np.ndarray:
    """``A`` as a float64 array, after checking it holds finite real numbers.

    A complex input would lose its imaginary part and a NaN would make every result NaN.
    """
    from tenflex.fit import _as_matrix  # the package's conversion: TypeError / ValueError

    return _as_matrix(A, name, torch.float64, "cpu").numpy()


def relative_error(estimate, reference) -> float:
    """``‖estimate − reference‖_F / ‖reference‖_F`` for arrays or tensors of equal shape.

    Raises
    ------
    TypeError
        Complex (or otherwise non-real) input.
    ValueError
        Different shapes, NaN or Inf values, a zero ``reference``.
    """
    estimate, reference = _np(estimate, "estimate"), _np(reference, "reference")
    if estimate.shape != reference.shape:
        raise ValueError(
            f"estimate has shape {estimate.shape} but reference has shape {reference.shape}"
        )
    # Scaled by the largest entry first: the norms of finite arrays of entries near the
    # ends of the floating-point range would overflow (1e200) or underflow (1e-170).
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    if scale == 0:
        raise ValueError("reference is zero: the relative error is undefined")
    return float(np.linalg.norm(estimate / scale - reference / scale)
                 / np.linalg.norm(reference / scale))


def congruence_matrix(A, B) -> np.ndarray:
    """Absolute cosines between the columns of ``A`` (p, R1) and ``B`` (p, R2): shape (R1, R2).

    A zero column has cosine 0 with every column.

    Raises
    ------
    TypeError
        Complex (or otherwise non-real) input.
    ValueError
        Not matrices with equal row counts, NaN or Inf values.
    """
    A, B = _np(A, "A"), _np(B, "B")
    if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B must be matrices with equal row counts, got {A.shape}, {B.shape}")
    return np.abs(_unit_columns(A).T @ _unit_columns(B))


def _eps(dtype) -> float:
    """Machine epsilon of a torch or NumPy floating dtype; 0 for any other (exact) input."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return 0.0


def _unit_columns(A: np.ndarray) -> np.ndarray:
    """The columns of ``A`` scaled to unit norm; zero columns stay zero.

    Each column is first divided by its largest entry: the squared norm of a column whose
    entries are beyond about ``1e154`` (or below ``1e-154``) in magnitude would overflow
    (or underflow), and the cosines would come out 0 (or far above 1).
    """
    peak = np.abs(A).max(axis=0, initial=0.0)
    A = A / np.where(peak > 0, peak, 1.0)
    norm = np.linalg.norm(A, axis=0)
    return A / np.where(norm > 0, norm, 1.0)


def kruskal_rank(A, *, rtol: float | None = None) -> int:
    """Kruskal rank (k-rank) of a matrix: the largest ``k`` such that EVERY set of ``k``
    columns is linearly independent (Kruskal 1977).

    Every subset of columns is tested (``2^R`` subsets), so this is for the small ranks of
    uniqueness checks (``R <= 16``).

    Parameters
    ----------
    A : array or tensor, shape (p, R)
    rtol : float, optional
        A subset counts as dependent when its smallest singular value is below
        ``rtol`` times the largest singular value of ``A`` with its columns scaled to unit
        norm; finite and ``>= 0``. The k-rank does not depend on the (nonzero) scales of
        the columns, so columns of very different norms, as the scaling indeterminacy of a
        CPD produces, are compared as directions; a zero column gives k-rank 0.
        Default: ``max(1e-10, max(p, R) * eps)`` with ``eps`` of ``A``'s floating dtype,
        so that columns dependent up to the rounding of float32 (or float16) entries count
        as dependent; ``1e-10`` for float64 and integer input.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        Complex (or otherwise non-real) ``A``; ``rtol`` not a number.
    ValueError
        ``A`` not a matrix, with NaN or Inf, or more than 16 columns; ``rtol`` negative,
        NaN or infinite.
    """
    from itertools import combinations

    if rtol is not None:
        rtol = check_float(rtol, "rtol")
    dtype = getattr(A, "dtype", None)  # before the conversion to float64
    A = _np(A, "A")
    if A.ndim != 2:
        raise ValueError(f"A must be a matrix (p, R), got shape {A.shape}")
    if rtol is None:
        rtol = max(1e-10, max(A.shape) * _eps(dtype))
    R = A.shape[1]
    if R > 16:
        raise ValueError(f"kruskal_rank tests every column subset; R = {R} > 16 is too many")
    if not np.all(np.any(A, axis=0)):  # a zero column is dependent on its own
        return 0
    A = _unit_columns(A)
    scale = np.linalg.norm(A, 2)
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

        Raises
        ------
        TypeError
            ``estimate`` not a DecoupledFunction, ``r`` not an int, ``t`` not real numbers.
        ValueError
            ``r`` outside ``[0, R)``, an estimate of another rank than the alignment,
            ``t`` with NaN or Inf.
        """
        R = len(self.permutation)
        if not isinstance(estimate, DecoupledFunction):
            raise TypeError(f"estimate must be a DecoupledFunction, got {type(estimate).__name__}")
        if estimate.rank != R:
            raise ValueError(f"estimate has rank {estimate.rank} but the alignment has {R} "
                             "branches: pass the estimate that was aligned")
        r = check_int(r, "r", 0, R - 1)
        t = _np(t, "t").reshape(-1)
        p = int(self.permutation[r])
        Z = np.zeros((t.size, estimate.rank))
        Z[:, p] = self.input_scale[r] * t
        G = estimate.branch_outputs(torch.as_tensor(Z, dtype=estimate.dtype))
        return self.output_scale[r] * G.detach().cpu().double().numpy()[:, p]


def _column_scales(A: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Least-squares ``s`` with ``A[:, r] ~ s[r] ref[:, r]`` for nonzero columns of ``ref``.

    Both are divided by the largest entry of the reference column first, so that the
    products do not overflow (or underflow) for entries beyond about ``1e154``.
    """
    peak = np.abs(ref).max(axis=0)
    A, ref = A / peak, ref / peak
    return np.sum(A * ref, axis=0) / np.sum(ref * ref, axis=0)


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

    Raises
    ------
    TypeError
        ``estimate`` or ``reference`` is not a DecoupledFunction.
    ValueError
        Different ``(m, n, R)``; a zero column of ``reference.W`` or ``reference.V`` (the
        scale of its branch is undefined).
    """
    for arg, f in (("estimate", estimate), ("reference", reference)):
        if not isinstance(f, DecoupledFunction):
            raise TypeError(f"{arg} must be a DecoupledFunction, got {type(f).__name__}")
    if (estimate.m, estimate.n, estimate.rank) != (reference.m, reference.n, reference.rank):
        raise ValueError(
            "estimate and reference must have equal (m, n, R), got "
            f"{(estimate.m, estimate.n, estimate.rank)} and "
            f"{(reference.m, reference.n, reference.rank)}"
        )
    W_ref, V_ref = _np(reference.W, "reference.W"), _np(reference.V, "reference.V")
    for arg, A in (("reference.W", W_ref), ("reference.V", V_ref)):
        zero = np.flatnonzero(~np.any(A, axis=0))
        if zero.size:
            raise ValueError(f"{arg} has zero columns {zero.tolist()}: the scales of those "
                             "branches are undefined (drop the branches first)")
    W_est, V_est = _np(estimate.W, "estimate.W"), _np(estimate.V, "estimate.V")
    cong_W = congruence_matrix(W_ref, W_est)
    cong_V = congruence_matrix(V_ref, V_est)
    rows, cols = linear_sum_assignment(-(cong_W * cong_V))
    permutation = cols[np.argsort(rows)]
    W_est, V_est = W_est[:, permutation], V_est[:, permutation]
    output_scale = _column_scales(W_est, W_ref)
    input_scale = _column_scales(V_est, V_ref)
    R = reference.rank
    return BranchAlignment(
        permutation=permutation,
        input_scale=input_scale,
        output_scale=output_scale,
        congruence_W=cong_W[np.arange(R), permutation],
        congruence_V=cong_V[np.arange(R), permutation],
    )
