"""Input directions along which a function varies: the active subspace of its Jacobians.

A function ``f: R^m -> R^n`` sampled at ``x_1 .. x_N`` with Jacobians ``J_k`` changes, to
first order, only along the row spaces of the ``J_k``. The *active subspace* (Constantine,
Dow and Wang 2014) is spanned by the leading eigenvectors ``P`` of the ``m x m`` matrix
``sum_k J_k^T J_k``: the ``k`` input directions that carry the most of ``||J||^2``. When
that energy sits in few directions, ``f(x) ~ f~(P^T x)`` and a decoupled function fitted to
``z = P^T x`` (the Jacobians become ``J_k P``) needs ``m k`` coefficients for its input
directions, however many branches it has: a flexible layer with ``V = P Q``.

The eigenvectors come from a seeded randomized subspace iteration (Halko, Martinsson and
Tropp 2011) applied through :meth:`~tenflex.cpd.JacobianTensor.contract_input` and its
adjoint: the Gram is never formed, so a :class:`~tenflex.cpd.FactoredJacobian` keeps its
memory advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tenflex.checks import check_int, check_seed
from tenflex.cpd import (
    DenseJacobian,
    JacobianTensor,
    _is_zero,
    _ldexp,
    _rescaled,
    as_jacobian_tensor,
)


def _in_range(Jt: JacobianTensor) -> tuple[JacobianTensor, int]:
    """``(J * 2**e, e)`` with a squared norm far from over- and underflow for a dense ``J``
    (:func:`tenflex.cpd._rescaled`, exact); any other ``J`` as it is (``e = 0``)."""
    return _rescaled(Jt) if isinstance(Jt, DenseJacobian) else (Jt, 0)


def gram_eigenvectors(Jt: JacobianTensor, k: int, *, seed: int = 0, center: bool = False,
                      n_iter: int = 6, oversample: int = 8) -> tuple[Tensor, Tensor]:
    """Leading eigenpairs of ``sum_k (J_k - c)^T (J_k - c)``, never formed.

    Parameters
    ----------
    Jt : JacobianTensor, shape (n, m, N)
    k : int
        Number of eigenpairs, ``1 <= k <= m``.
    seed : int, optional
        Seed of the random start; same seed, same result.
    center : bool, optional
        Subtract the mean Jacobian ``c = mean_k J_k`` (the directions along which the
        Jacobians *vary*) instead of ``c = 0`` (along which ``f`` changes).
    n_iter : int, optional
        Subspace iterations, ``>= 1``; each costs two products of the size of ``J`` with
        ``k + oversample`` columns.
    oversample : int, optional
        Extra columns that make the iteration accurate to ``k`` directions, ``>= 0``.

    Returns
    -------
    values : torch.Tensor, shape (k,)
        Eigenvalues, decreasing.
    P : torch.Tensor, shape (m, k)
        Orthonormal eigenvectors, in the same order.

    Raises
    ------
    TypeError
        ``Jt`` not a JacobianTensor; ``k``, ``n_iter``, ``oversample`` or ``seed`` not
        integers.
    ValueError
        ``k`` outside ``[1, m]``, ``n_iter < 1`` (the start would not be orthonormalised),
        ``oversample < 0``, a negative ``seed``.

    Notes
    -----
    A dense ``J`` whose squared norm would over- or underflow (e.g. float32 entries near
    ``1e20`` or ``1e-20``) is scaled by a power of two first (exact); the eigenvectors do
    not change and the eigenvalues are scaled back (they may then be ``inf`` or 0 in
    ``J``'s dtype).
    """
    if not isinstance(Jt, JacobianTensor):
        raise TypeError(f"Jt must be a JacobianTensor (e.g. tenflex.cpd.DenseJacobian(J)), "
                        f"got {type(Jt).__name__}")
    m = Jt.m
    k = check_int(k, "k", 1, m)  # values[-k:] would give m pairs for k = 0, m - 1 for -1
    n_iter = check_int(n_iter, "n_iter", 1)
    oversample = check_int(oversample, "oversample", 0)
    p = min(m, k + oversample)
    # The Gram's products are of the size of ||J||^2: they would overflow (inf, then a
    # LinAlgError in eigh) or underflow for float32 entries near 1e20 or 1e-20.
    Jt, exponent = _in_range(Jt)

    def gram(Q: Tensor) -> Tensor:
        T = Jt.contract_input(Q)
        if center:  # centring the products once is enough
            T = T - T.mean(dim=1, keepdim=True)
        return Jt.contract_input_adjoint(T)

    gen = torch.Generator().manual_seed(check_seed(seed))
    Q = torch.randn(m, p, generator=gen, dtype=torch.float64).to(Jt.dtype).to(Jt.device)
    for _ in range(n_iter):
        Q = torch.linalg.qr(gram(Q))[0]
    small = Q.T @ gram(Q)
    values, vecs = torch.linalg.eigh(0.5 * (small + small.T))
    return _ldexp(values[-k:].flip(0), -2 * exponent), (Q @ vecs[:, -k:].flip(1)).contiguous()


@dataclass
class ActiveSubspace:
    """The ``k`` input directions that carry the most of the Jacobians' energy.

    Attributes
    ----------
    P : torch.Tensor, shape (m, k)
        Orthonormal basis, by decreasing energy.
    energy : torch.Tensor, shape (k,)
        ``||J P[:, i]||^2`` for each direction (the Gram's eigenvalues).
    captured : float
        Fraction of ``||J||^2`` inside the subspace, ``sum(energy) / ||J||^2`` (1 when
        ``f`` changes only along ``P``).
    """

    P: Tensor
    energy: Tensor
    captured: float

    @property
    def k(self) -> int:
        return int(self.P.shape[1])

    def project(self, X: Tensor, J: JacobianTensor) -> tuple[Tensor, DenseJacobian]:
        """Coordinates ``Z = X P`` and Jacobians ``J_k P`` of the samples in the subspace.

        Parameters
        ----------
        X : torch.Tensor, shape (N, m)
        J : JacobianTensor, shape (n, m, N)

        Returns
        -------
        Z : torch.Tensor, shape (N, k)
        Jz : DenseJacobian, shape (n, k, N)
        """
        P = self.P.to(dtype=X.dtype, device=X.device)
        if X.ndim != 2 or X.shape[1] != P.shape[0]:
            raise ValueError(f"X must have shape (N, {P.shape[0]}), got {tuple(X.shape)}")
        if J.m != P.shape[0] or J.N != X.shape[0]:
            raise ValueError(
                f"J has shape {J.shape} (n, m, N) but X is {tuple(X.shape)} and P has "
                f"m = {P.shape[0]} rows: they must describe the same samples and inputs"
            )
        T = J.contract_input(self.P.to(dtype=J.dtype, device=J.device))  # (n, N, k)
        return X @ P, DenseJacobian(T.permute(0, 2, 1))


def active_subspace(J: JacobianTensor | Tensor, k: int, *, seed: int = 0) -> ActiveSubspace:
    """The ``k``-dimensional active subspace of sampled Jacobians.

    Parameters
    ----------
    J : JacobianTensor or tensor, shape (n, m, N)
    k : int
        Dimension, ``1 <= k <= m``.
    seed : int, optional
        Seed of the randomized eigensolver.

    Returns
    -------
    ActiveSubspace

    Raises
    ------
    TypeError
        ``seed`` not an integer (``1.5`` is not seed 1).
    ValueError
        ``k`` outside ``[1, m]``, a negative ``seed``, or Jacobians that are all zero (a
        constant function has no direction to keep). Entries so large or small that
        ``||J||^2`` over- or underflows are fine for a dense ``J`` (it is scaled by a power
        of two; ``energy`` may then be ``inf`` or 0 in its dtype, ``captured`` is exact).

    Examples
    --------
    >>> import torch
    >>> from tenflex.cpd import DenseJacobian
    >>> J = torch.zeros(2, 5, 30)
    >>> J[:, 1, :] = torch.randn(2, 30)  # f changes along x_1 only
    >>> sub = active_subspace(DenseJacobian(J), 1)
    >>> round(abs(float(sub.P[1, 0])), 6), round(sub.captured, 6)
    (1.0, 1.0)
    """
    Jt = as_jacobian_tensor(J)
    k = check_int(k, "k", 1, Jt.m)
    # An exact test: the squared norm of a float32 J underflows to 0 below about 1e-23.
    if _is_zero(Jt):
        raise ValueError("the Jacobians are all zero: the function is constant on the "
                         "samples and has no active subspace")
    # The captured fraction from a J whose squared norm is representable (power of two).
    scaled, exponent = _in_range(Jt)
    energy, P = gram_eigenvectors(scaled, k, seed=seed)
    energy = energy.clamp_min(0)
    captured = min(float(energy.sum()) / scaled.norm_sq(), 1.0)
    return ActiveSubspace(P=P, energy=_ldexp(energy, -2 * exponent), captured=captured)
