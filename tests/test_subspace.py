"""Tests of tenflex.subspace: the active subspace of sampled Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tenflex.cpd import DenseJacobian, FactoredJacobian
from tenflex.subspace import active_subspace, gram_eigenvectors


def _ridge_function_samples(m=12, n=3, N=200, seed=0):
    """Jacobians of f(x) = tanh(x B) A^T, which changes along the 2 columns of B only."""
    gen = torch.Generator().manual_seed(seed)
    B = torch.linalg.qr(torch.randn(m, 2, generator=gen, dtype=torch.float64))[0]
    A = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    X = torch.randn(N, m, generator=gen, dtype=torch.float64)
    H = 1 - torch.tanh(X @ B) ** 2  # (N, 2)
    J = torch.einsum("ir,kr,jr->ijk", A, H, B)  # J_k = A diag(h_k) B^T
    return X, J, B


def _principal_cosines(P, B):
    return torch.linalg.svdvals(P.T @ B)


def test_the_active_subspace_of_a_ridge_function_is_the_span_of_its_directions():
    _X, J, B = _ridge_function_samples()
    sub = active_subspace(DenseJacobian(J), 2, seed=1)
    assert sub.P.shape == (12, 2) and sub.k == 2
    assert torch.allclose(sub.P.T @ sub.P, torch.eye(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(_principal_cosines(sub.P, B), torch.ones(2, dtype=torch.float64),
                          atol=1e-10)
    assert sub.captured == pytest.approx(1.0, abs=1e-10)
    assert torch.all(sub.energy[:-1] >= sub.energy[1:])
    assert float(sub.energy.sum()) == pytest.approx(float((J**2).sum()), rel=1e-10)


def test_a_smaller_subspace_keeps_the_leading_eigenvector_of_the_gram():
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(4, 9, 50, generator=gen, dtype=torch.float64)
    gram = torch.einsum("ijk,ilk->jl", J, J)
    values, vectors = torch.linalg.eigh(gram)
    sub = active_subspace(J, 3, seed=0)
    assert torch.allclose(sub.energy, values[-3:].flip(0), rtol=1e-8)
    assert torch.allclose(_principal_cosines(sub.P, vectors[:, -3:]),
                          torch.ones(3, dtype=torch.float64), atol=1e-8)
    assert sub.captured == pytest.approx(float(values[-3:].sum() / values.sum()), rel=1e-8)


def test_centred_eigenvectors_are_those_of_the_jacobians_variation():
    gen = torch.Generator().manual_seed(4)
    J = torch.randn(3, 7, 40, generator=gen, dtype=torch.float64) + 5.0  # a large mean
    Jc = J - J.mean(dim=2, keepdim=True)
    values, _ = torch.linalg.eigh(torch.einsum("ijk,ilk->jl", Jc, Jc))
    got, _P = gram_eigenvectors(DenseJacobian(J), 2, seed=0, center=True)
    assert torch.allclose(got, values[-2:].flip(0), rtol=1e-8)


def test_factored_and_dense_jacobians_give_the_same_subspace():
    gen = torch.Generator().manual_seed(5)
    K = torch.randn(3, 6, 80, generator=gen, dtype=torch.float64)
    A = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    dense = torch.einsum("ihk,hj->ijk", K, A)
    a = active_subspace(FactoredJacobian(K, A), 4, seed=2)
    b = active_subspace(DenseJacobian(dense), 4, seed=2)
    assert torch.allclose(a.energy, b.energy, rtol=1e-9)
    assert torch.allclose(_principal_cosines(a.P, b.P), torch.ones(4, dtype=torch.float64),
                          atol=1e-9)


def test_the_same_seed_gives_the_same_subspace():
    _X, J, _B = _ridge_function_samples(seed=6)
    a, b = active_subspace(J, 3, seed=7), active_subspace(J, 3, seed=7)
    assert torch.equal(a.P, b.P) and torch.equal(a.energy, b.energy)


def test_projection_gives_the_coordinates_and_jacobians_in_the_subspace():
    X, J, _B = _ridge_function_samples(seed=8)
    sub = active_subspace(J, 2)
    Z, Jz = sub.project(X, DenseJacobian(J))
    assert torch.allclose(Z, X @ sub.P)
    assert Jz.shape == (3, 2, 200)
    assert torch.allclose(Jz.to_dense(), torch.einsum("ijk,jl->ilk", J, sub.P), atol=1e-12)


def test_bad_input_is_refused_with_what_was_expected():
    X, J, _B = _ridge_function_samples()
    with pytest.raises(ValueError, match="k"):
        active_subspace(J, 0)
    with pytest.raises(ValueError, match="k"):
        active_subspace(J, 13)
    with pytest.raises(TypeError, match="k"):
        active_subspace(J, 2.5)
    with pytest.raises(ValueError, match="all zero"):
        active_subspace(torch.zeros(2, 4, 5), 1)
    sub = active_subspace(J, 2)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        sub.project(X[:, :5], DenseJacobian(J))
    with pytest.raises(ValueError, match="same samples"):
        sub.project(X[:10], DenseJacobian(J))
    with pytest.raises(ValueError, match="NaN"):
        active_subspace(np.full((2, 3, 4), np.nan), 1)


@pytest.mark.parametrize(("seed", "error"), [(1.9, TypeError), (True, TypeError),
                                             ("7", TypeError), (-1, ValueError),
                                             (None, TypeError)])
def test_a_seed_that_is_not_a_nonnegative_integer_is_refused(seed, error):
    # int(seed) used to turn 1.9 and True into seed 1, and accept "7" and -1.
    J = DenseJacobian(torch.randn(2, 5, 30, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0)))
    with pytest.raises(error, match="seed"):
        active_subspace(J, 2, seed=seed)
    with pytest.raises(error, match="seed"):
        gram_eigenvectors(J, 2, seed=seed)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"k": 0}, ValueError, r"k must be in \[1, 5\], got 0"),
    ({"k": -1}, ValueError, r"k must be in \[1, 5\], got -1"),
    ({"k": 7}, ValueError, r"k must be in \[1, 5\], got 7"),
    ({"k": 2.0}, TypeError, "k must be an int"),
    ({"k": True}, TypeError, "k must be an int"),
    ({"k": 2, "n_iter": 0}, ValueError, "n_iter must be >= 1"),
    ({"k": 2, "oversample": -5}, ValueError, "oversample must be >= 0"),
])
def test_gram_eigenvectors_refuses_a_bad_count(kwargs, error, match):
    # values[-k:] returned all 5 pairs for k = 0 or 7 and 4 for k = -1, True gave one pair,
    # and n_iter = 0 returned vectors of the random, never orthonormalised start.
    J = DenseJacobian(torch.randn(2, 5, 30, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0)))
    with pytest.raises(error, match=match):
        gram_eigenvectors(J, **kwargs)
    with pytest.raises(TypeError, match="Jt must be a JacobianTensor"):
        gram_eigenvectors(J.to_dense(), 2)


@pytest.mark.parametrize("scale", [2.0**-80, 2.0**70])
def test_float32_jacobians_whose_squared_norm_over_or_underflows(scale):
    # ||J||^2 underflowed to 0 in float32 ("the Jacobians are all zero") for entries near
    # 1e-24, and the Gram overflowed (a LinAlgError from eigh) for entries near 1e21.
    _X, J, B = _ridge_function_samples()
    reference = active_subspace(DenseJacobian(J), 2, seed=1)
    sub = active_subspace(DenseJacobian((J * scale).float()), 2, seed=1)
    assert torch.allclose(_principal_cosines(sub.P.double(), B),
                          torch.ones(2, dtype=torch.float64), atol=1e-5)
    assert sub.captured == pytest.approx(1.0, abs=1e-5)
    # the energies are those of J times scale**2, as far as float32 holds them (inf, 0)
    expected = (reference.energy * scale**2).float()
    assert torch.allclose(sub.energy, expected, rtol=1e-4)
    values, P = gram_eigenvectors(DenseJacobian((J * scale).float()), 2, seed=1)
    assert torch.allclose(_principal_cosines(P.double(), B), torch.ones(2, dtype=torch.float64),
                          atol=1e-5)
    assert torch.allclose(values, expected, rtol=1e-4)
