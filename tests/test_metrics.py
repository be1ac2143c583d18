"""Tests of tenflex.metrics: errors and branch alignment up to permutation and scaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tenflex.basis import make_basis
from tenflex.metrics import align_branches, congruence_matrix, relative_error
from tenflex.model import DecoupledFunction


def random_model(m=5, n=4, R=3, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = make_basis("monomial", D, n_branches=R)
    return DecoupledFunction(torch.randn(n, R, generator=g, dtype=torch.float64),
                             torch.randn(m, R, generator=g, dtype=torch.float64),
                             torch.randn(D, R, generator=g, dtype=torch.float64),
                             torch.randn(n, generator=g, dtype=torch.float64), basis)


def transformed_copy(model, permutation, alpha, beta):
    """The same function with branches permuted and rescaled (monomial basis, identity map)."""
    D = model.n_functions
    degrees = torch.arange(1, D + 1, dtype=torch.float64)
    # w g(v^T x) = (beta w) g~(alpha v^T x) with g~(s) = g(s / alpha) / beta.
    C = model.C / (torch.as_tensor(alpha)[None, :] ** degrees[:, None]) / torch.as_tensor(beta)
    W = model.W * torch.as_tensor(beta)
    V = model.V * torch.as_tensor(alpha)
    basis = make_basis("monomial", D, n_branches=model.rank)
    return DecoupledFunction(W[:, permutation], V[:, permutation], C[:, permutation],
                             model.b, basis)


def test_alignment_recovers_permutation_scales_and_functions():
    truth = random_model()
    alpha = np.array([2.0, -0.5, 3.0])
    beta = np.array([-1.5, 4.0, 0.25])
    perm = np.array([2, 0, 1])
    estimate = transformed_copy(truth, perm, alpha, beta)
    X = torch.randn(50, truth.m, dtype=torch.float64)
    assert relative_error(estimate(X), truth(X)) < 1e-12

    alignment = align_branches(estimate, truth)
    # Estimated branch p = perm[j] came from reference branch j... invert to get r -> p.
    expected = np.argsort(perm)
    np.testing.assert_array_equal(alignment.permutation, expected)
    np.testing.assert_allclose(alignment.input_scale, alpha[perm][expected], rtol=1e-12)
    np.testing.assert_allclose(alignment.output_scale, beta[perm][expected], rtol=1e-12)
    assert alignment.min_congruence > 1 - 1e-12
    t = np.linspace(-2, 2, 11)
    for r in range(truth.rank):
        Z = np.zeros((t.size, truth.rank))
        Z[:, r] = t
        g_true = truth.branch_outputs(torch.as_tensor(Z)).numpy()[:, r]
        np.testing.assert_allclose(alignment.branch_function(estimate, r, t), g_true, atol=1e-10)


def test_congruence_of_unrelated_factors_is_low():
    a = np.eye(4)[:, :2]
    b = np.eye(4)[:, 2:]
    assert np.all(congruence_matrix(a, b) == 0)


def test_congruence_matrix_against_cosines_and_of_a_zero_column():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    expected = np.array([[abs(x @ y) / np.linalg.norm(x) / np.linalg.norm(y) for y in b.T]
                         for x in a.T])
    np.testing.assert_allclose(congruence_matrix(a, b), expected, rtol=1e-13)
    # scale and sign do not matter
    np.testing.assert_allclose(congruence_matrix(-3.0 * a, 1e-5 * b), expected, rtol=1e-12)
    # the documented zero column: cosine 0 with every column, not NaN
    a[:, 1] = 0
    c = congruence_matrix(a, b)
    assert np.isfinite(c).all() and np.all(c[1] == 0)
    np.testing.assert_allclose(c[[0, 2]], expected[[0, 2]], rtol=1e-13)


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="zero"):
        relative_error(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"\(m, n, R\)"):
        align_branches(random_model(R=2), random_model(R=3))


def test_kruskal_rank():
    from tenflex.metrics import kruskal_rank

    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 6))
    assert kruskal_rank(A) == 4            # generic: k-rank = min(p, R)
    B = A.copy()
    B[:, 5] = B[:, 0]                      # two equal columns: k-rank 1 ...
    assert kruskal_rank(B) == 1
    C = A[:, :3].copy()
    C[:, 2] = C[:, 0] + C[:, 1]            # three dependent columns, pairs independent
    assert kruskal_rank(C) == 2
    assert np.linalg.matrix_rank(C) == 2
    assert kruskal_rank(np.zeros((3, 2))) == 0


def test_metrics_refuse_complex_and_non_finite_input():
    from tenflex.metrics import kruskal_rank

    a = np.random.default_rng(1).standard_normal((4, 3))
    # the imaginary part used to be dropped: relative_error(a + 1j a, a) was 0.0
    with pytest.raises(TypeError, match="estimate must hold real numbers"):
        relative_error(a + 1j * a, a)
    with pytest.raises(TypeError, match="reference must hold real numbers"):
        relative_error(a, torch.complex(torch.as_tensor(a), torch.as_tensor(a)))
    nan = a.copy()
    nan[1, 2] = np.nan
    with pytest.raises(ValueError, match="estimate contains NaN or Inf"):
        relative_error(nan, a)
    with pytest.raises(ValueError, match="reference contains NaN or Inf"):
        relative_error(a, a * np.inf)
    with pytest.raises(ValueError, match="B contains NaN or Inf"):
        congruence_matrix(a, nan)
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        kruskal_rank(a * np.inf)
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        kruskal_rank(nan)
    for rtol in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
            kruskal_rank(a, rtol=rtol)
    with pytest.raises(TypeError, match="rtol must be"):
        kruskal_rank(a, rtol="1e-10")
    assert kruskal_rank(a, rtol=np.float32(1e-6)) == 3


def test_alignment_refuses_a_zero_reference_column():
    truth = random_model()
    zero = DecoupledFunction(truth.W.clone(), truth.V.clone(), truth.C, truth.b, truth.basis)
    zero.W[:, 1] = 0
    with pytest.raises(ValueError, match=r"reference.W has zero columns \[1\]"):
        align_branches(truth, zero)
    with pytest.raises(TypeError, match="reference must be a DecoupledFunction"):
        align_branches(truth, "truth")


def test_branch_function_checks_the_branch_index():
    truth = random_model()
    alignment = align_branches(truth, truth)
    t = np.linspace(-1, 1, 5)
    # r = -1 used to wrap around to the last branch, r = 3 to raise a raw IndexError
    for r in (-1, 3):
        with pytest.raises(ValueError, match=r"r must be in \[0, 2\], got"):
            alignment.branch_function(truth, r, t)
    with pytest.raises(TypeError, match="r must be an int"):
        alignment.branch_function(truth, 1.0, t)
    with pytest.raises(ValueError, match="estimate has rank 2 but the alignment has 3"):
        alignment.branch_function(random_model(R=2), 0, t)
    Z = np.zeros((5, 3))
    Z[:, 2] = t
    np.testing.assert_allclose(alignment.branch_function(truth, np.int64(2), t),
                               truth.branch_outputs(torch.as_tensor(Z)).numpy()[:, 2], atol=1e-12)


def test_relative_error_of_entries_near_the_ends_of_the_float_range():
    # The unscaled norms overflowed (nan) or underflowed ("reference is zero").
    assert relative_error(np.array([1e200, 0.0]), np.array([2e200, 0.0])) == pytest.approx(0.5)
    assert relative_error(np.array([1e-170]), np.array([2e-170])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="reference is zero"):
        relative_error(np.zeros(3), np.zeros(3))


def test_kruskal_rank_does_not_depend_on_the_column_scales():
    from tenflex.metrics import kruskal_rank

    # The k-rank of A diag(s) is that of A for nonzero s; a CPD's factors carry arbitrary
    # column scales. Scales 1e6 .. 1e-6 used to give k-rank 0 ("a zero column").
    A = np.random.default_rng(3).standard_normal((4, 3))
    assert kruskal_rank(A) == 3
    assert kruskal_rank(A * np.array([1e6, 1.0, 1e-6])) == 3
    B = A.copy()
    B[:, 2] = 1e-8 * B[:, 0]  # parallel to column 0, however small
    assert kruskal_rank(B * np.array([1e6, 1.0, 1.0])) == 1
    B[:, 2] = 0
    assert kruskal_rank(B) == 0


def test_congruence_and_alignment_of_columns_near_the_ends_of_the_float_range():
    # Column norms over- or underflowed: the cosines came out 0 (1e160) or 1e275 (1e-170).
    a = np.random.default_rng(4).standard_normal((5, 2))
    for s in (1e-170, 1e-160, 1e160, 1e200):
        np.testing.assert_allclose(congruence_matrix(s * a, a), congruence_matrix(a, a),
                                   rtol=1e-13)
        np.testing.assert_allclose(congruence_matrix(s * a, s * a), congruence_matrix(a, a),
                                   rtol=1e-13)
    truth = random_model()
    for s in (1e-170, 1e160):
        scaled = DecoupledFunction(s * truth.W, s * truth.V, truth.C, truth.b,
                                   truth.basis.clone())
        alignment = align_branches(scaled, scaled)
        np.testing.assert_allclose(alignment.output_scale, 1.0, rtol=1e-13)
        np.testing.assert_allclose(alignment.input_scale, 1.0, rtol=1e-13)
        assert alignment.min_congruence > 1 - 1e-13


def test_kruskal_rank_of_float32_factors_counts_rounding_level_dependence():
    from tenflex.metrics import kruskal_rank

    # Columns dependent up to float32 rounding (smallest singular value ~1e-9 relative)
    # passed the float64 tolerance 1e-10 as independent: k-rank 3 instead of 2.
    rng = np.random.default_rng(5)
    C = rng.standard_normal((4, 3))
    C[:, 2] = C[:, 0] + C[:, 1]
    assert kruskal_rank(C) == 2
    for C32 in (C.astype(np.float32), torch.tensor(C, dtype=torch.float32),
                torch.tensor(C).to(torch.bfloat16)):
        assert kruskal_rank(C32) == 2
    generic = rng.standard_normal((4, 6)).astype(np.float32)
    assert kruskal_rank(generic) == 4
    assert kruskal_rank(C.astype(np.float32), rtol=0.0) == 3  # an explicit rtol is used as is
