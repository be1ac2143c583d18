"""The Jacobian tensor, its MTTKRPs, and canonical polyadic decompositions (CPD) of it.

The solvers of :mod:`tenflex.fit` never index the Jacobian tensor ``J`` (shape ``(n, m, N)``,
``J[:, :, k] = df/dx (x_k)``) directly: they talk to it through :class:`JacobianTensor`,
whose few products are all they need,

* ``contract_input(V)``: ``T[i, k, r] = sum_j J[i, j, k] V[j, r]``, shape ``(n, N, R)``;
* ``mttkrp_output(T, H)``: mode-1 MTTKRP ``sum_k J_k V diag(H[k])``, shape ``(n, R)``;
* ``mttkrp_samples(T, W)``: mode-3 MTTKRP ``t_r[k] = w_r^T J_k v_r``, shape ``(N, R)``;
* ``mttkrp_input(W, H)``: mode-2 MTTKRP ``sum_k J_k^T W diag(H[k])``, shape ``(m, R)``;

so ``J`` could be streamed or never materialised (the products are Jacobian-vector and
vector-Jacobian products). :class:`DenseJacobian` stores ``J`` as an ``(n N, m)`` matrix,
so that the two expensive products, ``contract_input`` and ``mttkrp_input``, are each one
BLAS-3 matrix product of ``n N m R`` multiply-adds; the mode-1 and mode-3 MTTKRPs reuse ``T``
at ``O(n N R)`` cost. :class:`FactoredJacobian` holds the Jacobians of a function whose first
stage is linear, ``J_k = K_k A`` (a span that starts with a fully connected layer), as the
smaller ``K`` and ``A``: memory and products shrink by the factor ``h / m`` of the layer's
output to input width.

:func:`cpd` computes a rank-``R`` CPD ``J ~ [[W, V, H]]`` (first step of the decoupling
method of Dreesen, Ishteva and Schoukens, SIMAX 2015) with
:func:`tensorly.decomposition.parafac` and/or a damped Gauss-Newton iteration that uses only
the interface above. :func:`match_components` aligns the columns of estimated factors with
reference factors (CP components are recovered up to permutation and scaling).
"""

from __future__ import annotations

import abc
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tenflex.checks import all_finite, check_bool, check_int, check_seed

__all__ = [
    "CPDResult",
    "DenseJacobian",
    "FactoredJacobian",
    "JacobianTensor",
    "as_jacobian_tensor",
    "cp_norm_sq",
    "cp_to_tensor",
    "cpd",
    "khatri_rao",
    "match_components",
    "pcg",
    "solve_psd",
    "tall_matmul",
    "transpose_matmul",
]

#: Elements of ``J`` processed at once by the chunked dense computations.
_CHUNK_ELEMENTS = 2**25
#: Relative squared residuals below this are recomputed directly (not by expanding the
#: square, whose rounding error is about ``1e-16`` relative to ``||J||^2``).
_ACCURATE_BELOW = 1e-10


#: The dtypes a JacobianTensor may hold (torch.linalg refuses half precision).
_SOLVER_DTYPES = (torch.float32, torch.float64)


def _as_float_tensor(A: Any, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Convert ``A`` to a floating torch tensor, checking the type."""
    if isinstance(A, np.ndarray):
        if not np.issubdtype(A.dtype, np.number) or np.issubdtype(A.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got dtype {A.dtype}")
        A = torch.from_numpy(np.ascontiguousarray(A))
    elif not isinstance(A, Tensor):
        try:
            A = torch.as_tensor(np.asarray(A, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a tensor or array, got {type(A).__name__}") from err
    if A.is_complex() or A.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got dtype {A.dtype}")
    if dtype is None:
        dtype = A.dtype if A.is_floating_point() else torch.float64
    return A.detach().to(dtype)


def khatri_rao(A: Tensor, B: Tensor) -> Tensor:
    """Column-wise Kronecker product.

    Parameters
    ----------
    A : torch.Tensor, shape (I, R)
    B : torch.Tensor, shape (K, R)

    Returns
    -------
    torch.Tensor, shape (I * K, R)
        Row ``i * K + k`` is ``A[i] * B[k]``.
    """
    return (A.unsqueeze(1) * B.unsqueeze(0)).reshape(-1, A.shape[1])


def transpose_matmul(A: Tensor, B: Tensor) -> Tensor:
    """``A^T B`` for a tall ``A``, as a contiguous tensor.

    Parameters
    ----------
    A : torch.Tensor, shape (K, m)
    B : torch.Tensor, shape (K, R)

    Returns
    -------
    torch.Tensor, shape (m, R)

    Notes
    -----
    Computed as ``(B^T A)^T``. With fewer than 12 columns, the kernel MKL picks for
    ``A.T @ B`` is 2 to 50 times slower than this form (``K`` = 50000 or 5000, ``m`` =
    3136, two cores; ``benchmarks/bench_products.py``): for the reference CNN's Jacobian
    tensor (``K = 50000``) and ``R = 8`` in float64, 6.1 s against 0.12 s with ``B`` stored
    by columns, as the solver's ``H`` is, and 0.92 s against 0.12 s stored by rows. With 12
    columns or more this form is between 1.4 times slower and 2.9 times faster in float64,
    and up to 1.9 times slower in float32; it is kept at every width, so that no width
    meets the slow kernel.
    """
    return (B.T @ A).T.contiguous()


#: From this many columns of ``B`` on, :func:`tall_matmul` computes float64 products in the
#: transposed form.
_TALL_MATMUL_MIN_COLUMNS = 13


def tall_matmul(A: Tensor, B: Tensor) -> Tensor:
    """``A B`` for a tall ``A`` and a narrow ``B``.

    Parameters
    ----------
    A : torch.Tensor, shape (K, m)
    B : torch.Tensor, shape (m, R)

    Returns
    -------
    torch.Tensor, shape (K, R)
        Contiguous.

    Notes
    -----
    In float64 with 13 columns or more, computed as ``(B^T A^T)^T``: MKL's kernel for
    ``A @ B`` is then 1.3 to 3.6 times slower (``K`` = 50000 or 5000, ``m`` = 3136, ``R``
    from 13 to 64, two cores; ``benchmarks/bench_products.py``). With fewer columns, and in
    float32, where MKL's plain product was the faster one when measured, it is kept.
    """
    if B.shape[1] < _TALL_MATMUL_MIN_COLUMNS or B.dtype != torch.float64:
        return A @ B
    return (B.T @ A.T).T.contiguous()


def cp_norm_sq(W: Tensor, V: Tensor, H: Tensor) -> Tensor:
    """Squared Frobenius norm of the CP tensor ``[[W, V, H]]`` without forming it.

    Parameters
    ----------
    W : torch.Tensor, shape (n, R)
    V : torch.Tensor, shape (m, R)
    H : torch.Tensor, shape (N, R)

    Returns
    -------
    torch.Tensor
        0-d, ``sum((W^T W) * (V^T V) * (H^T H))`` (Hadamard products of the Gram matrices).
    """
    return ((W.T @ W) * (V.T @ V) * (H.T @ H)).sum()


def cp_to_tensor(W: Tensor, V: Tensor, H: Tensor) -> Tensor:
    """Dense CP tensor ``[[W, V, H]]``, shape ``(n, m, N)`` (for tests and small problems)."""
    return torch.einsum("ir,jr,kr->ijk", W, V, H)


class JacobianTensor(abc.ABC):
    """Abstract Jacobian tensor ``J`` of shape ``(n, m, N)``, seen only through its products.

    Subclasses implement :attr:`shape`, :attr:`dtype`, :attr:`device`, :meth:`norm_sq`,
    :meth:`contract_input` and :meth:`mttkrp_input`; everything else has a default built on
    them. Factor matrices passed in must have the tensor's dtype and device.
    """

    @property
    @abc.abstractmethod
    def shape(self) -> tuple[int, int, int]:
        """``(n, m, N)``."""

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """Floating dtype of the products."""

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Device of the products."""

    @abc.abstractmethod
    def norm_sq(self) -> float:
        """Squared Frobenius norm ``||J||^2``."""

    @abc.abstractmethod
    def contract_input(self, V: Tensor) -> Tensor:
        """``T[i, k, r] = sum_j J[i, j, k] V[j, r]``.

        Parameters
        ----------
        V : torch.Tensor, shape (m, R)

        Returns
        -------
        T : torch.Tensor, shape (n, N, R)
            ``T[:, k, r] = J_k v_r``: the Jacobian-vector products.
        """

    @abc.abstractmethod
    def mttkrp_input(self, W: Tensor, H: Tensor) -> Tensor:
        """Mode-2 MTTKRP ``sum_k J_k^T W diag(H[k])``.

        Parameters
        ----------
        W : torch.Tensor, shape (n, R)
        H : torch.Tensor, shape (N, R)

        Returns
        -------
        torch.Tensor, shape (m, R)
            ``M[j, r] = sum_{i, k} J[i, j, k] W[i, r] H[k, r]``.
        """

    def contract_input_adjoint(self, T: Tensor) -> Tensor:
        """Adjoint of :meth:`contract_input`: ``M[j, r] = sum_{i, k} J[i, j, k] T[i, k, r]``.

        The default takes one :meth:`mttkrp_input` per output ``i``.

        Parameters
        ----------
        T : torch.Tensor, shape (n, N, R)

        Returns
        -------
        torch.Tensor, shape (m, R)
            ``sum_k J_k^T T[:, k, :]``.
        """
        n, R = self.n, T.shape[2]
        out = torch.zeros(self.m, R, dtype=T.dtype, device=T.device)
        for i in range(n):
            unit = torch.zeros(n, R, dtype=T.dtype, device=T.device)
            unit[i] = 1
            out += self.mttkrp_input(unit, T[i])
        return out

    @property
    def n(self) -> int:
        """Output dimension."""
        return self.shape[0]

    @property
    def m(self) -> int:
        """Input dimension."""
        return self.shape[1]

    @property
    def N(self) -> int:
        """Number of sampling points."""
        return self.shape[2]

    def mttkrp_output(self, T: Tensor, H: Tensor) -> Tensor:
        """Mode-1 MTTKRP ``sum_k J_k V diag(H[k])`` from ``T = contract_input(V)``.

        Parameters
        ----------
        T : torch.Tensor, shape (n, N, R)
        H : torch.Tensor, shape (N, R)

        Returns
        -------
        torch.Tensor, shape (n, R)
            ``M[i, r] = sum_{j, k} J[i, j, k] V[j, r] H[k, r]``.
        """
        return torch.einsum("ikr,kr->ir", T, H)

    def mttkrp_samples(self, T: Tensor, W: Tensor) -> Tensor:
        """Mode-3 MTTKRP ``t_r[k] = w_r^T J_k v_r`` from ``T = contract_input(V)``.

        Parameters
        ----------
        T : torch.Tensor, shape (n, N, R)
        W : torch.Tensor, shape (n, R)

        Returns
        -------
        torch.Tensor, shape (N, R)
        """
        return torch.einsum("ikr,ir->kr", T, W)

    def inner(self, W: Tensor, V: Tensor, H: Tensor, T: Tensor | None = None) -> Tensor:
        """Inner product ``<J, [[W, V, H]]>`` (0-d tensor); pass ``T = contract_input(V)``
        to reuse it."""
        if T is None:
            T = self.contract_input(V)
        return (self.mttkrp_output(T, H) * W).sum()

    #: Whether :meth:`residual_norm_sq` computes the residual directly (accurately).
    exact_residual: bool = False

    def residual_norm_sq(self, W: Tensor, V: Tensor, H: Tensor) -> float:
        """``||J - [[W, V, H]]||^2``.

        The default expands the square, ``||J||^2 - 2 <J, K> + ||K||^2``, which loses
        accuracy when the residual is tiny (relative errors below about ``1e-8`` in float64);
        :class:`DenseJacobian` overrides it with a direct, chunked computation.
        """
        value = self.norm_sq() - 2 * float(self.inner(W, V, H)) + float(cp_norm_sq(W, V, H))
        return max(value, 0.0)

    def to_dense(self) -> Tensor:
        """The dense tensor, shape ``(n, m, N)``, by contracting with the identity."""
        eye = torch.eye(self.m, dtype=self.dtype, device=self.device)
        return self.contract_input(eye).permute(0, 2, 1)


class DenseJacobian(JacobianTensor):
    """A Jacobian tensor held in memory, laid out for BLAS-3 MTTKRPs.

    Parameters
    ----------
    J : tensor or ndarray, shape (n, m, N)
        ``J[:, :, k] = df/dx (x_k)``; finite values.
    dtype : torch.dtype, optional
        Storage and compute dtype, ``torch.float32`` or ``torch.float64``; default: ``J``'s
        floating dtype, with float16 and bfloat16 converted to float32 (the solvers' linear
        algebra needs at least single precision) and integers or other non-float input to
        float64.

    Raises
    ------
    TypeError
        ``dtype`` other than float32/float64; ``J`` not real numbers.
    ValueError
        ``J`` not 3-D with dimensions >= 1, or with NaN/Inf.

    Notes
    -----
    ``J`` is stored as the contiguous ``(n, N, m)`` tensor ``A`` (``A[i, k, j] = J[i, j, k]``),
    viewed as an ``(n N, m)`` matrix. Then ``contract_input(V) = A V`` and
    ``mttkrp_input(W, H) = A^T (W ⊙ H)`` (``⊙`` the Khatri-Rao product) are single matrix
    products. A ``J`` that is already a permuted view of such a tensor (as returned by
    :func:`tenflex.sampling.sample_function`) is used without a copy.
    """

    def __init__(self, J: Tensor | np.ndarray, *, dtype: torch.dtype | None = None) -> None:
        if dtype is not None and dtype not in _SOLVER_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        J = _as_float_tensor(J, "J", dtype)
        if J.dtype not in _SOLVER_DTYPES:
            J = J.to(torch.float32)
        if J.ndim != 3 or min(J.shape) < 1:
            raise ValueError(
                f"J must have shape (n, m, N) with all dimensions >= 1, got {tuple(J.shape)}"
            )
        self._A = J.permute(0, 2, 1).contiguous()
        if not all_finite(self._A):
            raise ValueError("J contains NaN or Inf values")
        n, N, m = self._A.shape
        self._shape = (int(n), int(m), int(N))
        self._norm_sq: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return self._A.dtype

    @property
    def device(self) -> torch.device:
        return self._A.device

    @property
    def data(self) -> Tensor:
        """The stored ``(n, N, m)`` tensor (a view; do not modify)."""
        return self._A

    def norm_sq(self) -> float:
        if self._norm_sq is None:
            flat = self._A.reshape(-1)
            self._norm_sq = float(flat @ flat)
        return self._norm_sq

    def contract_input(self, V: Tensor) -> Tensor:
        n, m, N = self._shape
        return tall_matmul(self._A.reshape(n * N, m), V).reshape(n, N, V.shape[1])

    def mttkrp_input(self, W: Tensor, H: Tensor) -> Tensor:
        n, m, N = self._shape
        return transpose_matmul(self._A.reshape(n * N, m), khatri_rao(W, H))

    def contract_input_adjoint(self, T: Tensor) -> Tensor:
        n, m, N = self._shape
        return transpose_matmul(self._A.reshape(n * N, m), T.reshape(n * N, T.shape[2]))

    exact_residual = True

    def residual_norm_sq(self, W: Tensor, V: Tensor, H: Tensor) -> float:
        """``||J - [[W, V, H]]||^2`` computed directly (no cancellation), in output chunks."""
        n, m, N = self._shape
        step = max(1, _CHUNK_ELEMENTS // max(N * m, 1))
        total = 0.0
        for i0 in range(0, n, step):
            i1 = min(i0 + step, n)
            # (i1-i0, N, R) @ (R, m): the model's slice, turned into minus the residual and
            # squared in place (the same sum as of the residual's squares, without two more
            # temporaries of the chunk's size and their page faults).
            diff = ((W[i0:i1].unsqueeze(1) * H.unsqueeze(0)) @ V.T).sub_(self._A[i0:i1])
            total += float(diff.square_().sum())
        return total

    def to_dense(self) -> Tensor:
        return self._A.permute(0, 2, 1)


class FactoredJacobian(JacobianTensor):
    """Jacobians ``J_k = K_k A`` of a function whose first stage is the linear map ``A``.

    A function ``f(x) = g(A x + c)`` (a span that starts with a fully connected layer of
    weight ``A``) has, by the chain rule, ``J_k = K_k A`` with ``K_k`` the Jacobian of ``g`` at
    ``A x_k + c``. Holding ``K`` and ``A`` instead of ``J`` takes ``h / m`` of the memory when
    the layer narrows (``h < m``; for the reference CNN's head, 128 / 3136), and every product
    moves to the narrow side: ``contract_input(V) = K (A V)`` and
    ``mttkrp_input(W, H) = A^T (sum_k K_k^T W diag(H[k]))``, ``n N h R + h m R``
    multiply-adds instead of ``n N m R``.

    Parameters
    ----------
    K : JacobianTensor, tensor or ndarray, shape (n, h, N)
        ``K[:, :, k] = dg/dz (A x_k + c)``. An array is wrapped in a :class:`DenseJacobian`
        (a view of a contiguous ``(n, N, h)`` tensor, as
        :func:`tenflex.sampling.sample_function` returns it, is used without a copy).
    A : tensor or ndarray, shape (h, m)
        The linear stage (a ``torch.nn.Linear`` layer's ``weight``); finite.
    dtype : torch.dtype, optional
        ``torch.float32`` or ``torch.float64``; default: ``K``'s dtype (an array ``K`` as in
        :class:`DenseJacobian`). ``A`` is converted to it and to ``K``'s device.

    Raises
    ------
    TypeError
        ``dtype`` other than float32/float64; ``A`` not real numbers; a JacobianTensor ``K``
        of another dtype than ``dtype``.
    ValueError
        ``A`` not 2-D, with NaN/Inf, or with ``A.shape[0]`` different from ``K``'s input
        dimension ``h``.

    Notes
    -----
    ``||J||^2 = sum_k ||K_k A||^2 = sum_k ||K_k R^T||^2`` with ``A^T = Q R`` the reduced QR
    factorisation (``Q`` has orthonormal columns), one product of ``K`` with ``min(h, m)``
    columns, computed once. The residual is expanded as in :class:`JacobianTensor`.
    """

    def __init__(self, K: JacobianTensor | Tensor | np.ndarray, A: Tensor | np.ndarray, *,
                 dtype: torch.dtype | None = None) -> None:
        if dtype is not None and dtype not in _SOLVER_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        self._inner = as_jacobian_tensor(K, dtype=dtype)
        A = _as_float_tensor(A, "A", self._inner.dtype).to(self._inner.device)
        if A.ndim != 2 or min(A.shape) < 1:
            raise ValueError(f"A must be a matrix of shape (h, m), got shape {tuple(A.shape)}")
        if A.shape[0] != self._inner.m:
            raise ValueError(
                f"A has shape {tuple(A.shape)} but K is the Jacobian tensor of shape "
                f"{self._inner.shape} (n, h, N) of the stage after it: A needs h = "
                f"{self._inner.m} rows (the width of the linear stage's output)"
            )
        if not all_finite(A):
            raise ValueError("A contains NaN or Inf values")
        self._A = A
        n, _, N = self._inner.shape
        self._shape = (n, int(A.shape[1]), N)
        self._norm_sq: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def dtype(self) -> torch.dtype:
        return self._inner.dtype

    @property
    def device(self) -> torch.device:
        return self._inner.device

    @property
    def K(self) -> JacobianTensor:
        """The Jacobian tensor of the stage after ``A``, shape ``(n, h, N)``."""
        return self._inner

    @property
    def A(self) -> Tensor:
        """The linear stage, shape ``(h, m)`` (do not modify)."""
        return self._A

    def norm_sq(self) -> float:
        if self._norm_sq is None:
            R = torch.linalg.qr(self._A.T, mode="r").R  # A^T = Q R, so ||K A|| = ||K R^T||
            T = self._inner.contract_input(R.T)
            self._norm_sq = float((T * T).sum())
        return self._norm_sq

    def contract_input(self, V: Tensor) -> Tensor:
        return self._inner.contract_input(self._A @ V)

    exact_residual = True

    def residual_norm_sq(self, W: Tensor, V: Tensor, H: Tensor) -> float:
        """``||J - [[W, V, H]]||^2`` computed directly (no cancellation), on the narrow side.

        The rows of every ``J_k = K_k A`` and of the model's slices ``W diag(H[k]) V^T`` lie
        in the span of the columns of ``[A^T, V]``; with ``Q`` an orthonormal basis of it
        (``m x q``, ``q <= h + R``), ``||J_k - W diag(H[k]) V^T|| = ||K_k A Q -
        W diag(H[k]) V^T Q||``: ``n N q`` entries instead of ``n N m``.
        """
        Q = torch.linalg.qr(torch.cat([self._A.T, V], dim=1)).Q  # (m, q)
        T = self._inner.contract_input(self._A @ Q)  # (n, N, q): K_k A Q
        VQ = V.T @ Q  # (R, q)
        total = 0.0
        n, _, N = self._shape
        step = max(1, _CHUNK_ELEMENTS // max(N * Q.shape[1], 1))
        for i0 in range(0, n, step):
            i1 = min(i0 + step, n)
            diff = T[i0:i1] - (W[i0:i1].unsqueeze(1) * H.unsqueeze(0)) @ VQ
            total += float((diff * diff).sum())
        return total

    def mttkrp_input(self, W: Tensor, H: Tensor) -> Tensor:
        return transpose_matmul(self._A, self._inner.mttkrp_input(W, H))

    def contract_input_adjoint(self, T: Tensor) -> Tensor:
        return transpose_matmul(self._A, self._inner.contract_input_adjoint(T))


def as_jacobian_tensor(J: Any, *, dtype: torch.dtype | None = None) -> JacobianTensor:
    """Return ``J`` if it is a :class:`JacobianTensor`, else ``DenseJacobian(J, dtype=dtype)``."""
    if isinstance(J, JacobianTensor):
        if dtype is not None and J.dtype != dtype:
            raise TypeError(f"J is a JacobianTensor of dtype {J.dtype}, expected {dtype}")
        return J
    return DenseJacobian(J, dtype=dtype)


@dataclass
class CPDResult:
    """A rank-``R`` CPD ``J ~ [[W diag(weights), V, H]]`` with unit-norm factor columns.

    Attributes
    ----------
    W : torch.Tensor, shape (n, R)
    V : torch.Tensor, shape (m, R)
    H : torch.Tensor, shape (N, R)
        Factor matrices with unit-norm columns, sorted by decreasing weight.
    weights : torch.Tensor, shape (R,)
        Nonnegative component norms.
    relative_error : float
        ``||J - [[W diag(weights), V, H]]|| / ||J||`` of the kept start.
    start_errors : list of float
        Relative error of every start.
    best_start : int
        Index of the kept start.
    n_iter : int
        Iterations of the kept start.
    fallback_starts : list of int
        Starts (method ``"tensorly"``) on which tensorly's ALS failed (a singular normal
        system, typically for a rank above the tensor's rank, or non-finite factors) and that
        the Gauss-Newton solver computed instead, from the start ``method="nls"`` would use.
    """

    W: Tensor
    V: Tensor
    H: Tensor
    weights: Tensor
    relative_error: float
    start_errors: list[float] = field(default_factory=list)
    best_start: int = 0
    n_iter: int = 0
    fallback_starts: list[int] = field(default_factory=list)


def _normalize(W: Tensor, V: Tensor, H: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unit-norm columns, weights sorted decreasingly, and a deterministic sign: the
    largest-magnitude entry of each column of W and V is positive (H takes the sign)."""
    nw, nv, nh = (torch.linalg.vector_norm(A, dim=0) for A in (W, V, H))
    weights = nw * nv * nh
    W = W / torch.where(nw > 0, nw, 1.0)
    V = V / torch.where(nv > 0, nv, 1.0)
    H = H / torch.where(nh > 0, nh, 1.0)
    for A in (W, V):
        idx = A.abs().argmax(dim=0)
        sign = torch.sign(A[idx, torch.arange(A.shape[1])])
        sign = torch.where(sign == 0, 1.0, sign).to(A.dtype)
        A.mul_(sign)
        H = H * sign
    order = torch.argsort(weights, descending=True, stable=True)
    return W[:, order], V[:, order], H[:, order], weights[order]


def solve_psd(gram: Tensor, rhs: Tensor, rcond: float | None = None) -> Tensor:
    """Minimum-norm solution ``X = rhs @ pinv(gram)`` of ``X gram = rhs``.

    Parameters
    ----------
    gram : torch.Tensor, shape (P, P)
        Symmetric positive semidefinite (a Gram matrix of normal equations).
    rhs : torch.Tensor, shape (Q, P)
    rcond : float, optional
        Eigenvalues below ``rcond * max eigenvalue`` are treated as zero (the solution has no
        component along their eigenvectors). Default ``P * eps``.

    Returns
    -------
    torch.Tensor, shape (Q, P)

    Notes
    -----
    Exactly singular Gram matrices arise from gauge freedoms, e.g. the constants that
    B-spline bases contain and that the Jacobian cannot see; the eigenvalue cutoff then
    gives the minimum-norm solution instead of amplifying rounding noise.
    """
    gram = 0.5 * (gram + gram.T)
    evals, evecs = torch.linalg.eigh(gram)
    if rcond is None:
        rcond = gram.shape[0] * torch.finfo(gram.dtype).eps
    cutoff = evals.max().clamp_min(0) * rcond
    inv = torch.where(evals > cutoff, 1.0 / evals, torch.zeros_like(evals))
    return ((rhs @ evecs) * inv) @ evecs.T


def _dot(xs: list[Tensor], ys: list[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(xs, ys, strict=True)))


def pcg(
    apply_a,
    rhs: list[Tensor],
    apply_prec,
    *,
    maxiter: int,
    rtol: float,
) -> tuple[list[Tensor], int]:
    """Preconditioned conjugate gradients for ``A x = rhs`` on lists of tensors, from ``x = 0``.

    Parameters
    ----------
    apply_a, apply_prec : callable
        ``list[Tensor] -> list[Tensor]``: the symmetric positive (semi)definite operator and
        the inverse of the preconditioner.
    rhs : list of torch.Tensor
    maxiter : int
        Maximum number of iterations.
    rtol : float
        Stop when the residual norm is at most ``rtol`` times that of ``rhs``.

    Returns
    -------
    x : list of torch.Tensor
    n_iter : int

    Notes
    -----
    Started from zero, every iterate ``x`` has ``<rhs, x> > 0`` (a descent direction when
    ``rhs`` is the negative gradient), which is what the Gauss-Newton steps rely on. The
    iteration also stops on non-positive curvature, keeping the last iterate.
    """
    x = [torch.zeros_like(b) for b in rhs]
    r = [b.clone() for b in rhs]
    z = apply_prec(r)
    p = [t.clone() for t in z]
    rz = _dot(r, z)
    r0 = math.sqrt(_dot(rhs, rhs))
    if r0 == 0:
        return x, 0
    it = 0
    for it in range(1, maxiter + 1):
        ap = apply_a(p)
        curv = _dot(p, ap)
        if not curv > 0:
            if it == 1:  # no curvature information at all: take the preconditioned gradient
                x = p
            break
        alpha = rz / curv
        x = [xi + alpha * pi for xi, pi in zip(x, p, strict=True)]
        r = [ri - alpha * api for ri, api in zip(r, ap, strict=True)]
        if math.sqrt(_dot(r, r)) <= rtol * r0:
            break
        z = apply_prec(r)
        rz_new = _dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p = [zi + beta * pi for zi, pi in zip(z, p, strict=True)]
    return x, it


def _cp_gauss_newton(d: list[Tensor], *, factors: tuple, mu: float) -> list[Tensor]:
    """Gauss-Newton operator of ``||J - [[W, V, H]]||^2`` (times 1/2) plus ``mu I``, applied
    to a step ``d = [dW, dV, dH]``: only Gram matrices of the factors appear."""
    W, V, H, WW, VV, HH = factors
    dW, dV, dH = d
    dWW, dVV, dHH = dW.T @ W, dV.T @ V, dH.T @ H
    return [
        dW @ (VV * HH) + W @ (dVV * HH + VV * dHH) + mu * dW,
        dV @ (WW * HH) + V @ (dWW * HH + WW * dHH) + mu * dV,
        dH @ (WW * VV) + H @ (dWW * VV + WW * dVV) + mu * dH,
    ]


def _right_multiply(r: list[Tensor], *, mats: list[Tensor]) -> list[Tensor]:
    return [ri @ A for ri, A in zip(r, mats, strict=True)]


def _cpd_nls(
    Jt: JacobianTensor,
    W: Tensor,
    V: Tensor,
    H: Tensor,
    n_iter_max: int,
    tol: float,
    cg_maxiter: int = 25,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """CPD by damped Gauss-Newton (Levenberg-Marquardt) through the JacobianTensor interface.

    The Gauss-Newton system is solved matrix-free by preconditioned CG with the block-Jacobi
    preconditioner ``(Gram + mu I)^{-1}`` per factor (Sorber, Van Barel and De Lathauwer,
    "Optimization-based algorithms for tensor decompositions", SIAM J. Optim. 2013 /
    Tensorlab ``cpd_nls``). The operator only involves the small Gram matrices of the
    factors, so one iteration costs two big products of ``J``: ``contract_input`` at the trial
    point (its cost and the mode-1/mode-3 MTTKRPs) and ``mttkrp_input`` (mode-2 MTTKRP).
    Converges quadratically on exact low-rank tensors, where ALS can crawl when factor
    columns are nearly collinear. Stops when the relative step or the relative cost change is
    at most ``tol``.
    """
    norm_sq = Jt.norm_sq()
    tiny = torch.finfo(W.dtype).tiny

    def balance(W: Tensor, V: Tensor, H: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Column scales (a, c, e), a * c * e = 1, equalising the factors' column norms
        (the CP tensor is unchanged; this fixes the scaling gauge)."""
        norms = [torch.linalg.vector_norm(A, dim=0).clamp_min(tiny) for A in (W, V, H)]
        common = (norms[0] * norms[1] * norms[2]) ** (1 / 3)
        return common / norms[0], common / norms[1], common / norms[2]

    def evaluate(W: Tensor, V: Tensor, H: Tensor) -> tuple[float, Tensor, Tensor]:
        T = Jt.contract_input(V)
        M1 = Jt.mttkrp_output(T, H)
        f = (norm_sq - 2 * float((M1 * W).sum()) + float(cp_norm_sq(W, V, H))) / norm_sq
        if f < _ACCURATE_BELOW and Jt.exact_residual:
            # The expanded square is all rounding down here: use the direct residual.
            f = Jt.residual_norm_sq(W, V, H) / norm_sq
        return f, T, M1

    a, c, e = balance(W, V, H)
    W, V, H = W * a, V * c, H * e
    f, T, M1 = evaluate(W, V, H)
    mu = None
    nu = 2.0
    it = 0
    for it in range(1, n_iter_max + 1):
        WW, VV, HH = W.T @ W, V.T @ V, H.T @ H
        G1, G2, G3 = VV * HH, WW * HH, WW * VV
        M3 = Jt.mttkrp_samples(T, W)
        M2 = Jt.mttkrp_input(W, H)
        grad = [M1 - W @ G1, M2 - V @ G2, M3 - H @ G3]  # minus half the gradient * ||J||^2
        if mu is None:
            scale = float(max(G1.diagonal().max(), G2.diagonal().max(), G3.diagonal().max()))
            mu, mu_floor = 1e-3 * scale, 1e-14 * scale
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        invs = [torch.linalg.inv(G + mu * eye) for G in (G1, G2, G3)]
        factors = (W, V, H, WW, VV, HH)
        apply_gn = functools.partial(_cp_gauss_newton, factors=factors, mu=mu)
        apply_prec = functools.partial(_right_multiply, mats=invs)
        dim = sum(g.numel() for g in grad)
        step, _ = pcg(apply_gn, grad, apply_prec, maxiter=min(cg_maxiter, dim), rtol=1e-6)
        # Predicted decrease of the normalised cost: 2 <g, d> - <d, A d> (A without mu).
        Ad = _cp_gauss_newton(step, factors=factors, mu=0.0)
        pred = (2 * _dot(grad, step) - _dot(step, Ad)) / norm_sq
        Wt, Vt, Ht = W + step[0], V + step[1], H + step[2]
        ft, Tt, M1t = evaluate(Wt, Vt, Ht)
        rho = (f - ft) / pred if pred > 0 else -1.0
        step_norm = math.sqrt(_dot(step, step))
        x_norm = math.sqrt(_dot([W, V, H], [W, V, H]))
        if rho > 0:
            change = f - ft
            W, V, H, T, M1, f_old, f = Wt, Vt, Ht, Tt, M1t, f, ft
            mu = max(mu * max(1 / 3, 1 - (2 * rho - 1) ** 3), mu_floor)
            nu = 2.0
            # Rebalance; T = J V and M1 = mttkrp_output(T, H) scale with the columns.
            a, c, e = balance(W, V, H)
            W, V, H, T, M1 = W * a, V * c, H * e, T * c, M1 * (c * e)
            if f <= 1e-30 or change <= tol * max(f_old, 1e-300):
                break
        else:
            mu *= nu
            nu *= 2.0
        if step_norm <= tol * x_norm or not math.isfinite(mu) or mu > 1e300:
            break
    return W, V, H, it


def cpd(
    J: Tensor | np.ndarray | JacobianTensor,
    rank: int,
    *,
    n_starts: int = 5,
    seed: int = 0,
    n_iter_max: int = 2000,
    tol: float = 1e-10,
    method: str = "tensorly",
    linesearch: bool = True,
    polish: bool = True,
) -> CPDResult:
    """Rank-``R`` canonical polyadic decomposition of a Jacobian tensor, best of several starts.

    First step of the decoupling method of Dreesen, Ishteva and Schoukens (SIMAX 2015):
    ``J ~ sum_r w_r ∘ v_r ∘ h_r``.

    Parameters
    ----------
    J : tensor, ndarray (n, m, N) or JacobianTensor
        The Jacobian tensor.
    rank : int
        Number of components ``R >= 1``.
    n_starts : int, optional
        Number of random starts (seeded from ``seed``); the start with the smallest
        relative error is kept.
    seed : int, optional
        Seed of the random initialisations, a non-negative int; same seed, same result.
    n_iter_max : int, optional
        Maximum number of iterations per start (for each of tensorly's ALS and the
        Gauss-Newton polish).
    tol : float, optional
        Stopping tolerance, a Python or NumPy number ``>= 0``: tensorly stops when its
        relative error changes by less than ``max(tol, 1e-8)`` (``tol`` without polish); the
        Gauss-Newton iteration stops when the relative change of the cost or of the factors
        is at most ``tol``.
    method : {"tensorly", "nls"}, optional
        ``"tensorly"`` (default): :func:`tensorly.decomposition.parafac` (ALS) with the NumPy
        backend on the dense tensor (float64), random initialisation. A start on which
        tensorly's ALS fails (its normal equations can be exactly singular, e.g. for a rank
        above the tensor's rank; NumPy then raises ``LinAlgError``) or returns non-finite
        factors is computed by the Gauss-Newton solver instead, from the random start that
        ``"nls"`` would use (listed in :attr:`CPDResult.fallback_starts`), so that every rank
        gives a valid decomposition. ``"nls"``: the
        package's damped Gauss-Newton from a random (normal) initialisation, which uses only
        the :class:`JacobianTensor` products (no dense unfoldings; suited to large ``J``).
        A :class:`JacobianTensor` that is not a :class:`DenseJacobian` needs ``"nls"``.
    linesearch : bool, optional
        tensorly's extrapolation line search (method ``"tensorly"``).
    polish : bool, optional
        With ``"tensorly"``: continue each start with the package's Gauss-Newton iteration
        (default True). tensorly estimates its error by expanding the square, which cannot
        see relative errors below about ``1e-8``, and ALS converges slowly when factor
        columns are nearly collinear (as the columns of ``H`` often are); the polish takes
        exact decompositions to rounding level in a few iterations.

    Returns
    -------
    CPDResult
        Normalised factors, weights and the relative error of the best start.

    Raises
    ------
    ValueError, TypeError
        Bad shapes, NaN/Inf, ``rank``/``n_starts``/``n_iter_max`` out of range, unknown
        ``method``, ``seed`` not a non-negative int, ``linesearch``/``polish`` not bools
        (TypeError), ``J`` identically zero (all entries exactly zero).

    Notes
    -----
    A dense ``J`` whose squared norm lies outside about ``[1e-231, 1e231]`` (float64; the
    solvers' Gram products would over- or underflow, e.g. ``J * 1e160`` gave NaN) is
    decomposed after an exact scaling by a power of two, and the weights are scaled back.
    Inside that range nothing is rescaled.
    """
    if method not in ("tensorly", "nls"):
        raise ValueError(f"method must be 'tensorly' or 'nls', got {method!r}")
    seed = check_seed(seed)
    Jt = as_jacobian_tensor(J)
    n, m, N = Jt.shape
    check_int(rank, "rank", 1, max(n * m * N, 1))
    check_int(n_starts, "n_starts", 1, 10**6)
    check_int(n_iter_max, "n_iter_max", 1, 10**9)
    if isinstance(tol, bool) or not (
        isinstance(tol, (int, float, np.integer, np.floating)) and tol >= 0
    ):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    check_bool(linesearch, "linesearch")
    check_bool(polish, "polish")
    if method == "tensorly" and not isinstance(Jt, DenseJacobian):
        raise ValueError("method='tensorly' needs a dense J; use method='nls'")
    if _is_zero(Jt):
        raise ValueError("J is identically zero; it has no CPD of rank >= 1")
    Jt, exponent = _rescaled(Jt)

    seeds = np.random.SeedSequence(seed).generate_state(n_starts)
    results = []
    fallbacks = []
    for start in range(n_starts):
        factors = None
        if method == "tensorly":
            # tensorly's error estimate cannot resolve relative errors below ~1e-8: leave the
            # last digits to the Gauss-Newton polish.
            tl_tol = max(tol, 1e-8) if polish else tol
            try:
                factors = _cpd_tensorly(
                    Jt, rank, int(seeds[start]), n_iter_max, tl_tol, linesearch
                )
            except np.linalg.LinAlgError:
                # Exactly singular ALS normal equations (e.g. a rank above the tensor's):
                # the damped Gauss-Newton iteration below never solves a singular system.
                pass
            if factors is not None and not all(all_finite(A) for A in factors[:3]):
                factors = None
            if factors is None:
                fallbacks.append(start)
            elif polish:
                W, V, H, it = factors
                W, V, H, it2 = _cpd_nls(Jt, W, V, H, n_iter_max, tol)
                factors = (W, V, H, it + it2)
        if factors is None:
            gen = torch.Generator().manual_seed(int(seeds[start]))
            W, V, H = (
                torch.randn(size, rank, generator=gen, dtype=Jt.dtype).to(Jt.device)
                for size in (n, m, N)
            )
            factors = _cpd_nls(Jt, W, V, H, n_iter_max, tol)
        W, V, H, it = factors
        err = math.sqrt(Jt.residual_norm_sq(W, V, H) / Jt.norm_sq())
        results.append((err, W, V, H, it))
    errors = [r[0] for r in results]
    best = int(np.argmin(errors))
    err, W, V, H, it = results[best]
    W, V, H, weights = _normalize(W, V, H)
    if exponent:
        weights = _ldexp(weights, -exponent)
    return CPDResult(
        W=W,
        V=V,
        H=H,
        weights=weights,
        relative_error=err,
        start_errors=errors,
        best_start=best,
        n_iter=it,
        fallback_starts=fallbacks,
    )


def _cpd_tensorly(
    Jt: DenseJacobian, rank: int, seed: int, n_iter_max: int, tol: float, linesearch: bool
) -> tuple[Tensor, Tensor, Tensor, int]:
    import tensorly as tl
    from tensorly.decomposition import parafac

    dense = Jt.to_dense().to(torch.float64).cpu().numpy()
    with tl.backend_context("numpy", local_threadsafe=True):
        cp, errors = parafac(
            dense,
            rank,
            n_iter_max=n_iter_max,
            init="random",
            tol=tol,
            random_state=np.random.RandomState(seed),
            normalize_factors=False,
            return_errors=True,
            linesearch=linesearch,
        )
    weights, (W, V, H) = cp
    opts = {"dtype": Jt.dtype, "device": Jt.device}
    W = torch.as_tensor(np.asarray(W) * np.asarray(weights)[None, :]).to(**opts)
    V = torch.as_tensor(np.asarray(V)).to(**opts)
    H = torch.as_tensor(np.asarray(H)).to(**opts)
    return W, V, H, len(errors)


def _is_zero(Jt: JacobianTensor) -> bool:
    """Whether ``J`` is identically zero: an exact test of the entries for a dense ``J``
    (a squared norm underflows to zero for entries below about ``1e-162``)."""
    if isinstance(Jt, DenseJacobian):
        return not bool(Jt.data.any())
    return Jt.norm_sq() == 0


def _ldexp(A: Tensor, exponent: int) -> Tensor:
    """``A * 2**exponent`` in two exact steps (``2**exponent`` alone may overflow)."""
    half = exponent // 2
    return A * 2.0**half * 2.0 ** (exponent - half)


def _safe_norm_range(dtype: torch.dtype) -> tuple[float, float]:
    """Squared norms of ``J`` for which the CPD solvers run without over- or underflow.

    The Gauss-Newton and ALS iterations form Gram matrices and products of three of them
    (up to about ``||J||^2`` times the rank) and divide by ``||J||^2``; ``tiny**0.75`` and
    ``max**0.75`` leave ample room for both (float64: about ``1e-231`` and ``1e231``).
    """
    info = torch.finfo(dtype)
    return info.tiny**0.75, info.max**0.75


def _rescaled(Jt: JacobianTensor) -> tuple[JacobianTensor, int]:
    """``(J * 2**e, e)``: ``J`` scaled by a power of two (exact) so that its largest entry
    lies in ``[0.5, 1)`` when its squared norm is outside :func:`_safe_norm_range`
    (it may overflow to ``inf`` or underflow to zero); ``(J, 0)`` otherwise."""
    low, high = _safe_norm_range(Jt.dtype)
    if low <= Jt.norm_sq() <= high:
        return Jt, 0
    if isinstance(Jt, DenseJacobian):
        lo, hi = torch.aminmax(Jt.data)
        exponent = -math.frexp(max(-float(lo), float(hi)))[1]
        return DenseJacobian(_ldexp(Jt.data, exponent).permute(0, 2, 1)), exponent
    raise ValueError(
        f"J is too {'large' if Jt.norm_sq() > high else 'small'} in magnitude: its squared "
        f"norm {Jt.norm_sq():g} is outside [{low:.3g}, {high:.3g}] (over- or underflow in "
        f"{Jt.dtype}); rescale J (the CPD of c J is that of J with weights times c)"
    )


def match_components(reference: Tensor | np.ndarray, estimate: Tensor | np.ndarray):
    """Align the columns of ``estimate`` with those of ``reference`` up to permutation and scale.

    Parameters
    ----------
    reference, estimate : tensor or ndarray, shape (I, R)
        Factor matrices with the same number of columns (or lists of such matrices with the
        same lengths, e.g. ``[W, V]``: the congruence of a component is then the product of
        its per-factor absolute cosines, as in the usual CP congruence coefficient).

    Returns
    -------
    congruence : numpy.ndarray, shape (R,)
        Absolute cosine (product over factors) of each reference column with its match, in
        ``[0, 1]``; 1 means identical up to scale.
    permutation : numpy.ndarray of int, shape (R,)
        ``estimate[:, permutation[r]]`` matches ``reference[:, r]`` (Hungarian assignment on
        the congruence matrix, :func:`scipy.optimize.linear_sum_assignment`).

    Raises
    ------
    ValueError
        Different numbers of factors, factors that are not matrices of equal shape, NaN/Inf.
    TypeError
        Complex or non-numeric factors.
    """
    from scipy.optimize import linear_sum_assignment

    refs = reference if isinstance(reference, (list, tuple)) else [reference]
    ests = estimate if isinstance(estimate, (list, tuple)) else [estimate]
    if len(refs) != len(ests):
        raise ValueError(
            f"reference and estimate must list the same number of factors, got {len(refs)} "
            f"and {len(ests)}"
        )
    cong = None
    for A, B in zip(refs, ests, strict=True):
        A = _as_float_tensor(A, "reference", torch.float64).cpu().numpy()
        B = _as_float_tensor(B, "estimate", torch.float64).cpu().numpy()
        for name, F in (("reference", A), ("estimate", B)):
            if not np.isfinite(F).all():
                raise ValueError(f"{name} contains NaN or Inf values")
        if A.ndim != 2 or B.ndim != 2 or A.shape != B.shape:
            raise ValueError(
                f"factors to match must be matrices of equal shape (I, R), got {A.shape} and "
                f"{B.shape}"
            )
        An = A / np.maximum(np.linalg.norm(A, axis=0), 1e-300)
        Bn = B / np.maximum(np.linalg.norm(B, axis=0), 1e-300)
        c = np.abs(An.T @ Bn)
        cong = c if cong is None else cong * c
    rows, cols = linear_sum_assignment(-cong)
    perm = np.empty(cong.shape[0], dtype=np.int64)
    perm[rows] = cols
    return np.minimum(cong[rows, cols][np.argsort(rows)], 1.0), perm
