"""Tests for tenflex.nn.kan: KAN layers with basis-function edges (Liu et al. 2024)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import BSpline
from torch.func import functional_call

from tenflex.basis import Basis, make_basis
from tenflex.nn.kan import KANLayer, ProjectedKAN, kan_width_for_budget

F64 = torch.float64


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _naive_kan(layer: KANLayer, x: torch.Tensor) -> np.ndarray:
    """Loop over outputs j and inputs i, with the basis evaluated by hand (scipy / numpy)."""
    basis = layer.basis
    scale = basis.scale.double().numpy()
    shift = basis.shift.double().numpy()
    coef = layer.coef.detach().double().numpy()
    x = x.detach().double().numpy()
    n, m, D = coef.shape

    def phi(t):  # (N,) -> (N, D), in the natural variable
        if basis.name == "chebyshev":
            return np.stack([np.polynomial.chebyshev.chebval(t, np.eye(D + 1)[d]) for d in
                             range(1, D + 1)], axis=1)
        assert basis.name == "bspline"
        p = basis.degree
        knots = basis.knots().numpy()
        c = np.clip(t, -1.0, 1.0)  # linear continuation outside [-1, 1]
        cols = []
        for d in range(D):
            el = BSpline.basis_element(knots[d : d + p + 2], extrapolate=False)
            val = np.nan_to_num(el(c))
            slope = np.nan_to_num(el.derivative()(c))
            cols.append(val + slope * (t - c))
        return np.stack(cols, axis=1)

    y = np.zeros((x.shape[0], n))
    for j in range(n):
        for i in range(m):
            t = scale[i] * x[:, i] + shift[i]
            y[:, j] += phi(t) @ coef[j, i]
        if layer.b is not None:
            y[:, j] += layer.b.detach().double().numpy()[j]
    return y


# ---------------------------------------------------------------------- sizes
def test_parameter_counts_match_formulas():
    layer = KANLayer(7, 3, "bspline", 6, seed=0)
    assert layer.coef.shape == (3, 7, 6) and layer.b.shape == (3,)
    assert layer.n_parameters == 3 * 7 * 6 + 3
    assert (layer.in_features, layer.out_features, layer.n_functions) == (7, 3, 6)
    nob = KANLayer(7, 3, "chebyshev", 4, bias=False, seed=0)
    assert nob.b is None and nob.n_parameters == 3 * 7 * 4
    quad = KANLayer(5, 2, n_functions=9, basis_options={"degree": 2}, seed=0)
    assert quad.basis.degree == 2 and quad.n_parameters == 2 * 5 * 9 + 2
    model = ProjectedKAN(3136, 10, width=5, n_functions=8, seed=0)
    assert model.P.shape == (3136, 5) and model.kan.in_features == 5
    assert model.n_parameters == 3136 * 5 + 10 * 5 * 8 + 10
    assert model.n_parameters == sum(p.numel() for p in model.parameters())
    assert ProjectedKAN(12, 4, 3, "legendre", 5, bias=False).n_parameters == 12 * 3 + 4 * 3 * 5


def test_kan_width_for_budget_is_largest_fitting_width():
    m, n, D = 3136, 10, 8

    def cost(w, bias=True):
        return m * w + n * w * D + (n if bias else 0)

    for budget in [cost(1), cost(1) + 1, 12345, 31370, cost(9) - 1, cost(9), 100_000]:
        w = kan_width_for_budget(m, n, D, budget)
        assert cost(w) <= budget < cost(w + 1)
        assert ProjectedKAN(m, n, w, n_functions=D).n_parameters == cost(w)
    assert kan_width_for_budget(m, n, D, cost(9)) == 9
    assert kan_width_for_budget(m, n, D, cost(9) - 1) == 8
    # Without bias the n parameters of b are free.
    assert kan_width_for_budget(m, n, D, cost(3, bias=False), bias=False) == 3
    assert kan_width_for_budget(m, n, D, cost(3, bias=False)) == 2
    assert kan_width_for_budget(m, n, D, float(cost(4)) + 0.5) == 4
    with pytest.raises(ValueError, match=r"budget of 3225 .* width 1 needs .* = 3226"):
        kan_width_for_budget(m, n, D, cost(1) - 1)
    with pytest.raises(ValueError, match="budget of 5 parameters"):
        kan_width_for_budget(m, n, D, 5)
    with pytest.raises(ValueError, match="n_functions must be a positive int"):
        kan_width_for_budget(m, n, 0, 10**6)
    with pytest.raises(TypeError, match="budget must be a number"):
        kan_width_for_budget(m, n, D, "1000")


# ---------------------------------------------------------------------- forward
@pytest.mark.parametrize(("name", "opts"), [("bspline", {"degree": 3}), ("chebyshev", {})])
def test_forward_equals_naive_loop(name, opts):
    layer = KANLayer(4, 3, name, 6, basis_options=opts, seed=1, dtype=F64)
    with torch.no_grad():
        layer.b.copy_(_randn(3, seed=2))
    X = _randn(30, 4, seed=3) * torch.tensor([1.0, 3.0, 0.2, 5.0], dtype=F64) + 1.5
    layer.fit_domain(X)
    Xt = torch.cat([X, 1.5 * X[:5] - 2.0])  # the last rows lie partly outside the domain
    assert layer.basis.outside_fraction(Xt) > 0
    y = layer(Xt)
    assert y.shape == (35, 3) and y.dtype == F64
    np.testing.assert_allclose(y.detach().numpy(), _naive_kan(layer, Xt), rtol=1e-12, atol=1e-12)


def test_fit_domain_maps_data_range():
    X = _randn(40, 3, seed=0) * torch.tensor([1.0, 10.0, 0.1], dtype=F64)
    layer = KANLayer(3, 2, "bspline", 5, seed=0, dtype=F64)
    assert layer.fit_domain(X) is layer
    lo, hi = layer.basis.data_range()
    torch.testing.assert_close(lo, X.amin(0), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(hi, X.amax(0), rtol=1e-14, atol=1e-14)
    width = X.amax(0) - X.amin(0)
    layer.fit_domain(X.numpy(), margin=0.25)
    lo, hi = layer.basis.data_range()
    torch.testing.assert_close(lo, X.amin(0) - 0.25 * width, rtol=1e-13, atol=1e-13)
    # ProjectedKAN fits its KAN layer on x P; buffers follow the parameters' dtype.
    model = ProjectedKAN(6, 2, 3, "chebyshev", 4, seed=0, dtype=torch.float32)
    X6 = _randn(25, 2, 3, seed=1)
    assert model.fit_domain(X6) is model
    assert model.kan.basis.scale.dtype == torch.float32
    Z = X6.reshape(25, 6).float() @ model.P.detach()
    lo, hi = model.kan.basis.data_range()
    torch.testing.assert_close(lo, Z.amin(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hi, Z.amax(0), rtol=1e-5, atol=1e-5)


def test_spline_edges_approximate_smooth_functions():
    # y = sin(3 x1) + x2^2 is additive, so one KAN layer with cubic-spline edges represents it
    # up to the spline approximation error, O(h^4); coef solved by least squares (linear in coef).
    g = torch.linspace(-1, 1, 41, dtype=F64)
    X = torch.cartesian_prod(g, g)
    Y = torch.sin(3 * X[:, 0]) + X[:, 1] ** 2
    layer = KANLayer(2, 1, "bspline", 12, seed=0, dtype=F64).fit_domain(X)
    Phi = layer.basis(X).reshape(len(X), -1)  # (N, m D), matches coef[0].reshape(-1)
    sol = torch.linalg.lstsq(Phi, Y[:, None], driver="gelsd").solution[:, 0]
    with torch.no_grad():
        layer.coef.copy_(sol.reshape(1, 2, 12))
        layer.b.zero_()
    Xtest = _randn(200, 2, seed=5).clamp(-1, 1)
    err = (layer(Xtest)[:, 0] - (torch.sin(3 * Xtest[:, 0]) + Xtest[:, 1] ** 2)).abs().max()
    assert err < 2e-3


# ---------------------------------------------------------------------- from_linear
@pytest.mark.parametrize(
    ("name", "D", "opts"),
    [
        ("bspline", 8, {"degree": 3}),
        ("bspline", 5, {"degree": 1}),
        ("chebyshev", 6, {}),
        ("legendre", 4, {}),
        ("monomial", 5, {}),
        ("hinge", 4, {}),
    ],
)
def test_from_linear_reproduces_linear_map(name, D, opts):
    m, n, w = 12, 3, 4
    P, A, b = _randn(m, w, seed=0), _randn(n, w, seed=1), _randn(n, seed=2)
    X = _randn(60, m, seed=3) * 2.0 + 0.5
    model = ProjectedKAN.from_linear(
        P, A, b, basis=name, n_functions=D, basis_options=opts, x=X, margin=0.1
    )
    assert model.P.dtype == F64 and model.width == w and model.n_functions == D
    torch.testing.assert_close(model.P, P, rtol=0, atol=0)
    # In-domain data: the fitting data and points inside its (widened) range.
    assert model.kan.basis.outside_fraction(model.project(X)) == 0
    ref = b + (X @ P) @ A.T
    torch.testing.assert_close(model(X), ref, rtol=0, atol=1e-10)
    Xmid = 0.3 * X[:30] + 0.7 * X[30:]  # new points, projections inside the data range
    torch.testing.assert_close(model(Xmid), b + (Xmid @ P) @ A.T, rtol=0, atol=1e-10)
    # Polynomials extrapolate naturally, B-splines linearly: t is continued exactly.
    Xout = 4.0 * X - 3.0
    assert model.kan.basis.outside_fraction(model.project(Xout)) > 0.3
    torch.testing.assert_close(model(Xout), b + (Xout @ P) @ A.T, rtol=0, atol=1e-10)
    # Without data the identity map is used; NumPy inputs are accepted.
    plain = ProjectedKAN.from_linear(
        P.numpy(), A.numpy(), b.numpy(), basis=name, n_functions=D, basis_options=opts
    )
    torch.testing.assert_close(plain.kan.basis.scale, torch.ones(w, dtype=F64))
    torch.testing.assert_close(plain(X), ref, rtol=0, atol=1e-10)


def test_from_linear_output_shape_and_jacobian():
    P, A, b = _randn(12, 3, seed=0), _randn(6, 3, seed=1), _randn(6, seed=2)
    X = _randn(20, 3, 4, seed=3)
    model = ProjectedKAN.from_linear(P, A, b, x=X, output_shape=(2, 3))
    y = model(X)
    assert y.shape == (20, 2, 3)
    torch.testing.assert_close(y.reshape(20, 6), b + (X.reshape(20, 12) @ P) @ A.T,
                               rtol=0, atol=1e-10)
    # The network is linear, so every per-sample Jacobian equals A P^T (torch.func works).
    J = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(X.reshape(20, 12))
    torch.testing.assert_close(J.reshape(20, 6, 12), (A @ P.T).expand(20, 6, 12),
                               rtol=0, atol=1e-10)


class _ShiftedMonomial(Basis):
    """Test basis (t + 1)^d, d = 1..D: t is in its span only together with a constant."""

    name = "shifted"

    def _natural(self, t, derivative):
        values = torch.stack([(t + 1) ** d for d in range(1, self.n_functions + 1)], dim=-1)
        return values, None


def test_from_linear_least_squares_path_moves_constants_into_bias():
    P, A, b = _randn(5, 2, seed=0), _randn(3, 2, seed=1), _randn(3, seed=2)
    X = _randn(30, 5, seed=3)
    model = ProjectedKAN.from_linear(P, A, b, basis=_ShiftedMonomial(3), x=X)
    torch.testing.assert_close(model(X), b + (X @ P) @ A.T, rtol=0, atol=1e-10)
    # phi_1 = t + 1 carries the identity: coef ∝ e_1, the -1 goes into the bias.
    torch.testing.assert_close(model.kan.coef[..., 1:], torch.zeros(3, 2, 2, dtype=F64),
                               rtol=0, atol=1e-10)


def test_from_linear_bad_inputs():
    P, A, b = _randn(5, 2, seed=0), _randn(3, 2, seed=1), _randn(3, seed=2)
    with pytest.raises(ValueError, match="contains the identity"):
        ProjectedKAN.from_linear(P, A, b, basis_options={"degree": 0})
    with pytest.raises(ValueError, match=r"A must have shape \(n, w\) with w = 2.*\(3, 4\)"):
        ProjectedKAN.from_linear(P, _randn(3, 4), b)
    with pytest.raises(ValueError, match=r"b must have shape \(n,\) with n = 3.*\(2,\)"):
        ProjectedKAN.from_linear(P, A, b[:2])
    with pytest.raises(ValueError, match=r"P must have shape \(m, w\)"):
        ProjectedKAN.from_linear(P[0], A, b)
    with pytest.raises(ValueError, match="P contains NaN"):
        ProjectedKAN.from_linear(P * float("nan"), A, b)
    with pytest.raises(ValueError, match=r"x must have shape .* m = 5 features, got \(4, 6\)"):
        ProjectedKAN.from_linear(P, A, b, x=torch.randn(4, 6))


# ---------------------------------------------------------------------- gradients
def _gradcheck(module, x):
    params = {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()}
    names = list(params)

    def f(x, *ps):
        return functional_call(module, dict(zip(names, ps, strict=True)), (x,))

    return torch.autograd.gradcheck(f, (x.requires_grad_(True), *params.values()))


@pytest.mark.parametrize(("name", "opts"), [("bspline", {"degree": 3}), ("chebyshev", {})])
def test_gradcheck_tiny_layers_float64(name, opts):
    layer = KANLayer(3, 2, name, 5, basis_options=opts, seed=0, dtype=F64)
    X = _randn(4, 3, seed=1)
    layer.fit_domain(X)
    assert _gradcheck(layer, X * 1.2)  # partly outside the domain too
    model = ProjectedKAN(4, 2, 2, name, 5, basis_options=opts, seed=0, dtype=F64)
    X4 = _randn(3, 4, seed=2)
    model.fit_domain(X4)
    assert _gradcheck(model, X4.clone())


def test_gradients_reach_every_parameter():
    model = ProjectedKAN(10, 3, 4, seed=0)
    x = torch.randn(32, 10, generator=torch.Generator().manual_seed(1))
    model.fit_domain(x)
    model(x).pow(2).sum().backward()
    names = [name for name, _ in model.named_parameters()]
    assert names == ["P", "kan.coef", "kan.b"]
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert [k for k, _ in model.named_buffers()] == ["kan.basis.scale", "kan.basis.shift"]


# ---------------------------------------------------------------------- seeds, dtypes
def test_same_seed_same_parameters():
    def params(seed):
        return [p.detach().clone() for p in ProjectedKAN(9, 3, 4, seed=seed).parameters()]

    a, b, d = params(5), params(5), params(6)
    c = params(torch.Generator().manual_seed(5))
    for p, q, r in zip(a, b, c, strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
    assert not torch.equal(a[0], d[0]) and not torch.equal(a[1], d[1])
    k1, k2 = KANLayer(4, 3, seed=7), KANLayer(4, 3, seed=7)
    assert torch.equal(k1.coef, k2.coef)
    assert not torch.equal(k1.coef, KANLayer(4, 3, seed=8).coef)
    assert torch.equal(k1.basis.scale, torch.ones(4))
    assert torch.equal(k1.basis.shift, torch.zeros(4))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtypes(dtype):
    model = ProjectedKAN(8, 3, 2, "bspline", 6, seed=0, dtype=dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    assert model.kan.basis.scale.dtype == dtype
    x = _randn(5, 8, seed=1, dtype=dtype)
    model.fit_domain(x)
    y = model(x)
    assert y.dtype == dtype and y.shape == (5, 3)
    # The same model in the other precision agrees to float32 rounding.
    other = model.to(F64 if dtype == torch.float32 else torch.float32)
    y2 = other(x.to(other.P.dtype))
    torch.testing.assert_close(y2.double(), y.double(), rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip():
    model = ProjectedKAN(6, 2, 3, "chebyshev", 4, seed=0, dtype=F64)
    X = _randn(10, 6, seed=1)
    model.fit_domain(X, margin=0.1)
    fresh = ProjectedKAN(6, 2, 3, "chebyshev", 4, seed=1, dtype=F64)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(X), model(X), rtol=0, atol=0)


# ---------------------------------------------------------------------- errors
def test_bad_inputs_raise():
    layer = KANLayer(4, 2, seed=0)
    with pytest.raises(ValueError, match=r"in_features = 4, got \(3, 5\)"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"in_features = 4, got \(4,\)"):
        layer(torch.randn(4))
    with pytest.raises(ValueError, match=r"in_features = 4, got \(2, 2, 2\)"):
        layer.fit_domain(torch.randn(2, 2, 2))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        layer.fit_domain(torch.tensor([[0.0, 1.0, float("nan"), 2.0]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(torch.full((2, 4), float("inf")))
    with pytest.raises(ValueError, match="margin must be a finite number"):
        layer.fit_domain(torch.randn(3, 4), margin=-1.0)
    with pytest.raises(ValueError, match="valid names: monomial, chebyshev"):
        KANLayer(4, 2, "rbf")
    with pytest.raises(ValueError, match="valid names"):
        ProjectedKAN(4, 2, 2, basis="spline")
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        KANLayer(0, 2)
    with pytest.raises(ValueError, match="expected in_features = 4"):
        KANLayer(4, 2, make_basis("hinge", 3, n_branches=3))
    with pytest.raises(ValueError, match="basis_options only apply"):
        KANLayer(4, 2, make_basis("hinge", 3), basis_options={"degree": 1})
    with pytest.raises(TypeError, match="seed must be"):
        KANLayer(4, 2, seed=1.5)
    model = ProjectedKAN(6, 2, 3, seed=0)
    with pytest.raises(ValueError, match=r"width must be a positive int, got 0"):
        ProjectedKAN(6, 2, 0)
    with pytest.raises(ValueError, match=r"m = 6 features, got \(3, 7\)"):
        model(torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"m = 6 features, got \(6,\)"):
        model(torch.randn(6))
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model.fit_domain(torch.full((3, 2, 3), float("nan")))
    with pytest.raises(ValueError, match="output_shape must be positive sizes with product n = 2"):
        ProjectedKAN(6, 2, 3, output_shape=(3,))
    # inputs in another dtype than the parameters: a TypeError that says how to convert
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's"):
        model(torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's"):
        KANLayer(4, 2, seed=0)(torch.randn(3, 4, dtype=torch.float64))


def test_inputs_named_and_complex_refused():
    layer = KANLayer(4, 2, seed=0)
    # the basis would name its own input Z
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        layer(torch.full((2, 4), float("nan")))
    # a cast to real would silently drop the imaginary part
    with pytest.raises(TypeError, match="x must hold real numbers, got dtype torch.complex64"):
        layer.fit_domain(torch.ones(3, 4, dtype=torch.complex64))
    P = torch.ones(4, 2, dtype=torch.complex128)
    with pytest.raises(TypeError, match="P must hold real numbers"):
        ProjectedKAN.from_linear(P, torch.ones(3, 2), torch.ones(3))
    with pytest.raises(TypeError, match="dtype must be a floating point torch.dtype"):
        KANLayer(4, 2, dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating point torch.dtype"):
        ProjectedKAN(4, 2, 2, dtype=torch.int64)


def test_bias_must_be_a_bool():
    # "no" gave a bias (truthy), None none.
    for bias in ("no", None, 1):
        with pytest.raises(TypeError, match="bias must be a bool"):
            KANLayer(3, 2, bias=bias)
        with pytest.raises(TypeError, match="bias must be a bool"):
            ProjectedKAN(10, 2, 3, bias=bias)
        with pytest.raises(TypeError, match="bias must be a bool"):
            kan_width_for_budget(10, 2, 3, 100, bias=bias)
    assert KANLayer(3, 2, bias=False).b is None
    assert kan_width_for_budget(10, 2, 3, 64, bias=False) == 4


def test_finite_data_that_overflow_the_layer_dtype_are_named():
    # float64 values beyond float32's range became inf on the cast, and the message blamed
    # the data: "x contains NaN or Inf values".
    model = ProjectedKAN(2, 1, 1, seed=0)  # float32
    big = np.array([[1e39, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"x has values up to 1e\+39.*overflow.*float32"):
        model.fit_domain(big)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        model.fit_domain(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"A has values up to 1e\+39.*P in float64"):
        ProjectedKAN.from_linear(torch.eye(2), np.array([[1e39, 1.0]]), np.zeros(1))
    ProjectedKAN(2, 1, 1, seed=0, dtype=torch.float64).fit_domain(big)  # float64 holds them
