"""Univariate bases for the branch functions of a decoupled model.

A decoupled model (Dreesen, Ishteva and Schoukens, SIMAX 2015; Zniyed, Usevich, Miron and
Brie, 2021) writes each branch function as a weighted sum of fixed univariate functions,

.. math::

    g_r(z) = \\sum_{d=1}^{D} C[d, r] \\, \\varphi_d(t_r(z)),
    \\qquad t_r(z) = \\mathrm{scale}[r] \\, z + \\mathrm{shift}[r].

The affine map :math:`t_r` sends the data range of branch ``r`` onto the natural ``domain`` of
the basis (``[-1, 1]`` for every basis here). It belongs to the basis object, and its factor
``scale[r]`` enters the branch derivatives through the chain rule, so
``derivatives(Z)[k, r, d]`` is :math:`\\mathrm{d}\\varphi_d(t_r(z))/\\mathrm{d}z` at
``z = Z[k, r]``.

Bases
-----
``"monomial"``
    :math:`t, t^2, \\dots, t^D` (no constant: the bias of the model absorbs it).
``"chebyshev"``
    Chebyshev polynomials of the first kind :math:`T_1, \\dots, T_D`.
``"legendre"``
    Legendre polynomials :math:`P_1, \\dots, P_D`.
``"bspline"``
    The ``D`` B-splines of degree ``degree`` on uniform knots whose spline space lives on
    ``[-1, 1]``; they form a partition of unity there (so they contain the constants).
    Outside ``[-1, 1]`` every function continues linearly with its boundary value and slope.
``"hinge"``
    :math:`\\varphi_1 = t`, :math:`\\varphi_{j+1} = \\max(0, t - \\kappa_j)` with the ``D - 1``
    knots :math:`\\kappa_j = -1 + 2j/D` spread uniformly inside ``(-1, 1)``.

Polynomials and hinges extrapolate naturally outside the domain; B-splines extrapolate
linearly. No basis ever returns silent zeros outside its domain.
:meth:`Basis.outside_fraction` tells how much data lies outside the domain.

Examples
--------
>>> import torch
>>> from tenflex.basis import make_basis
>>> Z = torch.randn(100, 3, dtype=torch.float64)
>>> basis = make_basis("bspline", 6, degree=3).fit_domain(Z)
>>> Phi, dPhi = basis.values_and_derivatives(Z)
>>> Phi.shape, dPhi.shape
(torch.Size([100, 3, 6]), torch.Size([100, 3, 6]))
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tenflex.checks import all_finite, check_int

__all__ = [
    "BASIS_NAMES",
    "MAX_FUNCTIONS",
    "BSplineBasis",
    "Basis",
    "ChebyshevBasis",
    "HingeBasis",
    "LegendreBasis",
    "MonomialBasis",
    "make_basis",
]

#: Largest accepted number of basis functions per branch.
MAX_FUNCTIONS = 1000


def _real_tensor(A: Any, name: str) -> Tensor:
    """``A`` as a tensor of real numbers (complex input would lose its imaginary part).

    Input that is not a tensor goes through NumPy, so that Python floats (lists, scalars)
    keep their double precision: ``torch.as_tensor`` alone would round them to float32.
    """
    t = A if isinstance(A, Tensor) else torch.as_tensor(np.asarray(A))
    if t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t


def _check_nonneg_number(value: Any, name: str) -> float:
    """``value`` as a finite float ``>= 0`` (Python or NumPy number; ``bool`` is not one)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Basis(nn.Module):
    """Base class: ``D`` univariate functions applied branch-wise after a per-branch affine map.

    Parameters
    ----------
    n_functions : int
        Number ``D`` of basis functions per branch, ``1 <= D <= 1000``.
    n_branches : int, optional
        If given, set an identity affine map (``scale = 1``, ``shift = 0``) for this many
        branches ``R``; otherwise the basis is unfitted until :meth:`fit_domain` or
        :meth:`set_domain_map` is called.

    Attributes
    ----------
    name : str
        Name accepted by :func:`make_basis`.
    n_functions : int
        ``D``.
    domain : tuple of float
        Natural domain ``(lo, hi)`` of the functions.
    scale, shift : torch.Tensor
        Buffers of shape ``(R,)`` (shape ``(0,)`` while unfitted); ``t = scale * z + shift``.
    check_finite : bool
        If True (default), inputs are checked for NaN/Inf, which raises ValueError (skipped
        inside ``torch.func`` transforms such as ``vmap``, where it cannot be evaluated).

    Notes
    -----
    Subclasses implement :meth:`_natural`, which evaluates values and derivatives with respect
    to the natural variable ``t``. Inputs of any float dtype and device are accepted; the
    buffers are cast to the input's dtype and device on the fly, and autograd flows through
    ``Z`` (not through the buffers).
    """

    name: str = ""
    domain: tuple[float, float] = (-1.0, 1.0)

    def __init__(self, n_functions: int, *, n_branches: int | None = None) -> None:
        super().__init__()
        self.n_functions = check_int(n_functions, "n_functions", 1, MAX_FUNCTIONS)
        self.check_finite = True
        self.register_buffer("scale", torch.empty(0, dtype=torch.float64))
        self.register_buffer("shift", torch.empty(0, dtype=torch.float64))
        if n_branches is not None:
            self.set_identity(n_branches)

    # ------------------------------------------------------------------ configuration
    def _options(self) -> dict[str, Any]:
        """Options of :func:`make_basis` beyond ``n_functions`` (subclasses extend)."""
        return {}

    def config(self) -> dict[str, Any]:
        """Return ``dict(name=..., n_functions=..., **options)`` so that
        ``make_basis(**basis.config())`` builds an unfitted copy."""
        return {"name": self.name, "n_functions": self.n_functions, **self._options()}

    def clone(self) -> Basis:
        """Return an independent deep copy (same affine map)."""
        return copy.deepcopy(self)

    @property
    def n_branches(self) -> int:
        """Number of branches ``R`` of the affine map (0 while unfitted)."""
        return int(self.scale.shape[0])

    @property
    def is_fitted(self) -> bool:
        """Whether an affine map is set (by :meth:`fit_domain`, :meth:`set_domain_map`...)."""
        return self.n_branches > 0

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self._options().items())
        return f"n_functions={self.n_functions}{opts}, domain={self.domain}, R={self.n_branches}"

    # ------------------------------------------------------------------ affine map
    def fit_domain(self, Z: Tensor | np.ndarray, *, margin: float = 0.0) -> Basis:
        """Fit the per-branch affine map so each column's data range maps onto ``domain``.

        Parameters
        ----------
        Z : tensor or ndarray, shape (N, R)
            Branch inputs, one column per branch, ``N >= 1``.
        margin : float, optional
            Widen each column's range ``[min, max]`` by ``margin * (max - min)`` on both sides
            before mapping it, so that new data slightly beyond the sample stays inside the
            domain. Default 0: ``min -> lo`` and ``max -> hi`` exactly.

        Returns
        -------
        Basis
            ``self``, with buffers ``scale`` and ``shift`` of shape ``(R,)`` in ``Z``'s float
            dtype (float64 for integer input) and on ``Z``'s device.

        Notes
        -----
        A constant column (zero range, up to rounding) gets ``scale = 1`` and the shift that
        puts its value at the centre of the domain, rather than an infinite scale.
        """
        Z = _real_tensor(Z, "Z")
        if Z.ndim != 2 or Z.shape[0] < 1 or Z.shape[1] < 1:
            raise ValueError(
                f"Z must have shape (N, R) with N >= 1 and R >= 1, got {tuple(Z.shape)}"
            )
        if not Z.is_floating_point():
            Z = Z.to(torch.float64)
        if not all_finite(Z):
            raise ValueError("Z contains NaN or Inf values")
        margin = _check_nonneg_number(margin, "margin")
        lo, hi = self.domain
        with torch.no_grad():
            Z = Z.detach()
            zmin = Z.amin(dim=0)
            zmax = Z.amax(dim=0)
            width = zmax - zmin
            zmin = zmin - margin * width
            width = width * (1.0 + 2.0 * margin)
            # Relative test: a range at rounding level is a constant column.
            tiny = 16 * torch.finfo(Z.dtype).eps * torch.maximum(zmin.abs(), zmax.abs())
            const = width <= tiny
            safe_width = torch.where(const, torch.ones_like(width), width)
            scale = torch.where(const, torch.ones_like(width), (hi - lo) / safe_width)
            shift = torch.where(const, 0.5 * (lo + hi) - zmin, lo - scale * zmin)
        if not (torch.isfinite(shift).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            # A range wider than the dtype can hold (max - min overflows to Inf), or one so
            # narrow that (hi - lo) / (max - min) does (e.g. a range of 1e-5 in float16).
            what = "wide" if not torch.isfinite(width).all() else "narrow"
            raise ValueError(
                f"Z's column ranges are too {what} for {Z.dtype} (from {float(zmin.min()):.3g} "
                f"to {float(zmax.max()):.3g}); rescale the data or convert it to a wider "
                "dtype (e.g. Z.to(torch.float64))"
            )
        self.scale = scale.clone()
        self.shift = shift.clone()
        return self

    def set_domain_map(self, scale: Tensor | np.ndarray, shift: Tensor | np.ndarray) -> Basis:
        """Set the affine map ``t = scale * z + shift`` explicitly.

        Parameters
        ----------
        scale, shift : tensor or ndarray, shape (R,)
            Finite values; ``scale`` nonzero.

        Returns
        -------
        Basis
            ``self``.

        Raises
        ------
        ValueError
            Shapes other than ``(R,)``, NaN/Inf, a zero ``scale``.
        TypeError
            Complex ``scale`` or ``shift``.
        """
        scale = _real_tensor(scale, "scale")
        shift = _real_tensor(shift, "shift")
        if scale.ndim != 1 or scale.shape[0] < 1 or shift.shape != scale.shape:
            raise ValueError(
                "scale and shift must both have shape (R,) with R >= 1, got "
                f"{tuple(scale.shape)} and {tuple(shift.shape)}"
            )
        dtype = scale.dtype if scale.is_floating_point() else torch.float64
        scale = scale.detach().to(dtype).clone()
        shift = shift.detach().to(dtype=dtype, device=scale.device).clone()
        if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
            raise ValueError("scale and shift must be finite")
        if (scale == 0).any():
            raise ValueError("scale must be nonzero")
        self.scale = scale
        self.shift = shift
        return self

    def set_identity(self, n_branches: int) -> Basis:
        """Set the identity map (``scale = 1``, ``shift = 0``) for ``n_branches`` branches."""
        R = check_int(n_branches, "n_branches", 1, 10**9)
        dtype, device = self.scale.dtype, self.scale.device
        self.scale = torch.ones(R, dtype=dtype, device=device)
        self.shift = torch.zeros(R, dtype=dtype, device=device)
        return self

    def data_range(self) -> tuple[Tensor, Tensor]:
        """Branch inputs ``z`` that map onto the domain ends.

        Returns
        -------
        z_lo, z_hi : torch.Tensor, shape (R,)
            ``t(z_lo) = lo`` and ``t(z_hi) = hi``: after :meth:`fit_domain` (margin 0), the
            column minima and maxima (useful to plot each branch function on its data range).
        """
        self._check_fitted()
        lo, hi = self.domain
        return (lo - self.shift) / self.scale, (hi - self.shift) / self.scale

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The number of branches is only known from the data: let a state dict resize the
        # affine-map buffers of an unfitted basis (e.g. loading a fitted basis into a freshly
        # built one). A fitted basis keeps its R branches, as any module keeps its shapes: a
        # mismatch is reported by torch, and a failed load into a layer of another rank does
        # not leave the layer's basis with branches that no longer match its weights.
        fitted = self.is_fitted  # before the loop: resizing scale makes the basis fitted
        for key in ("scale", "shift"):
            value = state_dict.get(prefix + key)
            if (not fitted and isinstance(value, Tensor)
                    and value.shape != getattr(self, key).shape):
                setattr(self, key, torch.empty_like(value, device=getattr(self, key).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise ValueError(
                f"{type(self).__name__} has no affine map yet: call fit_domain(Z) with the "
                "branch inputs Z of shape (N, R), or set_identity(R)"
            )

    def _prepare(self, Z: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Validate ``Z`` (..., R); return it with ``scale``, ``shift`` cast to match."""
        self._check_fitted()
        Z = _real_tensor(Z, "Z")
        if not Z.is_floating_point():
            Z = Z.to(self.scale.dtype)
        R = self.n_branches
        if Z.ndim < 1 or Z.shape[-1] != R:
            raise ValueError(
                f"Z must have shape (..., R) with R = {R} branches, got {tuple(Z.shape)}"
            )
        if self.check_finite and not all_finite(Z):
            raise ValueError("Z contains NaN or Inf values")
        scale = self.scale.to(dtype=Z.dtype, device=Z.device)
        shift = self.shift.to(dtype=Z.dtype, device=Z.device)
        # A map fitted on a narrow range has a large scale, which a narrow dtype (float16:
        # 65504) cannot hold: every value would silently be NaN.
        if self.check_finite and not all_finite(torch.cat((scale, shift))):
            self._refuse_map(Z.dtype)
        return Z, scale, shift

    def _refuse_map(self, dtype: torch.dtype) -> None:
        """Raise: the affine map is not finite in ``dtype`` (said where it was lost)."""
        stored = self.scale.dtype
        where = (f"Z's dtype {dtype}; evaluate in a wider dtype (e.g. Z.to(torch.float32))"
                 if all_finite(torch.cat((self.scale, self.shift))) else
                 f"{stored}, into which it was converted (e.g. by layer.half()): convert the "
                 "fitted layer or basis to float32 or float64 instead")
        raise ValueError(
            f"the basis's affine map (scale up to {float(self.scale.abs().max()):.3g}, shift up "
            f"to {float(self.shift.abs().max()):.3g}) does not fit in {where}"
        )

    def to_natural(self, Z: Tensor | np.ndarray) -> Tensor:
        """Map branch inputs ``Z`` (..., R) onto the natural variable ``t`` (..., R)."""
        Z, scale, shift = self._prepare(Z)
        return Z * scale + shift

    def outside_fraction(
        self, Z: Tensor | np.ndarray, *, per_branch: bool = False, atol: float | None = None
    ) -> float | Tensor:
        """Fraction of branch inputs whose mapped value lies outside ``domain``.

        Parameters
        ----------
        Z : tensor or ndarray, shape (..., R)
            Branch inputs.
        per_branch : bool, optional
            If True, return a tensor of shape ``(R,)`` with one fraction per branch; otherwise
            a float over all entries.
        atol : float, optional
            Tolerance on ``t``, a finite number ``>= 0``, so that rounding at the domain ends
            does not count as outside. Default ``64 * eps`` of ``Z``'s dtype times the domain
            width.

        Returns
        -------
        float or torch.Tensor
            Fraction(s) in ``[0, 1]``.

        Raises
        ------
        ValueError
            ``Z`` of the wrong shape or with NaN/Inf, ``atol`` not a finite number ``>= 0``.
        TypeError
            Complex ``Z``.
        """
        if atol is not None:
            atol = _check_nonneg_number(atol, "atol")
        t = self.to_natural(Z).detach()
        lo, hi = self.domain
        if atol is None:
            atol = 64 * torch.finfo(t.dtype).eps * (hi - lo)
        out = ((t < lo - atol) | (t > hi + atol)).to(t.dtype)
        out = out.reshape(-1, self.n_branches)
        if per_branch:
            # No entries: nothing lies outside (the mean of an empty column would be NaN).
            return out.mean(dim=0) if out.shape[0] else out.new_zeros(self.n_branches)
        return float(out.mean()) if out.numel() else 0.0

    # ------------------------------------------------------------------ evaluation
    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        """Values (..., D) and, if ``derivative``, d/dt (..., D) at natural inputs ``t`` (...)."""
        raise NotImplementedError

    def forward(self, Z: Tensor | np.ndarray) -> Tensor:
        """Values ``Phi[..., r, d] = phi_d(t_r(Z[..., r]))``.

        Parameters
        ----------
        Z : tensor or ndarray, shape (..., R)

        Returns
        -------
        Phi : torch.Tensor, shape (..., R, D)
        """
        Z, scale, shift = self._prepare(Z)
        return self._natural(Z * scale + shift, False)[0]

    def derivatives(self, Z: Tensor | np.ndarray) -> Tensor:
        """Derivatives ``dPhi[..., r, d] = d/dz phi_d(t_r(z))`` at ``z = Z[..., r]``.

        Parameters
        ----------
        Z : tensor or ndarray, shape (..., R)

        Returns
        -------
        dPhi : torch.Tensor, shape (..., R, D)
            Includes the chain-rule factor ``scale[r]``.
        """
        return self.values_and_derivatives(Z)[1]

    def values_and_derivatives(self, Z: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
        """Values and derivatives in one pass.

        Parameters
        ----------
        Z : tensor or ndarray, shape (..., R)

        Returns
        -------
        Phi, dPhi : torch.Tensor, shape (..., R, D)
            As in :meth:`forward` and :meth:`derivatives`.
        """
        Z, scale, shift = self._prepare(Z)
        values, dvalues = self._natural(Z * scale + shift, True)
        return values, dvalues * scale.unsqueeze(-1)


class MonomialBasis(Basis):
    """Monomials ``t, t**2, ..., t**D`` on the domain ``[-1, 1]`` (no constant term).

    Parameters
    ----------
    n_functions : int
        Highest degree ``D``.
    n_branches : int, optional
        See :class:`Basis`.
    """

    name = "monomial"

    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        D = self.n_functions
        powers = [torch.ones_like(t), t]  # t**0, t**1
        for _ in range(2, D + 1):
            powers.append(powers[-1] * t)
        values = torch.stack(powers[1:], dim=-1)
        if not derivative:
            return values, None
        dvalues = torch.stack([d * powers[d - 1] for d in range(1, D + 1)], dim=-1)
        return values, dvalues


class ChebyshevBasis(Basis):
    """Chebyshev polynomials of the first kind ``T_1, ..., T_D`` on ``[-1, 1]``.

    Values by the three-term recurrence ``T_{d+1} = 2 t T_d - T_{d-1}``; derivatives by
    ``T_d' = d U_{d-1}`` with the Chebyshev polynomials of the second kind
    (``U_{d+1} = 2 t U_d - U_{d-1}``), both stable on the domain.
    """

    name = "chebyshev"

    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        D = self.n_functions
        T = [torch.ones_like(t), t]
        for _ in range(2, D + 1):
            T.append(2 * t * T[-1] - T[-2])
        values = torch.stack(T[1 : D + 1], dim=-1)
        if not derivative:
            return values, None
        U = [torch.ones_like(t), 2 * t]
        for _ in range(2, D):
            U.append(2 * t * U[-1] - U[-2])
        dvalues = torch.stack([d * U[d - 1] for d in range(1, D + 1)], dim=-1)
        return values, dvalues


class LegendreBasis(Basis):
    """Legendre polynomials ``P_1, ..., P_D`` on ``[-1, 1]``.

    Bonnet's recurrence ``(d+1) P_{d+1} = (2d+1) t P_d - d P_{d-1}`` for values and
    ``P_{d+1}' = P_{d-1}' + (2d+1) P_d`` for derivatives.
    """

    name = "legendre"

    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        D = self.n_functions
        P = [torch.ones_like(t), t]
        for d in range(1, D):
            P.append(((2 * d + 1) * t * P[d] - d * P[d - 1]) / (d + 1))
        values = torch.stack(P[1 : D + 1], dim=-1)
        if not derivative:
            return values, None
        dP = [torch.zeros_like(t), torch.ones_like(t)]
        for d in range(1, D):
            dP.append(dP[d - 1] + (2 * d + 1) * P[d])
        return values, torch.stack(dP[1 : D + 1], dim=-1)


class BSplineBasis(Basis):
    """The ``D`` B-splines of degree ``degree`` on uniform knots covering ``[-1, 1]``.

    With spacing ``h = 2 / (D - degree)`` the knots are ``k_i = -1 + (i - degree) h`` for
    ``i = 0, ..., D + degree``; the B-splines ``B_0, ..., B_{D-1}`` span the splines of that
    degree on ``[k_degree, k_D] = [-1, 1]`` and sum to one there. Values come from a vectorised
    Cox-de Boor recurrence restricted to the ``degree + 1`` B-splines that are nonzero at each
    point, derivatives from ``B_{i,p}' = (B_{i,p-1} - B_{i+1,p-1}) / h``. Outside ``[-1, 1]`` each function continues
    linearly: ``B(t) = B(c) + B'(c) (t - c)`` with ``c`` the nearest domain end, so values and
    first derivatives stay continuous and never drop to zero.

    Parameters
    ----------
    n_functions : int
        ``D >= degree + 1``.
    degree : int, optional
        Polynomial degree of the pieces, ``>= 0`` (default 3, cubic). Degree 0 gives piecewise
        constants, whose derivatives vanish.
    n_branches : int, optional
        See :class:`Basis`.
    """

    name = "bspline"

    def __init__(self, n_functions: int, degree: int = 3, *, n_branches: int | None = None):
        super().__init__(n_functions, n_branches=n_branches)
        self.degree = check_int(degree, "degree", 0, MAX_FUNCTIONS)
        if self.n_functions < self.degree + 1:
            raise ValueError(
                f"a B-spline basis of degree {self.degree} needs n_functions >= degree + 1 = "
                f"{self.degree + 1}, got n_functions={self.n_functions}"
            )

    def _options(self) -> dict[str, Any]:
        return {"degree": self.degree}

    @property
    def spacing(self) -> float:
        """Knot spacing ``h`` in the natural variable."""
        lo, hi = self.domain
        return (hi - lo) / (self.n_functions - self.degree)

    def knots(self, dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
        """Full knot vector, shape ``(D + degree + 1,)``, in the natural variable."""
        p, D = self.degree, self.n_functions
        i = torch.arange(D + p + 1, dtype=dtype, device=device)
        return self.domain[0] + (i - p) * self.spacing

    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        p, D = self.degree, self.n_functions
        lo, hi = self.domain
        h = self.spacing
        tc = t.clamp(lo, hi)
        # The interval index is clamped to the interior intervals p..D-1, so t = hi uses the
        # last interior polynomial piece (left limits) and the extrapolation slopes are the
        # boundary slopes of the domain's own pieces.
        with torch.no_grad():
            j = torch.floor((tc - lo) / h).to(torch.long) + p
            j = j.clamp(p, D - 1)
        # Local Cox-de Boor recurrence: only B_{j-p}, ..., B_j are nonzero on interval j.
        # With u = (t - k_j) / h, the uniform-knot recurrence for N_k[s] = B_{j-k+s,k} reads
        # N_k[s] = ((u + k - s) N_{k-1}[s-1] + (s + 1 - u) N_{k-1}[s]) / k  (s = 0..k).
        u = ((tc - lo) / h - (j - p).to(t.dtype)).unsqueeze(-1)
        N = torch.ones_like(u)
        N_prev = N
        for k in range(1, p + 1):
            N_prev = N
            s = torch.arange(k + 1, dtype=t.dtype, device=t.device)
            zero = torch.zeros_like(u)
            left = torch.cat([zero, N], dim=-1)  # N_{k-1}[s-1]
            right = torch.cat([N, zero], dim=-1)  # N_{k-1}[s]
            N = ((u + k - s) * left + (s + 1 - u) * right) / k
        if p == 0:
            dN = torch.zeros_like(N)
        else:
            zero = torch.zeros_like(u)
            dN = (torch.cat([zero, N_prev], dim=-1) - torch.cat([N_prev, zero], dim=-1)) / h
        # Scatter the p + 1 local values into columns j - p, ..., j of the D functions.
        cols = (j - p).unsqueeze(-1) + torch.arange(p + 1, device=t.device)
        full = torch.zeros(*t.shape, D, dtype=t.dtype, device=t.device)
        B = full.scatter(-1, cols, N)
        dB = full.scatter(-1, cols, dN)
        values = B + dB * (t - tc).unsqueeze(-1)
        return values, (dB if derivative else None)


class HingeBasis(Basis):
    """Hinge (ReLU) functions: ``phi_1 = t`` and ``phi_{j+1} = max(0, t - kappa_j)``.

    The ``D - 1`` knots ``kappa_j = -1 + 2 j / D`` (``j = 1, ..., D - 1``) are uniform inside
    ``(-1, 1)``; ``g_r`` is then any continuous piecewise-linear function with those knots
    (up to a constant, absorbed by the bias). The derivative at a knot is taken as 0 (the
    right-continuous convention of ``torch.relu``'s gradient is ``t > kappa``).
    """

    name = "hinge"

    def hinge_knots(self, dtype: torch.dtype = torch.float64, device: Any = None) -> Tensor:
        """Knots ``kappa``, shape ``(D - 1,)``, in the natural variable."""
        lo, hi = self.domain
        D = self.n_functions
        j = torch.arange(1, D, dtype=dtype, device=device)
        return lo + j * (hi - lo) / D

    def _natural(self, t: Tensor, derivative: bool) -> tuple[Tensor, Tensor | None]:
        kappa = self.hinge_knots(dtype=t.dtype, device=t.device)
        x = t.unsqueeze(-1)
        values = torch.cat([x, torch.relu(x - kappa)], dim=-1)
        if not derivative:
            return values, None
        dvalues = torch.cat([torch.ones_like(x), (x > kappa).to(t.dtype)], dim=-1)
        return values, dvalues


_REGISTRY: dict[str, type[Basis]] = {
    "monomial": MonomialBasis,
    "chebyshev": ChebyshevBasis,
    "legendre": LegendreBasis,
    "bspline": BSplineBasis,
    "hinge": HingeBasis,
}
_OPTIONS: dict[str, tuple[str, ...]] = {
    "monomial": ("n_branches",),
    "chebyshev": ("n_branches",),
    "legendre": ("n_branches",),
    "bspline": ("degree", "n_branches"),
    "hinge": ("n_branches",),
}

#: Names accepted by :func:`make_basis`.
BASIS_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def make_basis(name: str, n_functions: int, **options: Any) -> Basis:
    """Build a basis by name.

    Parameters
    ----------
    name : str
        One of ``"monomial"``, ``"chebyshev"``, ``"legendre"``, ``"bspline"``, ``"hinge"``
        (case-insensitive).
    n_functions : int
        Number ``D`` of functions per branch, ``1 <= D <= 1000`` (for polynomials, the
        highest degree; for B-splines, ``D >= degree + 1``).
    **options
        ``degree`` (int, default 3) for ``"bspline"``; ``n_branches`` (int) for all, to start
        with an identity affine map for that many branches.

    Returns
    -------
    Basis
        Unfitted unless ``n_branches`` is given; call :meth:`Basis.fit_domain` next.

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid names), ``n_functions`` or ``degree`` out of
        range, too few functions for the B-spline degree.
    TypeError
        Non-string name, non-integer counts, or an option the basis does not take.
    """
    if not isinstance(name, str):
        raise TypeError(f"basis name must be a str, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown basis {name!r}; valid names: {', '.join(BASIS_NAMES)}")
    unknown = sorted(set(options) - set(_OPTIONS[key]))
    if unknown:
        raise TypeError(
            f"basis {key!r} got unknown option(s) {unknown}; accepted: {', '.join(_OPTIONS[key])}"
        )
    return _REGISTRY[key](n_functions, **options)
