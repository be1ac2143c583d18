"""Tests for tenflex.basis: values and derivatives against references and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev, legendre, polynomial
from scipy.interpolate import BSpline

from tenflex.basis import BASIS_NAMES, Basis, make_basis

ALL_BASES = [
    ("monomial", 5, {}),
    ("chebyshev", 7, {}),
    ("legendre", 7, {}),
    ("bspline", 8, {"degree": 3}),
    ("bspline", 6, {"degree": 2}),
    ("bspline", 5, {"degree": 1}),
    ("hinge", 6, {}),
]


def _breakpoints(basis: Basis) -> torch.Tensor:
    """Points of the natural variable where a piecewise basis is not smooth."""
    if basis.name == "bspline":
        return basis.knots()
    if basis.name == "hinge":
        return basis.hinge_knots()
    return torch.empty(0, dtype=torch.float64)


def _smooth_points(basis: Basis, Z: torch.Tensor, gap: float = 1e-4) -> torch.Tensor:
    """Mask of entries of Z whose natural value is away from every breakpoint."""
    t = basis.to_natural(Z)
    bp = _breakpoints(basis)
    if bp.numel() == 0:
        return torch.ones_like(t, dtype=torch.bool)
    return (t.unsqueeze(-1) - bp).abs().amin(-1) > gap


@pytest.mark.parametrize(("name", "D", "opts"), ALL_BASES)
def test_derivatives_match_finite_differences(name, D, opts):
    gen = torch.Generator().manual_seed(0)
    Z = 3.0 * torch.randn(200, 3, generator=gen, dtype=torch.float64) + 1.5
    # Fit on a shrunken copy so that part of Z lies outside the domain (extrapolation).
    basis = make_basis(name, D, **opts).fit_domain(0.5 * (Z - 1.5) + 1.5)
    assert 0.1 < basis.outside_fraction(Z) < 0.5
    h = 1e-6
    Phi, dPhi = basis.values_and_derivatives(Z)
    fd = (basis(Z + h) - basis(Z - h)) / (2 * h)
    mask = _smooth_points(basis, Z, gap=10 * h * float(basis.scale.abs().max()))
    assert mask.float().mean() > 0.9
    torch.testing.assert_close(dPhi[mask], fd[mask], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(basis.derivatives(Z), dPhi, rtol=0, atol=0)
    torch.testing.assert_close(basis(Z), Phi, rtol=0, atol=0)


@pytest.mark.parametrize(("name", "D", "opts"), ALL_BASES)
def test_autograd_flows_through_Z(name, D, opts):
    gen = torch.Generator().manual_seed(1)
    Z = torch.randn(40, 2, generator=gen, dtype=torch.float64) * 2
    basis = make_basis(name, D, **opts).fit_domain(Z[:30])
    Zg = Z.clone().requires_grad_(True)
    Phi, dPhi = basis.values_and_derivatives(Zg)
    for d in range(D):
        (grad,) = torch.autograd.grad(Phi[..., d].sum(), Zg, retain_graph=True)
        torch.testing.assert_close(grad, dPhi[..., d], rtol=1e-12, atol=1e-12)


def test_autograd_gradcheck_chebyshev_and_bspline():
    gen = torch.Generator().manual_seed(2)
    Z = torch.rand(6, 2, generator=gen, dtype=torch.float64) * 1.8 - 0.9
    for basis in (make_basis("chebyshev", 4), make_basis("bspline", 7, degree=3)):
        basis.fit_domain(torch.tensor([[-1.0, -2.0], [1.0, 2.0]], dtype=torch.float64))
        Zg = Z.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(basis.forward, (Zg,))
        assert torch.autograd.gradcheck(basis.derivatives, (Zg,))


@pytest.mark.parametrize(
    ("name", "val", "der"),
    [
        ("monomial", polynomial.polyval, polynomial.polyder),
        ("chebyshev", chebyshev.chebval, chebyshev.chebder),
        ("legendre", legendre.legval, legendre.legder),
    ],
)
@pytest.mark.parametrize("D", [1, 2, 6, 15])
def test_polynomials_match_numpy(name, val, der, D):
    t = np.linspace(-1, 1, 57)
    basis = make_basis(name, D, n_branches=2)
    Z = torch.tensor(np.stack([t, t[::-1]], axis=1))
    Phi, dPhi = basis.values_and_derivatives(Z)
    assert Phi.shape == (57, 2, D)
    for d in range(1, D + 1):
        e = np.zeros(d + 1)
        e[d] = 1.0
        np.testing.assert_allclose(Phi[:, 0, d - 1].numpy(), val(t, e), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            Phi[:, 1, d - 1].numpy(), val(t[::-1], e), rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            dPhi[:, 0, d - 1].numpy(), val(t, der(e)), rtol=1e-11, atol=1e-11
        )


def test_polynomials_with_affine_map_match_numpy():
    # Branch data on [2, 6]: t = (z - 4) / 2, dt/dz = 1/2.
    z = np.linspace(2.0, 6.0, 33)
    basis = make_basis("legendre", 5).fit_domain(torch.tensor(z)[:, None])
    t = (z - 4.0) / 2.0
    Phi, dPhi = basis.values_and_derivatives(torch.tensor(z)[:, None])
    e = np.zeros(6)
    e[5] = 1.0
    np.testing.assert_allclose(Phi[:, 0, 4].numpy(), legendre.legval(t, e), atol=1e-13)
    np.testing.assert_allclose(
        dPhi[:, 0, 4].numpy(), 0.5 * legendre.legval(t, legendre.legder(e)), atol=1e-12
    )


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("extra", [0, 1, 5])
def test_bspline_matches_scipy(degree, extra):
    D = degree + 1 + extra
    basis = make_basis("bspline", D, degree=degree, n_branches=1)
    knots = basis.knots().numpy()
    assert knots.shape == (D + degree + 1,)
    assert knots[degree] == -1.0 and abs(knots[D] - 1.0) < 1e-15
    np.testing.assert_allclose(np.diff(knots), basis.spacing, rtol=1e-12)
    t = np.linspace(-1, 1, 301)
    Phi, dPhi = basis.values_and_derivatives(torch.tensor(t)[:, None])
    ref = BSpline(knots, np.eye(D), degree, extrapolate=False)
    np.testing.assert_allclose(Phi[:-1, 0].numpy(), ref(t[:-1]), atol=1e-13)
    # Right end: left limit of the last piece (scipy uses it at the base interval's end).
    np.testing.assert_allclose(
        Phi[-1, 0].numpy(), BSpline(knots, np.eye(D), degree)(1.0), atol=1e-13
    )
    if degree >= 1:
        # Derivatives away from the knots (degree 1 derivatives jump there).
        away = np.abs(t[:, None] - knots[None, :]).min(axis=1) > 1e-9
        dref = ref.derivative()(t[away])
        np.testing.assert_allclose(dPhi[away, 0].numpy(), dref, atol=1e-11)
    else:
        assert torch.all(dPhi == 0)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_bspline_partition_of_unity_inside_domain(degree):
    gen = torch.Generator().manual_seed(3)
    Z = torch.randn(500, 4, generator=gen, dtype=torch.float64) * torch.tensor([1, 5, 0.1, 30])
    basis = make_basis("bspline", degree + 4, degree=degree).fit_domain(Z)
    Phi, dPhi = basis.values_and_derivatives(Z)
    torch.testing.assert_close(Phi.sum(-1), torch.ones(500, 4, dtype=torch.float64))
    torch.testing.assert_close(dPhi.sum(-1), torch.zeros(500, 4, dtype=torch.float64))
    assert (Phi >= -1e-15).all()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_bspline_linear_extrapolation(degree):
    D = degree + 5
    basis = make_basis("bspline", D, degree=degree, n_branches=1)
    for end, sign in ((1.0, 1.0), (-1.0, -1.0)):
        t_end = torch.tensor([[end]], dtype=torch.float64)
        v_end, s_end = basis.values_and_derivatives(t_end)
        # Slope at the end equals the one-sided slope of the inside piece.
        inside = torch.tensor([[end - sign * 1e-7]], dtype=torch.float64)
        fd_in = (basis(t_end) - basis(inside)) / (t_end - inside)
        torch.testing.assert_close(s_end, fd_in, rtol=1e-5, atol=1e-5)
        # Continuity of values across the end.
        just_out = torch.tensor([[end + sign * 1e-12]], dtype=torch.float64)
        torch.testing.assert_close(basis(just_out), v_end, rtol=0, atol=1e-11)
        for dist in (1e-3, 0.5, 3.0, 100.0):
            tt = torch.tensor([[end + sign * dist]], dtype=torch.float64)
            v, s = basis.values_and_derivatives(tt)
            torch.testing.assert_close(v, v_end + s_end * sign * dist, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(s, s_end, rtol=0, atol=0)  # constant slope
        # Far outside: partition of unity persists (slopes sum to zero), no silent zeros.
        far = basis(torch.tensor([[end + sign * 50.0]], dtype=torch.float64))
        torch.testing.assert_close(far.sum(), torch.tensor(1.0, dtype=torch.float64))
        if degree >= 1:
            # The boundary functions with nonzero slope keep growing linearly.
            assert far.abs().max() > 10.0


def test_hinge_values_and_knots():
    basis = make_basis("hinge", 4, n_branches=1)
    kappa = basis.hinge_knots()
    torch.testing.assert_close(kappa, torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64))
    t = torch.linspace(-3, 3, 61, dtype=torch.float64)
    Phi, dPhi = basis.values_and_derivatives(t[:, None])
    expected = torch.stack([t, *(torch.clamp(t - k, min=0) for k in kappa)], dim=-1)
    torch.testing.assert_close(Phi[:, 0], expected, rtol=0, atol=1e-15)
    expected_d = torch.stack([torch.ones_like(t), *((t > k).double() for k in kappa)], dim=-1)
    torch.testing.assert_close(dPhi[:, 0], expected_d, rtol=0, atol=0)


def test_fit_domain_maps_range_onto_domain():
    gen = torch.Generator().manual_seed(4)
    Z = torch.randn(300, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 7.0, 1e-3])
    Z[:, 2] += 100.0
    for name in BASIS_NAMES:
        basis = make_basis(name, 4).fit_domain(Z)
        assert basis.scale.shape == (3,) and basis.shift.shape == (3,)
        t = basis.to_natural(Z)
        torch.testing.assert_close(t.amin(0), -torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(t.amax(0), torch.ones(3, dtype=torch.float64))
        z_lo, z_hi = basis.data_range()
        torch.testing.assert_close(z_lo, Z.amin(0))
        torch.testing.assert_close(z_hi, Z.amax(0))
        assert basis.outside_fraction(Z) == 0.0
        assert torch.all(basis.outside_fraction(Z, per_branch=True) == 0)


def test_fit_domain_margin_and_constant_columns():
    Z = torch.tensor([[0.0, 5.0, 0.0], [2.0, 5.0, 0.0], [1.0, 5.0, 0.0]], dtype=torch.float64)
    basis = make_basis("chebyshev", 3).fit_domain(Z, margin=0.5)
    t = basis.to_natural(Z)
    # Column 0: range [0, 2] widened to [-1, 3] -> t(0) = -0.5, t(2) = 0.5.
    torch.testing.assert_close(t[:, 0], torch.tensor([-0.5, 0.5, 0.0], dtype=torch.float64))
    # Constant columns: scale 1 and value at the domain centre, finite everything.
    torch.testing.assert_close(basis.scale[1:], torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(t[:, 1:], torch.zeros(3, 2, dtype=torch.float64))
    assert torch.isfinite(basis(Z)).all()


def test_outside_fraction():
    basis = make_basis("bspline", 6, degree=3).fit_domain(torch.tensor([[0.0, 0.0], [1.0, 2.0]]))
    Z = torch.tensor([[0.5, 1.0], [1.5, 1.0], [-0.1, 2.5], [1.0, 0.0]])
    assert basis.outside_fraction(Z) == pytest.approx(3 / 8)
    torch.testing.assert_close(
        basis.outside_fraction(Z, per_branch=True), torch.tensor([0.5, 0.25])
    )
    # A numpy input works as well.
    assert basis.outside_fraction(Z.numpy()) == pytest.approx(3 / 8)


@pytest.mark.parametrize(("name", "D", "opts"), ALL_BASES)
def test_float32_and_float64(name, D, opts):
    gen = torch.Generator().manual_seed(5)
    Z64 = torch.randn(100, 2, generator=gen, dtype=torch.float64)
    basis = make_basis(name, D, **opts).fit_domain(Z64[:80])
    Z32 = Z64.float()
    Phi32, dPhi32 = basis.values_and_derivatives(Z32)
    Phi64, dPhi64 = basis.values_and_derivatives(Z64)
    assert Phi32.dtype == dPhi32.dtype == torch.float32
    assert Phi64.dtype == dPhi64.dtype == torch.float64
    mask = _smooth_points(basis, Z64)
    torch.testing.assert_close(Phi32.double(), Phi64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dPhi32.double()[mask], dPhi64[mask], rtol=1e-4, atol=1e-4)
    # Fitting on float32 data and moving the module keep float32 buffers.
    b32 = make_basis(name, D, **opts).fit_domain(Z32)
    assert b32.scale.dtype == torch.float32
    assert basis.to(torch.float32).scale.dtype == torch.float32


def test_numpy_input_and_leading_dims():
    basis = make_basis("legendre", 3).fit_domain(np.array([[0.0, -1.0], [4.0, 3.0]]))
    Z = np.random.default_rng(0).uniform(0, 1, size=(2, 5, 2))
    out = basis(Z)
    assert out.shape == (2, 5, 2, 3) and out.dtype == torch.float64
    torch.testing.assert_close(out[1, 3], basis(torch.tensor(Z[1, 3])[None])[0])


def test_state_dict_resizes_buffers_and_config_roundtrip():
    basis = make_basis("bspline", 7, degree=2).fit_domain(torch.randn(20, 3))
    fresh = make_basis(**basis.config())
    assert not fresh.is_fitted
    assert basis.config() == {"name": "bspline", "n_functions": 7, "degree": 2}
    fresh.load_state_dict(basis.state_dict())
    Z = torch.randn(10, 3)
    torch.testing.assert_close(fresh(Z), basis(Z), rtol=0, atol=0)
    clone = basis.clone()
    clone.fit_domain(torch.randn(20, 3) * 10)
    assert not torch.equal(clone.scale, basis.scale)


def test_set_domain_map_and_identity():
    basis = make_basis("monomial", 2).set_domain_map(torch.tensor([2.0, -1.0]), [0.5, 0.0])
    Z = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    Phi, dPhi = basis.values_and_derivatives(Z)
    torch.testing.assert_close(
        Phi[0], torch.tensor([[2.5, 6.25], [-3.0, 9.0]], dtype=torch.float64)
    )
    torch.testing.assert_close(
        dPhi[0], torch.tensor([[2.0, 10.0], [-1.0, 6.0]], dtype=torch.float64)
    )
    ident = make_basis("monomial", 2, n_branches=3)
    torch.testing.assert_close(ident.to_natural(torch.ones(4, 3)), torch.ones(4, 3))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="valid names: monomial, chebyshev, legendre, bspline"):
        make_basis("fourier", 3)
    with pytest.raises(TypeError, match="basis name must be a str"):
        make_basis(3, 3)
    with pytest.raises(ValueError, match=r"n_functions must be in \[1, 1000\], got 0"):
        make_basis("monomial", 0)
    with pytest.raises(ValueError, match="got 1001"):
        make_basis("hinge", 1001)
    with pytest.raises(TypeError, match="n_functions must be an int"):
        make_basis("monomial", 2.5)
    with pytest.raises(ValueError, match="degree must be in"):
        make_basis("bspline", 5, degree=-1)
    with pytest.raises(TypeError, match="degree must be an int"):
        make_basis("bspline", 5, degree=2.0)
    with pytest.raises(
        ValueError, match=r"needs n_functions >= degree \+ 1 = 4, got n_functions=3"
    ):
        make_basis("bspline", 3, degree=3)
    with pytest.raises(TypeError, match="unknown option"):
        make_basis("chebyshev", 3, degree=2)
    basis = make_basis("chebyshev", 3)
    with pytest.raises(ValueError, match="call fit_domain"):
        basis(torch.zeros(4, 2))
    basis.fit_domain(torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"R = 2 branches, got \(4, 3\)"):
        basis(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        basis(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        basis.derivatives(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match="NaN or Inf"):
        make_basis("hinge", 3).fit_domain(torch.tensor([[0.0], [float("inf")]]))
    with pytest.raises(ValueError, match=r"shape \(N, R\)"):
        make_basis("hinge", 3).fit_domain(torch.zeros(5))
    with pytest.raises(ValueError, match="margin"):
        make_basis("hinge", 3).fit_domain(torch.zeros(5, 1), margin=-1)
    with pytest.raises(ValueError, match="margin"):
        make_basis("hinge", 3).fit_domain(torch.zeros(5, 1), margin=True)
    # NumPy scalars are numbers like any other
    a = make_basis("hinge", 3).fit_domain(torch.arange(5.0)[:, None], margin=np.float32(0.25))
    b = make_basis("hinge", 3).fit_domain(torch.arange(5.0)[:, None], margin=0.25)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.shift, b.shift)
    # a range that overflows the dtype would give scale 0 and a NaN shift
    with pytest.raises(ValueError, match="too wide for torch.float64"):
        make_basis("hinge", 3).fit_domain(torch.tensor([[-1e308], [1e308]], dtype=torch.float64))
    with pytest.raises(ValueError, match="scale must be nonzero"):
        make_basis("hinge", 3).set_domain_map([1.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match=r"shape \(R,\)"):
        make_basis("hinge", 3).set_domain_map([1.0, 2.0], [0.0])


def test_set_domain_map_refuses_complex_and_outside_fraction_checks_atol():
    basis = make_basis("bspline", 5)
    # complex values would lose their imaginary part with only a warning
    with pytest.raises(TypeError, match="scale must hold real numbers"):
        basis.set_domain_map(torch.tensor([1 + 1j]), torch.tensor([0.0]))
    with pytest.raises(TypeError, match="shift must hold real numbers"):
        basis.set_domain_map(torch.tensor([1.0]), np.array([1j]))
    basis = make_basis("monomial", 3, n_branches=1)
    Z = torch.tensor([[0.0], [1.5]])
    for bad in (float("nan"), -5, True, "0.1"):
        with pytest.raises(ValueError, match="atol must be a finite number >= 0"):
            basis.outside_fraction(Z, atol=bad)
    assert basis.outside_fraction(Z, atol=np.float32(0.6)) == 0.0
    assert basis.outside_fraction(Z, atol=0) == 0.5


def test_python_floats_keep_double_precision():
    # torch.as_tensor rounds a list of Python floats to float32 (0.1 -> 0.10000000149...).
    basis = make_basis("monomial", 1).set_domain_map([0.1], [0.3])
    assert basis.scale.dtype == torch.float64 and basis.scale.item() == 0.1
    assert make_basis("monomial", 2).fit_domain([[0.1], [0.7]]).scale.dtype == torch.float64
    ident = make_basis("monomial", 1, n_branches=1)
    out = ident([[0.1]])
    assert out.dtype == torch.float64 and out.item() == 0.1


def test_fit_domain_names_a_range_too_narrow_for_the_dtype():
    Z = torch.tensor([[1e-5], [2e-5]], dtype=torch.float16)  # 2 / 1e-5 overflows float16
    with pytest.raises(ValueError, match="too narrow for torch.float16.*Z.to"):
        make_basis("monomial", 2).fit_domain(Z)
    with pytest.raises(ValueError, match="too wide"):
        make_basis("monomial", 2).fit_domain(torch.tensor([[-3e38], [3e38]]))
    basis = make_basis("monomial", 2).fit_domain(Z.to(torch.float32))
    assert torch.isfinite(basis.scale).all()


def test_outside_fraction_per_branch_of_no_data_is_zero():
    basis = make_basis("legendre", 3, n_branches=2)
    torch.testing.assert_close(basis.outside_fraction(torch.ones(0, 2), per_branch=True),
                               torch.zeros(2, dtype=torch.float32))
    assert basis.outside_fraction(torch.ones(0, 2)) == 0.0


def test_state_dict_of_other_branch_count_leaves_a_fitted_basis_intact():
    basis = make_basis("chebyshev", 4).fit_domain(torch.randn(20, 2, dtype=torch.float64))
    scale = basis.scale.clone()
    other = make_basis("chebyshev", 4).fit_domain(torch.randn(20, 3, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="size mismatch for scale"):
        basis.load_state_dict(other.state_dict())
    assert basis.n_branches == 2 and torch.equal(basis.scale, scale)


@pytest.mark.parametrize(("name", "D", "opts"), ALL_BASES)
def test_an_affine_map_that_overflows_the_input_dtype_is_named(name, D, opts):
    # A map fitted on a range of 2e-5 has scale 1e5, beyond float16 (65504): the values
    # used to be NaN without a word.
    Z = torch.linspace(0, 2e-5, 9, dtype=torch.float64)[:, None]
    basis = make_basis(name, D, **opts).fit_domain(Z)
    assert torch.isfinite(basis(Z.float())).all()  # float32 holds it
    with pytest.raises(ValueError, match=r"does not fit in Z's dtype torch.float16.*wider"):
        basis(Z.half())
    with pytest.raises(ValueError, match=r"does not fit in Z's dtype torch.float16"):
        basis.values_and_derivatives(Z.half())
    half = basis.clone().to(torch.float16)  # the buffers themselves become inf
    with pytest.raises(ValueError, match=r"torch.float16, into which it was converted"):
        half(Z.half())


def test_hinge_derivative_at_a_knot_is_zero():
    # The documented convention: at t = kappa_j the hinge's derivative is 0 (relu's gradient
    # is t > kappa). The knots of D = 4 are exact binary fractions, so t hits them exactly.
    basis = make_basis("hinge", 4, n_branches=1)
    kappa = basis.hinge_knots()
    dPhi = basis.derivatives(kappa[:, None])
    expected = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(dPhi[:, 0], expected, rtol=0, atol=0)
    # autograd agrees with the same convention
    t = kappa[:, None].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(basis(t)[..., 1:].sum(), t)
    torch.testing.assert_close(grad[:, 0], dPhi[:, 0, 1:].sum(-1), rtol=0, atol=0)


def test_fit_domain_column_at_rounding_level_is_constant():
    # A column whose two values differ by one ulp is constant up to rounding: scale 1 and
    # its value at the domain centre, not a scale of 2 / eps that sends later data to 1e15.
    one_up = float(np.nextafter(1.0, 2.0))
    Z = torch.tensor([[1.0, 0.0], [one_up, 4.0]], dtype=torch.float64)
    basis = make_basis("legendre", 3).fit_domain(Z)
    torch.testing.assert_close(basis.scale, torch.tensor([1.0, 0.5], dtype=torch.float64))
    t = basis.to_natural(Z)
    assert t[:, 0].abs().max() < 1e-12
    torch.testing.assert_close(t[:, 1], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_outside_fraction_ignores_rounding_at_the_domain_ends():
    # fit_domain maps each column's max onto hi up to rounding: some mapped maxima land one
    # ulp above 1; the default tolerance must not count the fitting data as outside.
    gen = torch.Generator().manual_seed(0)
    Z = torch.randn(200, 50, generator=gen, dtype=torch.float64)
    Z = Z * torch.logspace(-3, 3, 50, dtype=torch.float64) + 10 * torch.randn(
        50, generator=gen, dtype=torch.float64
    )
    basis = make_basis("chebyshev", 3).fit_domain(Z)
    t = basis.to_natural(Z)
    assert ((t > 1) | (t < -1)).any()  # the rounding this test is about does occur
    assert basis.outside_fraction(Z) == 0.0
    assert torch.all(basis.outside_fraction(Z, per_branch=True) == 0)
    assert basis.outside_fraction(Z, atol=0) > 0


def test_integer_inputs_are_evaluated_in_float64():
    # Integers carry no float dtype: the basis evaluates them in its buffers' float64, not
    # in float32 (which would round z = 2**24 + 1 and lose half the digits).
    Zi = torch.tensor([[0, 3], [4, -1], [2, 1]])
    fitted = make_basis("monomial", 3).fit_domain(Zi)
    assert fitted.scale.dtype == torch.float64 and fitted.shift.dtype == torch.float64
    ident = make_basis("monomial", 2, n_branches=2)
    assert ident.scale.dtype == torch.float64 and ident.shift.dtype == torch.float64
    mapped = make_basis("monomial", 2).set_domain_map([2, 1], [0.1, 0])
    assert mapped.scale.dtype == torch.float64 and mapped.shift.dtype == torch.float64
    assert mapped.shift[0].item() == 0.1
    for basis in (fitted, ident, mapped):
        Phi, dPhi = basis.values_and_derivatives(Zi)
        Phi_ref, dPhi_ref = basis.values_and_derivatives(Zi.double())
        assert Phi.dtype == dPhi.dtype == torch.float64
        torch.testing.assert_close(Phi, Phi_ref, rtol=0, atol=0)
        torch.testing.assert_close(dPhi, dPhi_ref, rtol=0, atol=0)
    big = torch.tensor([[2**24 + 1, 0]])
    assert ident(big)[0, 0, 0].item() == 2**24 + 1
