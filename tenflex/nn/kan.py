"""Kolmogorov-Arnold network (KAN) layers with basis-function edges, as a baseline.

A KAN layer (Liu, Wang, Vaidya, Ruehle, Halverson, Soljacic, Hou and Tegmark, "KAN:
Kolmogorov-Arnold Networks", arXiv:2404.19756, 2024) puts a learnable univariate function on
every edge ``i -> j`` and sums them at the outputs,

.. math::

    y_j = b_j + \\sum_{i=1}^{m} \\varphi_{j,i}(x_i),
    \\qquad
    \\varphi_{j,i}(x) = \\sum_{d=1}^{D} \\mathrm{coef}[j, i, d] \\, B_d(t_i(x)),

where :math:`t_i(x) = \\mathrm{scale}[i] \\, x + \\mathrm{shift}[i]` maps the data range of
input ``i`` onto the domain of the basis (a :class:`tenflex.basis.Basis` with ``m`` branches,
B-splines by default as in the paper).

Straight on the ``m = 3136`` features of a CNN's fully connected part, a KAN layer costs
``m n D`` coefficients, far beyond the budgets at which compressions are compared. The
baseline :class:`ProjectedKAN` therefore first projects linearly onto ``width`` features,
``z = x P``, and applies a KAN layer ``width -> n``; :func:`kan_width_for_budget` picks the
largest width within a parameter budget, and :meth:`ProjectedKAN.from_linear` starts from a
linear map (e.g. a truncated SVD or reduced-rank regression) represented exactly.

Differences from the paper: the residual term ``w_b silu(x)`` of each edge is left out (the
edges are pure basis expansions; a constant factor ``w_s`` is absorbed into ``coef``), the
spline grid is not extended or refined during training, and outside the fitted domain the
B-splines continue linearly (:class:`tenflex.basis.BSplineBasis`) instead of vanishing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tenflex.basis import Basis, BSplineBasis, _real_tensor
from tenflex.checks import all_finite, cast_without_overflow, check_bool, check_positive_int
from tenflex.nn.flexible import (
    _basis_values,
    _branch_basis,
    _check_dtype,
    _check_input_dtype,
    _check_output_shape,
    _flat_input,
    _generator,
)

__all__ = ["KANLayer", "ProjectedKAN", "kan_width_for_budget"]


def _as_float(value: Any, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a finite floating tensor (float64 for integer input, or ``dtype``);
    complex input raises TypeError (a cast would drop the imaginary part), and finite values
    that overflow ``dtype`` get their own ValueError (not "NaN or Inf")."""
    t = _real_tensor(value, name)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not all_finite(t):
        raise ValueError(f"{name} contains NaN or Inf values")
    if dtype is not None:
        t = cast_without_overflow(t, dtype, name, f"that is the layer's dtype: rescale {name} "
                                  "or work in float64 (layer.to(torch.float64), or P in float64 "
                                  "for from_linear)")
    return t


def _check_bias(bias: Any) -> None:
    """``bias`` must be a bool: ``"no"`` would mean True, None False."""
    check_bool(bias, "bias")


class KANLayer(nn.Module):
    """KAN layer ``y_j = b_j + sum_i phi_{j,i}(x_i)``, ``phi_{j,i} = sum_d coef[j, i, d] B_d(t_i)``.

    One univariate function per edge (Liu et al. 2024, arXiv:2404.19756, Eq. 2.5-2.6),
    expanded in ``D`` basis functions of :mod:`tenflex.basis` after a per-input affine map.

    Parameters
    ----------
    in_features : int
        ``m``, number of inputs (one basis branch each).
    out_features : int
        ``n``, number of outputs.
    basis : str or Basis, optional
        Basis name for :func:`tenflex.basis.make_basis` (default ``"bspline"``, the paper's
        choice; an unknown name raises make_basis' ValueError listing the valid names) or a
        Basis instance (copied). An unfitted basis gets the identity map for ``m`` branches
        (inputs used as they are on the domain ``[-1, 1]``); a fitted one must have ``m``
        branches. Call :meth:`fit_domain` to map the data range onto the domain.
    n_functions : int, optional
        ``D`` when ``basis`` is a name (default 8).
    basis_options : dict, optional
        Extra options for :func:`~tenflex.basis.make_basis`, e.g. ``{"degree": 3}``.
    bias : bool, optional
        Whether to learn ``b`` (default True; another type than bool raises TypeError).
        Without it ``b`` is None and counts nothing.
    seed : int or torch.Generator, optional
        Random initialisation ``coef ~ N(0, 1 / (m D))`` (so the output variance does not
        grow with ``m`` or ``D``), ``b = 0``. None uses torch's global generator.
    dtype, device : optional
        Of the parameters and basis buffers (a floating point dtype, else TypeError;
        default: torch's default).

    Attributes
    ----------
    coef : nn.Parameter, shape (n, m, D)
    b : nn.Parameter, shape (n,), or None
    basis : Basis
        Submodule with ``m`` branches; its buffers ``scale``, ``shift`` (the per-input affine
        maps, not trainable) follow ``.to()`` and the state dict.

    Examples
    --------
    >>> import torch
    >>> layer = KANLayer(4, 2, "bspline", 6, seed=0)
    >>> x = torch.randn(10, 4)
    >>> layer.fit_domain(x)(x).shape
    torch.Size([10, 2])
    >>> layer.n_parameters  # 2*4*6 + 2
    50
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        basis: str | Basis = "bspline",
        n_functions: int = 8,
        *,
        basis_options: dict[str, Any] | None = None,
        bias: bool = True,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        m = check_positive_int(in_features, "in_features")
        n = check_positive_int(out_features, "out_features")
        _check_bias(bias)
        basis = _branch_basis(basis, n_functions, basis_options, m, "in_features")
        D = basis.n_functions
        dtype = _check_dtype(dtype)
        gen = _generator(seed)
        coef = torch.randn(n, m, D, dtype=dtype, generator=gen) / math.sqrt(m * D)
        self.coef = nn.Parameter(coef.to(device))
        if bias:
            self.b = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        else:
            self.register_parameter("b", None)
        self.basis = basis.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ sizes
    @property
    def in_features(self) -> int:
        """``m``."""
        return int(self.coef.shape[1])

    @property
    def out_features(self) -> int:
        """``n``."""
        return int(self.coef.shape[0])

    @property
    def n_functions(self) -> int:
        """``D``, basis functions per edge."""
        return int(self.coef.shape[2])

    @property
    def n_parameters(self) -> int:
        """Trainable coefficients: ``n m D`` (coef) plus ``n`` (b, if present).

        The affine maps ``scale``, ``shift`` of the basis are fitted buffers, not counted.
        """
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"n_functions={self.n_functions}, bias={self.b is not None}"
        )

    # ------------------------------------------------------------------ domain
    def _check_x(self, x: Any, name: str = "x") -> Tensor:
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x)
        m = self.in_features
        if x.ndim != 2 or x.shape[1] != m:
            raise ValueError(
                f"{name} must have shape (B, in_features) with in_features = {m}, "
                f"got {tuple(x.shape)}"
            )
        return x

    def fit_domain(self, x: Tensor | np.ndarray, margin: float = 0.0) -> KANLayer:
        """Set the per-input affine maps so each input's data range maps onto the domain.

        Parameters
        ----------
        x : tensor or ndarray, shape (N, m)
            Inputs, ``N >= 1``, finite.
        margin : float, optional
            Widen each input range by ``margin`` times its width on both sides (see
            :meth:`tenflex.basis.Basis.fit_domain`).

        Returns
        -------
        KANLayer
            ``self``; the basis buffers are kept in the dtype and on the device of ``coef``.
            The edge functions change as functions of ``x`` (``coef`` is not refitted).

        Raises
        ------
        ValueError
            ``x`` of the wrong shape, empty or with NaN/Inf; a bad ``margin``.
        TypeError
            Complex ``x``.
        """
        x = self._check_x(x)
        if x.shape[0] < 1:
            raise ValueError(f"x must have at least one row, got shape {tuple(x.shape)}")
        x = _as_float(x.detach(), "x")
        self.basis.fit_domain(x, margin=margin)
        self.basis.to(dtype=self.coef.dtype, device=self.coef.device)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor, shape (B, m)

        Returns
        -------
        y : torch.Tensor, shape (B, n)

        Raises
        ------
        ValueError
            ``x`` of the wrong shape or with NaN/Inf.
        TypeError
            ``x`` of another dtype than the parameters.
        """
        x = self._check_x(x)
        _check_input_dtype(x, self.coef)
        Phi = _basis_values(self.basis, x, x)  # (B, m, D)
        # One contraction over (i, d): a (B, m D) x (m D, n) matrix product inside einsum.
        y = torch.einsum("bid,jid->bj", Phi, self.coef)
        if self.b is not None:
            y = y + self.b
        return y


def _identity_coefficients(basis: Basis) -> tuple[Tensor, float]:
    """Coefficients ``u`` (D,) and constant ``u0`` with ``sum_d u_d B_d(t) + u0 = t``.

    For B-splines of degree ``p >= 1`` the Greville abscissae give the exact identity
    ``t = sum_d g_d B_d(t)``, ``g_d = (k_{d+1} + ... + k_{d+p}) / p`` (de Boor, "A Practical
    Guide to Splines", 2001, Ch. IX). A basis holding ``t`` itself (polynomials, hinges)
    gives a unit vector. Other bases use a least-squares fit of ``t`` by
    ``[B_1(t), ..., B_D(t), 1]`` on a fine uniform grid of the domain (float64, minimum
    norm); ValueError if ``t`` is not in that span.
    """
    if isinstance(basis, BSplineBasis) and basis.degree >= 1:
        p, D = basis.degree, basis.n_functions
        k = basis.knots(dtype=torch.float64)
        g = torch.stack([k[d + 1 : d + p + 1].mean() for d in range(D)])
        return g, 0.0
    lo, hi = basis.domain
    n_grid = max(64, 8 * basis.n_functions)
    t = torch.linspace(lo, hi, n_grid, dtype=torch.float64)
    unit = basis.clone().to(torch.float64).set_identity(1)
    Phi = unit(t[:, None])[:, 0, :]  # (n_grid, D)
    # A basis function equal to t (T_1, P_1, monomial t, hinge phi_1) gives an exact unit
    # vector; a least-squares solution would leave rounding-level weights on high degrees,
    # which grow fast outside the domain.
    exact = ((Phi - t[:, None]).abs().amax(dim=0) <= 1e-14 * (hi - lo)).nonzero()
    if exact.numel():
        u = torch.zeros(basis.n_functions, dtype=torch.float64)
        u[int(exact[0, 0])] = 1.0
        return u, 0.0
    M = torch.cat([Phi, torch.ones(n_grid, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(M, t[:, None], driver="gelsd").solution[:, 0]
    residual = float((M @ sol - t).abs().max())
    if residual > 1e-9 * (hi - lo):
        raise ValueError(
            f"from_linear needs a basis whose span (with constants) contains the identity "
            f"t; {basis.config()} misses it by {residual:.3g} on its domain {basis.domain}"
        )
    return sol[:-1], float(sol[-1])


class ProjectedKAN(nn.Module):
    """Linear projection followed by a KAN layer: ``z = x P``, ``y = KANLayer(z)``.

    The KAN baseline at a fixed parameter budget (Liu et al. 2024, arXiv:2404.19756): a KAN
    layer directly on ``m`` inputs costs ``m n D`` coefficients, so the inputs are first
    projected onto ``width`` features by ``P`` (no bias).

    Parameters
    ----------
    in_features : int
        ``m``; inputs of shape ``(B, *in_shape)`` are flattened to ``(B, m)``.
    out_features : int
        ``n``.
    width : int
        Number of projected features ``w >= 1`` (inputs of the KAN layer).
    basis, n_functions, basis_options : optional
        Of the KAN layer, see :class:`KANLayer` (default cubic B-splines, ``D = 8``).
    bias : bool, optional
        Whether the KAN layer has a bias (default True; a bool, else TypeError).
    seed : int or torch.Generator, optional
        Random initialisation: ``P ~ N(0, 1/m)`` then the KAN layer's ``coef`` from the same
        generator. None uses torch's global generator.
    dtype, device : optional
        Of the parameters and basis buffers (a floating point dtype, else TypeError).
    output_shape : int or tuple of int, optional
        If given, outputs are reshaped to ``(B, *output_shape)`` (product must be ``n``; an
        int ``k`` means ``(k,)``).

    Attributes
    ----------
    P : nn.Parameter, shape (m, w)
    kan : KANLayer
        ``w -> n``.

    Examples
    --------
    >>> import torch
    >>> model = ProjectedKAN(3136, 10, width=4, n_functions=8, seed=0)
    >>> model.n_parameters  # 3136*4 + 10*4*8 + 10
    12874
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        width: int,
        basis: str | Basis = "bspline",
        n_functions: int = 8,
        *,
        basis_options: dict[str, Any] | None = None,
        bias: bool = True,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        output_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        m = check_positive_int(in_features, "in_features")
        n = check_positive_int(out_features, "out_features")
        w = check_positive_int(width, "width")
        _check_bias(bias)
        self.output_shape = _check_output_shape(output_shape, n)
        dtype = _check_dtype(dtype)
        gen = _generator(seed)
        P = torch.randn(m, w, dtype=dtype, generator=gen) / math.sqrt(m)
        self.P = nn.Parameter(P.to(device))
        self.kan = KANLayer(
            w,
            n,
            basis,
            n_functions,
            basis_options=basis_options,
            bias=bias,
            seed=gen,
            dtype=dtype,
            device=device,
        )

    # ------------------------------------------------------------------ sizes
    @property
    def in_features(self) -> int:
        """``m``."""
        return int(self.P.shape[0])

    @property
    def out_features(self) -> int:
        """``n``."""
        return self.kan.out_features

    @property
    def width(self) -> int:
        """``w``, number of projected features."""
        return int(self.P.shape[1])

    @property
    def n_functions(self) -> int:
        """``D``."""
        return self.kan.n_functions

    @property
    def n_parameters(self) -> int:
        """Trainable coefficients: ``m w`` (P) plus those of the KAN layer."""
        return self.P.numel() + self.kan.n_parameters

    def extra_repr(self) -> str:
        shape = f", output_shape={self.output_shape}" if self.output_shape else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"width={self.width}, n_functions={self.n_functions}{shape}"
        )

    # ------------------------------------------------------------------ forward
    def _flatten(self, x: Any, name: str = "x") -> Tensor:
        return _flat_input(x, self.in_features, name)

    def project(self, x: Tensor) -> Tensor:
        """Projected features ``z = x P``, shape (B, w), for ``x`` (B, m) or (B, *in_shape)."""
        x = self._flatten(x)
        _check_input_dtype(x, self.P)
        return x @ self.P

    def forward(self, x: Tensor) -> Tensor:
        """Apply the projection and the KAN layer.

        Parameters
        ----------
        x : torch.Tensor, shape (B, m) or (B, *in_shape) with prod(in_shape) = m

        Returns
        -------
        y : torch.Tensor, shape (B, n), or (B, *output_shape) if set
        """
        y = self.kan(self.project(x))
        if self.output_shape is not None:
            y = y.reshape(y.shape[0], *self.output_shape)
        return y

    def fit_domain(self, x: Tensor | np.ndarray, margin: float = 0.0) -> ProjectedKAN:
        """Fit the KAN layer's affine maps on the projected data ``x P``.

        Parameters
        ----------
        x : tensor or ndarray, shape (N, m) or (N, *in_shape)
            Finite inputs, ``N >= 1``.
        margin : float, optional
            See :meth:`KANLayer.fit_domain`.

        Returns
        -------
        ProjectedKAN
            ``self``.
        """
        x = self._flatten(x)
        x = _as_float(x.detach(), "x", self.P.dtype).to(self.P.device)
        with torch.no_grad():
            z = x @ self.P
        self.kan.fit_domain(z, margin=margin)
        return self

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_linear(
        cls,
        P: Tensor | np.ndarray,
        A: Tensor | np.ndarray,
        b: Tensor | np.ndarray,
        *,
        basis: str | Basis = "bspline",
        n_functions: int = 8,
        basis_options: dict[str, Any] | None = None,
        x: Tensor | np.ndarray | None = None,
        margin: float = 0.0,
        output_shape: tuple[int, ...] | None = None,
    ) -> ProjectedKAN:
        """The layer equal to the linear map ``y = b + (x P) A^T``.

        Each edge function becomes ``phi_{j,i}(z) = A[j, i] z`` written in the basis:
        with ``t = s_i z + c_i`` the affine map of input ``i`` and ``t = sum_d u_d B_d(t) +
        u0`` the identity in the basis (Greville abscissae for B-splines; a least-squares fit
        on a fine grid for other bases), ``coef[j, i] = A[j, i] u / s_i`` and the constants
        ``A[j, i] (u0 - c_i) / s_i`` go into the bias. The representation is exact (to
        rounding) on the domain for B-splines of degree >= 1 and for bases holding the
        degree-1 polynomial; it also holds outside for polynomial bases and for B-splines,
        whose linear extrapolation continues ``t`` exactly.

        Parameters
        ----------
        P : tensor or ndarray, shape (m, w)
            Projection; its dtype (float64 for integer input) and device are the layer's.
        A : tensor or ndarray, shape (n, w)
        b : tensor or ndarray, shape (n,)
        basis, n_functions, basis_options : optional
            See :class:`KANLayer`.
        x : tensor or ndarray, shape (N, m) or (N, *in_shape), optional
            If given, the KAN layer's affine maps are fitted on ``x P`` (with ``margin``);
            otherwise a fitted Basis instance keeps its map and a name gets the identity map.
        margin : float, optional
            See :meth:`KANLayer.fit_domain`.
        output_shape : tuple of int, optional
            See the class parameters.

        Returns
        -------
        ProjectedKAN

        Raises
        ------
        ValueError
            Mismatched shapes, NaN/Inf, or a basis that cannot represent ``t`` (e.g.
            B-splines of degree 0).
        TypeError
            Complex ``P``, ``A``, ``b`` or ``x``.
        """
        P = _as_float(P, "P")
        dtype, device = P.dtype, P.device
        A = _as_float(A, "A", dtype).to(device)
        b = _as_float(b, "b", dtype).to(device)
        if P.ndim != 2 or P.shape[0] < 1 or P.shape[1] < 1:
            raise ValueError(f"P must have shape (m, w) with m, w >= 1, got {tuple(P.shape)}")
        m, w = P.shape
        if A.ndim != 2 or A.shape[1] != w or A.shape[0] < 1:
            raise ValueError(
                f"A must have shape (n, w) with w = {w} (columns of P), got {tuple(A.shape)}"
            )
        n = A.shape[0]
        if b.shape != (n,):
            raise ValueError(
                f"b must have shape (n,) with n = {n} (rows of A), got {tuple(b.shape)}"
            )
        layer = cls(
            m,
            n,
            w,
            basis,
            n_functions,
            basis_options=basis_options,
            seed=0,
            dtype=dtype,
            device=device,
            output_shape=output_shape,
        )
        with torch.no_grad():
            layer.P.copy_(P)
        if x is not None:
            layer.fit_domain(x, margin=margin)
        u, u0 = _identity_coefficients(layer.kan.basis)
        u = u.to(dtype=dtype, device=device)
        s = layer.kan.basis.scale.to(dtype=dtype, device=device)
        c = layer.kan.basis.shift.to(dtype=dtype, device=device)
        with torch.no_grad():
            layer.kan.coef.copy_((A / s)[:, :, None] * u)
            layer.kan.b.copy_(b + A @ ((u0 - c) / s))
        return layer


def kan_width_for_budget(
    in_features: int, out_features: int, n_functions: int, budget: float, *, bias: bool = True
) -> int:
    """Largest width ``w`` of a :class:`ProjectedKAN` whose parameters fit in ``budget``.

    Parameters
    ----------
    in_features, out_features : int
        ``m`` and ``n``.
    n_functions : int
        ``D``.
    budget : int or float
        Maximum number of parameters.
    bias : bool, optional
        Whether the KAN layer has a bias (``n`` parameters; a bool, else TypeError).

    Returns
    -------
    int
        The largest ``w >= 1`` with ``m w + n w D + n (bias) <= budget``.

    Raises
    ------
    ValueError
        If even ``w = 1`` does not fit (the message gives both numbers).
    TypeError
        ``budget`` not a number, ``bias`` not a bool.
    """
    m = check_positive_int(in_features, "in_features")
    n = check_positive_int(out_features, "out_features")
    D = check_positive_int(n_functions, "n_functions")
    _check_bias(bias)
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise TypeError(f"budget must be a number, got {type(budget).__name__} ({budget!r})")
    if not math.isfinite(budget):
        raise ValueError(f"budget must be finite, got {budget!r}")
    fixed = n if bias else 0
    per_width = m + n * D
    # Floor division stays exact for integer budgets of any size.
    w = int((budget - fixed) // per_width)
    if w < 1:
        raise ValueError(
            f"a budget of {budget} parameters is too small for a projected KAN with m = {m}, "
            f"n = {n}, D = {D}: width 1 needs m + n D + {fixed} = {per_width + fixed}"
        )
    return int(w)
