"""The decoupled function ``f(x) = b + W g(V^T x)``.

A decoupled function (Dreesen, Ishteva and Schoukens, SIMAX 2015) maps ``x`` (m,) to

.. math::

    f(x) = b + W \\, g(V^\\top x), \\qquad g_r(z) = \\sum_{d=1}^{D} C[d, r] \\, \\varphi_d(t_r(z)),

with ``W`` (n, R), ``V`` (m, R), ``C`` (D, R), ``b`` (n,) and a fitted :class:`~tenflex.basis.Basis`
providing the ``phi_d`` and the per-branch affine maps ``t_r``. Its Jacobian at ``x_k`` is
``W diag(H[k]) V^T`` with ``H[k, r] = g_r'(z_{k,r})``, so the Jacobian tensor of a batch is the
rank-``R`` CP tensor ``[[W, V, H]]`` (Zniyed, Usevich, Miron and Brie, 2021).

This is the solver-side object: plain tensors, no ``nn.Module``. :meth:`DecoupledFunction.to_module`
turns it into a trainable :class:`tenflex.nn.FlexibleLayer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from tenflex.basis import Basis, _real_tensor, make_basis
from tenflex.checks import all_finite
from tenflex.cpd import tall_matmul

if TYPE_CHECKING:
    from tenflex.nn.flexible import FlexibleLayer

__all__ = ["DecoupledFunction"]

ArrayLike = Tensor | np.ndarray

#: Byte alignment of the operands of :func:`branch_inputs_product` (that of torch's CPU
#: allocator, so that a freshly allocated tensor is never copied).
_PRODUCT_ALIGNMENT = 64


def _canonical_layout(A: Tensor) -> Tensor:
    """``A`` itself if contiguous and stored from a 64-byte boundary, else such a copy;
    ``A`` itself inside a ``torch.func`` transform (``jacrev``, ``vmap``), where a tensor has
    no storage to align."""
    try:
        aligned = A.data_ptr() % _PRODUCT_ALIGNMENT == 0
    except RuntimeError:  # a tensor inside a torch.func transform has no storage
        return A
    if A.is_contiguous() and aligned:
        return A
    return A.clone(memory_format=torch.contiguous_format)


def branch_inputs_product(X: Tensor, V: Tensor) -> Tensor:
    """Branch inputs ``Z = X V``: the one function that computes them, in the solvers and
    in :meth:`DecoupledFunction.branch_inputs`.

    Parameters
    ----------
    X : torch.Tensor, shape (N, m)
    V : torch.Tensor, shape (m, R)

    Returns
    -------
    Z : torch.Tensor, shape (N, R)
        Contiguous.

    Notes
    -----
    One function, so that the ``Z`` a fit records its cost with and the returned model's
    ``Z`` for the same ``X`` agree bit for bit: with a kinked basis (hinges) a point on a
    knot must fall on the same side in both. The product is :func:`tenflex.cpd.tall_matmul`
    (float64 with 13 columns or more: ``(V^T X^T)^T``, MKL's kernel for ``X @ V`` being up
    to 2.5 times slower there) on operands made contiguous and 64-byte aligned (copied
    otherwise): MKL's result for that form was seen to depend on the alignment of ``X``
    and on its memory order, not only on its values. It still depends on the number of
    rows: a row of ``Z`` computed in a sub-batch of ``X`` may differ from the same row in
    the full product in the last bits.
    """
    return tall_matmul(_canonical_layout(X), _canonical_layout(V))


def _common_dtype(arrays: list[Any], dtype: torch.dtype | None) -> torch.dtype:
    """Requested dtype, else the promoted float dtype of the inputs (float64 if none is float)."""
    if dtype is not None:
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating point dtype (a torch.dtype), got {dtype!r}")
        return dtype
    found = None
    for a in arrays:
        if a is None:
            continue
        t = a if isinstance(a, Tensor) else torch.as_tensor(np.asarray(a))
        if t.is_floating_point():
            found = t.dtype if found is None else torch.promote_types(found, t.dtype)
    return found if found is not None else torch.float64


def _to_finite(A: Tensor, name: str, dtype: torch.dtype, device: Any, owner: str) -> Tensor:
    """``A`` in ``dtype`` on ``device``; ValueError for NaN/Inf, with its own message for finite
    values that only overflow on the cast (e.g. float64 data into a float32 ``owner``)."""
    out = A.to(dtype=dtype, device=device)
    if all_finite(out):
        return out
    if out.dtype != A.dtype and all_finite(A):
        raise ValueError(
            f"{name} has values up to {float(A.abs().max()):.3g} in magnitude, which overflow "
            f"the {owner}'s dtype {dtype} (largest {torch.finfo(dtype).max:.3g}); rescale {name} "
            f"or convert the {owner} (e.g. {owner}.to(torch.float64))"
        )
    raise ValueError(f"{name} contains NaN or Inf values")


def _check_matrix(name: str, A: Tensor, shape: tuple[int | None, int | None], what: str) -> None:
    """Raise unless ``A`` is 2-D, matches ``shape`` (None = free) and is finite."""
    if A.ndim != 2 or any(s is not None and s != a for s, a in zip(shape, A.shape, strict=True)):
        raise ValueError(f"{name} must have shape {what}, got {tuple(A.shape)}")
    if not all_finite(A):
        raise ValueError(f"{name} contains NaN or Inf values")


class DecoupledFunction:
    """Decoupled function ``f(x) = b + W g(V^T x)`` with basis-expanded branch functions.

    Parameters
    ----------
    W : tensor or ndarray, shape (n, R)
        Output weights.
    V : tensor or ndarray, shape (m, R)
        Input weights.
    C : tensor or ndarray, shape (D, R)
        Basis coefficients; column ``r`` defines ``g_r``.
    b : tensor or ndarray, shape (n,), or None
        Output bias (zeros if None).
    basis : Basis
        A fitted basis with ``D`` functions and ``R`` branches (see
        :meth:`tenflex.basis.Basis.fit_domain`). It is stored by reference, not copied.
    dtype : torch.dtype, optional
        Floating dtype of the stored tensors; default: the promoted float dtype of the inputs
        (float64 when none is a float array).
    device : torch.device or str, optional
        Device of the stored tensors; default: that of ``W`` (CPU for NumPy input).

    Attributes
    ----------
    W, V, C, b : torch.Tensor
        The parameters, in ``dtype`` on ``device``.
    basis : Basis

    Examples
    --------
    >>> import torch
    >>> from tenflex.basis import make_basis
    >>> from tenflex.model import DecoupledFunction
    >>> basis = make_basis("monomial", 3, n_branches=2)
    >>> f = DecoupledFunction(torch.ones(4, 2), torch.ones(5, 2), torch.ones(3, 2), None, basis)
    >>> f(torch.zeros(7, 5)).shape, f.jacobian(torch.zeros(7, 5)).shape
    (torch.Size([7, 4]), torch.Size([4, 5, 7]))
    """

    def __init__(
        self,
        W: ArrayLike,
        V: ArrayLike,
        C: ArrayLike,
        b: ArrayLike | None,
        basis: Basis,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(basis, Basis):
            raise TypeError(
                f"basis must be a tenflex.basis.Basis (see make_basis), got {type(basis).__name__}"
            )
        dtype = _common_dtype([W, V, C, b], dtype)
        if device is None:
            device = W.device if isinstance(W, Tensor) else torch.device("cpu")

        def conv(A: ArrayLike, name: str) -> Tensor:
            return _real_tensor(A, name).to(dtype=dtype, device=device)

        W, V, C = conv(W, "W"), conv(V, "V"), conv(C, "C")
        _check_matrix("W", W, (None, None), "(n, R)")
        n, R = W.shape
        if R < 1 or n < 1:
            raise ValueError(f"W must have shape (n, R) with n, R >= 1, got {tuple(W.shape)}")
        _check_matrix("V", V, (None, R), f"(m, R) with R = {R} (from W)")
        if V.shape[0] < 1:
            raise ValueError(f"V must have shape (m, R) with m >= 1, got {tuple(V.shape)}")
        D = basis.n_functions
        _check_matrix("C", C, (D, R), f"(D, R) = ({D}, {R}) (D from basis, R from W)")
        if b is None:
            b = torch.zeros(n, dtype=dtype, device=device)
        b = conv(b, "b")
        if b.shape != (n,):
            raise ValueError(f"b must have shape (n,) = ({n},), got {tuple(b.shape)}")
        if not torch.isfinite(b).all():
            raise ValueError("b contains NaN or Inf values")
        if not basis.is_fitted:
            raise ValueError(
                "basis has no affine map: call basis.fit_domain(X @ V) or basis.set_identity(R)"
            )
        if basis.n_branches != R:
            raise ValueError(
                f"basis has {basis.n_branches} branches but W, V, C have R = {R} columns"
            )
        self.W, self.V, self.C, self.b = W, V, C, b
        self.basis = basis

    # ------------------------------------------------------------------ sizes
    @property
    def m(self) -> int:
        """Input dimension."""
        return int(self.V.shape[0])

    @property
    def n(self) -> int:
        """Output dimension."""
        return int(self.W.shape[0])

    @property
    def rank(self) -> int:
        """Number of branches ``R``."""
        return int(self.W.shape[1])

    @property
    def n_functions(self) -> int:
        """Number of basis functions per branch ``D``."""
        return int(self.C.shape[0])

    @property
    def n_parameters(self) -> int:
        """Number of stored coefficients: ``n R + m R + D R + n`` (W, V, C and b)."""
        return self.W.numel() + self.V.numel() + self.C.numel() + self.b.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.W.dtype

    @property
    def device(self) -> torch.device:
        return self.W.device

    def __repr__(self) -> str:
        return (
            f"DecoupledFunction(m={self.m}, n={self.n}, rank={self.rank}, "
            f"basis={self.basis!r}, n_parameters={self.n_parameters}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ evaluation
    def _inputs(self, X: ArrayLike) -> Tensor:
        X = _real_tensor(X, "X")
        if X.ndim != 2 or X.shape[1] != self.m:
            raise ValueError(f"X must have shape (N, m) with m = {self.m}, got {tuple(X.shape)}")
        return _to_finite(X, "X", self.dtype, self.device, "model")

    def branch_inputs(self, X: ArrayLike) -> Tensor:
        """Branch inputs ``Z = X V``.

        Parameters
        ----------
        X : tensor or ndarray, shape (N, m)

        Returns
        -------
        Z : torch.Tensor, shape (N, R)
            Computed by :func:`branch_inputs_product`, as the fitting solvers compute it:
            for the ``X`` a model was fitted on, bit for bit the solver's ``Z``.
        """
        return branch_inputs_product(self._inputs(X), self.V)

    def branch_outputs(self, Z: ArrayLike) -> Tensor:
        """Branch outputs ``G[k, r] = g_r(Z[k, r])``.

        Parameters
        ----------
        Z : tensor or ndarray, shape (N, R)

        Returns
        -------
        G : torch.Tensor, shape (N, R)
        """
        Z = _real_tensor(Z, "Z").to(dtype=self.dtype, device=self.device)
        return torch.einsum("...rd,dr->...r", self.basis(Z), self.C)

    def branch_derivatives(self, Z: ArrayLike) -> Tensor:
        """Branch derivatives ``H[k, r] = g_r'(Z[k, r])`` (affine map included).

        Parameters
        ----------
        Z : tensor or ndarray, shape (N, R)

        Returns
        -------
        H : torch.Tensor, shape (N, R)
        """
        Z = _real_tensor(Z, "Z").to(dtype=self.dtype, device=self.device)
        return torch.einsum("...rd,dr->...r", self.basis.derivatives(Z), self.C)

    def branch_outputs_and_derivatives(self, Z: ArrayLike) -> tuple[Tensor, Tensor]:
        """``(G, H)``, both (N, R), in one basis evaluation."""
        Z = _real_tensor(Z, "Z").to(dtype=self.dtype, device=self.device)
        Phi, dPhi = self.basis.values_and_derivatives(Z)
        return (
            torch.einsum("...rd,dr->...r", Phi, self.C),
            torch.einsum("...rd,dr->...r", dPhi, self.C),
        )

    def __call__(self, X: ArrayLike) -> Tensor:
        """Outputs ``Y = 1 b^T + G W^T``.

        Parameters
        ----------
        X : tensor or ndarray, shape (N, m)

        Returns
        -------
        Y : torch.Tensor, shape (N, n)

        Raises
        ------
        ValueError
            ``X`` of the wrong shape, with NaN/Inf, or with values that overflow the model's
            dtype (e.g. float64 data beyond ``3.4e38`` into a float32 model).
        TypeError
            Complex ``X``.
        """
        G = self.branch_outputs(self.branch_inputs(X))
        return G @ self.W.T + self.b

    def jacobian(self, X: ArrayLike) -> Tensor:
        """Jacobians ``J[:, :, k] = W diag(H[k]) V^T``.

        Parameters
        ----------
        X : tensor or ndarray, shape (N, m)

        Returns
        -------
        J : torch.Tensor, shape (n, m, N)
            The CP tensor ``[[W, V, H]]``.
        """
        H = self.branch_derivatives(self.branch_inputs(X))
        return torch.einsum("ir,jr,kr->ijk", self.W, self.V, H)

    def outputs_and_jacobian(self, X: ArrayLike) -> tuple[Tensor, Tensor]:
        """``(Y, J)`` with shapes (N, n) and (n, m, N), in one basis evaluation."""
        G, H = self.branch_outputs_and_derivatives(self.branch_inputs(X))
        return G @ self.W.T + self.b, torch.einsum("ir,jr,kr->ijk", self.W, self.V, H)

    # ------------------------------------------------------------------ conversion
    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> DecoupledFunction:
        """Detached copy with tensors (and a copy of the basis) in ``dtype`` on ``device``.

        Raises
        ------
        TypeError
            ``dtype`` not a floating point ``torch.dtype``.
        """
        dtype = _common_dtype([self.W], dtype)
        device = self.device if device is None else device
        basis = self.basis.clone().to(device=device, dtype=dtype)
        W, V, C, b = (A.detach().clone() for A in (self.W, self.V, self.C, self.b))
        return DecoupledFunction(W, V, C, b, basis, dtype=dtype, device=device)

    def copy(self) -> DecoupledFunction:
        """Independent detached copy (tensors and basis cloned)."""
        return self.to()

    def to_module(self) -> FlexibleLayer:
        """A trainable :class:`tenflex.nn.FlexibleLayer` with copies of these parameters."""
        from tenflex.nn.flexible import FlexibleLayer

        return FlexibleLayer.from_decoupled(self)

    def parameters_dict(self) -> dict[str, Any]:
        """Plain description: detached CPU tensors and the basis configuration.

        Returns
        -------
        dict
            Keys ``W, V, C, b, scale, shift`` (tensors) and ``basis`` (``basis.config()``);
            :meth:`from_dict` rebuilds the function. Suitable for ``torch.save``.
        """
        return {
            "W": self.W.detach().cpu().clone(),
            "V": self.V.detach().cpu().clone(),
            "C": self.C.detach().cpu().clone(),
            "b": self.b.detach().cpu().clone(),
            "basis": self.basis.config(),
            "scale": self.basis.scale.detach().cpu().clone(),
            "shift": self.basis.shift.detach().cpu().clone(),
        }

    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DecoupledFunction:
        """Inverse of :meth:`parameters_dict`."""
        missing = {"W", "V", "C", "b", "basis", "scale", "shift"} - set(d)
        if missing:
            raise ValueError(f"parameter dict lacks keys {sorted(missing)}")
        basis = make_basis(**d["basis"]).set_domain_map(d["scale"], d["shift"])
        return cls(d["W"], d["V"], d["C"], d["b"], basis, dtype=dtype, device=device)
