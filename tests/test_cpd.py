"""Tests of tenflex.cpd: the Jacobian-tensor products against dense einsum references, the
CP helpers, the CPD wrapper on exact low-rank tensors, and the small linear-algebra tools."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tenflex.cpd as cpd_module
from tenflex.cpd import (
    DenseJacobian,
    FactoredJacobian,
    JacobianTensor,
    as_jacobian_tensor,
    cp_norm_sq,
    cp_to_tensor,
    cpd,
    khatri_rao,
    match_components,
    pcg,
    solve_psd,
    tall_matmul,
    transpose_matmul,
)

# Tiny problems: one thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def dense():
    n, m, N, R = 3, 5, 17, 4
    J = _randn(n, m, N, seed=1)
    W, V, H = _randn(n, R, seed=2), _randn(m, R, seed=3), _randn(N, R, seed=4)
    return J, W, V, H


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b_layout", ["rows", "columns"])
def test_transpose_matmul_is_a_transposed_product(dtype, b_layout):
    A = _randn(300, 7, seed=5).to(dtype)
    # B stored row by row, or as the transposed view of a contiguous (R, K) tensor (the
    # layout of H and of the products built from it in the solver).
    B = _randn(300, 3, seed=6) if b_layout == "rows" else _randn(3, 300, seed=6).T
    B = B.to(dtype)
    out = transpose_matmul(A, B)
    assert out.shape == (7, 3) and out.dtype == dtype and out.is_contiguous()
    reference = A.double().numpy().T @ B.double().numpy()
    tol = 1e-12 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(out.double().numpy(), reference, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("R", [3, 12, 13, 20])  # both sides of the switch of form
def test_tall_matmul_is_a_product(dtype, R):
    A, B = _randn(200, 9, seed=7).to(dtype), _randn(9, R, seed=8).to(dtype)
    out = tall_matmul(A, B)
    assert out.shape == (200, R) and out.dtype == dtype and out.is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(out.double().numpy(), A.double().numpy() @ B.double().numpy(),
                               rtol=tol, atol=tol)


def test_shape_norm_and_dense_roundtrip(dense):
    J, *_ = dense
    Jt = DenseJacobian(J)
    assert Jt.shape == (3, 5, 17) and (Jt.n, Jt.m, Jt.N) == (3, 5, 17)
    assert Jt.dtype == torch.float64
    assert Jt.norm_sq() == pytest.approx(float((J * J).sum()), rel=1e-14)
    torch.testing.assert_close(Jt.to_dense(), J, rtol=0, atol=0)
    # the generic base-class densification (contraction with the identity) agrees
    torch.testing.assert_close(JacobianTensor.to_dense(Jt), J, rtol=0, atol=1e-15)


def test_contract_input(dense):
    J, _, V, _ = dense
    T = DenseJacobian(J).contract_input(V)
    torch.testing.assert_close(T, torch.einsum("ijk,jr->ikr", J, V), rtol=1e-13, atol=1e-13)


def test_mttkrps_against_einsum(dense):
    J, W, V, H = dense
    Jt = DenseJacobian(J)
    T = Jt.contract_input(V)
    torch.testing.assert_close(
        Jt.mttkrp_output(T, H), torch.einsum("ijk,jr,kr->ir", J, V, H), rtol=1e-13, atol=1e-13
    )
    torch.testing.assert_close(
        Jt.mttkrp_input(W, H), torch.einsum("ijk,ir,kr->jr", J, W, H), rtol=1e-13, atol=1e-13
    )
    torch.testing.assert_close(
        Jt.mttkrp_samples(T, W), torch.einsum("ijk,ir,jr->kr", J, W, V), rtol=1e-13, atol=1e-13
    )
    # the MTTKRPs against the unfoldings: mode 2 is J_(2) (W kr H), rows (i, k)
    J2 = J.permute(1, 0, 2).reshape(5, -1)
    torch.testing.assert_close(Jt.mttkrp_input(W, H), J2 @ khatri_rao(W, H), rtol=1e-13, atol=1e-13)


def test_contract_input_adjoint(dense):
    J, _, V, _ = dense
    Jt = DenseJacobian(J)
    T = _randn(J.shape[0], J.shape[2], V.shape[1], seed=7)
    expected = torch.einsum("ijk,ikr->jr", J, T)
    torch.testing.assert_close(Jt.contract_input_adjoint(T), expected, rtol=1e-13, atol=1e-13)
    # the generic default (one mode-2 MTTKRP per output) agrees
    torch.testing.assert_close(JacobianTensor.contract_input_adjoint(Jt, T), expected,
                               rtol=1e-13, atol=1e-13)
    # it is the adjoint: <contract_input(V), T> = <V, contract_input_adjoint(T)>
    assert float((Jt.contract_input(V) * T).sum()) == pytest.approx(
        float((V * Jt.contract_input_adjoint(T)).sum()), rel=1e-12)


def test_inner_norm_and_residual(dense):
    J, W, V, H = dense
    Jt = DenseJacobian(J)
    K = cp_to_tensor(W, V, H)
    torch.testing.assert_close(K, torch.einsum("ir,jr,kr->ijk", W, V, H))
    assert float(Jt.inner(W, V, H)) == pytest.approx(float((J * K).sum()), rel=1e-13)
    assert float(cp_norm_sq(W, V, H)) == pytest.approx(float((K * K).sum()), rel=1e-13)
    expected = float(((J - K) ** 2).sum())
    assert Jt.residual_norm_sq(W, V, H) == pytest.approx(expected, rel=1e-13)
    # the generic (expanded) residual agrees too
    assert JacobianTensor.residual_norm_sq(Jt, W, V, H) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("h, m", [(3, 8), (6, 4)])  # a narrowing and a widening stage
def test_factored_jacobian_against_its_dense_product(h, m):
    # J_k = K_k A: every product, the norm and the residual as those of the dense tensor.
    n, N, R = 4, 23, 3
    K, A = _randn(n, h, N, seed=11), _randn(h, m, seed=12)
    J = torch.einsum("ihk,hj->ijk", K, A)
    Jt, ref = FactoredJacobian(K, A), DenseJacobian(J)
    W, V, H = _randn(n, R, seed=13), _randn(m, R, seed=14), _randn(N, R, seed=15)
    T = _randn(n, N, R, seed=16)
    assert Jt.shape == (n, m, N) and Jt.dtype == torch.float64
    assert Jt.K.shape == (n, h, N) and Jt.A.shape == (h, m)
    assert Jt.norm_sq() == pytest.approx(ref.norm_sq(), rel=1e-13)
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(Jt.contract_input(V), ref.contract_input(V), **tol)
    torch.testing.assert_close(Jt.mttkrp_input(W, H), ref.mttkrp_input(W, H), **tol)
    torch.testing.assert_close(Jt.contract_input_adjoint(T), ref.contract_input_adjoint(T), **tol)
    torch.testing.assert_close(Jt.to_dense(), J, **tol)
    assert Jt.residual_norm_sq(W, V, H) == pytest.approx(ref.residual_norm_sq(W, V, H),
                                                         rel=1e-11)


def test_factored_jacobian_checks_its_factors():
    K = _randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"A needs h = 3 rows"):
        FactoredJacobian(K, _randn(4, 6))
    with pytest.raises(ValueError, match=r"A must be a matrix of shape \(h, m\)"):
        FactoredJacobian(K, _randn(3))
    bad = _randn(3, 6)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        FactoredJacobian(K, bad)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        FactoredJacobian(K, _randn(3, 6), dtype=torch.float16)
    # A follows K's dtype; a JacobianTensor K of another dtype than asked is refused
    assert FactoredJacobian(K.float(), _randn(3, 6)).A.dtype == torch.float32
    with pytest.raises(TypeError, match="expected torch.float64"):
        FactoredJacobian(DenseJacobian(K.float()), _randn(3, 6), dtype=torch.float64)


def test_residual_is_accurate_when_tiny():
    W, V, H = _randn(3, 2, seed=5), _randn(4, 2, seed=6), _randn(30, 2, seed=7)
    J = cp_to_tensor(W, V, H)
    Jt = DenseJacobian(J)
    Vp = V * (1 + 1e-10)
    expected = float(((J - cp_to_tensor(W, Vp, H)) ** 2).sum())
    # the direct residual resolves a relative error of 1e-10 (squared: 1e-20)
    assert Jt.residual_norm_sq(W, Vp, H) == pytest.approx(expected, rel=1e-5)



def test_dense_residual_allocates_one_chunk(monkeypatch):
    """The direct residual holds one temporary per chunk of outputs (the model's slice, made
    the residual and squared in place), not three: at the reference CNN head's size
    (10 x 3136 x 5000, float64) the two others cost 2.4 times the time in page faults."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setattr(cpd_module, "_CHUNK_ELEMENTS", 2 * 40 * 50)  # two outputs a chunk
    J, W, V, H = _randn(6, 50, 40, seed=11), _randn(6, 2, seed=12), _randn(50, 2, seed=13), \
        _randn(40, 2, seed=14)
    Jt = DenseJacobian(J)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        value = Jt.residual_norm_sq(W, V, H)
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    chunk_bytes = 2 * 40 * 50 * J.element_size()
    assert largest <= chunk_bytes
    assert sum(e.self_cpu_memory_usage for e in prof.events()
               if e.self_cpu_memory_usage >= chunk_bytes) <= 3 * chunk_bytes  # one per chunk
    # the same sum, to the last bit, as of the squares of the residual's slices
    expected = 0.0
    for i0 in range(0, 6, 2):
        diff = Jt.data[i0:i0 + 2] - (W[i0:i0 + 2].unsqueeze(1) * H.unsqueeze(0)) @ V.T
        expected += float((diff * diff).sum())
    assert value == expected
    assert value == pytest.approx(float(((J - cp_to_tensor(W, V, H)) ** 2).sum()), rel=1e-13)


def test_layout_without_copy_and_conversions():
    A = _randn(2, 9, 4)  # (n, N, m) contiguous
    J = A.permute(0, 2, 1)  # (n, m, N) view
    Jt = DenseJacobian(J)
    assert Jt.data.data_ptr() == A.data_ptr()  # no copy
    Jnp = DenseJacobian(J.numpy())
    torch.testing.assert_close(Jnp.to_dense(), J)
    J32 = DenseJacobian(J, dtype=torch.float32)
    assert J32.dtype == torch.float32
    assert as_jacobian_tensor(Jt) is Jt
    assert isinstance(as_jacobian_tensor(J), DenseJacobian)


@pytest.mark.parametrize(
    ("J", "error", "match"),
    [
        (torch.zeros(3, 4), ValueError, r"\(n, m, N\)"),
        (torch.zeros(3, 0, 2), ValueError, r"\(n, m, N\)"),
        (torch.tensor([[[1.0, float("nan")]]]), ValueError, "NaN or Inf"),
        (torch.tensor([[[1e308, 1e308, -float("inf")]]]), ValueError, "NaN or Inf"),
        (np.array([[["x"]]]), TypeError, "real numbers"),
        ("J", TypeError, "tensor or array"),
    ],
)
def test_dense_jacobian_bad_input(J, error, match):
    with pytest.raises(error, match=match):
        DenseJacobian(J)


def test_dense_jacobian_accepts_finite_entries_whose_sum_overflows():
    # The finiteness check sums J first; an overflowing sum must fall back to the entries.
    J = torch.full((2, 3, 4), 1e308, dtype=torch.float64)
    assert not torch.isfinite(J.sum())
    assert DenseJacobian(J).shape == (2, 3, 4)


def _exact_cp(n, m, N, R, seed):
    W, V, H = _randn(n, R, seed=seed), _randn(m, R, seed=seed + 1), _randn(N, R, seed=seed + 2)
    return W, V, H, cp_to_tensor(W, V, H)


@pytest.mark.parametrize("method", ["tensorly", "nls"])
def test_cpd_recovers_exact_low_rank_tensor(method):
    W, V, H, J = _exact_cp(4, 6, 40, 3, seed=10)
    res = cpd(J, 3, n_starts=2, seed=0, method=method)
    assert res.relative_error < 1e-12
    assert len(res.start_errors) == 2 and res.relative_error == min(res.start_errors)
    # normalised factors, decreasing weights
    for A in (res.W, res.V, res.H):
        torch.testing.assert_close(
            torch.linalg.vector_norm(A, dim=0), torch.ones(3, dtype=torch.float64)
        )
    assert torch.all(res.weights[:-1] >= res.weights[1:])
    assert res.best_start == int(np.argmin(res.start_errors))
    # the documented sign convention: the largest-magnitude entry of every column of W and
    # V is positive (H takes the signs), so equal tensors give equal factors
    for A in (res.W, res.V):
        assert bool((A[A.abs().argmax(dim=0), torch.arange(3)] > 0).all())
    K = cp_to_tensor(res.W * res.weights, res.V, res.H)
    assert float((K - J).norm() / J.norm()) < 1e-12
    congruence, _ = match_components([W, V, H], [res.W, res.V, res.H])
    assert congruence.min() > 1 - 1e-10


def test_cpd_same_seed_same_result_and_noise_floor():
    *_, Jc = _exact_cp(3, 5, 30, 2, seed=20)
    E = 0.01 * _randn(*Jc.shape, seed=99)
    J = Jc + E
    a = cpd(J, 2, n_starts=2, seed=3, method="nls")
    b = cpd(J, 2, n_starts=2, seed=3, method="nls")
    for x, y in ((a.W, b.W), (a.V, b.V), (a.H, b.H), (a.weights, b.weights)):
        assert torch.equal(x, y)
    assert a.relative_error == b.relative_error
    # the best rank-2 fit is at least as good as the truth (whose residual is the noise)
    # and cannot absorb much of the noise (76 parameters for 450 entries)
    noise = float(E.norm() / J.norm())
    assert 0.8 * noise < a.relative_error <= noise * (1 + 1e-9)


def test_cpd_bad_arguments(dense):
    J, *_ = dense
    with pytest.raises(ValueError, match="method"):
        cpd(J, 2, method="magic")
    with pytest.raises(ValueError, match="rank"):
        cpd(J, 0)
    with pytest.raises(TypeError, match="rank"):
        cpd(J, 2.5)
    with pytest.raises(ValueError, match="n_starts"):
        cpd(J, 2, n_starts=0)
    with pytest.raises(ValueError, match="identically zero"):
        cpd(torch.zeros(2, 3, 4), 1)


@pytest.mark.parametrize(("shape", "ranks"), [((2, 3, 40), (5, 6)), ((3, 6, 5), (5,))])
def test_cpd_rank_above_the_true_rank_falls_back_to_gauss_newton(shape, ranks):
    # tensorly's ALS hits exactly singular normal equations on some starts when the rank
    # exceeds the tensor's (here 2; also with N < m): those starts are computed by the
    # Gauss-Newton solver from the start method="nls" uses, and every start is valid.
    *_, J = _exact_cp(*shape, 2, seed=10)
    fallbacks = 0
    for rank in ranks:
        for seed in range(6):
            res = cpd(J, rank, n_starts=1, seed=seed)
            for A in (res.W, res.V, res.H, res.weights):
                assert A.shape[-1] == rank and bool(torch.isfinite(A).all())
            assert res.relative_error < 1e-8
            K = cp_to_tensor(res.W * res.weights, res.V, res.H)
            assert float((K - J).norm() / J.norm()) < 1e-8
            if res.fallback_starts:
                assert res.fallback_starts == [0]
                fallbacks += 1
                ref = cpd(J, rank, n_starts=1, seed=seed, method="nls")
                assert torch.equal(res.W, ref.W) and torch.equal(res.H, ref.H)
                assert res.relative_error == ref.relative_error
    assert fallbacks > 0  # the fallback was exercised


def test_cpd_fallback_with_several_starts_keeps_the_best():
    *_, J = _exact_cp(2, 3, 40, 2, seed=12)
    res = cpd(J, 6, n_starts=4, seed=0)
    assert res.fallback_starts  # some of the four starts failed in tensorly
    assert len(res.start_errors) == 4 and np.isfinite(res.start_errors).all()
    assert res.relative_error == min(res.start_errors) < 1e-8


@pytest.mark.parametrize("seed", [-1, None, 1.5, True, "0", np.float64(2.0)])
def test_cpd_seed_must_be_a_non_negative_int(dense, seed):
    J, *_ = dense
    error = ValueError if seed == -1 and not isinstance(seed, bool) else TypeError
    with pytest.raises(error, match="seed must be an int >= 0"):
        cpd(J, 2, seed=seed, n_starts=1)


def test_cpd_accepts_numpy_integer_seeds(dense):
    J, *_ = dense
    a = cpd(J, 2, seed=np.int64(3), n_starts=1, method="nls")
    b = cpd(J, 2, seed=3, n_starts=1, method="nls")
    assert torch.equal(a.W, b.W) and a.relative_error == b.relative_error


@pytest.mark.parametrize("scale", [1e160, 1e-170, 2.0**-1000])
@pytest.mark.parametrize("method", ["tensorly", "nls"])
def test_cpd_of_huge_or_tiny_tensors(scale, method):
    # ||J||^2 overflows (1e160) or underflows to zero (1e-170): the CPD runs on J scaled by a
    # power of two, the weights are scaled back.
    W, V, H, J = _exact_cp(3, 4, 30, 2, seed=40)
    ref = cpd(J, 2, n_starts=1, seed=0, method=method)
    res = cpd(J * scale, 2, n_starts=1, seed=0, method=method)
    assert res.relative_error < 1e-12
    torch.testing.assert_close(res.weights / scale, ref.weights, rtol=1e-10, atol=0)
    congruence, _ = match_components([W, V, H], [res.W, res.V, res.H])
    assert congruence.min() > 1 - 1e-10


def test_cpd_of_a_float32_tensor_whose_squared_norm_overflows():
    *_, J = _exact_cp(3, 4, 30, 2, seed=41)
    J32 = (J * 1e25).to(torch.float32)
    assert not np.isfinite(DenseJacobian(J32).norm_sq())
    res = cpd(J32, 2, n_starts=1, seed=0, method="nls")
    assert res.weights.dtype == torch.float32 and bool(torch.isfinite(res.weights).all())
    assert res.relative_error < 1e-4


def test_cpd_zero_test_is_exact():
    J = torch.zeros(2, 3, 4, dtype=torch.float64)
    J[1, 2, 3] = 1e-200  # its square underflows to zero, the tensor is not zero
    res = cpd(J, 1, n_starts=1, method="nls")
    assert res.relative_error < 1e-14
    assert res.weights[0] == pytest.approx(1e-200, rel=1e-14)
    with pytest.raises(ValueError, match="identically zero"):
        cpd(torch.zeros(2, 3, 4, dtype=torch.float64), 1)


def test_match_components_permutation_and_scale():
    A = _randn(6, 4, seed=30)
    B = _randn(5, 4, seed=31)
    perm = np.array([2, 0, 3, 1])
    scale = torch.tensor([2.0, -0.5, 3.0, -1.0], dtype=torch.float64)
    cong, p = match_components([A, B], [A[:, perm] * scale, B[:, perm]])
    np.testing.assert_allclose(cong, 1.0, atol=1e-14)
    assert np.array_equal(perm[p], np.arange(4))
    cong2, _ = match_components(A, _randn(6, 4, seed=32))
    assert cong2.max() < 0.999
    with pytest.raises(ValueError, match="equal shape"):
        match_components(A, B)


def test_solve_psd_min_norm_on_singular_gram():
    gen = torch.Generator().manual_seed(0)
    F = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    F = torch.cat([F, F[:, :1] + F[:, 1:2]], dim=1)  # rank 3 of 4 columns
    y = torch.randn(2, 50, generator=gen, dtype=torch.float64)
    X = solve_psd(F.T @ F, y @ F)
    ref = torch.linalg.lstsq(F, y.T, driver="gelsd").solution.T  # minimum norm
    torch.testing.assert_close(X, ref, rtol=1e-8, atol=1e-10)


def test_pcg_solves_spd_system():
    gen = torch.Generator().manual_seed(1)
    B = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    A = B @ B.T + 30 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    d = A.diagonal()
    (x,), it = pcg(
        lambda v: [A @ v[0]], [b], lambda r: [r[0] / d[:, None]], maxiter=200, rtol=1e-12
    )
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert 1 <= it <= 200
    (x0,), it0 = pcg(
        lambda v: [A @ v[0]],
        [torch.zeros(30, 2, dtype=torch.float64)],
        lambda r: r,
        maxiter=5,
        rtol=1e-6,
    )
    assert it0 == 0 and torch.count_nonzero(x0) == 0


def test_half_precision_j_and_solver_dtypes(dense):
    J, W, V, H = dense
    exact = cp_to_tensor(W, V, H)
    # a half-precision J is decomposed in float32 (torch.linalg has no half precision)
    assert DenseJacobian(exact.half()).dtype == torch.float32
    res = cpd(exact.half(), 4, n_starts=1)
    assert res.W.dtype == torch.float32 and res.relative_error < 1e-3
    for dtype in (torch.float16, torch.int64):
        match = f"dtype must be torch.float32 or torch.float64, got {dtype}"
        with pytest.raises(TypeError, match=match):
            DenseJacobian(J, dtype=dtype)


def test_cpd_tol_accepts_numpy_numbers_not_bools(dense):
    J, *_ = dense
    kw = {"n_starts": 1, "n_iter_max": 20}
    res = cpd(J, 2, tol=np.float32(1e-6), **kw)
    assert res.relative_error == cpd(J, 2, tol=float(np.float32(1e-6)), **kw).relative_error
    with pytest.raises(ValueError, match="tol must be a number >= 0, got True"):
        cpd(J, 2, tol=True)


def test_match_components_refuses_complex_and_non_finite():
    A = _randn(4, 2, seed=40)
    with pytest.raises(ValueError, match="reference contains NaN or Inf"):
        match_components(A * float("nan"), A)
    with pytest.raises(TypeError, match="estimate must hold real numbers"):
        match_components(A.numpy(), A.numpy() * 1j)


@pytest.mark.parametrize("h, m", [(3, 8), (6, 4)])
def test_factored_residual_is_accurate_when_tiny(h, m):
    # The expanded square loses everything below ~1e-8 relative: an exact fit used to be
    # reported as error 0 (and the solvers stopped on rounding), 1e-10 off as anything.
    n, N, R = 4, 30, 2
    W, Vh, H = _randn(n, R, seed=5), _randn(h, R, seed=6), _randn(N, R, seed=7)
    A = _randn(h, m, seed=8)
    K = cp_to_tensor(W, Vh, H)  # (n, h, N): J_k = K_k A = W diag(H[k]) (A^T Vh)^T
    V = A.T @ Vh
    Jt = FactoredJacobian(K, A)
    assert Jt.exact_residual
    Vp = V * (1 + 1e-10)
    J = torch.einsum("ihk,hj->ijk", K, A)
    expected = float(((J - cp_to_tensor(W, Vp, H)) ** 2).sum())
    assert Jt.residual_norm_sq(W, Vp, H) == pytest.approx(expected, rel=1e-5)
    assert Jt.residual_norm_sq(W, V, H) <= 1e-26 * Jt.norm_sq()


@pytest.mark.parametrize("flag", ["linesearch", "polish"])
@pytest.mark.parametrize("value", ["no", None, 0, 1.0])
def test_cpd_flags_must_be_bools(dense, flag, value):
    # A truthy string ("no") used to switch the option on, None or 0 silently off.
    J, *_ = dense
    with pytest.raises(TypeError, match=f"{flag} must be a bool \\(True or False\\)"):
        cpd(J, 2, n_starts=1, **{flag: value})
    assert cpd(J, 2, n_starts=1, **{flag: np.False_}).relative_error < 1


