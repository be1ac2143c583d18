"""Solvers that fit a decoupled function ``f(x) ~ b + W g(V^T x)`` to samples ``X, Y, J``.

Two solvers, both returning a :class:`FitResult`:

* :func:`decouple_cpd` — the first-order decoupling method of Dreesen, Ishteva and
  Schoukens (SIAM J. Matrix Anal. Appl., 2015): a rank-``R`` CP decomposition of the
  Jacobian tensor ``J ~ [[W, V, H]]``, then a least-squares fit of each branch function
  ``g_r`` to the points ``(Z[:, r], H[:, r])`` and of the bias ``b`` to the outputs.
* :func:`cmtf_als` — the constrained coupled matrix-tensor factorization of Zniyed,
  Usevich, Miron and Brie (2021), which fits outputs (zeroth order) and Jacobians (first
  order) together, with ``H`` and ``G`` tied to the basis coefficients ``C``:

  .. math::

      L(W, V, C, b) = \\frac{\\|J - [[W, V, H(V, C)]]\\|^2}{\\|J\\|^2}
      + \\lambda \\frac{\\|Y - 1 b^T - G(V, C) W^T\\|^2}{\\|Y - \\bar Y\\|^2}
      + \\rho (\\|W\\|^2 + \\|C\\|^2),

  minimised by block updates ((W, b), C, V) that never increase ``L``. ``λ = 0`` is the
  structured (basis-constrained) CPD of Zniyed et al.

Notation: ``X`` (N, m), ``Y`` (N, n), ``J`` (n, m, N), ``W`` (n, R), ``V`` (m, R),
``C`` (D, R), ``b`` (n,), ``Z = X V``, ``G[k, r] = g_r(Z[k, r])``, ``H[k, r] = g_r'(Z[k, r])``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tenflex.basis import Basis, make_basis
from tenflex.checks import all_finite, asks_to_stop, check_bool, check_int, check_seed
from tenflex.cpd import (
    _SOLVER_DTYPES,
    DenseJacobian,
    JacobianTensor,
    _as_float_tensor,
    _is_zero,
    as_jacobian_tensor,
    cp_norm_sq,
    cpd,
    pcg,
    solve_psd,
    tall_matmul,
    transpose_matmul,
)
from tenflex.model import DecoupledFunction, _canonical_layout, branch_inputs_product
from tenflex.subspace import gram_eigenvectors

__all__ = ["FitResult", "cmtf_als", "decouple_cpd"]

#: Relative Jacobian costs below this are recomputed from the residual itself: expanding
#: the square ``||J||^2 - 2 <J, K> + ||K||^2`` has a rounding error near 1e-16.
_ACCURATE_BELOW = 1e-10
#: Costs at or below this are at rounding level: iterating further is pointless.
_COST_FLOOR = 1e-28
#: Largest Jacobian tensor (entries) handed to tensorly by ``cpd_method="auto"``.
_TENSORLY_MAX_ENTRIES = 10**7
#: Accepted ``cpd_method`` values of :func:`decouple_cpd`.
_CPD_METHODS = ("auto", "tensorly", "nls")


@dataclass
class FitResult:
    """Result of :func:`decouple_cpd` or :func:`cmtf_als`.

    Attributes
    ----------
    model : DecoupledFunction
        The fitted ``f(x) = b + W g(V^T x)``.
    cost : numpy.ndarray, shape (n_iter + 1,)
        Total cost ``L`` before the first iteration (index 0) and after each iteration;
        non-increasing. For :func:`decouple_cpd` (not iterative) a single entry.
    cost_jacobian : numpy.ndarray, shape (n_iter + 1,)
        ``||J - [[W, V, H]]||^2 / ||J||^2`` at the same points.
    cost_output : numpy.ndarray, shape (n_iter + 1,)
        ``||Y - 1 b^T - G W^T||^2 / ||Y - Ybar||^2`` at the same points (with the optimal
        ``b`` when ``lam = 0``). A constant ``Y`` (allowed only with ``lam = 0``) has no
        scale: the entry is then 0 whatever the residual, so look at the Jacobian term.
    n_iter : int
        Iterations of the kept start.
    converged : bool
        True if the iteration stopped on its tolerance (not on ``max_iter``).
    stop_reason : str
        Why the iteration stopped.
    time_s : float
        Wall-clock time of the whole call (all starts).
    start_costs : numpy.ndarray, shape (n_starts,)
        What ranked the starts; the smallest was kept. :func:`cmtf_als`: the final total
        cost of every start run (fewer than ``n_starts`` when a callback stopped the call).
        :func:`decouple_cpd`: the squared relative error of every start's CPD (step 1),
        which is what it ranks them by.
    best_start : int
        Index of the kept start.
    lam : float
        Weight ``λ`` of the output term in ``cost`` (1 for :func:`decouple_cpd`, whose
        ``cost`` is ``cost_jacobian + cost_output``).
    method : str
        ``"decouple_cpd"`` or ``"cmtf_als"``.
    info : dict
        Extra diagnostics (e.g. the CPD's relative error, the number of rejected steps).
    """

    model: DecoupledFunction
    cost: np.ndarray
    cost_jacobian: np.ndarray
    cost_output: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str
    time_s: float
    start_costs: np.ndarray
    best_start: int = 0
    lam: float = 0.0
    method: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_error_jacobian(self) -> float:
        """Final ``||J - Jhat|| / ||J||``."""
        return math.sqrt(max(float(self.cost_jacobian[-1]), 0.0))

    @property
    def relative_error_output(self) -> float:
        """Final ``||Y - Yhat|| / ||Y - Ybar||``."""
        return math.sqrt(max(float(self.cost_output[-1]), 0.0))


# ---------------------------------------------------------------------------- validation
def _as_matrix(A: Any, name: str, dtype: torch.dtype, device: Any) -> Tensor:
    A = _as_float_tensor(A, name, dtype).to(device=device)
    if not all_finite(A):
        raise ValueError(f"{name} contains NaN or Inf values")
    return A


def _check_cpd_method(value: Any, name: str = "cpd_method") -> None:
    if not isinstance(value, str) or value not in _CPD_METHODS:
        raise ValueError(
            f"{name} must be one of {', '.join(map(repr, _CPD_METHODS))}, got {value!r}"
        )


def _check_float(value: Any, name: str, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if not (math.isfinite(value) and value >= low):
        raise ValueError(f"{name} must be a finite number >= {low}, got {value}")
    return value


# The options of cmtf_als that _check_run_options checks (no data needed).
_RUN_OPTIONS = ("seed", "extrapolate", "verbose", "callback", "ridge", "tol", "domain_margin",
               "n_starts", "max_iter", "solver", "cg_maxiter", "cpd_options")


def _check_run_options(*, seed: Any, extrapolate: Any, verbose: Any, callback: Any,
                       ridge: Any, tol: Any, domain_margin: Any, n_starts: Any, max_iter: Any,
                       solver: Any, cg_maxiter: Any, cpd_options: Any, where: str = ""
                       ) -> dict[str, Any]:
    """The checks of :func:`cmtf_als`'s options ``_RUN_OPTIONS``, which need no data
    (so that a caller can make them before a long sampling). ``where`` names the dict the
    options came in (``"fit_options"``: messages say ``fit_options['tol']``). Returns them
    checked and completed (``cg_maxiter`` by solver, ``cpd_options`` with its defaults)."""
    def name(key: str) -> str:
        return f"{where}['{key}']" if where else key

    out = {"seed": check_seed(seed, name=name("seed")),
           "extrapolate": check_bool(extrapolate, name("extrapolate")),
           "verbose": check_bool(verbose, name("verbose"))}
    if callback is not None and not callable(callback):
        raise TypeError(
            f"{name('callback')} must be callable (called with a dict after each sweep) or "
            f"None, got {type(callback).__name__} ({callback!r})"
        )
    out["callback"] = callback
    for key, value in (("ridge", ridge), ("tol", tol), ("domain_margin", domain_margin)):
        out[key] = _check_float(value, name(key))
    out["n_starts"] = check_int(n_starts, name("n_starts"), 1, 10**6)
    out["max_iter"] = check_int(max_iter, name("max_iter"), 0, None)
    if cg_maxiter is None:
        cg_maxiter = 50 if solver == "gn" else 5
    out["cg_maxiter"] = check_int(cg_maxiter, name("cg_maxiter"), 1, None)
    if solver not in ("als", "gn"):
        raise ValueError(f"{name('solver')} must be 'als' or 'gn', got {solver!r}")
    out["solver"] = solver
    if cpd_options is not None and not isinstance(cpd_options, dict):
        raise TypeError(
            f"{name('cpd_options')} must be a dict of decouple_cpd options (n_starts, "
            f"cpd_method, n_iter_max, tol) or None, got {type(cpd_options).__name__}"
        )
    cpd_options = {"n_starts": 3, **(cpd_options or {})}
    bad = set(cpd_options) - {"n_starts", "cpd_method", "n_iter_max", "tol"}
    if bad:
        raise TypeError(f"unknown {name('cpd_options')} {sorted(bad)}; valid keys: n_starts, "
                        "cpd_method, n_iter_max, tol")
    _check_cpd_method(cpd_options.get("cpd_method", "auto"),
                      f"{name('cpd_options')}['cpd_method']")
    out["cpd_options"] = cpd_options
    return out


def _prepare_data(
    X: Any, Y: Any, J: Any, dtype: torch.dtype
) -> tuple[Tensor, Tensor, JacobianTensor]:
    """Validate ``X`` (N, m), ``Y`` (N, n), ``J`` (n, m, N) and convert them."""
    if dtype not in _SOLVER_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    Jt = as_jacobian_tensor(J, dtype=dtype if not isinstance(J, JacobianTensor) else None)
    if Jt.dtype != dtype:
        raise TypeError(f"J is a JacobianTensor of dtype {Jt.dtype}, expected dtype={dtype}")
    n, m, N = Jt.shape
    X = _as_matrix(X, "X", dtype, Jt.device)
    Y = _as_matrix(Y, "Y", dtype, Jt.device)
    if X.ndim != 2:
        raise ValueError(f"X must have shape (N, m), got {tuple(X.shape)}")
    if Y.ndim != 2:
        raise ValueError(f"Y must have shape (N, n), got {tuple(Y.shape)}")
    if X.shape != (N, m):
        raise ValueError(
            f"X must have shape (N, m) = ({N}, {m}) to match J of shape (n, m, N) = "
            f"{(n, m, N)}, got {tuple(X.shape)}"
        )
    if Y.shape != (N, n):
        raise ValueError(
            f"Y must have shape (N, n) = ({N}, {n}) to match J of shape (n, m, N) = "
            f"{(n, m, N)}, got {tuple(Y.shape)}"
        )
    _check_magnitudes(X, Y, Jt, dtype)
    # Laid out once as branch_inputs_product wants it, so that its calls never copy X.
    return _canonical_layout(X), Y, Jt


def _check_magnitudes(X: Tensor, Y: Tensor, Jt: JacobianTensor | None, dtype: torch.dtype
                      ) -> None:
    """A zero ``J``, and norms that over- or underflow ``dtype`` (the costs are normalised
    by them; they would turn NaN or meaningless). ``X`` only matters with ``J``. Shared with
    :func:`tenflex.gradfit.fit_by_gradient`, so both fits give the same messages."""
    if Jt is not None:
        if _is_zero(Jt):
            raise ValueError("J is identically zero: there is no first-order information to fit")
        _check_magnitude(Jt.norm_sq(), "J", dtype)
    Yc = Y - Y.mean(dim=0)
    if bool(Yc.any()):
        _check_magnitude(float((Yc * Yc).sum()), "Y (centred)", dtype)
    if Jt is not None and bool(X.any()):
        # the norm, not X * X: no temporary of the size of X (N x m) on every fit
        norm_x = float(torch.linalg.vector_norm(X))
        _check_magnitude(norm_x * norm_x, "X", dtype)


def _check_magnitude(sum_sq: float, name: str, dtype: torch.dtype) -> None:
    """Refuse data whose sum of squares (the norms and Gram matrices the cost is normalised
    by) overflows or underflows ``dtype``: the fit would silently return NaN."""
    info = torch.finfo(dtype)
    if not math.isfinite(sum_sq):
        raise ValueError(
            f"{name} is too large in magnitude: its sum of squares overflows {dtype} "
            f"(largest value {info.max:.3g}); rescale the data (e.g. divide X, Y and J by "
            "constants and map the fitted model back)"
        )
    if sum_sq < info.tiny:
        raise ValueError(
            f"{name} is too small in magnitude: its sum of squares {sum_sq:.3g} underflows "
            f"{dtype} (smallest normal value {info.tiny:.3g}); rescale the data (e.g. "
            "multiply X, Y and J by constants and map the fitted model back)"
        )


def _prepare_basis(basis: Any, n_functions: int, basis_options: dict | None) -> Basis:
    """A fresh (cloned or newly built) basis; its affine map is fitted later.

    Refuses a basis whose derivatives vanish identically (e.g. B-splines of degree 0):
    the branch derivatives ``H`` would be zero whatever ``C``, so the Jacobian term could
    not be fitted at all.
    """
    if isinstance(basis, Basis):
        if basis_options:
            raise TypeError("basis_options are only used with a basis name, not a Basis")
        basis = basis.clone()
    elif isinstance(basis, str):
        basis = make_basis(basis, n_functions, **(basis_options or {}))
    else:
        raise TypeError(
            "basis must be a basis name (str) or a tenflex.basis.Basis, got "
            f"{type(basis).__name__}"
        )
    if not _has_derivatives(basis):
        raise ValueError(
            f"basis {basis.config()} has identically zero derivatives (piecewise constant "
            "functions, e.g. B-splines of degree 0): the Jacobian term cannot be fitted; use "
            "a basis with nonzero derivatives (e.g. basis_options={'degree': 1} or higher)"
        )
    return basis


def _has_derivatives(basis: Basis) -> bool:
    """Whether some basis derivative is nonzero on a fine grid over (and beyond) the
    basis' natural domain (identity affine map)."""
    lo, hi = (float(v) for v in basis.domain)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        lo, hi = -1.0, 1.0
    width = hi - lo
    t = torch.linspace(lo - 0.25 * width, hi + 0.25 * width, 1537, dtype=torch.float64)
    probe = basis.clone().set_identity(1)
    return bool(probe.derivatives(t[:, None]).any())


def _check_sizes(rank: Any, n: int, m: int, N: int, D: int, with_outputs: bool) -> int:
    """Rank in range and enough equations for the unknowns."""
    bound = min(n * m, N)
    rank = check_int(rank, "rank", -(10**18), None)
    if not 1 <= rank <= bound:
        raise ValueError(
            f"rank must be in [1, min(n*m, N)] = [1, {bound}] (n={n}, m={m}, N={N}): the "
            f"Jacobian tensor cannot identify more branches, got rank={rank}"
        )
    unknowns = rank * (n + m + D) + n
    equations = N * n * m + (N * n if with_outputs else 0)
    if equations < unknowns or N < D:
        raise ValueError(
            f"too few sampling points: N={N} gives {equations} equations for {unknowns} "
            f"unknowns (R(n+m+D)+n with R={rank}, n={n}, m={m}, D={D}), and N must be >= D; "
            "sample more points or lower rank / n_functions"
        )
    return rank


# ---------------------------------------------------------------------------- the problem
class _Problem:
    """Data, weights and cost of one CMTF fit (everything the block steps share)."""

    def __init__(
        self,
        X: Tensor,
        Y: Tensor,
        Jt: JacobianTensor,
        basis: Basis,
        lam: float,
        ridge: float,
    ) -> None:
        self.X, self.Y, self.Jt, self.basis = X, Y, Jt, basis
        self.lam, self.ridge = lam, ridge
        self.norm_j = Jt.norm_sq()
        Yc = Y - Y.mean(dim=0)
        self.norm_y = float((Yc * Yc).sum())
        if lam > 0 and self.norm_y == 0:
            raise ValueError("Y is constant: the output term (lam > 0) has no scale")
        self.a_j = 1.0 / self.norm_j
        self.a_y = lam / self.norm_y if lam > 0 else 0.0
        self.y_mean = Y.mean(dim=0)

    # -- branch quantities
    def branches(self, Z: Tensor, C: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Phi, dPhi (N, R, D) and G, H (N, R) at branch inputs Z."""
        Phi, dPhi = self.basis.values_and_derivatives(Z)
        G = torch.einsum("krd,dr->kr", Phi, C)
        H = torch.einsum("krd,dr->kr", dPhi, C)
        return Phi, dPhi, G, H

    def second_derivative(self, Z: Tensor, C: Tensor) -> Tensor:
        """``g_r''(Z[k, r])`` by automatic differentiation of the basis derivatives."""
        with torch.enable_grad():
            Zr = Z.detach().requires_grad_(True)
            H = torch.einsum("krd,dr->kr", self.basis.derivatives(Zr), C)
            if not H.requires_grad:  # derivatives constant in z (e.g. hinge, linear)
                return torch.zeros_like(Z)
            (H2,) = torch.autograd.grad(H.sum(), Zr, allow_unused=True)
        return torch.zeros_like(Z) if H2 is None else H2.detach()

    def optimal_bias(self, G: Tensor, W: Tensor) -> Tensor:
        return (self.Y - G @ W.T).mean(dim=0)

    # -- cost
    def costs(
        self, W: Tensor, V: Tensor, C: Tensor, b: Tensor, G: Tensor, H: Tensor, T: Tensor
    ) -> tuple[float, float, float]:
        """(cost_jacobian, cost_output, total); T = J V must match V."""
        Jt = self.Jt
        inner = float((Jt.mttkrp_output(T, H) * W).sum())
        cj = (self.norm_j - 2 * inner + float(cp_norm_sq(W, V, H))) * self.a_j
        if cj < _ACCURATE_BELOW and Jt.exact_residual:
            cj = Jt.residual_norm_sq(W, V, H) * self.a_j
        cj = max(cj, 0.0)
        E = self.Y - b - G @ W.T
        co = float((E * E).sum()) / self.norm_y if self.norm_y > 0 else 0.0
        total = cj + self.lam * co
        if self.ridge > 0:
            total += self.ridge * float((W * W).sum() + (C * C).sum())
        return cj, co, total


@dataclass
class _State:
    W: Tensor
    V: Tensor
    C: Tensor
    b: Tensor
    Z: Tensor
    T: Tensor
    Phi: Tensor
    dPhi: Tensor
    G: Tensor
    H: Tensor
    cj: float = math.inf
    co: float = math.inf
    total: float = math.inf


def _make_state(
    prob: _Problem,
    W: Tensor,
    V: Tensor,
    C: Tensor,
    b: Tensor | None,
    T: Tensor | None = None,
    Z: Tensor | None = None,
) -> _State:
    Z = branch_inputs_product(prob.X, V) if Z is None else Z
    T = prob.Jt.contract_input(V) if T is None else T
    Phi, dPhi, G, H = prob.branches(Z, C)
    if b is None or prob.lam == 0:
        b = prob.optimal_bias(G, W)
    st = _State(W=W, V=V, C=C, b=b, Z=Z, T=T, Phi=Phi, dPhi=dPhi, G=G, H=H)
    st.cj, st.co, st.total = prob.costs(W, V, C, b, G, H, T)
    return st


def _with(st: _State, **changes: Any) -> _State:
    values = {k: getattr(st, k) for k in _State.__dataclass_fields__}
    values.update(changes)
    return _State(**values)


# ---------------------------------------------------------------------------- block steps
def _normal_wb(prob: _Problem, st: _State) -> tuple[Tensor, Tensor]:
    """Normal equations ``[W, b] A = B`` of the (W, b) block (``b`` only when lam > 0).

    Tensor term: ``W ((V^T V) * (H^T H)) = sum_k J_k V diag(H[k])`` (mode-1 MTTKRP, from
    ``T``); output term: ``[W, b] [G, 1]^T [G, 1] = Y^T [G, 1]``. Returns ``A`` of size
    ``R + 1`` (or ``R``) and ``B`` of shape ``(n, R + 1)`` (or ``(n, R)``).
    """
    V, H, G, T = st.V, st.H, st.G, st.T
    R = V.shape[1]
    gram_j = (V.T @ V) * (H.T @ H) * prob.a_j
    rhs_j = prob.Jt.mttkrp_output(T, H) * prob.a_j
    eye = torch.eye(R, dtype=V.dtype, device=V.device)
    if prob.a_y == 0:
        return gram_j + prob.ridge * eye, rhs_j
    Gh = torch.cat([G, torch.ones_like(G[:, :1])], dim=1)
    gram = prob.a_y * (Gh.T @ Gh)
    gram[:R, :R] += gram_j + prob.ridge * eye
    rhs = prob.a_y * (prob.Y.T @ Gh)
    rhs[:, :R] += rhs_j
    return gram, rhs


def _step_wb(prob: _Problem, st: _State) -> _State:
    """Exact least squares in (W, b) with V, C fixed (normal equations of size R + 1)."""
    R = st.V.shape[1]
    gram, rhs = _normal_wb(prob, st)
    Wb = solve_psd(gram, rhs)
    W = Wb[:, :R].contiguous()
    b = Wb[:, R].contiguous() if prob.a_y > 0 else prob.optimal_bias(st.G, W)
    cj, co, total = prob.costs(W, st.V, st.C, b, st.G, st.H, st.T)
    return _with(st, W=W, b=b, cj=cj, co=co, total=total)


def _gram_c(prob: _Problem, st: _State, Phi: Tensor | None = None) -> Tensor:
    """Gram matrix (R D, R D) of the C block.

    Block ``(r, s)`` is ``a_J (w_r^T w_s)(v_r^T v_s) Phi'_r^T Phi'_s
    + a_Y (w_r^T w_s) Phi_r^T Phi_s`` (plus the ridge), built with two matrix products;
    ``Phi`` (default ``st.Phi``) may be passed centred.
    """
    W, V, dPhi = st.W, st.V, st.dPhi
    Phi = st.Phi if Phi is None else Phi
    N, R, D = Phi.shape
    WW = W.T @ W
    Fd = dPhi.reshape(N, R * D)
    gram = (Fd.T @ Fd).reshape(R, D, R, D) * (WW * (V.T @ V))[:, None, :, None] * prob.a_j
    if prob.a_y > 0:
        Fv = Phi.reshape(N, R * D)
        gram = gram + (Fv.T @ Fv).reshape(R, D, R, D) * WW[:, None, :, None] * prob.a_y
    gram = gram.reshape(R * D, R * D)
    if prob.ridge > 0:
        gram = gram + prob.ridge * torch.eye(R * D, dtype=gram.dtype, device=gram.device)
    return gram


def _step_c(prob: _Problem, st: _State) -> _State:
    """Exact least squares in (C, b) with W, V fixed: one (R D) x (R D) system.

    The right-hand side uses the mode-3 MTTKRP ``t_r[k] = w_r^T J_k v_r``. The bias is
    eliminated (its optimum is ``mean(Y - G W^T)``), which centres ``Phi`` and ``Y`` in the
    output term; then ``b`` is set to its optimum.
    """
    W, Phi, dPhi = st.W, st.Phi, st.dPhi
    R, D = Phi.shape[1:]
    S = prob.Jt.mttkrp_samples(st.T, W)
    rhs = torch.einsum("krd,kr->rd", dPhi, S) * prob.a_j
    Phi_c = None
    if prob.a_y > 0:
        Phi_c = Phi - Phi.mean(dim=0)
        rhs = rhs + torch.einsum("krd,kr->rd", Phi_c, (prob.Y - prob.y_mean) @ W) * prob.a_y
    gram = _gram_c(prob, st, Phi_c)
    C = solve_psd(gram, rhs.reshape(1, R * D)).reshape(R, D).T.contiguous()
    G = torch.einsum("krd,dr->kr", Phi, C)
    H = torch.einsum("krd,dr->kr", dPhi, C)
    b = prob.optimal_bias(G, W)
    cj, co, total = prob.costs(W, st.V, C, b, G, H, st.T)
    return _with(st, C=C, G=G, H=H, b=b, cj=cj, co=co, total=total)


def _v_preconditioner(prob: _Problem, xtx: tuple, gamma: Tensor, mu: float):
    """Inverse of ``P_V(D) = (a_J I + a_Y X^T X / N) D (Γ + mu I)``, the V block's
    Kronecker approximation of the Gauss-Newton operator (exact for the tensor term with
    ``H`` frozen, i.e. the ALS normal equations of V)."""
    R = gamma.shape[0]
    eye = torch.eye(R, dtype=gamma.dtype, device=gamma.device)
    ginv = torch.linalg.pinv(gamma + mu * eye, hermitian=True)
    evals, evecs = xtx
    if prob.a_y == 0 or evecs is None:
        scale = 1.0 / (prob.a_j + prob.a_y * (evals if prob.a_y > 0 else 0.0))
        return lambda r: scale * (r @ ginv)
    inv_k = 1.0 / (prob.a_j + prob.a_y * evals)
    return lambda r: evecs @ (transpose_matmul(evecs, r) * inv_k[:, None]) @ ginv


#: Largest input dimension for which the V preconditioner uses the exact spectrum of X^T X.
_XTX_EIGH_MAX_M = 2048


def _xtx_spectrum(prob: _Problem) -> tuple:
    """Eigen-decomposition of ``X^T X / N`` (m <= _XTX_EIGH_MAX_M) or its mean eigenvalue."""
    X = prob.X
    N, m = X.shape
    if prob.a_y == 0:
        return (0.0, None)
    if m <= _XTX_EIGH_MAX_M:
        evals, evecs = torch.linalg.eigh(X.T @ X / N)
        return (evals.clamp_min(0), evecs)
    return (float((X * X).sum()) / (N * m), None)


class _VStepper:
    """Gauss-Newton step in V on the full cost, with a monotone backtracking line search.

    With W, C, b fixed, the residuals depend on V through ``Z = X V`` (which moves ``G``
    and ``H``) and, for the tensor term, explicitly. Linearising ``Z -> Z + X D`` gives the
    Gauss-Newton operator (``Ω = W^T W``, ``Γ = Ω * H^T H``, ``Γ3 = Ω * V^T V``,
    ``Q = H'' * X D``)::

        A_J(D) = D Γ + V (Ω * Q^T H) + X^T (H'' * (H (Ω * D^T V) + Q Γ3))
        A_Y(D) = X^T (H * ((H * X D) Ω))

    and the negative half gradient ``a_J [(M - V Γ) + X^T (H'' * (S - H Γ3))] +
    a_Y X^T (H * (E W))`` with the mode-2 MTTKRP ``M = sum_k J_k^T W diag(H[k])``, the
    mode-3 MTTKRP ``S`` and the output residual ``E``. The operator never touches ``J``:
    one CG iteration costs two ``(N, m) x (m, R)`` products. The preconditioner
    ``D -> (a_J I + a_Y X^T X / N)^{-1} D Γ^{-1}`` is exact for the tensor term without
    the ``H''`` terms, so for ``lam = 0`` the first CG iterate points along the ALS update of
    V with ``H`` frozen (the "ALS candidate"); further iterates add the dependence of ``H``
    and ``G`` on V. The Armijo backtracking line search along the resulting direction keeps
    the step only if the total cost decreases.
    """

    def __init__(self, prob: _Problem, cg_maxiter: int) -> None:
        self.prob = prob
        self.cg_maxiter = cg_maxiter
        self.mu_rel = 1e-4
        self.xtx = _xtx_spectrum(prob)
        self.n_rejected = 0

    def gradient(self, st: _State, H2: Tensor) -> Tensor:
        """Minus half the gradient of the total cost with respect to V, shape (m, R)."""
        prob = self.prob
        X, Jt = prob.X, prob.Jt
        W, V, H = st.W, st.V, st.H
        Om = W.T @ W
        inner_x = prob.a_j * H2 * (Jt.mttkrp_samples(st.T, W) - H @ (Om * (V.T @ V)))
        if prob.a_y > 0:
            E = prob.Y - st.b - st.G @ W.T
            inner_x = inner_x + prob.a_y * H * (E @ W)
        return prob.a_j * (Jt.mttkrp_input(W, H) - V @ (Om * (H.T @ H))) + transpose_matmul(X, inner_x)

    def operator(self, st: _State, H2: Tensor, mu: float) -> Callable[[Tensor], Tensor]:
        """The V block of the Gauss-Newton operator plus ``a_J mu I``."""
        prob = self.prob
        X, a_j, a_y = prob.X, prob.a_j, prob.a_y
        W, V, H = st.W, st.V, st.H
        Om = W.T @ W
        gamma = Om * (H.T @ H)
        gamma3 = Om * (V.T @ V)

        def apply(D: Tensor) -> Tensor:
            XD = tall_matmul(X, D)  # not X @ D: MKL's kernel for it is slow from 13 columns
            Q = H2 * XD
            t_x = a_j * H2 * (H @ (Om * (D.T @ V)) + Q @ gamma3)
            if a_y > 0:
                t_x = t_x + a_y * H * ((H * XD) @ Om)
            return a_j * (D @ gamma + V @ (Om * (Q.T @ H))) + transpose_matmul(X, t_x) + (a_j * mu) * D

        return apply

    def step(self, st: _State) -> _State:
        prob = self.prob
        X, Jt = prob.X, prob.Jt
        W, V, H = st.W, st.V, st.H
        H2 = prob.second_derivative(st.Z, st.C)
        grad = self.gradient(st, H2)
        gamma = (W.T @ W) * (H.T @ H)
        # Damping relative to the tensor term's curvature scale.
        mu = self.mu_rel * float(gamma.diagonal().mean()) + 1e-300
        op = self.operator(st, H2, mu)

        def apply_gn(d: list[Tensor]) -> list[Tensor]:
            return [op(d[0])]

        prec_v = _v_preconditioner(prob, self.xtx, gamma, mu)
        (D,), _ = pcg(
            apply_gn, [grad], lambda r: [prec_v(r[0])], maxiter=self.cg_maxiter, rtol=1e-3
        )
        slope = 2 * float((grad * D).sum())  # decrease rate of the cost along D at alpha 0
        if not slope > 0:
            self.mu_rel *= 10
            self.n_rejected += 1
            return st
        alpha = 1.0
        T_dir = None
        new = None
        for _ in range(30):
            Vt = V + alpha * D
            # Z = X V afresh, not Z + alpha X D, and by the model's own function: with a
            # kinked basis (hinges) a point left on a knot by the search would otherwise
            # change sides between the cost recorded here and the returned model's, by
            # rounding alone.
            Zt = branch_inputs_product(X, Vt)
            if T_dir is None:
                Tt = Jt.contract_input(Vt)
            else:
                Tt = st.T + alpha * T_dir
            Phi, dPhi, Gt, Ht = prob.branches(Zt, st.C)
            bt = prob.optimal_bias(Gt, W) if prob.lam == 0 else st.b
            cj, co, total = prob.costs(W, Vt, st.C, bt, Gt, Ht, Tt)
            if total <= st.total - 1e-4 * alpha * slope:
                new = _State(W, Vt, st.C, bt, Zt, Tt, Phi, dPhi, Gt, Ht, cj, co, total)
                break
            if T_dir is None:
                T_dir = Tt - st.T  # = J D: later trials cost no product with J
            alpha *= 0.5
            if alpha * math.sqrt(float((D * D).sum())) <= 1e-15 * (
                math.sqrt(float((V * V).sum())) + 1e-300
            ):
                break
        if new is None:
            self.mu_rel = min(self.mu_rel * 10, 1e6)
            self.n_rejected += 1
            return st
        if T_dir is not None:
            # The accepted T came from a linear combination: recompute it exactly so that
            # rounding does not build up, and keep the step only if the cost still decreased.
            new = _make_state(prob, W, new.V, st.C, new.b, Z=new.Z)
            if not new.total <= st.total:
                self.mu_rel = min(self.mu_rel * 10, 1e6)
                self.n_rejected += 1
                return st
            self.mu_rel = min(self.mu_rel * 3, 1e6)
        else:
            self.mu_rel = max(self.mu_rel / 3, 1e-12)
        return new


class _JointGN:
    """Levenberg-Marquardt on all blocks at once, ``θ = (W, b, C, V)``.

    The Gauss-Newton operator of the full cost is applied matrix-free (it involves ``X``,
    the basis values, ``H''`` and small Gram matrices, never ``J``) and the system is
    solved by CG preconditioned with the block-diagonal matrix ``P`` whose blocks are the
    normal matrices of the block steps: ``(W, b)`` and ``C`` exactly, ``V`` by its
    Kronecker approximation. The first CG iterate is therefore a simultaneous block update
    and further iterates couple the blocks, which removes the slow zig-zag of block
    coordinate descent along the near-gauge valleys (e.g. scaling ``v_r`` against ``C``).
    Damping is ``mu P`` (scale invariant), updated from the gain ratio (Nielsen's rule);
    a step is kept only if the total cost does not increase. One iteration costs the
    mode-2 MTTKRP and one product ``J V`` per trial point.
    """

    def __init__(self, prob: _Problem, cg_maxiter: int) -> None:
        self.prob = prob
        self.cg_maxiter = cg_maxiter
        self.xtx = _xtx_spectrum(prob)
        self.mu = 1e-3
        self.nu = 2.0
        self.n_rejected = 0
        self.g0: float | None = None

    def _linear_parts(self, st: _State, H2: Tensor):
        W, V, H = st.W, st.V, st.H
        WW, VV, HH = W.T @ W, V.T @ V, H.T @ H
        return W, V, H, H2, st.G, st.Phi, st.dPhi, WW, VV, HH

    def _apply(self, parts, d: list[Tensor], with_b: bool) -> list[Tensor]:
        """Gauss-Newton operator (without damping) applied to ``d = [dW, (db), dC, dV]``."""
        prob = self.prob
        X, a_j, a_y = prob.X, prob.a_j, prob.a_y
        W, V, H, H2, G, Phi, dPhi, WW, VV, HH = parts
        if with_b:
            dW, db, dC, dV = d
        else:
            (dW, dC, dV), db = d, None
        XdV = tall_matmul(X, dV)
        dH = torch.einsum("krd,dr->kr", dPhi, dC) + H2 * XdV
        dWW, dVV, dHH = dW.T @ W, dV.T @ V, dH.T @ H
        # Mode-1, -2, -3 MTTKRPs of the linearised CP tensor change (Gram matrices only).
        m1 = dW @ (VV * HH) + W @ (dVV * HH + VV * dHH)
        m2 = V @ (dWW * HH + WW * dHH) + dV @ (WW * HH)
        m3 = H @ (dWW * VV + WW * dVV) + dH @ (WW * VV)
        out_w = a_j * m1
        out_c = a_j * torch.einsum("krd,kr->dr", dPhi, m3)
        inner_x = a_j * H2 * m3
        out_b = None
        if a_y > 0:
            dG = torch.einsum("krd,dr->kr", Phi, dC) + H * XdV
            dY = dG @ W.T + G @ dW.T
            if db is not None:
                dY = dY + db
            dYW = dY @ W
            out_w = out_w + a_y * (dY.T @ G)
            out_c = out_c + a_y * torch.einsum("krd,kr->dr", Phi, dYW)
            inner_x = inner_x + a_y * H * dYW
            if db is not None:
                out_b = a_y * dY.sum(dim=0)
        out_v = a_j * m2 + transpose_matmul(X, inner_x)
        if prob.ridge > 0:
            out_w = out_w + prob.ridge * dW
            out_c = out_c + prob.ridge * dC
        if with_b:
            return [out_w, out_b, out_c, out_v]
        return [out_w, out_c, out_v]

    def gradient(self, st: _State, parts) -> list[Tensor]:
        """Minus half the gradient of the total cost, ``[g_W, (g_b), g_C, g_V]``, from the
        residual's MTTKRPs (``J`` enters through ``T`` and the mode-2 MTTKRP only)."""
        prob = self.prob
        X, Y, Jt = prob.X, prob.Y, prob.Jt
        a_j, a_y = prob.a_j, prob.a_y
        W, V, H, H2, G, Phi, dPhi, WW, VV, HH = parts
        e1 = Jt.mttkrp_output(st.T, H) - W @ (VV * HH)
        e2 = Jt.mttkrp_input(W, H) - V @ (WW * HH)
        e3 = Jt.mttkrp_samples(st.T, W) - H @ (WW * VV)
        g_w = a_j * e1 - prob.ridge * W
        g_c = a_j * torch.einsum("krd,kr->dr", dPhi, e3) - prob.ridge * st.C
        inner_x = a_j * H2 * e3
        if a_y == 0:
            return [g_w, g_c, a_j * e2 + transpose_matmul(X, inner_x)]
        E = Y - st.b - G @ W.T
        EW = E @ W
        g_w = g_w + a_y * (E.T @ G)
        g_c = g_c + a_y * torch.einsum("krd,kr->dr", Phi, EW)
        inner_x = inner_x + a_y * H * EW
        return [g_w, a_y * E.sum(dim=0), g_c, a_j * e2 + transpose_matmul(X, inner_x)]

    def step(self, st: _State) -> _State:
        prob = self.prob
        X = prob.X
        a_j, a_y = prob.a_j, prob.a_y
        with_b = a_y > 0
        W, V, C = st.W, st.V, st.C
        R, D = C.shape[1], C.shape[0]
        H2 = prob.second_derivative(st.Z, C)
        parts = self._linear_parts(st, H2)
        WW, HH = parts[7], parts[9]
        grad = self.gradient(st, parts)

        # Block preconditioner P (undamped): the block steps' normal matrices.
        gram_wb, _ = _normal_wb(prob, st)
        gram_c = _gram_c(prob, st)
        gamma = WW * HH

        for _attempt in range(12):
            mu = self.mu
            inv_wb = torch.linalg.pinv(gram_wb * (1 + mu), hermitian=True)
            inv_c = torch.linalg.pinv(gram_c * (1 + mu), hermitian=True)
            prec_v = _v_preconditioner(prob, self.xtx, gamma * (1 + mu), 0.0)

            def prec(r: list[Tensor], inv_wb=inv_wb, inv_c=inv_c, prec_v=prec_v):
                if with_b:
                    wb = torch.cat([r[0], r[1][:, None]], dim=1) @ inv_wb
                    out = [wb[:, :R], wb[:, R], None, None]
                else:
                    out = [r[0] @ inv_wb, None, None]
                c = (r[-2].T.reshape(1, R * D) @ inv_c).reshape(R, D).T
                out[-2], out[-1] = c, prec_v(r[-1])
                return out

            def damping(d: list[Tensor], mu=mu) -> list[Tensor]:
                # mu * P d, with P the block preconditioner matrices.
                if with_b:
                    wb = torch.cat([d[0], d[1][:, None]], dim=1) @ gram_wb
                    out = [wb[:, :R], wb[:, R], None, None]
                else:
                    out = [d[0] @ gram_wb, None, None]
                out[-2] = (d[-2].T.reshape(1, R * D) @ gram_c).reshape(R, D).T
                dv = d[-1]
                if a_y > 0:
                    evals, evecs = self.xtx
                    if evecs is None:
                        k_dv = (a_j + a_y * evals) * dv
                    else:
                        k_dv = evecs @ (transpose_matmul(evecs, dv) * (a_j + a_y * evals)[:, None])
                else:
                    k_dv = a_j * dv
                out[-1] = k_dv @ gamma
                return [mu * o for o in out]

            def apply_a(d: list[Tensor], damping=damping) -> list[Tensor]:
                return [
                    a + b for a, b in zip(self._apply(parts, d, with_b), damping(d), strict=True)
                ]

            dim = sum(g.numel() for g in grad)
            # Inexact Newton forcing term: loose far away, tight near a solution.
            gnorm = math.sqrt(sum(float((g * g).sum()) for g in grad))
            if self.g0 is None:
                self.g0 = gnorm
            rtol = min(1e-2, math.sqrt(gnorm / max(self.g0, 1e-300)))
            step, _ = pcg(apply_a, grad, prec, maxiter=min(self.cg_maxiter, dim), rtol=rtol)
            Ad = self._apply(parts, step, with_b)
            pred = 2 * sum(float((g * d).sum()) for g, d in zip(grad, step, strict=True))
            pred -= sum(float((d * a).sum()) for d, a in zip(step, Ad, strict=True))
            if with_b:
                dW, db, dC, dV = step
            else:
                (dW, dC, dV), db = step, None
            Vt = V + dV
            new = _make_state(
                prob, W + dW, Vt, C + dC, (st.b + db) if db is not None else st.b,
                Z=branch_inputs_product(X, Vt),
            )
            rho = (st.total - new.total) / pred if pred > 0 else -1.0
            if new.total <= st.total and rho > 0:
                self.mu *= max(1 / 3, 1 - (2 * rho - 1) ** 3)
                self.mu = max(self.mu, 1e-12)
                self.nu = 2.0
                return new
            self.mu *= self.nu
            self.nu *= 2.0
            self.n_rejected += 1
            if self.mu > 1e12:
                break
        return st


# ---------------------------------------------------------------------------- decouple_cpd
def _fit_c_from_h(dPhi: Tensor, H: Tensor) -> Tensor:
    """Minimum-norm least squares ``dPhi[:, r, :] c_r ~ H[:, r]`` for all branches at once.

    Parameters
    ----------
    dPhi : torch.Tensor, shape (N, R, D)
    H : torch.Tensor, shape (N, R)

    Returns
    -------
    C : torch.Tensor, shape (D, R)
    """
    A = dPhi.permute(1, 0, 2)  # (R, N, D)
    pinv = torch.linalg.pinv(A)  # (R, D, N), rank-revealing: drops the B-spline constants
    return (pinv @ H.T.unsqueeze(-1)).squeeze(-1).T.contiguous()


def decouple_cpd(
    X: Tensor | np.ndarray,
    Y: Tensor | np.ndarray,
    J: Tensor | np.ndarray | JacobianTensor,
    rank: int,
    basis: str | Basis = "monomial",
    n_functions: int = 3,
    *,
    basis_options: dict[str, Any] | None = None,
    n_starts: int = 5,
    seed: int = 0,
    cpd_method: str = "auto",
    n_iter_max: int = 2000,
    tol: float = 1e-10,
    domain_margin: float = 0.0,
    dtype: torch.dtype = torch.float64,
) -> FitResult:
    """Decouple ``f`` from its Jacobians: CPD, then branch-wise least squares.

    The method of Dreesen, Ishteva and Schoukens (SIAM J. Matrix Anal. Appl. 36(2), 2015):

    1. rank-``R`` CPD ``J ~ [[W, V, H]]`` (best of ``n_starts`` seeded starts,
       :func:`tenflex.cpd.cpd`); the component weights go into ``W``, ``V`` has unit-norm
       columns;
    2. the basis' affine maps are fitted to the branch inputs ``Z = X V``;
    3. each ``g_r`` is fitted by least squares to the points ``(Z[:, r], H[:, r])``,
       ``sum_d C[d, r] phi_d'(Z[k, r]) ~ H[k, r]``, all branches in one batched solve
       (minimum norm: the constants of a B-spline basis, invisible to derivatives, are
       set to zero);
    4. ``b`` is fitted to ``Y`` by least squares (the mean of ``Y - G W^T``), which also
       absorbs the branch constants.

    Exact (up to rounding) on samples of a decoupled function whose branches lie in the
    span of the basis.

    Parameters
    ----------
    X : tensor or ndarray, shape (N, m)
    Y : tensor or ndarray, shape (N, n)
    J : tensor or ndarray (n, m, N), or JacobianTensor
    rank : int
        Number of branches ``R``, ``1 <= R <= min(n m, N)``.
    basis : str or Basis, optional
        Basis name for :func:`tenflex.basis.make_basis` (default ``"monomial"``), or a
        :class:`~tenflex.basis.Basis` (cloned; its affine map is refitted).
    n_functions : int, optional
        ``D`` when ``basis`` is a name (default 3).
    basis_options : dict, optional
        Extra options for :func:`~tenflex.basis.make_basis` (e.g. ``degree``).
    n_starts, seed : int, optional
        Seeded CPD starts (default 5; seed 0, a non-negative int).
    cpd_method : {"auto", "tensorly", "nls"}, optional
        See :func:`tenflex.cpd.cpd`. ``"auto"`` (default): ``"tensorly"`` (ALS with
        Gauss-Newton polish) for a dense ``J`` of at most ``10**7`` entries, else ``"nls"``
        (tensorly unfolds, i.e. copies, the whole tensor three times per iteration).
        A start on which tensorly's ALS fails (a singular system, e.g. for a rank above the
        data's) is computed by ``"nls"`` instead, so every rank gives a valid CPD.
    n_iter_max : int, optional
        Maximum CPD iterations per start.
    tol : float, optional
        CPD stopping tolerance.
    domain_margin : float, optional
        Margin passed to :meth:`~tenflex.basis.Basis.fit_domain` (default 0).
    dtype : torch.dtype, optional
        Compute dtype (default float64).

    Returns
    -------
    FitResult
        ``cost`` etc. have a single entry; ``lam = 1`` (``cost = cost_jacobian +
        cost_output``); ``info["cpd_relative_error"]`` is the CPD's relative error.

    Raises
    ------
    ValueError, TypeError
        Mismatched shapes, NaN/Inf, data whose sums of squares over- or underflow, rank out
        of range, too few sampling points, bad basis (or one with identically zero
        derivatives), unknown ``cpd_method``, ``seed`` not a non-negative int.
    """
    t0 = time.perf_counter()
    seed = check_seed(seed)
    _check_cpd_method(cpd_method)
    X, Y, Jt = _prepare_data(X, Y, J, dtype)
    n, m, N = Jt.shape
    basis = _prepare_basis(basis, n_functions, basis_options)
    rank = _check_sizes(rank, n, m, N, basis.n_functions, True)
    margin = _check_float(domain_margin, "domain_margin")
    if cpd_method == "auto":
        dense = isinstance(Jt, DenseJacobian) and n * m * N <= _TENSORLY_MAX_ENTRIES
        cpd_method = "tensorly" if dense else "nls"
    res = cpd(
        Jt,
        rank,
        n_starts=n_starts,
        seed=seed,
        n_iter_max=n_iter_max,
        tol=tol,
        method=cpd_method,
    )
    W = res.W * res.weights
    V = res.V
    Z = branch_inputs_product(X, V)
    basis.fit_domain(Z, margin=margin)
    C = _fit_c_from_h(basis.derivatives(Z), res.H)
    # lam = 0: b is the least-squares bias; the cost terms are reported separately.
    prob = _Problem(X, Y, Jt, basis, lam=0.0, ridge=0.0)
    st = _make_state(prob, W, V, C, None, Z=Z)
    model = DecoupledFunction(st.W, st.V, st.C, st.b, basis)
    return FitResult(
        model=model,
        cost=np.array([st.cj + st.co]),
        cost_jacobian=np.array([st.cj]),
        cost_output=np.array([st.co]),
        n_iter=res.n_iter,
        converged=True,
        stop_reason="closed form after the CPD",
        time_s=time.perf_counter() - t0,
        start_costs=np.asarray(res.start_errors) ** 2,
        best_start=res.best_start,
        lam=1.0,
        method="decouple_cpd",
        info={"cpd_relative_error": res.relative_error, "cpd_weights": res.weights},
    )


# ---------------------------------------------------------------------------- cmtf_als
_INIT_NAMES = ("cpd", "linear", "linear+jacobian", "random")


def _same_basis(a: Basis, b: Basis) -> bool:
    return a.config() == b.config()


def _jacobian_variation(Jt: JacobianTensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Output and input directions along which the Jacobians vary most about their mean.

    For a decoupled ``f``, ``J_k - mean_k J_k = W diag(h_k - mean h) V^T``: the affine
    branches drop out, and the leading right singular vectors of the stacked centred
    Jacobians ``[J_1 - Jbar; ...; J_N - Jbar]`` (``n N x m``) span the input directions of
    the nonlinear branches. They come from a randomized subspace iteration (Halko, Martinsson
    and Tropp 2011) on the ``m x m`` Gram ``sum_k (J_k - Jbar)^T (J_k - Jbar)``, applied
    through :meth:`~tenflex.cpd.JacobianTensor.contract_input` and its adjoint, never formed
    (:func:`tenflex.subspace.gram_eigenvectors`).
    Each direction's output direction is the leading left singular vector of its
    Jacobian-vector products ``(J_k - Jbar) v`` over the samples.

    Returns
    -------
    W : (n, k) and V : (m, k), unit columns, ``V`` by decreasing variation.
    """
    _, V = gram_eigenvectors(Jt, k, seed=seed, center=True, n_iter=4)
    T = Jt.contract_input(V)
    T = T - T.mean(dim=1, keepdim=True)  # (n, N, k)
    W = torch.linalg.svd(T.permute(2, 0, 1), full_matrices=False)[0][:, :, 0].T
    return W.contiguous(), V.contiguous()


def _linear_start(
    prob: _Problem, rank: int, seed: int, extra: str = "random"
) -> tuple[Tensor, Tensor, Tensor]:
    """The best rank-``min(R, n)`` *linear* model ``b + A x`` for the CMTF cost.

    With ``g_r(z) = z`` the cost is ``a_J sum_k ||J_k - A||^2 + a_Y ||Y - 1 b^T - X A^T||^2``:
    a ridge regression of the outputs pulled towards the mean Jacobian. Its minimiser solves
    ``A M = a_J sum_k J_k + a_Y Yc^T Xc`` with ``M = a_J N I + a_Y Xc^T Xc`` (positive
    definite, so well posed even when ``N < m`` or ``X`` is rank deficient, where the plain
    least-squares fit of the outputs has huge, Jacobian-violating coefficients). The best
    rank-``R`` approximation in the metric ``M`` keeps the leading eigenvectors ``U`` of the
    ``n x n`` matrix ``A M A^T``: ``W = U``, ``V = A^T U``, at most ``min(n, m)`` of them
    (the rank of ``A``). Further branches get seeded
    random input directions and small output weights (zero weights would leave them without
    a gradient) with ``extra="random"``, or with ``extra="jacobian"`` the directions along
    which the Jacobians vary most (:func:`_jacobian_variation`), where ``f`` is nonlinear
    (at most ``m`` of them; any others start random).

    Returns
    -------
    W : (n, R), V : (m, R), b : (n,)
    """
    X, Y, Jt = prob.X, prob.Y, prob.Jt
    n, m, N = Jt.shape
    a_j, a_y = prob.a_j, prob.a_y
    ones = torch.ones(N, n, dtype=X.dtype, device=X.device)
    eye_n = torch.eye(n, dtype=X.dtype, device=X.device)
    j_sum = Jt.mttkrp_input(eye_n, ones).T  # (n, m): sum_k J_k
    x_mean = X.mean(dim=0)
    Xc = X - x_mean
    rhs = a_j * j_sum
    if a_y > 0:
        rhs = rhs + a_y * (Y - prob.y_mean).T @ Xc
        # rhs M^{-1}; Woodbury when N < m keeps the solve at the smaller of the two sizes.
        if N < m:
            small = (a_j * N / a_y) * torch.eye(N, dtype=X.dtype, device=X.device) + Xc @ Xc.T
            A = (rhs - torch.linalg.solve(small, Xc @ rhs.T).T @ Xc) / (a_j * N)
        else:
            big = a_y * (Xc.T @ Xc)
            big.diagonal().add_(a_j * N)
            A = torch.cholesky_solve(rhs.T, torch.linalg.cholesky(big)).T
        XA = Xc @ A.T
        metric = a_j * N * (A @ A.T) + a_y * (XA.T @ XA)
    else:
        A = rhs / (a_j * N)  # the mean Jacobian
        metric = A @ A.T
    # A linear map R^m -> R^n has rank at most min(n, m): with m < n (a fit in a small input
    # subspace) further eigenvectors of A M A^T have eigenvalue 0 and V = A^T W would give
    # dead branches (zero directions, whose domain maps blow up), so they start as extras.
    k = min(rank, n, m)
    _, evecs = torch.linalg.eigh(0.5 * (metric + metric.T))
    W = evecs[:, -k:].flip(1).contiguous()
    V = A.T @ W
    if rank > k:
        # Input directions of the linear branches' typical length.
        scale_v = float(torch.linalg.vector_norm(V, dim=0).mean())
        gen = torch.Generator().manual_seed(int(seed))
        extra_v = torch.randn(m, rank - k, generator=gen, dtype=torch.float64).to(V)
        extra_w = torch.randn(n, rank - k, generator=gen, dtype=torch.float64).to(W)
        extra_v = extra_v * scale_v / torch.linalg.vector_norm(extra_v, dim=0)
        extra_w = 1e-2 * extra_w / torch.linalg.vector_norm(extra_w, dim=0)
        if extra == "jacobian":
            # The Jacobians vary along at most m input directions; any further branches
            # keep their random start.
            n_dir = min(rank - k, m)
            jac_w, jac_v = _jacobian_variation(Jt, n_dir, seed)
            extra_w[:, :n_dir], extra_v[:, :n_dir] = jac_w, jac_v * scale_v
        V = torch.cat([V, extra_v], 1)
        W = torch.cat([W, extra_w], 1)
    b = prob.y_mean - x_mean @ V @ W.T
    return W, V, b


def _check_n_starts(n_starts: int, init: Any, rank: int, n: int, m: int) -> None:
    """Several starts only from an init that uses the seed (else they are all the same)."""
    if not isinstance(n_starts, (int, np.integer)) or n_starts <= 1:
        return  # (a bad n_starts is reported by its own check)
    if not isinstance(init, str):
        why = f"a given {type(init).__name__} init is deterministic"
    elif init in ("linear", "linear+jacobian") and rank <= min(n, m):
        why = (f"init={init!r} with rank={rank} <= min(n, m) = {min(n, m)} is deterministic "
               "(it uses no seed)")
    else:
        return
    raise ValueError(
        f"n_starts={n_starts} needs a random initialisation (an init that uses the seed): "
        "'cpd', 'random', or 'linear' / 'linear+jacobian' with rank > min(n, m) (init names: "
        f"{', '.join(map(repr, _INIT_NAMES))}); {why}: use n_starts=1"
    )


def _check_init(init: Any, name: str = "init") -> None:
    """An init name (ValueError if unknown), a DecoupledFunction or a dict (else TypeError)."""
    expected = (f"{name} must be one of {', '.join(map(repr, _INIT_NAMES))}, a "
                "DecoupledFunction or dict(W=..., V=...), got ")
    if isinstance(init, str):
        if init not in _INIT_NAMES:
            raise ValueError(expected + repr(init))
    elif not isinstance(init, (DecoupledFunction, dict)):
        raise TypeError(expected + type(init).__name__)


def _check_dead_branches(what: str, W: Tensor, V: Tensor, C: Tensor | None) -> None:
    """Refuse a given start with an all-zero column in ``W``, ``V`` or ``C``.

    Such a branch contributes nothing, and the block updates keep it so: with ``w_r = 0``
    or ``v_r = 0`` the exact C step gives ``c_r = 0`` (``v_r = 0`` also makes ``z_r``
    constant), and with ``c_r = 0`` or ``v_r = 0`` the minimum-norm W step gives
    ``w_r = 0`` and the V step's gradient for ``v_r`` vanishes, so the fit "converges" with
    one branch fewer. (With the other two blocks given nonzero, a single zero block is
    sometimes revived, e.g. by ``solver="gn"``; such a start is refused all the same.)
    """
    zero = {
        name: torch.nonzero(~A.any(dim=0)).flatten().tolist()
        for name, A in (("W", W), ("V", V), ("C", C))
        if A is not None
    }
    zero = {name: cols for name, cols in zero.items() if cols}
    if zero:
        listed = "; ".join(f"{name} columns {cols}" for name, cols in zero.items())
        raise ValueError(
            f"{what} has all-zero columns ({listed}): those branches are dead (every block "
            "update keeps them at zero, and the fit would stop with fewer branches); start "
            "them from small nonzero values (e.g. seeded random columns) instead"
        )


def _initial_state(
    prob: _Problem,
    init: Any,
    rank: int,
    seed: int,
    margin: float,
    cpd_options: dict[str, Any],
) -> _State:
    """Initial W, V, C, b per ``init`` (checked by :func:`_check_init`); fits the basis'
    affine map (unless reused)."""
    X, Y, Jt = prob.X, prob.Y, prob.Jt
    n, m = Jt.shape[:2]
    opts = {"dtype": X.dtype, "device": X.device}
    C = b = None
    refit = True
    if isinstance(init, str):
        if init == "cpd":
            res = decouple_cpd(
                X,
                Y,
                Jt,
                rank,
                prob.basis,
                seed=seed,
                domain_margin=margin,
                dtype=X.dtype,
                **cpd_options,
            )
            model = res.model
            prob.basis.set_domain_map(model.basis.scale, model.basis.shift)
            W, V, C, b = model.W, model.V, model.C, model.b
            refit = False
        elif init in ("linear", "linear+jacobian"):
            extra = "jacobian" if init == "linear+jacobian" else "random"
            W, V, b = _linear_start(prob, rank, seed, extra)
        else:  # "random" (cmtf_als checked the name)
            gen = torch.Generator().manual_seed(int(seed))
            W = torch.randn(n, rank, generator=gen, dtype=torch.float64).to(**opts)
            V = torch.randn(m, rank, generator=gen, dtype=torch.float64).to(**opts)
            V = V / torch.linalg.vector_norm(V, dim=0)
    elif isinstance(init, DecoupledFunction):
        if init.n != n or init.m != m or init.rank != rank:
            raise ValueError(
                f"init DecoupledFunction has (n, m, R) = {(init.n, init.m, init.rank)}, "
                f"expected {(n, m, rank)}"
            )
        # Detached (a model whose tensors require grad would otherwise make every sweep
        # build an autograd graph, and the result require grad), in the solver's dtype.
        W, V = (A.detach().to(**opts).clone() for A in (init.W, init.V))
        b = init.b.detach().to(**opts).clone()
        if _same_basis(init.basis, prob.basis):
            # the map in the solver's dtype too, as a fitted one would be
            prob.basis.set_domain_map(init.basis.scale.to(**opts), init.basis.shift.to(**opts))
            C = init.C.detach().to(**opts).clone()
            refit = False
        _check_dead_branches("init DecoupledFunction", W, V, C)
    else:  # a dict (cmtf_als checked the type)
        unknown = set(init) - {"W", "V", "C", "b"}
        if unknown or not {"W", "V"} <= set(init):
            raise ValueError(
                f"init dict needs keys 'W' and 'V' (optionally 'C', 'b'), got {sorted(init)}"
            )
        W = _as_matrix(init["W"], "init['W']", X.dtype, X.device)
        V = _as_matrix(init["V"], "init['V']", X.dtype, X.device)
        if W.shape != (n, rank) or V.shape != (m, rank):
            raise ValueError(
                f"init W and V must have shapes (n, R) = {(n, rank)} and (m, R) = "
                f"{(m, rank)}, got {tuple(W.shape)} and {tuple(V.shape)}"
            )
        if "C" in init:
            C = _as_matrix(init["C"], "init['C']", X.dtype, X.device)
            if C.shape != (prob.basis.n_functions, rank):
                raise ValueError(
                    f"init C must have shape (D, R) = {(prob.basis.n_functions, rank)}, got "
                    f"{tuple(C.shape)}"
                )
        if "b" in init:
            b = _as_matrix(init["b"], "init['b']", X.dtype, X.device).reshape(-1)
            if b.shape != (n,):
                raise ValueError(f"init b must have shape (n,) = ({n},), got {tuple(b.shape)}")
        _check_dead_branches("init dict", W, V, C)
    Z = branch_inputs_product(X, V)
    if refit:
        prob.basis.fit_domain(Z, margin=margin)
    if C is None:
        # Coefficients by the exact C step from zero (with b = mean(Y) if unknown).
        D = prob.basis.n_functions
        zeros = torch.zeros(D, rank, **opts)
        st0 = _make_state(prob, W, V, zeros, prob.y_mean.clone() if b is None else b, Z=Z)
        # The C step also sets b to its optimum for the new C: a given b belongs to other
        # branch functions (their constants differ), so it is not reused.
        return _step_c(prob, st0)
    return _make_state(prob, W, V, C, b, Z=Z)


def _run_cmtf(
    prob: _Problem,
    st: _State,
    max_iter: int,
    tol: float,
    cg_maxiter: int,
    extrapolate: bool,
    solver: str,
    verbose: bool,
    callback: Callable | None,
) -> tuple[_State, list[tuple[float, float, float]], str, bool, int, dict]:
    history = [(st.total, st.cj, st.co)]
    vstep = _VStepper(prob, cg_maxiter)
    joint = _JointGN(prob, cg_maxiter) if solver == "gn" else None
    reason, converged = f"reached max_iter={max_iter}", False
    rejected = 0
    acc_pow, acc_fail = 3.0, 0
    it = 0
    for it in range(1, max_iter + 1):
        start_total = st.total
        prev = st
        if joint is not None:
            st = joint.step(st)  # never increases the cost (checked)
        else:
            for step in (_step_wb, _step_c):
                new = step(prob, st)
                if new.total <= st.total:
                    st = new
                else:  # an exact LS step can lose to rounding: keep the better point
                    rejected += 1
            st = vstep.step(st)  # never increases the cost (line search, checked)
        if extrapolate and joint is None and it > 2 and st.total < start_total:
            # Jump along the sweep's move (Bro's extrapolation, as in tensorly's parafac).
            # T = J V is linear in V: no product with J is needed (the rounding of the
            # combination is cleared by the next V step's fresh product). Z = X V is
            # recomputed by the model's function, as in the V step: it must be the model's Z.
            jump = it ** (1.0 / acc_pow)

            def lerp(a: Tensor, b: Tensor, jump: float = jump) -> Tensor:
                return a + jump * (b - a)

            V_ext = lerp(prev.V, st.V)
            ext = _make_state(
                prob,
                lerp(prev.W, st.W),
                V_ext,
                lerp(prev.C, st.C),
                lerp(prev.b, st.b),
                T=lerp(prev.T, st.T),
                Z=branch_inputs_product(prob.X, V_ext),
            )
            if ext.total < st.total:
                st, acc_fail = ext, 0
            else:
                acc_fail += 1
                if acc_fail == 4:
                    acc_pow, acc_fail = acc_pow + 1.0, 0
        history.append((st.total, st.cj, st.co))
        if verbose:
            print(
                f"cmtf_als it {it:4d}  cost {st.total:.6e}  jacobian {st.cj:.6e}  "
                f"output {st.co:.6e}"
            )
        if callback is not None:
            info = {
                "iteration": it,
                "cost": st.total,
                "cost_jacobian": st.cj,
                "cost_output": st.co,
                "W": st.W,
                "V": st.V,
                "C": st.C,
                "b": st.b,
            }
            # a truthy bool-like (numpy or 0-d torch bool, as a comparison returns) stops
            if asks_to_stop(callback(info)):
                reason = "stopped by callback"
                break
        if st.total <= _COST_FLOOR:
            reason, converged = "cost at rounding level", True
            break
        if st.total == start_total:
            reason, converged = "no decrease in a sweep (stationary at working precision)", True
            break
        if start_total - st.total <= tol * start_total:
            reason, converged = f"relative cost change below tol={tol:g}", True
            break
    stats = {
        "rejected_block_steps": rejected,
        "rejected_v_steps": vstep.n_rejected,
        "rejected_gn_steps": joint.n_rejected if joint is not None else 0,
    }
    return st, history, reason, converged, it, stats


def cmtf_als(
    X: Tensor | np.ndarray,
    Y: Tensor | np.ndarray,
    J: Tensor | np.ndarray | JacobianTensor,
    rank: int,
    basis: str | Basis = "bspline",
    n_functions: int = 8,
    *,
    basis_options: dict[str, Any] | None = None,
    lam: float = 1.0,
    init: str | DecoupledFunction | dict[str, Any] = "cpd",
    n_starts: int = 1,
    seed: int = 0,
    max_iter: int = 200,
    tol: float = 1e-10,
    ridge: float = 0.0,
    domain_margin: float = 0.0,
    solver: str = "als",
    cg_maxiter: int | None = None,
    extrapolate: bool = True,
    cpd_options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float64,
    verbose: bool = False,
    callback: Callable[[dict[str, Any]], Any] | None = None,
) -> FitResult:
    """Fit ``f(x) ~ b + W g(V^T x)`` to outputs and Jacobians by constrained CMTF-ALS.

    Minimises (Zniyed, Usevich, Miron and Brie, 2021)

    ``L = ||J - [[W, V, H]]||^2 / ||J||^2 + lam ||Y - 1 b^T - G W^T||^2 / ||Y - Ybar||^2
    + ridge (||W||^2 + ||C||^2)``

    with ``G = g(X V)`` and ``H = g'(X V)`` given by the basis coefficients ``C``, by
    sweeps of three block updates:

    * ``(W, b)``: exact linear least squares (normal equations with ``(V^T V) * (H^T H)``,
      ``[G, 1]^T [G, 1]`` and the mode-1 MTTKRP);
    * ``(C, b)``: exact linear least squares in all ``R D`` coefficients at once (Gram
      blocks ``(w_r^T w_s)(v_r^T v_s) Phi'_r^T Phi'_s + lam' (w_r^T w_s) Phi_r^T Phi_s``,
      right-hand side from the mode-3 MTTKRP; ``b`` eliminated by centring); singular
      directions (the constants of a B-spline basis when ``lam = 0``) get the minimum-norm
      solution;
    * ``V``: a Gauss-Newton step on the full cost (both terms, including the dependence of
      ``G`` and ``H`` on ``V`` through ``g''``), solved matrix-free by preconditioned CG
      whose first iterate points along the ALS update with ``H`` frozen, followed by a
      backtracking (Armijo) line search;
    * an extrapolated jump along the sweep's move (``extrapolate``).

    Every update is kept only if the total cost does not increase, so the recorded cost
    history is non-increasing. Per sweep the work is dominated by two products of the size
    of ``J`` (``n N m R`` multiply-adds each): ``J V`` at the line search's trial point
    (reused by the next W and C steps and the cost evaluations) and the mode-2 MTTKRP; a
    third ``J V`` only when the line search backtracks. The CG iterations add two
    ``(N, m) x (m, R)`` products each (a fraction ``1/n`` of a product with ``J``).
    ``lam = 0`` gives the structured CPD of Zniyed et al. (the bias and the branch
    constants, invisible to the Jacobians, are then fitted to ``Y`` at every step).

    Parameters
    ----------
    X : tensor or ndarray, shape (N, m)
    Y : tensor or ndarray, shape (N, n)
    J : tensor or ndarray (n, m, N), or JacobianTensor
    rank : int
        Number of branches ``R``, ``1 <= R <= min(n m, N)``.
    basis : str or Basis, optional
        Basis name (default ``"bspline"``) or a :class:`~tenflex.basis.Basis` (cloned).
    n_functions : int, optional
        ``D`` when ``basis`` is a name (default 8).
    basis_options : dict, optional
        Extra :func:`~tenflex.basis.make_basis` options (e.g. ``degree``).
    lam : float, optional
        Weight ``λ >= 0`` of the output term (default 1).
    init : {"cpd", "linear", "linear+jacobian", "random"}, DecoupledFunction or dict, optional
        ``"cpd"`` (default): :func:`decouple_cpd` with this basis; ``"linear"``: the best
        rank-``R`` linear model ``b + A x`` for the same cost (outputs and Jacobians, same
        ``lam``; a ridge regression pulled towards the mean Jacobian, cheap and
        deterministic), whose branches the first C step then bends; a linear model has rank
        at most ``min(n, m)``, and further branches start on seeded random directions;
        ``"linear+jacobian"``: the same, with the further branches on the input and
        output directions along which the Jacobians vary most about their mean (where the
        function is nonlinear; seeded randomized subspace iteration; at most ``m`` such
        directions, further branches start random); ``"random"``: seeded
        normal ``W`` and unit-norm normal ``V``; a :class:`DecoupledFunction` (detached copies,
        in ``dtype``, of its W, V, b; of its C and affine map too when its basis has the same
        configuration as ``basis``);
        ``dict(W=..., V=...)`` with optional ``C`` (interpreted after fitting the affine
        map to ``X V``) and ``b``. Missing ``C`` comes from an exact C step. A given
        ``W``, ``V`` or ``C`` with an all-zero column raises ValueError (the block updates
        would keep that branch at zero).
    n_starts : int, optional
        Number of seeded starts; the lowest final cost is kept. ``n_starts > 1`` needs an
        init that uses the seed: ``"cpd"``, ``"random"``, or ``"linear"`` /
        ``"linear+jacobian"`` with ``rank > min(n, m)`` (their further branches are
        seeded); a deterministic init (``"linear"`` or ``"linear+jacobian"`` with
        ``rank <= min(n, m)``, a DecoupledFunction or a dict) with ``n_starts > 1`` raises
        ValueError.
    seed : int, optional
        Seed of the starts, a non-negative int; same seed, bitwise identical result (same
        machine and threads).
    max_iter : int, optional
        Maximum number of sweeps per start (default 200).
    tol : float, optional
        Stop when a sweep lowers the cost by at most ``tol`` times its value (default 1e-10).
    ridge : float, optional
        Tikhonov weight ``ρ >= 0`` on ``||W||^2 + ||C||^2`` (default 0).
    domain_margin : float, optional
        Margin for :meth:`~tenflex.basis.Basis.fit_domain` at initialisation (default 0).
        The affine maps stay fixed during the iterations (refitting them would change the
        functions and break monotonicity); B-splines continue linearly beyond their domain.
    solver : {"als", "gn"}, optional
        ``"als"`` (default): the block updates above. ``"gn"``: Levenberg-Marquardt on all
        blocks at once (W, b, C, V), its Gauss-Newton system solved by CG preconditioned with
        the block steps' normal matrices (so its first CG iterate is a simultaneous block
        update); same cost per iteration in products with ``J``, and quadratic instead of
        linear convergence near a solution, at the price of more CG iterations (each costs
        two ``(N, m) x (m, R)`` products, no product with ``J``).
    cg_maxiter : int, optional
        Maximum CG iterations per Gauss-Newton step (default 5 for ``"als"``'s V step, 50
        for ``"gn"``).
    extrapolate : bool, optional
        After each sweep, try the jump ``θ_prev + s (θ - θ_prev)`` with ``s = it**(1/3)``
        (reduced after repeated failures; Bro's extrapolation as in tensorly's ``parafac``)
        and keep it only if it lowers the cost (default True). Shortens the slow phases
        ("swamps") of block-coordinate iterations.
    cpd_options : dict, optional
        Options for :func:`decouple_cpd` when ``init="cpd"`` (``n_starts``,
        ``cpd_method``, ``n_iter_max``, ``tol``); default ``n_starts=3``.
    dtype : torch.dtype, optional
        Compute dtype (default float64).
    verbose : bool, optional
        Print one line per sweep.
    callback : callable, optional
        Called after each sweep with a dict (``start``, ``iteration``, ``cost``,
        ``cost_jacobian``, ``cost_output``, ``W``, ``V``, ``C``, ``b``); returning True (a
        Python or NumPy bool, or a one-element torch bool tensor) stops the whole call, the
        remaining starts included, and the best start so far is returned; None or False go
        on, anything else raises TypeError. ``W``, ``V``, ``C``, ``b`` are the solver's own
        tensors: read them (``.clone()`` to keep), never modify them. Must be callable or
        None (checked on entry).

    Returns
    -------
    FitResult
        Cost histories (index 0: initial point), convergence flag and reason, the model.

    Raises
    ------
    ValueError, TypeError
        Mismatched shapes, NaN/Inf, data whose sums of squares over- or underflow, rank out
        of range, too few sampling points for the unknowns, negative ``lam``/``ridge``,
        unknown ``init``, an init with all-zero columns, constant ``Y`` with ``lam > 0``,
        ``n_starts > 1`` with a deterministic init, a basis with identically zero
        derivatives, ``seed`` not a non-negative int, ``callback`` not callable.
    """
    t0 = time.perf_counter()
    run = _check_run_options(
        seed=seed, extrapolate=extrapolate, verbose=verbose, callback=callback, ridge=ridge,
        tol=tol, domain_margin=domain_margin, n_starts=n_starts, max_iter=max_iter,
        solver=solver, cg_maxiter=cg_maxiter, cpd_options=cpd_options)
    seed, ridge, tol, margin = run["seed"], run["ridge"], run["tol"], run["domain_margin"]
    n_starts, max_iter, cg_maxiter = run["n_starts"], run["max_iter"], run["cg_maxiter"]
    cpd_options = run["cpd_options"]
    _check_init(init)
    X, Y, Jt = _prepare_data(X, Y, J, dtype)
    n, m, N = Jt.shape
    base_basis = _prepare_basis(basis, n_functions, basis_options)
    lam = _check_float(lam, "lam")
    rank = _check_sizes(rank, n, m, N, base_basis.n_functions, lam > 0)
    _check_n_starts(n_starts, init, rank, n, m)

    seeds = np.random.SeedSequence(seed).generate_state(n_starts)
    best = None
    start_costs = []
    for start in range(n_starts):
        prob = _Problem(X, Y, Jt, base_basis.clone(), lam, ridge)
        st = _initial_state(prob, init, rank, int(seeds[start]), margin, cpd_options)
        # the callback learns which start it watches
        watch = None if callback is None else (
            lambda info, start=start: callback({**info, "start": start}))
        st, history, reason, converged, it, stats = _run_cmtf(
            prob, st, max_iter, tol, cg_maxiter, extrapolate, solver, verbose, watch
        )
        start_costs.append(st.total)
        if best is None or st.total < best[1].total:
            best = (prob, st, history, reason, converged, it, start, stats)
        if reason == "stopped by callback":  # the whole call stops, not just this start
            break
    prob, st, history, reason, converged, it, best_start, stats = best
    hist = np.asarray(history, dtype=np.float64)
    model = DecoupledFunction(st.W, st.V, st.C, st.b, prob.basis)
    return FitResult(
        model=model,
        cost=hist[:, 0],
        cost_jacobian=hist[:, 1],
        cost_output=hist[:, 2],
        n_iter=it,
        converged=converged,
        stop_reason=reason,
        time_s=time.perf_counter() - t0,
        start_costs=np.asarray(start_costs),
        best_start=best_start,
        lam=lam,
        method="cmtf_als",
        info={"solver": solver, "cg_maxiter": cg_maxiter, **stats},
    )
