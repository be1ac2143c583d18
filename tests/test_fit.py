"""Tests of tenflex.fit: exact recovery of decoupled functions, noise floors, monotone cost
histories, determinism, the lam trade-off, the Gauss-Newton algebra against autograd, and
input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from problems import decoupled_samples as _truth

from tenflex.basis import make_basis
from tenflex.cpd import DenseJacobian, FactoredJacobian, cpd, match_components
from tenflex.fit import (
    FitResult,
    _jacobian_variation,
    _JointGN,
    _make_state,
    _Problem,
    _step_c,
    _step_wb,
    _VStepper,
    cmtf_als,
    decouple_cpd,
)
from tenflex.model import DecoupledFunction
from tenflex.sampling import sample_function

# Tiny problems: one thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _errors(model, X, Y, J):
    """Relative output error (to the centred outputs' norm) and Jacobian error."""
    Yh, Jh = model.outputs_and_jacobian(X)
    ey = float((Yh - Y).norm() / (Y - Y.mean(0)).norm())
    ej = float((Jh - J).norm() / J.norm())
    return ey, ej


def _congruence(truth, model):
    cong, _ = match_components([truth.W, truth.V], [model.W, model.V])
    return float(cong.min())


def _perturbed(f, level, seed=1):
    gen = torch.Generator().manual_seed(seed)

    def p(A):
        E = torch.randn(A.shape, generator=gen, dtype=A.dtype)
        return A + level * E * A.norm() / E.norm()

    return DecoupledFunction(p(f.W), p(f.V), p(f.C), f.b.clone(), f.basis.clone())


# Exactly decoupled data, fitted to rounding: the relative errors measured on these problems
# are 5e-16 to 8e-15 and the congruences 1 - 3e-16 or closer (float64); a thousand-fold
# margin for other BLAS builds. (0.999 and 1e-8 let a fit that is off in its fourth digit
# of a direction, or eight orders of magnitude from the solver's accuracy, pass.)
_EXACT = 1e-11
_CONGRUENT = 1 - 1e-10


def _monotone(cost):
    return bool(np.all(np.diff(cost) <= 0)) and np.all(np.isfinite(cost))


CASES = [
    # n, m, R, basis, D, options
    (3, 5, 3, "monomial", 3, {}),
    (4, 6, 2, "chebyshev", 4, {}),
    (3, 4, 2, "legendre", 3, {}),
    (4, 5, 3, "bspline", 6, {"degree": 3}),
]


@pytest.mark.parametrize(("n", "m", "R", "name", "D", "options"), CASES)
def test_decouple_cpd_recovers_decoupled_function(n, m, R, name, D, options):
    f, X, Y, J = _truth(n, m, R, name, D, 300, seed=n + m + R, **options)
    res = decouple_cpd(
        X, Y, J, R, name, D, basis_options=options or None, n_starts=2, cpd_method="nls"
    )
    assert isinstance(res, FitResult) and res.method == "decouple_cpd"
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < _EXACT and ej < _EXACT
    assert _congruence(f, res.model) > _CONGRUENT
    assert res.relative_error_jacobian < _EXACT and res.info["cpd_relative_error"] < _EXACT
    assert res.converged and len(res.cost) == 1


def test_decouple_cpd_with_tensorly_cpd():
    f, X, Y, J = _truth(4, 6, 2, "monomial", 3, 200, seed=3)
    res = decouple_cpd(X, Y, J, 2, "monomial", 3, n_starts=1, cpd_method="tensorly")
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < _EXACT and ej < _EXACT and _congruence(f, res.model) > _CONGRUENT


@pytest.mark.parametrize("solver", ["als", "gn"])
@pytest.mark.parametrize(("n", "m", "R", "name", "D", "options"), CASES[::3])
def test_cmtf_from_cpd_init_stays_exact(solver, n, m, R, name, D, options):
    f, X, Y, J = _truth(n, m, R, name, D, 300, seed=n + m + R, **options)
    res = cmtf_als(
        X,
        Y,
        J,
        R,
        name,
        D,
        basis_options=options or None,
        solver=solver,
        cpd_options={"n_starts": 2, "cpd_method": "nls"},
    )
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < _EXACT and ej < _EXACT and _congruence(f, res.model) > _CONGRUENT
    assert _monotone(res.cost) and res.converged


@pytest.mark.parametrize("solver", ["als", "gn"])
@pytest.mark.parametrize(
    ("n", "m", "R", "name", "D"), [(3, 5, 3, "monomial", 3), (4, 6, 2, "chebyshev", 4)]
)
def test_cmtf_recovers_polynomial_truth_from_random_starts(solver, n, m, R, name, D):
    # From random starts (3 seeded, best kept) both solvers find the decoupled polynomial.
    f, X, Y, J = _truth(n, m, R, name, D, 300, seed=n + m + R)
    res = cmtf_als(X, Y, J, R, name, D, init="random", n_starts=3, solver=solver, max_iter=300)
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < _EXACT and ej < _EXACT and _congruence(f, res.model) > _CONGRUENT
    assert len(res.start_costs) == 3 and res.cost[-1] == min(res.start_costs)


def test_cmtf_gn_recovers_bspline_truth_from_perturbed_truth():
    # B-spline branches are exactly representable only with the truth's knots, i.e. its
    # affine map: a start that shares the basis configuration reuses that map. From 1%
    # perturbations of W, V, C the joint Gauss-Newton solver converges to the truth.
    f, X, Y, J = _truth(4, 5, 3, "bspline", 6, 400, seed=7)
    res = cmtf_als(X, Y, J, 3, "bspline", 6, init=_perturbed(f, 0.01), solver="gn")
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < _EXACT and ej < _EXACT and _congruence(f, res.model) > _CONGRUENT
    assert torch.equal(res.model.basis.scale, f.basis.scale)
    assert _monotone(res.cost) and res.converged


def test_cmtf_als_from_perturbed_bspline_truth_converges_monotonically():
    # Block coordinate descent is slower (linear rate; the V scale and C trade off along
    # a shallow valley) but its cost decreases monotonically by orders of magnitude.
    f, X, Y, J = _truth(4, 5, 3, "bspline", 6, 400, seed=7)
    res = cmtf_als(X, Y, J, 3, "bspline", 6, init=_perturbed(f, 0.01), max_iter=60)
    assert _monotone(res.cost)
    assert res.cost_jacobian[-1] < 1e-4 * res.cost_jacobian[0]  # measured 7.6e-6
    assert _congruence(f, res.model) > 1 - 1e-8  # measured 1 - 7e-11


def _noisy(X, Y, J, sigma, seed=5):
    gen = torch.Generator().manual_seed(seed)
    EJ = torch.randn(J.shape, generator=gen, dtype=J.dtype)
    EY = torch.randn(Y.shape, generator=gen, dtype=Y.dtype)
    EJ *= sigma * J.norm() / EJ.norm()
    EY *= sigma * (Y - Y.mean(0)).norm() / EY.norm()
    return Y + EY, J + EJ


@pytest.mark.parametrize("solver", ["als", "gn"])
def test_noise_floor(solver):
    sigma = 0.01
    _f, X, Y, J = _truth(4, 5, 3, "monomial", 3, 400, seed=11)
    Yn, Jn = _noisy(X, Y, J, sigma)
    res = cmtf_als(
        X, Yn, Jn, 3, "monomial", 3, solver=solver, cpd_options={"n_starts": 2, "cpd_method": "nls"}
    )
    ey, ej = _errors(res.model, X, Yn, Jn)
    # 42 parameters against 10,000 equations: the residual is the noise, neither much
    # less (overfitting) nor more (underfitting)
    assert 0.9 * sigma < ey < 1.1 * sigma
    assert 0.9 * sigma < ej < 1.1 * sigma
    # and the model is much closer to the clean function than the data are
    ey0, ej0 = _errors(res.model, X, Y, J)
    assert ey0 < 0.2 * sigma and ej0 < 0.2 * sigma
    assert _monotone(res.cost)
    # decouple_cpd, which fits the branches to the Jacobians only, is near the floor too
    dec = decouple_cpd(X, Yn, Jn, 3, "monomial", 3, n_starts=2, cpd_method="nls")
    ey, ej = _errors(dec.model, X, Yn, Jn)
    assert 0.9 * sigma < ej < 1.2 * sigma and ey < 2 * sigma


@pytest.mark.parametrize(
    ("solver", "lam", "name", "D", "ridge", "init"),
    [
        ("als", 1.0, "bspline", 6, 0.0, "random"),
        ("als", 0.0, "bspline", 6, 0.0, "random"),
        ("als", 1.0, "hinge", 5, 1e-6, "random"),
        ("gn", 1.0, "bspline", 6, 0.0, "random"),
        ("gn", 0.0, "chebyshev", 4, 1e-6, "random"),
        ("gn", 10.0, "hinge", 5, 0.0, "cpd"),
    ],
)
def test_cost_history_never_increases(solver, lam, name, D, ridge, init):
    _f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 250, seed=13)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    res = cmtf_als(
        X,
        Yn,
        Jn,
        2,
        name,
        D,
        lam=lam,
        solver=solver,
        ridge=ridge,
        init=init,
        max_iter=40,
        seed=4,
        cpd_options={"n_starts": 1, "cpd_method": "nls"},
    )
    cost = res.cost
    assert len(cost) == res.n_iter + 1 == len(res.cost_jacobian) == len(res.cost_output)
    assert _monotone(cost)
    assert np.all(np.diff(cost) <= 1e-12 * cost[:-1])
    assert cost[-1] < cost[0]
    # the recorded total is the sum of its terms (plus the ridge penalty)
    m = res.model
    penalty = ridge * float((m.W**2).sum() + (m.C**2).sum())
    assert cost[-1] == pytest.approx(
        res.cost_jacobian[-1] + lam * res.cost_output[-1] + penalty, rel=1e-12, abs=1e-15
    )
    # and it is the cost of the returned model
    ey, ej = _errors(m, X, Yn, Jn)
    assert ej**2 == pytest.approx(res.cost_jacobian[-1], rel=1e-8)
    assert ey**2 == pytest.approx(res.cost_output[-1], rel=1e-8)
    assert res.stop_reason and isinstance(res.converged, bool) and res.time_s > 0


@pytest.mark.parametrize("solver", ["als", "gn"])
def test_same_seed_bitwise_identical(solver):
    _f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 200, seed=17)
    Yn, Jn = _noisy(X, Y, J, 0.02)
    kw = {"init": "random", "n_starts": 2, "max_iter": 15, "solver": solver}
    a = cmtf_als(X, Yn, Jn, 2, "bspline", 5, seed=123, **kw)
    b = cmtf_als(X, Yn, Jn, 2, "bspline", 5, seed=123, **kw)
    c = cmtf_als(X, Yn, Jn, 2, "bspline", 5, seed=124, **kw)
    for name in ("W", "V", "C", "b"):
        assert torch.equal(getattr(a.model, name), getattr(b.model, name))
    assert np.array_equal(a.cost, b.cost) and np.array_equal(a.start_costs, b.start_costs)
    assert torch.equal(a.model.basis.scale, b.model.basis.scale)
    assert not torch.equal(a.model.V, c.model.V)


def test_lam_trades_the_two_terms():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    s = sample_function(net, torch.randn(300, 4, generator=torch.Generator().manual_seed(1)))
    # a tanh network is not a rank-2 decoupled function: the two terms compete
    for solver, max_iter in (("gn", 100), ("als", 40)):
        fits = {
            lam: cmtf_als(
                s.X,
                s.Y,
                s.J,
                2,
                "bspline",
                6,
                lam=lam,
                solver=solver,
                max_iter=max_iter,
                cpd_options={"n_starts": 2, "cpd_method": "nls"},
            )
            for lam in (0.0, 1e4)
        }
        assert fits[0.0].cost_jacobian[-1] < fits[1e4].cost_jacobian[-1]
        assert fits[0.0].cost_output[-1] > fits[1e4].cost_output[-1]


def test_start_costs_and_best_start_name_the_kept_start():
    # FitResult documents start_costs as what ranked the starts (decouple_cpd: the squared
    # relative errors of the CPD starts) and best_start as the kept one; seeds chosen so
    # that the kept start is not the first.
    _f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 150, seed=29)
    Yn, Jn = _noisy(X, Y, J, 0.1)
    kw = {"n_starts": 3, "seed": 1, "n_iter_max": 30}  # rank 3 > 2: slow CPDs, cut short
    dec = decouple_cpd(X, Yn, Jn, 3, "monomial", 3, cpd_method="nls", **kw)
    ref = cpd(DenseJacobian(Jn), 3, method="nls", **kw)
    np.testing.assert_array_equal(dec.start_costs, np.asarray(ref.start_errors) ** 2)
    assert dec.best_start == ref.best_start == int(np.argmin(dec.start_costs)) != 0
    assert dec.info["cpd_relative_error"] ** 2 == pytest.approx(min(dec.start_costs), rel=1e-9)
    res = cmtf_als(X, Yn, Jn, 2, "monomial", 3, init="random", n_starts=3, max_iter=5, seed=3)
    assert res.best_start == int(np.argmin(res.start_costs)) != 0
    assert res.cost[-1] == min(res.start_costs)


def test_jacobian_tensor_input_and_numpy_input_agree():
    _f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 150, seed=19)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    kw = {"init": "random", "max_iter": 10, "solver": "gn"}
    a = cmtf_als(X, Yn, Jn, 2, "monomial", 3, **kw)
    b = cmtf_als(X.numpy(), Yn.numpy(), DenseJacobian(Jn), 2, "monomial", 3, **kw)
    torch.testing.assert_close(a.model.V, b.model.V, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.cost, b.cost, rtol=1e-12)


@pytest.mark.parametrize("solver", ["als", "gn"])
def test_factored_jacobian_gives_the_dense_fit(solver):
    # f(x) = g(A x) with g decoupled: J_k = K_k A. The solver sees the same tensor through
    # FactoredJacobian as through the dense product, and recovers the truth from either.
    n, h, m, R, N = 3, 4, 9, 2, 200
    g, _, _, _ = _truth(n, h, R, "monomial", 3, N, seed=31)
    gen = torch.Generator().manual_seed(32)
    A = torch.randn(h, m, generator=gen, dtype=torch.float64)
    X = torch.randn(N, m, generator=gen, dtype=torch.float64) / m**0.5  # A x ~ g's domain
    Y, K = g.outputs_and_jacobian(X @ A.T)
    J = torch.einsum("ihk,hj->ijk", K, A)
    kw = {"init": "random", "max_iter": 100, "solver": solver, "seed": 3}
    dense = cmtf_als(X, Y, J, R, "monomial", 3, **kw)
    factored = cmtf_als(X, Y, FactoredJacobian(K, A), R, "monomial", 3, **kw)
    # the same history until the costs reach the accuracy of the expanded residual (the
    # factored one's; the dense residual is computed directly), where the stops may differ
    k = int(np.argmax(dense.cost < 1e-8))
    np.testing.assert_allclose(factored.cost[:k], dense.cost[:k], rtol=1e-6)
    assert _monotone(factored.cost) and max(factored.cost[-1], dense.cost[-1]) < 1e-9
    torch.testing.assert_close(factored.model.V, dense.model.V, rtol=1e-6, atol=1e-8)
    # the truth is f(x) = W g(V^T x) with V = A^T V_g
    truth = DecoupledFunction(g.W, A.T @ g.V, g.C, g.b, g.basis)
    assert _congruence(truth, factored.model) > 0.999
    assert _errors(factored.model, X, Y, J)[0] < 1e-6


def test_init_options():
    f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 150, seed=23)
    # a DecoupledFunction with the same basis configuration: W, V, C, b and the map reused
    res = cmtf_als(X, Y, J, 2, "monomial", 3, init=f, max_iter=0)
    assert res.n_iter == 0 and len(res.cost) == 1 and res.cost[0] < 1e-26
    torch.testing.assert_close(res.model.C, f.C)
    # dict(W=, V=): C and b are fitted (exactly, since the truth is polynomial)
    res = cmtf_als(X, Y, J, 2, "monomial", 3, init={"W": f.W, "V": f.V}, max_iter=0)
    assert res.cost[0] < 1e-24
    # a different basis: W, V, b are used, C is fitted in the new basis
    res = cmtf_als(X, Y, J, 2, "bspline", 6, init=f, max_iter=3)
    assert res.model.basis.name == "bspline" and _monotone(res.cost)
    # a Basis instance is cloned, not modified
    basis = make_basis("chebyshev", 3)
    res = cmtf_als(X, Y, J, 2, basis, init="random", max_iter=2)
    assert not basis.is_fitted and res.model.basis is not basis


def _linear_samples(n, m, N, rank, seed):
    """Samples of the affine map ``b + A x`` with ``rank(A) = rank`` (Jacobian ``A`` everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, rank, generator=gen, dtype=torch.float64) @ torch.randn(
        rank, m, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    X = torch.randn(N, m, generator=gen, dtype=torch.float64)
    return X, X @ A.T + b, A[:, :, None].expand(n, m, N).contiguous()


@pytest.mark.parametrize("N", [40, 400])  # N < m (Woodbury) and N > m (Cholesky)
@pytest.mark.parametrize("lam", [0.0, 1.0, 100.0])
def test_linear_init_is_exact_for_a_low_rank_affine_map(N, lam):
    X, Y, J = _linear_samples(4, 60, N, 2, seed=31)
    res = cmtf_als(X, Y, J, 2, "bspline", 6, lam=lam, init="linear", max_iter=0)
    assert res.cost[0] < 1e-20
    ey, ej = _errors(res.model, X, Y, J)
    assert ey < 1e-10 and ej < 1e-10


def test_linear_init_beats_the_mean_on_rank_deficient_inputs():
    # N < m: the plain least-squares fit of the outputs interpolates them with coefficients
    # that have nothing to do with the Jacobians; the CMTF-optimal linear start must not.
    _f, X, Y, J = _truth(3, 80, 2, "chebyshev", 4, 60, seed=37)
    lin = cmtf_als(X, Y, J, 2, "bspline", 6, lam=10.0, init="linear", max_iter=10)
    zero = cmtf_als(X, Y, J, 2, "bspline", 6, lam=10.0, init="random", max_iter=0)
    assert lin.cost[0] < 1.0 + 10.0  # better than W = 0 (cost 1 + lam)
    assert lin.cost[0] < zero.cost[0] and _monotone(lin.cost)
    # deterministic up to the random extra branches (R > n)
    again = cmtf_als(X, Y, J, 2, "bspline", 6, lam=10.0, init="linear", max_iter=10)
    np.testing.assert_array_equal(lin.cost, again.cost)
    more = cmtf_als(X, Y, J, 5, "bspline", 6, lam=10.0, init="linear", max_iter=3, seed=2)
    assert more.model.rank == 5 and _monotone(more.cost)


def _affine_and_nonlinear(seed):
    """n = 3, m = 6, R = 5: branches 0-2 affine, 3-4 nonlinear (Chebyshev, D = 4)."""
    f, X, _, _ = _truth(3, 6, 5, "chebyshev", 4, 300, seed=seed)
    C = f.C.clone()
    C[1:, :3] = 0  # T_1 of an affine domain map alone: affine branches
    f = DecoupledFunction(f.W, f.V, C, f.b, f.basis)
    Y, J = f.outputs_and_jacobian(X)
    return f, X, Y, J


def test_jacobian_variation_finds_the_nonlinear_branches():
    f, _X, _Y, J = _affine_and_nonlinear(seed=41)
    W, V = _jacobian_variation(DenseJacobian(J), 2, seed=3)
    assert W.shape == (3, 2) and V.shape == (6, 2)
    torch.testing.assert_close(V.norm(dim=0), torch.ones(2, dtype=V.dtype))
    # the affine branches drop out of J_k - mean J: V spans the nonlinear branches' inputs,
    # W lies in the span of their outputs
    for found, true in [(V, f.V[:, 3:]), (W, f.W[:, 3:])]:
        Q = torch.linalg.qr(true)[0]
        assert float((found - Q @ (Q.T @ found)).norm()) < 1e-8
    W2, V2 = _jacobian_variation(DenseJacobian(J), 2, seed=3)
    assert torch.equal(V, V2) and torch.equal(W, W2)


@pytest.mark.parametrize("seed", [43, 44, 45])
def test_linear_jacobian_init_starts_the_extra_branches_where_f_bends(seed):
    _f, X, Y, J = _affine_and_nonlinear(seed=seed)
    runs = {init: cmtf_als(X, Y, J, 5, "chebyshev", 4, lam=1.0, init=init, max_iter=10,
                           seed=5) for init in ("linear", "linear+jacobian")}
    # With random extra directions the first C step bends only what the linear branches
    # see; on the Jacobians' variation the start holds most of the nonlinearity at once
    # (8 to 300 times lower cost on these functions), and is still ahead after 10 sweeps.
    # (Not necessarily at convergence: ALS may leave either start slowly.)
    lin, jac = runs["linear"].cost, runs["linear+jacobian"].cost
    assert jac[0] < 0.2 * lin[0] and jac[-1] < lin[-1]
    assert _monotone(jac)
    again = cmtf_als(X, Y, J, 5, "chebyshev", 4, lam=1.0, init="linear+jacobian",
                     max_iter=10, seed=5)
    np.testing.assert_array_equal(again.cost, jac)
    # at R <= n there are no extra branches: the two starts coincide
    a, b = (cmtf_als(X, Y, J, 3, "chebyshev", 4, lam=1.0, init=i, max_iter=2).cost
            for i in ("linear", "linear+jacobian"))
    np.testing.assert_array_equal(a, b)


def test_linear_jacobian_init_with_more_extra_branches_than_inputs():
    # n = 3, m = 6, R = 12: nine extra branches, but the Jacobians vary along at most six
    # input directions; the other three start random (this used to fail inside einsum).
    _f, X, Y, J = _affine_and_nonlinear(seed=46)
    _W, V = _jacobian_variation(DenseJacobian(J), 6, seed=3)
    torch.testing.assert_close(V.T @ V, torch.eye(6, dtype=V.dtype))
    runs = [cmtf_als(X, Y, J, 12, "chebyshev", 4, lam=1.0, init="linear+jacobian",
                     max_iter=3, seed=5) for _ in range(2)]
    assert runs[0].model.rank == 12 and _monotone(runs[0].cost)
    np.testing.assert_array_equal(runs[0].cost, runs[1].cost)


def test_callback_and_verbose(capsys):
    _f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 150, seed=29)
    seen = []

    def cb(info):
        seen.append(info["iteration"])
        return info["iteration"] == 3

    res = cmtf_als(X, Y, J, 2, "monomial", 3, init="random", callback=cb, max_iter=50, tol=0.0)
    assert seen == [1, 2, 3] and res.n_iter == 3 and res.stop_reason == "stopped by callback"
    assert not res.converged
    assert capsys.readouterr().out == ""
    cmtf_als(X, Y, J, 2, "monomial", 3, init="random", max_iter=2, verbose=True)
    assert "cmtf_als it" in capsys.readouterr().out


def test_domain_margin_and_the_maps_stay_fixed():
    # domain_margin widens the branch inputs' range by margin times its width on each side
    # before mapping it onto [-1, 1]: the start's Z then spans +-(1 - 2 margin / (1 + 2
    # margin)). The maps are fitted once, at initialisation: the sweeps leave them alone.
    _f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 150, seed=29)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    dec = decouple_cpd(X, Yn, Jn, 2, "bspline", 6, domain_margin=0.1, n_starts=1,
                       cpd_method="nls")
    t = dec.model.basis.to_natural(X @ dec.model.V)
    edge = torch.full((2,), 1 - 0.2 / 1.2, dtype=torch.float64)
    torch.testing.assert_close(t.amax(dim=0), edge, rtol=1e-12, atol=0)
    torch.testing.assert_close(t.amin(dim=0), -edge, rtol=1e-12, atol=0)
    kw = {"init": "random", "domain_margin": 0.25, "seed": 3, "tol": 0.0}
    start = cmtf_als(X, Yn, Jn, 2, "bspline", 6, max_iter=0, **kw)
    t = start.model.basis.to_natural(X @ start.model.V)
    edge = torch.full((2,), 1 - 0.5 / 1.5, dtype=torch.float64)
    torch.testing.assert_close(t.amax(dim=0), edge, rtol=1e-12, atol=0)
    torch.testing.assert_close(t.amin(dim=0), -edge, rtol=1e-12, atol=0)
    for solver in ("als", "gn"):
        res = cmtf_als(X, Yn, Jn, 2, "bspline", 6, max_iter=8, solver=solver, **kw)
        assert res.cost[-1] < 0.01 * res.cost[0]  # V moved a long way
        assert torch.equal(res.model.basis.scale, start.model.basis.scale)
        assert torch.equal(res.model.basis.shift, start.model.basis.shift)


def test_extrapolate_false_gives_the_plain_sweeps():
    # The jump is tried from the third sweep on: the histories agree before it and differ
    # after (here the jumps are accepted from sweep 5), both monotone.
    _f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 150, seed=29)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    kw = {"init": "random", "max_iter": 15, "seed": 3, "tol": 0.0}
    on, off = (cmtf_als(X, Yn, Jn, 2, "bspline", 6, extrapolate=flag, **kw).cost
               for flag in (True, False))
    np.testing.assert_array_equal(on[:3], off[:3])
    assert not np.array_equal(on, off) and _monotone(on) and _monotone(off)


def test_max_iter_stop_reason():
    _f, X, Y, J = _truth(3, 4, 2, "monomial", 3, 150, seed=31)
    res = cmtf_als(X, Y, J, 2, "bspline", 6, init="random", max_iter=2, tol=0.0)
    assert res.n_iter == 2 and not res.converged and "max_iter" in res.stop_reason


# ------------------------------------------------------------------ Gauss-Newton algebra
def _residual_fn(prob, basis, with_b):
    """Weighted residual vector r(θ) whose squared norm is the cost, the ridge penalty
    included (as the residual ``sqrt(ridge) [W, C]``)."""
    X, Y = prob.X, prob.Y
    A = prob.Jt.to_dense()

    def r(W, b, C, V):
        Z = X @ V
        Phi, dPhi = basis.values_and_derivatives(Z)
        G = torch.einsum("krd,dr->kr", Phi, C)
        H = torch.einsum("krd,dr->kr", dPhi, C)
        K = torch.einsum("ir,jr,kr->ijk", W, V, H)
        parts = [(A - K).reshape(-1) * prob.a_j**0.5]
        if with_b:
            parts.append((Y - b - G @ W.T).reshape(-1) * prob.a_y**0.5)
        if prob.ridge > 0:
            parts += [W.reshape(-1) * prob.ridge**0.5, C.reshape(-1) * prob.ridge**0.5]
        return torch.cat(parts)

    return r


# torch's forward-mode AD set-up (torch.func.jvp) scripts its decompositions on first use
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")
@pytest.mark.parametrize("ridge", [0.0, 0.3])
@pytest.mark.parametrize("lam", [0.0, 0.7])
@pytest.mark.parametrize("name", ["monomial", "bspline"])
def test_gauss_newton_gradient_and_operator_match_autograd(lam, name, ridge):
    # ridge > 0: the penalty's gradient and curvature in W and C (a dropped term used to
    # pass every other test: the solver keeps only steps that lower the cost)
    f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 40, seed=37)
    D = 3 if name == "monomial" else 5
    basis = make_basis(name, D).fit_domain(X @ f.V)
    prob = _Problem(X, Y + 0.1, DenseJacobian(J + 0.01), basis, lam, ridge)
    gen = torch.Generator().manual_seed(0)
    W, V = f.W + 0.1, f.V - 0.05
    C = torch.randn(D, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    st = _make_state(prob, W, V, C, b)
    with_b = lam > 0
    r = _residual_fn(prob, basis, with_b)
    theta = (st.W, st.b, st.C, st.V)
    d = tuple(torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in theta)
    res0 = r(*theta)
    # minus half the gradient = J_r^T r ; Gauss-Newton operator = J_r^T J_r
    _, vjp = torch.func.vjp(r, *theta)
    g_ref = tuple(-g for g in vjp(res0))  # r = data - model: -grad/2 = -J_r^T r
    _, jd = torch.func.jvp(r, theta, d)
    a_ref = vjp(jd)
    # cost of the state is |r|^2
    assert st.total == pytest.approx(float(res0 @ res0), rel=1e-10)

    joint = _JointGN(prob, 10)
    H2 = prob.second_derivative(st.Z, st.C)
    parts = joint._linear_parts(st, H2)
    keep = [0, 1, 2, 3] if with_b else [0, 2, 3]
    grad = joint.gradient(st, parts)
    applied = joint._apply(parts, [d[i] for i in keep], with_b)
    for k, i in enumerate(keep):
        torch.testing.assert_close(grad[k], g_ref[i], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(applied[k], a_ref[i], rtol=1e-9, atol=1e-12)

    # the V stepper's gradient and operator are the V blocks of the joint ones
    vs = _VStepper(prob, 10)
    torch.testing.assert_close(vs.gradient(st, H2), g_ref[3], rtol=1e-9, atol=1e-12)
    dV = d[3]
    zero = [torch.zeros_like(t) for t in theta]
    _, jdv = torch.func.jvp(r, theta, (zero[0], zero[1], zero[2], dV))
    torch.testing.assert_close(vs.operator(st, H2, 0.0)(dV), vjp(jdv)[3], rtol=1e-9, atol=1e-12)



@pytest.mark.parametrize("ridge", [0.0, 1e-2])
@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_block_steps_minimise_the_cost_over_their_block(lam, ridge):
    # An ALS sweep keeps a block step only if the cost does not increase, so a wrong block
    # solve (a dropped ridge term, a C step that forgets to centre Phi for the eliminated
    # bias) still gives a monotone history and the exact-recovery tests (ridge 0, noise
    # free) still pass. Check each step's optimality directly: after the (W, b) step the
    # gradient of the cost (autograd of the dense residual) in W and b vanishes, after the
    # C step in C and b. Measured: 3e-17 to 3e-15 of the gradient before the step.
    f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 60, seed=37)
    gen = torch.Generator().manual_seed(0)
    Yn = Y + 0.05 * torch.randn(Y.shape, generator=gen, dtype=Y.dtype)
    Jn = J + 0.05 * torch.randn(J.shape, generator=gen, dtype=J.dtype)
    basis = make_basis("bspline", 5).fit_domain(X @ f.V)
    prob = _Problem(X, Yn, DenseJacobian(Jn), basis, lam, ridge)
    C = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(3, generator=gen, dtype=torch.float64)
    st = _make_state(prob, f.W + 0.1, f.V - 0.05, C, b)
    r = _residual_fn(prob, basis, True)

    def cost_and_gradient(s):
        theta = [t.clone().requires_grad_(True) for t in (s.W, s.b, s.C, s.V)]
        res = r(*theta)
        cost = (res @ res).detach()
        return float(cost), torch.autograd.grad(res @ res, theta)

    cost0, grad0 = cost_and_gradient(st)
    assert st.total == pytest.approx(cost0, rel=1e-12)
    for step, blocks in ((_step_wb, (0, 1)), (_step_c, (2, 1))):
        new = step(prob, st)
        cost, grad = cost_and_gradient(new)
        assert new.total == pytest.approx(cost, rel=1e-10) and cost < cost0
        for i in blocks if lam > 0 else blocks[:1]:  # lam = 0: b does not enter the cost
            assert float(grad[i].norm()) < 1e-10 * float(grad0[i].norm())
        # lam = 0: b is the least-squares bias all the same (it is the model's)
        torch.testing.assert_close(new.b, (Yn - new.G @ new.W.T).mean(dim=0), rtol=1e-12,
                                   atol=1e-12)


def test_gauss_newton_operators_multiply_x_by_tall_matmul(monkeypatch):
    """The CG operators' products ``X D`` (one per CG iteration) go through
    :func:`tenflex.cpd.tall_matmul`: in float64 from 13 columns MKL's kernel for ``X @ D``
    is about twice slower (``benchmarks/bench_products.py``), which made up a third of an
    ALS sweep at the reference CNN head's size (R = 16, N = 5000, m = 3136)."""
    import tenflex.fit as fit_module

    f, X, Y, J = _truth(3, 4, 2, "chebyshev", 3, 40, seed=37)
    basis = make_basis("bspline", 5).fit_domain(X @ f.V)
    prob = _Problem(X, Y, DenseJacobian(J + 0.01), basis, 0.7, 0.0)
    gen = torch.Generator().manual_seed(0)
    C = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    st = _make_state(prob, f.W + 0.1, f.V - 0.05, C, f.b)
    H2 = prob.second_derivative(st.Z, st.C)
    dW, db, dC, dV = (torch.randn(t.shape, generator=gen, dtype=torch.float64)
                      for t in (st.W, st.b, st.C, st.V))
    expected_v = _VStepper(prob, 10).operator(st, H2, 0.0)(dV)
    joint = _JointGN(prob, 10)
    parts = joint._linear_parts(st, H2)
    expected_joint = joint._apply(parts, [dW, db, dC, dV], True)

    calls = []
    real = fit_module.tall_matmul

    def spy(A, B):
        calls.append(A)
        return real(A, B)

    monkeypatch.setattr(fit_module, "tall_matmul", spy)
    torch.testing.assert_close(_VStepper(prob, 10).operator(st, H2, 0.0)(dV), expected_v)
    assert any(A is prob.X for A in calls), "the V step's operator bypassed tall_matmul"
    calls.clear()
    for a, b in zip(joint._apply(parts, [dW, db, dC, dV], True), expected_joint, strict=True):
        torch.testing.assert_close(a, b)
    assert any(A is prob.X for A in calls), "the joint operator bypassed tall_matmul"


@pytest.mark.parametrize(("solver", "extrapolate"), [("als", False), ("als", True), ("gn", True)])
def test_solver_and_model_compute_z_by_one_function(monkeypatch, solver, extrapolate):
    """Every ``Z = X V`` of the solver (line search, extrapolation, joint step, start) and of
    :meth:`DecoupledFunction.branch_inputs` is :func:`tenflex.model.branch_inputs_product`,
    so that with a kinked basis (hinges) the cost recorded for each sweep is the cost of
    the model with that sweep's parameters, bit for bit: a point on a knot falls on the same
    side in both. The function is replaced by a marked one (``Z`` scaled by ``1 + 2^-20``)
    in both modules: a site that bypassed it would record a cost about 1e-6 away. R = 14
    reaches ``tall_matmul``'s transposed form, whose last bits differ from ``X @ V``."""
    import tenflex.fit as fit_module
    import tenflex.model as model_module

    real = model_module.branch_inputs_product
    solver_z = []

    def marked(X, V):
        Z = real(X, V) * (1 + 2**-20)
        solver_z.append((V.clone(), Z))
        return Z

    monkeypatch.setattr(fit_module, "branch_inputs_product", marked)
    monkeypatch.setattr(model_module, "branch_inputs_product",
                        lambda X, V: real(X, V) * (1 + 2**-20))
    _f, X, Y, J = _truth(3, 40, 14, "chebyshev", 3, 150, seed=5)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    sweeps = []
    res = cmtf_als(X, Yn, Jn, 14, "hinge", 5, solver=solver, extrapolate=extrapolate,
                   init="random", max_iter=12, seed=3,
                   callback=lambda info: sweeps.append(
                       (info["cost"], *(info[k].clone() for k in "WVCb"))))
    model = res.model
    Z = model.branch_inputs(X)
    assert any(torch.equal(V, model.V) and torch.equal(Zs, Z) for V, Zs in solver_z)
    prob = _Problem(X, Yn, DenseJacobian(Jn), model.basis, res.lam, 0.0)
    for cost, W, V, C, b in sweeps:
        sweep_model = DecoupledFunction(W, V, C, b, model.basis)
        again = _make_state(prob, W, V, C, b, Z=sweep_model.branch_inputs(X)).total
        if extrapolate:  # an extrapolated T = J V is a combination: its last bits differ
            assert again == pytest.approx(cost, rel=1e-12)
        else:
            assert again == cost
    assert res.cost[-1] == sweeps[-1][0]


def test_start_and_decouple_cpd_compute_z_by_one_function(monkeypatch):
    """The starting point's ``Z`` (``cmtf_als`` from a given model) and that of
    ``decouple_cpd`` are :func:`tenflex.model.branch_inputs_product` too: with it marked
    (``Z`` scaled by ``1 + 2^-20``) in both modules, the recorded costs are those of the
    models, bit for bit (see ``test_solver_and_model_compute_z_by_one_function``)."""
    import tenflex.fit as fit_module
    import tenflex.model as model_module

    real = model_module.branch_inputs_product

    def marked(X, V):
        return real(X, V) * (1 + 2**-20)

    monkeypatch.setattr(fit_module, "branch_inputs_product", marked)
    monkeypatch.setattr(model_module, "branch_inputs_product", marked)
    f, X, Y, J = _truth(3, 40, 14, "hinge", 5, 150, seed=5)
    Yn, Jn = _noisy(X, Y, J, 0.05)
    start = _perturbed(f, 0.1)
    res = cmtf_als(X, Yn, Jn, 14, "hinge", 5, init=start, max_iter=1)
    prob = _Problem(X, Yn, DenseJacobian(Jn), start.basis, 1.0, 0.0)
    Z = start.branch_inputs(X)
    assert _make_state(prob, start.W, start.V, start.C, start.b, Z=Z).total == res.cost[0]
    dec = decouple_cpd(X, Yn, Jn, 14, "hinge", 5, n_starts=1, cpd_method="nls", n_iter_max=30)
    m = dec.model
    again = _make_state(_Problem(X, Yn, DenseJacobian(Jn), m.basis, 0.0, 0.0), m.W, m.V, m.C,
                        m.b, Z=m.branch_inputs(X))
    assert again.cj == dec.cost_jacobian[0] and again.co == dec.cost_output[0]


# ------------------------------------------------------------------ validation
@pytest.fixture(scope="module")
def small():
    return _truth(3, 4, 2, "monomial", 3, 60, seed=41)


@pytest.mark.parametrize("fit", [decouple_cpd, cmtf_als])
def test_bad_shapes_and_values(small, fit):
    _f, X, Y, J = small
    with pytest.raises(ValueError, match=r"X must have shape \(N, m\) = \(60, 4\)"):
        fit(X[:, :3], Y, J, 2)
    with pytest.raises(ValueError, match=r"Y must have shape \(N, n\) = \(60, 3\)"):
        fit(X, Y[:50], J, 2)
    with pytest.raises(ValueError, match=r"\(n, m, N\)"):
        fit(X, Y, J[0], 2)
    Xn = X.clone()
    Xn[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fit(Xn, Y, J, 2)
    Yn = Y.clone()
    Yn[0, 0] = float("inf")
    with pytest.raises(ValueError, match="Y contains NaN or Inf"):
        fit(X, Yn, J, 2)
    Jn = J.clone()
    Jn[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="J contains NaN or Inf"):
        fit(X, Y, Jn, 2)
    with pytest.raises(ValueError, match="rank must be in"):
        fit(X, Y, J, 0)
    with pytest.raises(ValueError, match=r"min\(n\*m, N\)"):
        fit(X, Y, J, 13)
    with pytest.raises(TypeError, match="rank must be an int"):
        fit(X, Y, J, 2.0)
    with pytest.raises(ValueError, match="unknown basis"):
        fit(X, Y, J, 2, "wavelet")
    with pytest.raises(ValueError, match="identically zero"):
        fit(X, Y, torch.zeros_like(J), 2)


def test_too_few_sampling_points():
    _f, X, Y, J = _truth(2, 3, 2, "monomial", 3, 60, seed=43)
    # N = 3 points: 3 * (2 * 3 + 2) = 24 equations for 2 * (2 + 3 + 8) + 2 = 28 unknowns
    with pytest.raises(ValueError, match="too few sampling points"):
        cmtf_als(X[:3], Y[:3], J[:, :, :3], 2, "bspline", 8)
    with pytest.raises(ValueError, match="too few sampling points"):
        decouple_cpd(X[:2], Y[:2], J[:, :, :2], 2, "monomial", 3)


def test_bad_options(small):
    f, X, Y, J = small
    with pytest.raises(ValueError, match="lam must be"):
        cmtf_als(X, Y, J, 2, lam=-1.0)
    with pytest.raises(ValueError, match="ridge must be"):
        cmtf_als(X, Y, J, 2, ridge=float("nan"))
    with pytest.raises(ValueError, match="init must be one of"):
        cmtf_als(X, Y, J, 2, init="zeros")
    with pytest.raises(TypeError, match="init must be"):
        cmtf_als(X, Y, J, 2, init=3)
    with pytest.raises(ValueError, match="keys 'W' and 'V'"):
        cmtf_als(X, Y, J, 2, init={"W": f.W})
    with pytest.raises(ValueError, match="init W and V must have shapes"):
        cmtf_als(X, Y, J, 2, init={"W": f.W, "V": f.V[:3]})
    with pytest.raises(ValueError, match="init DecoupledFunction"):
        cmtf_als(X, Y, J, 1, init=f)
    with pytest.raises(ValueError, match="n_starts=2 needs a random"):
        cmtf_als(X, Y, J, 2, init=f, n_starts=2)
    with pytest.raises(ValueError, match="solver must be"):
        cmtf_als(X, Y, J, 2, solver="sgd")
    with pytest.raises(ValueError, match="Y is constant"):
        cmtf_als(X, torch.ones_like(Y), J, 2, lam=1.0)
    with pytest.raises(TypeError, match="dtype"):
        cmtf_als(X, Y, DenseJacobian(J, dtype=torch.float32), 2)
    with pytest.raises(TypeError, match="cpd_options"):
        cmtf_als(X, Y, J, 2, cpd_options={"colour": 1})
    with pytest.raises(TypeError, match="basis must be"):
        cmtf_als(X, Y, J, 2, basis=5)


@pytest.mark.parametrize("solver", ["als", "gn"])
def test_float32(solver):
    _f, X, Y, J = _truth(3, 5, 3, "monomial", 3, 300, seed=47)
    res = cmtf_als(
        X.float(), Y.float(), J.float(), 3, "monomial", 3, dtype=torch.float32, solver=solver
    )
    assert res.model.W.dtype == torch.float32 and res.model.basis.scale.dtype == torch.float32
    ey, ej = _errors(res.model.to(torch.float64), X, Y, J)
    assert ey < 1e-5 and ej < 1e-5 and _monotone(res.cost)


# ------------------------------------------------------------------ robustness
@pytest.mark.parametrize(
    ("n", "m", "N", "D", "ranks", "seeds"),
    [(2, 3, 40, 3, (5, 6), (0, 1, 2)), (3, 6, 5, 2, (5,), (0, 2))],  # N < m in the second
)
def test_ranks_above_the_true_rank_give_valid_fits(n, m, N, D, ranks, seeds):
    # Up to the largest rank min(n m, N), on data of rank 2: tensorly's ALS meets singular
    # normal equations on some CPD starts (then the Gauss-Newton CPD takes over).
    _f, X, Y, J = _truth(n, m, 2, "monomial", D, N, seed=0)
    for rank in ranks:
        for seed in seeds:
            res = decouple_cpd(X, Y, J, rank, "monomial", D, seed=seed)
            assert res.model.rank == rank and np.isfinite(res.cost).all()
            assert res.info["cpd_relative_error"] < 1e-8
            for A in (res.model.W, res.model.V, res.model.C, res.model.b):
                assert bool(torch.isfinite(A).all())
            fit = cmtf_als(X, Y, J, rank, "monomial", D, init="cpd", seed=seed, max_iter=20)
            assert fit.model.rank == rank and _monotone(fit.cost)
            assert fit.cost[-1] < 1e-5  # the exact rank-2 function is still fitted


@pytest.mark.parametrize("fit", [decouple_cpd, cmtf_als])
@pytest.mark.parametrize("seed", [-1, None, 1.5, True, np.float64(0.0)])
def test_seed_must_be_a_non_negative_int(small, fit, seed):
    _f, X, Y, J = small
    error = ValueError if isinstance(seed, int) and not isinstance(seed, bool) else TypeError
    with pytest.raises(error, match="seed must be an int >= 0"):
        fit(X, Y, J, 2, seed=seed)


def test_numpy_integer_seed_equals_int_seed(small):
    _f, X, Y, J = small
    a = cmtf_als(X, Y, J, 2, "monomial", 3, init="random", seed=np.int32(5), max_iter=3)
    b = cmtf_als(X, Y, J, 2, "monomial", 3, init="random", seed=5, max_iter=3)
    assert np.array_equal(a.cost, b.cost) and torch.equal(a.model.V, b.model.V)


def test_basis_with_zero_derivatives_is_refused(small):
    # Degree-0 B-splines are piecewise constant: H = 0 whatever C, so J cannot be fitted.
    _f, X, Y, J = small
    for fit in (decouple_cpd, cmtf_als):
        with pytest.raises(ValueError, match="identically zero derivatives"):
            fit(X, Y, J, 2, "bspline", 4, basis_options={"degree": 0})
        with pytest.raises(ValueError, match="identically zero derivatives"):
            fit(X, Y, J, 2, make_basis("bspline", 4, degree=0))
    # degree 1 (piecewise linear) has derivatives: accepted
    res = cmtf_als(X, Y, J, 2, "bspline", 4, basis_options={"degree": 1}, max_iter=2)
    assert res.cost_jacobian[-1] < 1.0


def test_init_with_all_zero_columns_is_refused(small):
    # A branch with a zero column in W, V or C never moves (its block updates are all zero)
    # and the fit would report convergence with one branch fewer.
    f, X, Y, J = small
    for key, col in (("W", 1), ("V", 0), ("C", 1)):
        init = {"W": f.W.clone(), "V": f.V.clone(), "C": f.C.clone()}
        init[key][:, col] = 0
        with pytest.raises(ValueError, match=rf"init dict has all-zero columns \({key} columns "
                           rf"\[{col}\]\)"):
            cmtf_als(X, Y, J, 2, "monomial", 3, init=init)
    W = f.W.clone()
    W[:, 0] = 0
    with pytest.raises(ValueError, match=r"init DecoupledFunction .*W columns \[0\]"):
        cmtf_als(X, Y, J, 2, "monomial", 3, init=DecoupledFunction(W, f.V, f.C, f.b, f.basis))
    # both W and V zero in branch 1, without C
    V = f.V.clone()
    V[:, 1] = 0
    W[:, 0] = f.W[:, 0]
    W[:, 1] = 0
    with pytest.raises(ValueError, match=r"W columns \[1\]; V columns \[1\]"):
        cmtf_als(X, Y, J, 2, "monomial", 3, init={"W": W, "V": V})


def test_several_starts_need_a_seeded_init(small):
    f, X, Y, J = small  # n = 3
    names = ("'cpd'", "'linear'", "'linear+jacobian'", "'random'")
    for init in ("linear", "linear+jacobian", f, {"W": f.W, "V": f.V}):
        with pytest.raises(ValueError, match="n_starts=3 needs a random initialisation") as e:
            cmtf_als(X, Y, J, 2, "monomial", 3, init=init, n_starts=3, max_iter=1)
        assert all(name in str(e.value) for name in names)
    with pytest.raises(TypeError, match="init must be one of") as e:
        cmtf_als(X, Y, J, 2, init=3)
    assert all(name in str(e.value) for name in names)
    # rank > n: the extra branches of the linear inits are seeded, so the starts differ
    _f, X2, Y2, J2 = _truth(2, 3, 2, "monomial", 3, 40, seed=0)
    res = cmtf_als(X2, Y2, J2, 3, "monomial", 3, init="linear", n_starts=2, max_iter=0)
    assert len(res.start_costs) == 2 and res.start_costs[0] != res.start_costs[1]


def test_callback_is_checked_on_entry(small):
    _f, X, Y, J = small
    for max_iter in (0, 3):  # max_iter=0: no sweep, the callback is never called
        with pytest.raises(TypeError, match="callback must be callable"):
            cmtf_als(X, Y, J, 2, "monomial", 3, init="random", max_iter=max_iter, callback=3)


def test_cpd_method_is_named_with_its_values(small):
    _f, X, Y, J = small
    message = r"cpd_method.* must be one of 'auto', 'tensorly', 'nls', got 'als'"
    with pytest.raises(ValueError, match=message):
        decouple_cpd(X, Y, J, 2, cpd_method="als")
    with pytest.raises(ValueError, match=message):
        cmtf_als(X, Y, J, 2, "monomial", 3, cpd_options={"cpd_method": "als"})


@pytest.mark.parametrize("fit", [decouple_cpd, cmtf_als])
def test_data_of_extreme_magnitude_is_refused_not_nan(small, fit):
    # Sums of squares that overflow (or underflow) float64 used to give all-NaN costs.
    _f, X, Y, J = small
    with pytest.raises(ValueError, match="J is too large in magnitude.*rescale"):
        fit(X, Y, J * 1e160, 2, "monomial", 3)
    with pytest.raises(ValueError, match="X is too large in magnitude"):
        fit(X * 1e160, Y, J, 2, "monomial", 3)
    with pytest.raises(ValueError, match=r"Y \(centred\) is too large in magnitude"):
        fit(X, Y * 1e160, J, 2, "monomial", 3)
    # a tiny J is not "identically zero": its entries are not all zero
    with pytest.raises(ValueError, match="J is too small in magnitude"):
        fit(X, Y, J * 1e-170, 2, "monomial", 3)
    with pytest.raises(ValueError, match="J is identically zero"):
        fit(X, Y, J * 0, 2, "monomial", 3)


def test_linear_init_with_fewer_inputs_than_outputs_starts_no_dead_branch():
    # m = 2 < n = 5: the linear model has rank <= 2, so only 2 branches are linear; before,
    # three more came from zero eigenvalues with V = A^T W = 0, dead branches whose domain
    # maps blew up (scales ~1e13) and whose gradients wrecked any later training.
    _f, X, Y, J = _truth(5, 2, 4, "chebyshev", 4, 200, seed=47)
    res = cmtf_als(X, Y, J, 4, "bspline", 6, lam=10.0, init="linear", max_iter=0, seed=1)
    norms = res.model.V.norm(dim=0)
    assert float(norms.min()) > 1e-3 * float(norms.max())
    assert float(res.model.basis.scale.abs().max()) < 1e6
    with pytest.raises(ValueError, match=r"rank=2 <= min\(n, m\) = 2 is deterministic"):
        cmtf_als(X, Y, J, 2, "bspline", 6, init="linear", n_starts=2, max_iter=0)
    # rank 3 > min(n, m): its extra branch is seeded, so several starts differ
    starts = cmtf_als(X, Y, J, 3, "bspline", 6, init="linear", n_starts=2, max_iter=0)
    assert starts.start_costs[0] != starts.start_costs[1]


@pytest.mark.parametrize("stop", [np.True_, torch.tensor(True), True])
def test_a_bool_like_from_the_callback_stops(small, stop):
    # `is True` used to ignore np.True_ and torch.tensor(True) (what `norm > 10` returns).
    _f, X, Y, J = small
    res = cmtf_als(X, Y, J, 2, "monomial", 3, init="random", max_iter=20, tol=0.0,
                   callback=lambda info: stop if info["iteration"] == 2 else None)
    assert res.n_iter == 2 and res.stop_reason == "stopped by callback"


def test_a_callback_returning_anything_else_is_refused(small):
    _f, X, Y, J = small
    with pytest.raises(TypeError, match="a callback must return None, False or True"):
        cmtf_als(X, Y, J, 2, "monomial", 3, init="random", max_iter=3,
                 callback=lambda info: info["cost"])


def test_a_callback_stop_ends_every_start(small):
    # It used to end only the start it watched: every later start still ran.
    _f, X, Y, J = small
    seen = []

    def cb(info):
        seen.append((info["start"], info["iteration"]))
        return info["start"] == 1 and info["iteration"] == 2

    res = cmtf_als(X, Y, J, 2, "monomial", 3, init="random", n_starts=3, max_iter=4,
                   tol=0.0, callback=cb)
    assert seen == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2)]
    assert len(res.start_costs) == 2


@pytest.mark.parametrize("flag", ["extrapolate", "verbose"])
def test_flags_must_be_bools(small, flag):
    _f, X, Y, J = small
    with pytest.raises(TypeError, match=f"{flag} must be a bool \\(True or False\\)"):
        cmtf_als(X, Y, J, 2, "monomial", 3, init="random", max_iter=1, **{flag: "no"})


def test_warm_start_from_a_model_that_requires_grad_is_detached(small):
    # A DecoupledFunction holding tensors that require grad (e.g. being fine-tuned) used to
    # make every sweep build an autograd graph and returned a model that required grad.
    f, X, Y, J = small
    g = _perturbed(f, 1e-2)
    g = DecoupledFunction(*(A.clone().requires_grad_() for A in (g.W, g.V, g.C, g.b)),
                          g.basis.clone())
    res = cmtf_als(X, Y, J, 2, "monomial", 3, init=g, max_iter=3)
    m = res.model
    assert not any(A.requires_grad for A in (m.W, m.V, m.C, m.b))
    assert res.cost[-1] < res.cost[0]


@pytest.mark.parametrize(("model_dtype", "dtype"), [(torch.float32, torch.float64),
                                                    (torch.float64, torch.float32)])
def test_warm_start_from_a_model_of_another_dtype_gives_a_model_of_dtype(small, model_dtype,
                                                                           dtype):
    # The basis' affine map used to keep the init model's dtype (a float64 fit holding a
    # float32 map, or the reverse).
    f, X, Y, J = small
    res = cmtf_als(X, Y, J, 2, "monomial", 3, init=f.to(model_dtype), max_iter=2, dtype=dtype)
    m = res.model
    assert {A.dtype for A in (m.W, m.V, m.C, m.b, m.basis.scale, m.basis.shift)} == {dtype}


def test_cpd_options_must_be_a_dict(small):
    _f, X, Y, J = small
    with pytest.raises(TypeError, match="cpd_options must be a dict"):
        cmtf_als(X, Y, J, 2, cpd_options=[("n_starts", 1)])
