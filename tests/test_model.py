"""Tests for tenflex.model.DecoupledFunction."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from numpy.polynomial import polynomial

from tenflex.basis import make_basis
from tenflex.cpd import tall_matmul
from tenflex.model import DecoupledFunction, branch_inputs_product


def _random_df(m=4, n=3, R=2, basis="bspline", D=6, seed=0, **opts) -> DecoupledFunction:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, R, generator=gen, dtype=torch.float64)
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    C = torch.randn(D, R, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    X = torch.randn(50, m, generator=gen, dtype=torch.float64)
    bas = make_basis(basis, D, **opts).fit_domain(X @ V)
    return DecoupledFunction(W, V, C, b, bas)


def test_outputs_match_explicit_polynomial():
    # Monomial basis with the identity map: g_r(z) = sum_d C[d, r] z**d exactly.
    rng = np.random.default_rng(0)
    m, n, R, D, N = 3, 2, 4, 3, 20
    W, V, C = rng.normal(size=(n, R)), rng.normal(size=(m, R)), rng.normal(size=(D, R))
    b = rng.normal(size=n)
    X = rng.normal(size=(N, m))
    df = DecoupledFunction(W, V, C, b, make_basis("monomial", D, n_branches=R))
    assert df.dtype == torch.float64
    Z = X @ V
    G = np.stack([polynomial.polyval(Z[:, r], np.r_[0.0, C[:, r]]) for r in range(R)], axis=1)
    H = np.stack(
        [polynomial.polyval(Z[:, r], polynomial.polyder(np.r_[0.0, C[:, r]])) for r in range(R)],
        axis=1,
    )
    np.testing.assert_allclose(df.branch_inputs(X).numpy(), Z, rtol=1e-13)
    np.testing.assert_allclose(df.branch_outputs(Z).numpy(), G, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(df.branch_derivatives(Z).numpy(), H, rtol=1e-12, atol=1e-12)
    Y = b + G @ W.T
    np.testing.assert_allclose(df(X).numpy(), Y, rtol=1e-12, atol=1e-12)
    J = df.jacobian(X).numpy()
    assert J.shape == (n, m, N)
    for k in (0, 7, 19):
        np.testing.assert_allclose(J[:, :, k], W @ np.diag(H[k]) @ V.T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("basis", "D", "opts"),
    [("bspline", 7, {"degree": 3}), ("chebyshev", 5, {}), ("legendre", 4, {}), ("hinge", 5, {})],
)
def test_jacobian_matches_autograd(basis, D, opts):
    df = _random_df(basis=basis, D=D, **opts)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(6, df.m, generator=gen, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(df, X)  # (N, n, N, m)
    ref = torch.stack([full[k, :, k, :] for k in range(X.shape[0])], dim=-1)
    torch.testing.assert_close(df.jacobian(X), ref, rtol=1e-12, atol=1e-12)
    # Cross-samples blocks vanish: the function acts row-wise.
    off = full.clone()
    for k in range(X.shape[0]):
        off[k, :, k, :] = 0
    assert off.abs().max() == 0


def test_jacobian_matches_finite_differences():
    df = _random_df(basis="bspline", D=8, degree=3, m=5, n=2, R=3)
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(10, 5, generator=gen, dtype=torch.float64)
    J = df.jacobian(X)
    h = 1e-6
    for j in range(5):
        e = torch.zeros(5, dtype=torch.float64)
        e[j] = h
        fd = (df(X + e) - df(X - e)) / (2 * h)  # (N, n)
        torch.testing.assert_close(J[:, j, :], fd.T, rtol=1e-6, atol=1e-7)


def test_outputs_and_jacobian_and_branch_pair():
    df = _random_df(basis="legendre", D=5)
    X = torch.randn(9, df.m, dtype=torch.float64)
    Y, J = df.outputs_and_jacobian(X)
    torch.testing.assert_close(Y, df(X), rtol=0, atol=0)
    torch.testing.assert_close(J, df.jacobian(X), rtol=0, atol=0)
    Z = df.branch_inputs(X)
    G, H = df.branch_outputs_and_derivatives(Z)
    torch.testing.assert_close(G, df.branch_outputs(Z), rtol=0, atol=0)
    torch.testing.assert_close(H, df.branch_derivatives(Z), rtol=0, atol=0)


def test_sizes_and_parameter_count():
    df = _random_df(m=7, n=3, R=4, basis="bspline", D=6, degree=2)
    assert (df.m, df.n, df.rank, df.n_functions) == (7, 3, 4, 6)
    assert df.n_parameters == 3 * 4 + 7 * 4 + 6 * 4 + 3
    assert "rank=4" in repr(df) and "BSplineBasis" in repr(df)


def test_dtype_inference_and_to():
    basis = make_basis("chebyshev", 3, n_branches=2)
    df32 = DecoupledFunction(torch.ones(2, 2), torch.ones(3, 2), torch.ones(3, 2), None, basis)
    assert df32.dtype == torch.float32
    torch.testing.assert_close(df32.b, torch.zeros(2))
    df64 = df32.to(torch.float64)
    assert df64.dtype == torch.float64 and df64.basis.scale.dtype == torch.float64
    assert df64.W.dtype == df64.V.dtype == df64.C.dtype == df64.b.dtype == torch.float64
    X = torch.rand(5, 3)
    assert df32(X).dtype == torch.float32
    torch.testing.assert_close(df64(X.double()), df32(X).double(), rtol=1e-6, atol=1e-6)
    dfi = DecoupledFunction(np.ones((2, 2), int), np.ones((3, 2)), np.ones((3, 2)), None, basis)
    assert dfi.dtype == torch.float64
    dff = DecoupledFunction(
        np.ones((2, 2)), np.ones((3, 2)), np.ones((3, 2)), None, basis, dtype=torch.float32
    )
    assert dff.C.dtype == torch.float32


def test_copy_is_independent_and_dict_roundtrip():
    df = _random_df(basis="bspline", D=6, degree=3)
    X = torch.randn(8, df.m, dtype=torch.float64)
    cp = df.copy()
    cp.W.mul_(2.0)
    cp.basis.fit_domain(torch.randn(20, df.rank, dtype=torch.float64))
    assert not torch.equal(cp.W, df.W)
    d = df.parameters_dict()
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    df2 = DecoupledFunction.from_dict(torch.load(buf))
    torch.testing.assert_close(df2(X), df(X), rtol=0, atol=0)
    torch.testing.assert_close(df2.jacobian(X), df.jacobian(X), rtol=0, atol=0)
    with pytest.raises(ValueError, match="lacks keys"):
        DecoupledFunction.from_dict({"W": d["W"]})


def test_bad_inputs_raise():
    basis = make_basis("chebyshev", 3, n_branches=2)
    W, V, C = torch.ones(4, 2), torch.ones(5, 2), torch.ones(3, 2)
    with pytest.raises(TypeError, match="basis must be a tenflex.basis.Basis"):
        DecoupledFunction(W, V, C, None, "chebyshev")
    with pytest.raises(ValueError, match=r"W must have shape \(n, R\), got \(4,\)"):
        DecoupledFunction(torch.ones(4), V, C, None, basis)
    with pytest.raises(ValueError, match=r"V must have shape \(m, R\) with R = 2"):
        DecoupledFunction(W, torch.ones(5, 3), C, None, basis)
    with pytest.raises(ValueError, match=r"C must have shape \(D, R\) = \(3, 2\)"):
        DecoupledFunction(W, V, torch.ones(4, 2), None, basis)
    with pytest.raises(ValueError, match=r"b must have shape \(n,\) = \(4,\), got \(3,\)"):
        DecoupledFunction(W, V, C, torch.ones(3), basis)
    with pytest.raises(ValueError, match="basis has 3 branches"):
        DecoupledFunction(W, V, C, None, make_basis("chebyshev", 3, n_branches=3))
    with pytest.raises(ValueError, match="basis has no affine map"):
        DecoupledFunction(W, V, C, None, make_basis("chebyshev", 3))
    bad = V.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="V contains NaN"):
        DecoupledFunction(W, bad, C, None, basis)
    with pytest.raises(TypeError, match="floating point dtype"):
        DecoupledFunction(W, V, C, None, basis, dtype=torch.int64)
    df = DecoupledFunction(W, V, C, None, basis)
    with pytest.raises(ValueError, match=r"X must have shape \(N, m\) with m = 5, got \(3, 4\)"):
        df(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"X must have shape \(N, m\)"):
        df.jacobian(torch.ones(5))
    with pytest.raises(ValueError, match="X contains NaN"):
        df(torch.full((2, 5), float("inf")))
    # complex input would be cast to its real part with only a warning
    with pytest.raises(TypeError, match="X must hold real numbers, got dtype torch.complex64"):
        df(torch.ones(2, 5, dtype=torch.complex64))
    with pytest.raises(TypeError, match="Z must hold real numbers"):
        df.branch_outputs(np.ones((2, 2), dtype=np.complex128))
    with pytest.raises(TypeError, match="Z must hold real numbers"):
        basis(torch.ones(2, 2, dtype=torch.complex128))
    with pytest.raises(TypeError, match="Z must hold real numbers"):
        make_basis("hinge", 3).fit_domain(torch.ones(2, 1, dtype=torch.complex128))
    with pytest.raises(TypeError, match="V must hold real numbers"):
        DecoupledFunction(W, V.to(torch.complex64), C, None, basis)
    with pytest.raises(ValueError, match="R = 2 branches"):
        df.branch_outputs(torch.ones(3, 3))


def test_inputs_overflowing_the_model_dtype_are_named():
    basis = make_basis("monomial", 3, n_branches=2)
    df = DecoupledFunction(torch.ones(4, 2), torch.ones(5, 2), torch.ones(3, 2), None, basis)
    X = torch.full((2, 5), 1e50, dtype=torch.float64)  # finite, but not in float32
    with pytest.raises(ValueError, match=r"X has values up to 1e\+50 in magnitude, which overflow "
                       r"the model's dtype torch.float32.*model.to\(torch.float64\)"):
        df(X)
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        df(torch.full((2, 5), float("inf"), dtype=torch.float64))
    Y = df.to(torch.float64)(X)  # the fix the message gives works
    assert Y.dtype == torch.float64 and bool(torch.isfinite(Y).all())


def test_python_lists_keep_double_precision():
    basis = make_basis("monomial", 1, n_branches=1)
    f = DecoupledFunction([[0.1]], [[1.0]], [[1.0]], [0.0], basis)
    assert f.dtype == torch.float64 and f.W.item() == 0.1
    assert f([[0.1]]).item() == pytest.approx(0.01, rel=1e-15, abs=0)
    g = DecoupledFunction([[0.1]], [[1.0]], [[1.0]], None, basis, dtype=torch.float64)
    assert g.W.item() == 0.1


def test_dtype_that_is_not_a_torch_dtype_is_a_type_error():
    f = _random_df()
    with pytest.raises(TypeError, match="floating point dtype"):
        DecoupledFunction(f.W, f.V, f.C, f.b, f.basis, dtype="float64")
    for dtype in ("float64", torch.int32):
        with pytest.raises(TypeError, match="floating point dtype"):
            f.to(dtype)
    assert f.to().dtype == torch.float64 and f.to(torch.float32).dtype == torch.float32


def test_branch_inputs_are_one_product_whatever_the_layout_of_x():
    """``Z = X V`` goes through :func:`tenflex.model.branch_inputs_product` (the solvers'
    function) and depends on the values of ``X`` only: MKL's fast form for float64 with 13
    columns or more (``tall_matmul``) gives other last bits for an ``X`` stored from an odd
    multiple of 8 bytes or by columns (seen at this size), which the function's aligned
    contiguous copy removes. With a kinked basis the side of a knot a point falls on, and so
    the model's Jacobian, hangs on those bits."""
    gen = torch.Generator().manual_seed(3)
    N, m, R = 50, 40, 14
    X = torch.randn(N, m, generator=gen, dtype=torch.float64)
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    f = DecoupledFunction(torch.randn(2, R, generator=gen, dtype=torch.float64), V,
                          torch.randn(4, R, generator=gen, dtype=torch.float64),
                          torch.zeros(2, dtype=torch.float64),
                          make_basis("hinge", 4).fit_domain(X @ V))
    Z = f.branch_inputs(X)
    assert torch.equal(Z, branch_inputs_product(X, V)) and torch.equal(Z, tall_matmul(X, V))
    buf = torch.empty(N * m + 1, dtype=torch.float64)
    shifted = buf[1:].view(N, m)  # 8 bytes past torch's 64-byte aligned allocation
    shifted.copy_(X)
    by_columns = X.T.contiguous().T
    for other in (shifted, by_columns, X.numpy().copy(), X.tolist()):
        assert torch.equal(f.branch_inputs(other), Z)
    assert not shifted.is_contiguous() or shifted.data_ptr() % 64 != 0  # the case is real


def test_branch_inputs_work_inside_torch_func_transforms():
    # branch_inputs_product aligns X by its data pointer, which a tensor inside jacrev or
    # vmap does not have: "Cannot access data pointer of Tensor that doesn't have storage".
    gen = torch.Generator().manual_seed(4)
    m, R = 6, 14  # 13 columns or more: tall_matmul's transposed form
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    X = torch.randn(5, m, generator=gen, dtype=torch.float64)
    f = DecoupledFunction(torch.randn(3, R, generator=gen, dtype=torch.float64), V,
                          torch.randn(4, R, generator=gen, dtype=torch.float64),
                          torch.zeros(3, dtype=torch.float64),
                          make_basis("legendre", 4).fit_domain(X @ V))
    jac = torch.func.jacrev(lambda x: f.branch_inputs(x[None])[0])(X[0])
    assert torch.allclose(jac, V.T, rtol=0, atol=1e-14)
    rows = torch.func.vmap(lambda x: f.branch_inputs(x[None])[0])(X)
    assert torch.allclose(rows, X @ V, rtol=1e-13, atol=1e-13)
