"""Tests of tenflex.nn.baselines: truncated-SVD and rank-constrained linear span replacements."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from problems import Headed
from torch import nn

from tenflex.nn.baselines import linear_span, reduced_rank_regression, svd_span
from tenflex.nn.compress import count_parameters
from tenflex.nn.lowrank import SVDLinear
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
    # exact up to rounding: measured max error 3e-14 for |Y| <= 30
    torch.testing.assert_close(X @ P @ U.T + bias, Y, rtol=1e-11, atol=1e-11)


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
        # float32 rounding only: measured max error 1.2e-7 for outputs up to 0.19
        torch.testing.assert_close(new(x), cnn(x), rtol=1e-5, atol=1e-6)


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


def test_reduced_rank_regression_takes_numpy_and_checks_its_input():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(40, 5, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(5, 3, generator=g, dtype=torch.float64)
    for got, expected in zip(reduced_rank_regression(X.numpy(), Y.numpy(), np.int64(2)),
                             reduced_rank_regression(X, Y, 2), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        reduced_rank_regression(bad, Y, 2)
    with pytest.raises(ValueError, match="Y contains NaN or Inf"):
        reduced_rank_regression(X, Y * float("inf"), 2)
    with pytest.raises(TypeError, match="X must hold real numbers"):
        reduced_rank_regression(X.to(torch.complex128), Y, 2)
    for rank in (1.5, True, "2"):
        with pytest.raises(TypeError, match="rank must be an int"):
            reduced_rank_regression(X, Y, rank)
    with pytest.raises(ValueError, match=r"rank must be in \[1, 3\], got 4"):
        reduced_rank_regression(X, Y, 4)


def test_linear_span_checks_the_sample_widths(cnn):
    span = resolve_span(cnn, ("fc1", "fc2"))
    X, Y = torch.zeros(20, 3136), torch.zeros(20, 10)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3136\).*got \(20, 3000\)"):
        linear_span(cnn, span, X[:, :3000], Y, 2)
    with pytest.raises(ValueError, match=r"Y must have shape \(N, 10\).*got \(20, 9\)"):
        linear_span(cnn, span, X, Y[:, :9], 2)
    with pytest.raises(TypeError, match="span must be a Span"):
        linear_span(cnn, "fc1", X, Y, 2)


def test_svd_span_budget_must_be_an_int(cnn):
    span = resolve_span(cnn, ("fc1", "fc2"))
    with pytest.raises(TypeError, match=r"budget must be an int, got float \(40000.5\)"):
        svd_span(cnn, span, 40_000.5)
    assert svd_span(cnn, span, np.int64(40_000))[1] == (40_000 - 128 - 1290) // (3136 + 128)
    with pytest.raises(TypeError, match="span must be a Span"):
        svd_span(cnn, ("fc1", "fc2"), 40_000)


def test_svd_span_keeps_a_repeated_activation():
    torch.manual_seed(0)
    act = nn.ReLU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), act, nn.Linear(6, 6), act,
                          nn.Linear(6, 2))
    span = resolve_span(model, slice(1, 6))
    new, rank = svd_span(model, span, 10**6)
    assert rank == 6  # full rank: the replacement is the span's function
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)


def test_span_input_shape_is_probed_on_the_model_device():
    # A CUDA model refuses a CPU probe; a model on the "meta" device (shapes only, no data)
    # stands in for it here, as CI has no GPU.
    from tenflex.nn.baselines import _input_shape

    model = build_model("reference_cnn").to("meta")
    assert _input_shape(model, resolve_span(model, "conv2")) == (32, 14, 14)
    assert _input_shape(model, resolve_span(model, "fc2")) == (128,)  # through fc1


def test_linear_span_leaves_a_training_model_untouched():
    # A BatchNorm in the prefix, the model in training mode: probing the span's shapes must
    # neither update its statistics nor fail on a batch of one.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.input_shape = (6,)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    span = resolve_span(model, 3)
    X = torch.randn(50, 8)
    new = linear_span(model, span, X, X @ torch.randn(8, 3), rank=2)
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    assert count_parameters(new) < count_parameters(model)


class _Net(nn.Module):
    """A module that is no nn.Sequential, with a nested nn.Sequential classifier."""

    input_shape = (1, 6, 6)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def test_svd_span_looks_into_a_nested_sequential():
    # The span is the whole classifier: its Linear layers are inside it (used to be "no
    # nn.Linear layer"); the largest is classifier.0, 64 -> 20.
    torch.manual_seed(0)
    net = _Net().eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    span = resolve_span(net, "classifier")
    others = 20 * 5 + 5                                  # classifier.2
    budget = 1500
    new, rank = svd_span(net, span, budget)
    assert rank == (budget - others - 20) // (64 + 20) == 16
    after = count_parameters(new.classifier)
    assert after == rank * (64 + 20) + 20 + others <= budget < after + 64 + 20
    assert count_parameters(new) == count_parameters(net) - count_parameters(
        net.classifier) + after
    assert isinstance(new.classifier[0], SVDLinear) and new.classifier[0].rank == rank
    # the same layers named as a chain give the same rank
    assert svd_span(net, resolve_span(net, ("classifier.0", "classifier.2")), budget)[1] == rank
    # ground truth: at full rank the SVD reproduces the dense span, hence the network
    full, rank = svd_span(net, span, 10**6)
    assert rank == 20
    x = torch.randn(7, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(full(x), net(x), rtol=1e-5, atol=1e-6)
    for key, value in net.state_dict().items():  # the model given is untouched
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    assert isinstance(net.classifier[0], nn.Linear)


def test_svd_span_in_a_sequential_with_nested_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(8, 6), nn.ReLU()),
                          nn.Sequential(nn.Sequential(nn.Linear(6, 12)), nn.Tanh()),
                          nn.Linear(12, 2))
    span = resolve_span(model, slice(1, 4))
    new, rank = svd_span(model, span, 10**6)
    assert rank == 6                                    # of the largest layer, 6 -> 12
    assert isinstance(new.svd_1_3[1][0][0], SVDLinear)
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)
    budget = 200
    new, rank = svd_span(model, span, budget)
    others = (8 * 6 + 6) + (12 * 2 + 2)
    assert rank == (budget - others - 12) // (6 + 12) == 6
    assert count_parameters(new.svd_1_3) == rank * 18 + 12 + others <= budget
    new, rank = svd_span(model, span, 150)
    assert rank == (150 - others - 12) // 18 == 3
    assert count_parameters(new.svd_1_3) <= 150 < count_parameters(new.svd_1_3) + 18


def test_svd_span_of_a_layer_used_twice_compresses_it_once():
    # One Linear(8, 8) at two positions of the span: one SVD at both, counted once.
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Flatten(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(8, 2))
    span = resolve_span(model, slice(1, 6))
    new, rank = svd_span(model, span, 100)
    others = 8 * 2 + 2
    assert rank == (100 - others - 8) // 16 == 4
    replaced = new.svd_1_5
    assert replaced[0] is replaced[2] and isinstance(replaced[0], SVDLinear)
    assert count_parameters(replaced) == 4 * 16 + 8 + others <= 100
    full, rank = svd_span(model, span, 10**6)
    x = torch.randn(3, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(full(x), model(x), rtol=1e-5, atol=1e-6)


def test_svd_span_returns_a_copy():
    # The span's other layers used to be the model's own modules in the result.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    new, _ = svd_span(model, resolve_span(model, slice(1, 4)), 10**6)
    assert new.svd_1_3[2] is not model[3]
    with torch.no_grad():
        new.svd_1_3[2].weight.add_(1.0)
    assert not torch.equal(new.svd_1_3[2].weight, model[3].weight)


class _Scaled(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_svd_span_skips_a_linear_with_its_own_forward():
    # Its SVD would not reproduce it: the plain, smaller Linear is compressed instead.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), _Scaled(8, 8), nn.ReLU(), nn.Linear(8, 3))
    new, rank = svd_span(model, resolve_span(model, slice(1, 4)), 10**6)
    assert rank == 3 and isinstance(new.svd_1_3[2], SVDLinear)
    x = torch.randn(4, 2, 4)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no nn.Linear layer"):
        svd_span(model, resolve_span(model, 1), 10**6)


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_svd_span_of_one_layer_of_a_module_keeps_its_name():
    torch.manual_seed(0)
    model = _Head()
    new, rank = svd_span(model, resolve_span(model, "fc1"), 10**6)
    assert rank == 5 and isinstance(new.fc1, SVDLinear)   # in place of fc1, not nested
    assert new.fc2 is not model.fc2
    x = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(new(x), model(x), rtol=1e-5, atol=1e-6)


def test_reduced_rank_regression_with_fewer_samples_than_the_rank():
    # N = 3 centred samples have fitted values of rank <= 2: P and U still get R = 5 columns
    # (U orthonormal, the extra ones of P zero), and the fit is the least-squares one.
    g = torch.Generator().manual_seed(3)
    X = torch.randn(3, 10, generator=g, dtype=torch.float64)
    Y = torch.randn(3, 8, generator=g, dtype=torch.float64)
    P, U, b = reduced_rank_regression(X, Y, 5)
    assert P.shape == (10, 5) and U.shape == (8, 5) and b.shape == (8,)
    torch.testing.assert_close(U.T @ U, torch.eye(5, dtype=torch.float64))
    torch.testing.assert_close(X @ P @ U.T + b, Y)
    P2, U2, b2 = reduced_rank_regression(X, Y, 2)
    x = torch.randn(4, 10, generator=g, dtype=torch.float64)
    torch.testing.assert_close(x @ P @ U.T + b, x @ P2 @ U2.T + b2)


def test_linear_span_with_fewer_samples_than_the_rank(cnn):
    # It failed with a RuntimeError of copy_ (P and U had N columns instead of R).
    span = resolve_span(cnn, "fc2")
    X = torch.randn(3, 128)
    with torch.no_grad():
        Y = cnn.fc2(X)
    new = linear_span(cnn, span, X, Y, rank=5)
    assert new.linear_fc2_fc2.project.weight.shape == (5, 128)
    with torch.no_grad():
        torch.testing.assert_close(new.linear_fc2_fc2(X), Y, rtol=1e-4, atol=1e-4)


def test_linear_span_says_how_to_give_the_input_shape():
    # The message was "the model needs an `input_shape` attribute (one input, no batch)",
    # which named neither the function nor how to set it on a network of one's own.
    net = Headed(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    span = resolve_span(net, ("head.0", "head.2"))
    X, Y = torch.randn(20, 6), torch.randn(20, 3)
    with pytest.raises(ValueError, match=r"linear_span needs the shape of one input.*Headed has no "
                                         r"`input_shape` attribute; set one, e.g\. "
                                         r"model.input_shape = \(1, 28, 28\)"):
        linear_span(net, span, X, Y, 2)
    net.input_shape = (6,)
    assert linear_span(net, span, X, Y, 2)(X).shape == (20, 3)
