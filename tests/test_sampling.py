"""Tests of tenflex.sampling: outputs and Jacobians against analytic formulas and finite
differences, chunking and mode invariance, module state and autograd hygiene."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tenflex.sampling import (
    Samples,
    deterministic_algorithms,
    kept_modes,
    sample_function,
    seeded_rng,
)

# Tiny problems: one thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _tanh_net(m: int, hidden: int, n: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(m, hidden), nn.Tanh(), nn.Linear(hidden, n))


def test_linear_map_jacobian_is_the_matrix():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    c = torch.randn(3, generator=gen, dtype=torch.float64)
    X = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    s = sample_function(lambda x: x @ A.T + c, X)
    assert isinstance(s, Samples)
    assert s.X.shape == (40, 5) and s.Y.shape == (40, 3) and s.J.shape == (3, 5, 40)
    assert s.input_shape == (5,) and s.output_shape == (3,)
    assert (s.N, s.m, s.n) == (40, 5, 3)
    torch.testing.assert_close(s.Y, X @ A.T + c, rtol=0, atol=1e-14)
    torch.testing.assert_close(s.J, A[:, :, None].expand(3, 5, 40), rtol=0, atol=1e-14)


@pytest.mark.parametrize("mode", ["rev", "fwd", "auto"])
def test_tanh_network_analytic_jacobian(mode):
    net = _tanh_net(4, 7, 3)
    X = torch.randn(25, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    s = sample_function(net, X, mode=mode)
    W1 = net[0].weight.detach().double()
    b1 = net[0].bias.detach().double()
    W2 = net[2].weight.detach().double()
    b2 = net[2].bias.detach().double()
    A = torch.tanh(X @ W1.T + b1)  # (N, hidden)
    torch.testing.assert_close(s.Y, A @ W2.T + b2, rtol=1e-13, atol=1e-13)
    # J_k = W2 diag(1 - tanh^2) W1
    J = torch.einsum("ih,kh,hj->ijk", W2, 1 - A**2, W1)
    torch.testing.assert_close(s.J, J, rtol=1e-12, atol=1e-13)
    # the module itself is untouched (float32 parameters, no gradients)
    assert net[0].weight.dtype == torch.float32
    assert all(p.grad is None for p in net.parameters())


def test_multidimensional_input_against_finite_differences():
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)
    )
    X = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    s = sample_function(net, X)
    assert s.input_shape == (1, 5, 5) and s.J.shape == (3, 25, 6) and s.X.shape == (6, 25)
    netd = net.double()
    eps = 1e-6
    Xf = X.reshape(6, 25)
    for j in (0, 7, 24):
        e = torch.zeros(25, dtype=torch.float64)
        e[j] = eps
        with torch.no_grad():
            fd = (netd((Xf + e).reshape(6, 1, 5, 5)) - netd((Xf - e).reshape(6, 1, 5, 5))) / (
                2 * eps
            )
        torch.testing.assert_close(s.J[:, j, :], fd.T, rtol=1e-7, atol=1e-8)


def test_output_with_shape_is_flattened():
    X = torch.randn(8, 3, dtype=torch.float64)
    s = sample_function(lambda x: torch.stack([x, x**2], dim=1), X)  # (B, 2, 3)
    assert s.output_shape == (2, 3) and s.Y.shape == (8, 6) and s.J.shape == (6, 3, 8)
    # d(x_i^2)/dx_j = 2 x_i delta_ij
    expected = torch.zeros(6, 3, 8, dtype=torch.float64)
    for i in range(3):
        expected[i, i, :] = 1.0
        expected[3 + i, i, :] = 2 * X[:, i]
    torch.testing.assert_close(s.J, expected, rtol=0, atol=1e-15)


def test_chunking_and_modes_agree():
    net = _tanh_net(6, 5, 4, seed=2)
    X = torch.randn(53, 6, generator=torch.Generator().manual_seed(2))
    ref = sample_function(net, X, chunk_size=53, mode="rev")
    for chunk in (1, 7, 100):
        for mode in ("rev", "fwd"):
            s = sample_function(net, X, chunk_size=chunk, mode=mode)
            torch.testing.assert_close(s.Y, ref.Y, rtol=0, atol=1e-14)
            torch.testing.assert_close(s.J, ref.J, rtol=0, atol=1e-14)
    outputs_only = sample_function(net, X, jacobian=False, chunk_size=10)
    assert outputs_only.J is None
    torch.testing.assert_close(outputs_only.Y, ref.Y, rtol=0, atol=1e-14)


def test_layout_is_solver_friendly():
    s = sample_function(_tanh_net(4, 3, 2), torch.randn(10, 4))
    assert s.J.permute(0, 2, 1).is_contiguous()


def test_float32_and_numpy_input():
    net = _tanh_net(4, 6, 2)
    X = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    s32 = sample_function(net, X, dtype=torch.float32)
    s64 = sample_function(net, X)
    assert s32.Y.dtype == torch.float32 and s32.J.dtype == torch.float32
    assert s64.J.dtype == torch.float64
    torch.testing.assert_close(s32.J.double(), s64.J, rtol=1e-5, atol=1e-6)


def test_module_put_in_eval_mode_and_restored():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    net.train()
    net[1].eval()  # a mixed state must come back as it was
    X = torch.randn(30, 4)
    s1 = sample_function(net, X)
    s2 = sample_function(net, X, chunk_size=4)
    # eval mode: dropout off, batch norm with running statistics -> deterministic and
    # independent of the chunking
    torch.testing.assert_close(s1.Y, s2.Y, rtol=0, atol=1e-14)
    torch.testing.assert_close(s1.J, s2.J, rtol=0, atol=1e-14)
    assert net.training and not net[1].training and net[2].training and net[3].training
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(s1.Y.float(), net(X), rtol=1e-5, atol=1e-6)


def test_no_gradient_leaks():
    net = _tanh_net(3, 4, 2)
    X = torch.randn(5, 3, requires_grad=True)
    s = sample_function(net, X)
    assert not s.X.requires_grad and not s.Y.requires_grad and not s.J.requires_grad
    assert s.Y.grad_fn is None and s.J.grad_fn is None
    assert X.grad is None and all(p.grad is None for p in net.parameters())
    assert torch.is_grad_enabled()


def test_progress_bar_runs(capsys):
    sample_function(_tanh_net(3, 4, 2), torch.randn(9, 3), chunk_size=2, progress=True)
    out = capsys.readouterr()
    assert "sampling" in out.err


def test_nothing_printed_by_default(capsys):
    sample_function(_tanh_net(3, 4, 2), torch.randn(9, 3), chunk_size=2)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


@pytest.mark.parametrize(
    ("X", "kwargs", "error", "match"),
    [
        (torch.randn(5), {}, ValueError, "batch dimension"),
        (torch.empty(0, 3), {}, ValueError, "at least one"),
        (torch.tensor([[1.0, float("nan")]]), {}, ValueError, "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")]]), {}, ValueError, "NaN or Inf"),
        (torch.randn(4, 2), {"mode": "sideways"}, ValueError, "mode must be one of"),
        (torch.randn(4, 2), {"chunk_size": 0}, ValueError, "chunk_size"),
        (torch.randn(4, 2), {"dtype": torch.int64}, TypeError, "dtype"),
        (np.array([["a", "b"]]), {}, TypeError, "real numbers"),
    ],
)
def test_bad_input(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        sample_function(lambda x: x * 2, X, **kwargs)


def test_bad_function():
    with pytest.raises(TypeError, match="callable"):
        sample_function(3, torch.randn(2, 2))
    with pytest.raises(ValueError, match="batch"):
        sample_function(lambda x: x.sum(), torch.randn(4, 2))


@pytest.mark.parametrize("flag", ["jacobian", "progress"])
def test_flags_must_be_bools(flag):
    # jacobian="no" used to compute the Jacobians (a truthy string), None to skip them.
    for value in ("no", None, 1):
        with pytest.raises(TypeError, match=f"{flag} must be a bool \\(True or False\\)"):
            sample_function(lambda x: x * 2, torch.randn(3, 2), **{flag: value})


@pytest.mark.parametrize("mode", ["rev", "fwd"])
def test_conv_span_with_batchnorm_dropout_and_pooling_against_autograd(mode):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4))
    net[1].running_mean.normal_()
    net[1].running_var.uniform_(0.5, 2.0)
    net.train()  # sampled in eval mode, given back in training mode
    X = torch.randn(5, 1, 8, 8)
    got = sample_function(net, X, mode=mode, chunk_size=2)
    assert net.training and net[1].training
    reference = copy.deepcopy(net).double().eval()
    for k in range(5):
        J = torch.autograd.functional.jacobian(lambda x: reference(x[None])[0], X[k].double())
        torch.testing.assert_close(got.J[:, :, k], J.reshape(4, 64))


@pytest.mark.parametrize("mode", ["rev", "fwd"])
@pytest.mark.parametrize("jacobian", [True, False])
def test_a_function_that_starts_in_place_leaves_the_points_alone(mode, jacobian):
    # ReLU(inplace=True) first in f overwrote the caller's points (and Samples.X held
    # relu(X)); with Jacobians in reverse mode it failed on the in-place view of a leaf.
    torch.manual_seed(0)
    in_place = nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 2)).double()
    plain = nn.Sequential(nn.ReLU(), in_place[1])
    X = torch.randn(6, 5, dtype=torch.float64)
    kept = X.clone()
    got = sample_function(in_place, X, jacobian=jacobian, mode=mode)
    assert torch.equal(X, kept) and torch.equal(got.X, kept)
    expected = sample_function(plain, kept, jacobian=jacobian, mode=mode)
    torch.testing.assert_close(got.Y, expected.Y, rtol=0, atol=0)
    if jacobian:
        torch.testing.assert_close(got.J, expected.J, rtol=0, atol=0)


def test_a_plain_function_that_draws_random_numbers_is_refused_clearly():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2)).double().train()
    X = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"f draws random numbers \(dropout in training mode"):
        sample_function(lambda x: net(x), X)
    sample_function(net, X)  # the module itself is sampled in eval mode


def test_finite_points_that_overflow_the_sampling_dtype_are_named():
    # float64 points beyond float32's range became inf on the cast, and the message blamed
    # the data: "X contains NaN or Inf values".
    net = torch.nn.Linear(2, 1)
    X = np.array([[1e39, 0.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match=(r"up to 1e\+39.*overflow torch.float32.*float64 "
                                          r"\(dtype=torch.float64\)")):
        sample_function(net, X, dtype=torch.float32)
    assert sample_function(net, X, dtype=torch.float64).Y.shape == (2, 1)
    with pytest.raises(ValueError, match="NaN or Inf values"):
        sample_function(net, np.array([[np.nan, 0.0]]), dtype=torch.float32)


def test_a_batch_of_the_wrong_length_is_refused_without_jacobians():
    # f answers a batch of one correctly but folds a larger batch into one row: the outputs
    # would otherwise be read back in the wrong order without a word.
    with pytest.raises(ValueError, match="f returned a batch of 1 outputs for 4 inputs"):
        sample_function(lambda x: x.T.reshape(1, -1), torch.randn(4, 2), jacobian=False)


def test_seeded_rng_reproduces_the_draws_and_gives_the_callers_stream_back():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded_rng(7):
        a = torch.rand(5)
    with seeded_rng(7):
        b = torch.rand(5)
    with seeded_rng(8):
        c = torch.rand(5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    reference = torch.rand(5)
    torch.set_rng_state(state)
    assert torch.equal(a, reference) and torch.equal(b, reference)
    assert not torch.equal(c, reference)


def test_deterministic_algorithms_sets_the_flag_and_gives_the_previous_one_back():
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())

    def flags():
        return (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())

    try:
        for previous in ((False, False), (True, False), (True, True)):
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            with deterministic_algorithms(True):
                assert flags() == (True, True)  # warn only: no kernel makes it fail
            assert flags() == previous
            with deterministic_algorithms(False):  # leaves the setting alone
                assert flags() == previous
            assert flags() == previous
            with pytest.raises(KeyError), deterministic_algorithms(True):
                raise KeyError("a failure inside the block")
            assert flags() == previous
        with pytest.raises(TypeError, match=r"deterministic must be a bool"), \
                deterministic_algorithms("yes"):
            pass
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


def test_kept_modes_restores_each_flag_even_after_a_failure():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2)).train()
    net[2].eval()
    with pytest.raises(KeyError), kept_modes(net):
        net.eval()
        raise KeyError("a failure inside the block")
    assert [mod.training for mod in net.modules()] == [True, True, True, False]
    with kept_modes(net) as restore:
        net.train()
        restore()
        assert [mod.training for mod in net.modules()] == [True, True, True, False]
        net.eval()
    assert [mod.training for mod in net.modules()] == [True, True, True, False]
