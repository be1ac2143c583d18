"""Tests of tenflex.nn.baselines: truncated-SVD and rank-constrained linear span replacements."""

from __future__ import annotations

import pytest
import torch

from tenflex.nn.baselines import linear_span, reduced_rank_regression, svd_span
from tenflex.nn.compress import count_parameters
from tenflex.nn.surgery import resolve_span
from tenflex.zoo import build_model


def test_reduced_rank_regression_recovers_a_low_rank_map():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 12, generator=g, dtype=torch.float64)
    B = torch.randn(12, 3, generator=g, dtype=torch.float64) @ torch.randn(
        3, 7, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    Y = X @ B + b
    P, U, bias = reduced_rank_regression(X, Y, 3)
    torch.testing.assert_close(X @ P @ U.T + bias, Y, rtol=1e-8, atol=1e-8)


def test_reduced_rank_regression_is_optimal_against_truncated_ols():
    # Among rank-R maps, its residual is no larger than that of the truncated OLS coefficients.
    g = torch.Generator().manual_seed(1)
    X = torch.randn(400, 10, generator=g, dtype=torch.float64)
    Y = torch.tanh(X @ torch.randn(10, 6, generator=g, dtype=torch.float64))
    P, U, b = reduced_rank_regression(X, Y, 2)
    rrr = (X @ P @ U.T + b - Y).norm()
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    B = torch.linalg.lstsq(Xc, Yc).solution
    u, s, vh = torch.linalg.svd(B, full_matrices=False)
    B2 = u[:, :2] * s[:2] @ vh[:2]
    truncated = (Xc @ B2 - Yc).norm()
    assert rrr <= truncated + 1e-10


def test_reduced_rank_regression_errors():
    with pytest.raises(ValueError, match="rank must be"):
        reduced_rank_regression(torch.zeros(10, 3), torch.zeros(10, 2), 3)
    with pytest.raises(ValueError, match="X must be"):
        reduced_rank_regression(torch.zeros(10, 3), torch.zeros(9, 2), 1)


@pytest.fixture(scope="module")
def cnn():
    return build_model("reference_cnn", seed=0).eval()


def test_svd_span_respects_the_budget(cnn):
    span = resolve_span(cnn, ("fc1", "fc2"))
    budget = 40_000
    new, rank = svd_span(cnn, span, budget)
    span_after = count_parameters(new) - (count_parameters(cnn) - count_parameters(
        span.module(cnn)))
    assert span_after <= budget
    assert span_after + (3136 + 128) > budget          # one more rank would not fit
    assert rank == (budget - 128 - 1290) // (3136 + 128)


def test_svd_span_at_full_rank_is_exact(cnn):
    span = resolve_span(cnn, ("fc1", "fc2"))
    new, rank = svd_span(cnn, span, 10**7)
    assert rank == 128
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(new(x), cnn(x), rtol=1e-4, atol=1e-5)


def test_svd_span_errors(cnn):
    with pytest.raises(ValueError, match="no nn.Linear"):
        svd_span(cnn, resolve_span(cnn, ("conv1", "pool1")), 10_000)
    with pytest.raises(ValueError, match="leaves no SVD rank"):
        svd_span(cnn, resolve_span(cnn, ("fc1", "fc2")), 100)


def test_linear_span_fits_a_linear_span(cnn):
    # fc2 alone is linear: a full-rank linear replacement reproduces it.
    span = resolve_span(cnn, "fc2")
    X = torch.randn(300, 128, dtype=torch.float64)
    with torch.no_grad():
        Y = cnn.fc2.double()(X)
    cnn.float()
    new = linear_span(cnn, span, X, Y, rank=10)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(new(x), cnn(x), rtol=1e-4, atol=1e-4)
    assert count_parameters(new.linear_fc2_fc2) == 10 * (128 + 10) + 10
