"""Tests of tenflex.gradfit: the recorded costs against cmtf_als and dense references, the
exact batch decomposition of the structured Jacobian term and its gradient, training on an
exactly decoupled function, determinism, stopping rules and input validation."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from problems import decoupled_samples
from torch import nn

from tenflex.cpd import DenseJacobian, JacobianTensor
from tenflex.fit import cmtf_als
from tenflex.gradfit import GradientFitResult, _FlexibleCost, fit_by_gradient
from tenflex.model import DecoupledFunction
from tenflex.nn.flexible import FlexibleLayer

n, m, N, R, D = 3, 6, 200, 3, 5


# Tiny problems: one thread (see tests/conftest.py).
pytestmark = pytest.mark.usefixtures("single_thread")


def _truth(seed=0, basis="chebyshev"):
    """Noise-free samples of a random decoupled function (n=3, m=6, R=3, D=5, N=200)."""
    return decoupled_samples(n, m, R, basis, D, N, seed=seed)


def _perturbed_layer(f, level=0.1, seed=1):
    gen = torch.Generator().manual_seed(seed)

    def p(A):
        E = torch.randn(A.shape, generator=gen, dtype=A.dtype)
        return A + level * E * A.norm() / E.norm()

    g = DecoupledFunction(p(f.W), p(f.V), p(f.C), f.b.clone(), f.basis.clone())
    return FlexibleLayer.from_decoupled(g)


def _dense_costs(layer, X, Y, J):
    """Reference costs in NumPy from the model's dense Jacobians and outputs."""
    with torch.no_grad():
        df = layer.to_decoupled()
        Yh, Jh = (A.numpy() for A in df.outputs_and_jacobian(X))
    X, Y, J = X.numpy(), Y.numpy(), J.numpy()
    cj = np.sum((J - Jh) ** 2) / np.sum(J**2)
    co = np.sum((Y - Yh) ** 2) / np.sum((Y - Y.mean(axis=0)) ** 2)
    return cj, co


class _Wrapped(JacobianTensor):
    """A JacobianTensor that is not a DenseJacobian (only the abstract products)."""

    def __init__(self, J):
        self._d = DenseJacobian(J)

    shape = property(lambda self: self._d.shape)
    dtype = property(lambda self: self._d.dtype)
    device = property(lambda self: self._d.device)

    def norm_sq(self):
        return self._d.norm_sq()

    def contract_input(self, V):
        return self._d.contract_input(V)

    def mttkrp_input(self, W, H):
        return self._d.mttkrp_input(W, H)


# ---------------------------------------------------------------------------- ground truth
@pytest.mark.parametrize("lam, ridge", [(1.0, 0.0), (0.3, 1e-3), (0.0, 0.0)])
def test_start_cost_equals_cmtf_als_cost(lam, ridge):
    _, X, Y, J = _truth()
    gen = torch.Generator().manual_seed(3)
    Yn = Y + 0.05 * torch.randn(Y.shape, generator=gen, dtype=Y.dtype)  # cost well above 0
    res = cmtf_als(
        X, Yn, J, R, basis="chebyshev", n_functions=D, lam=lam, ridge=ridge, init="random",
        max_iter=4,
    )
    assert res.cost[-1] > 1e-4
    layer = FlexibleLayer.from_decoupled(res.model)
    out = fit_by_gradient(layer, X, Yn, J, lam=lam, ridge=ridge, epochs=0)
    assert isinstance(out, GradientFitResult)
    assert out.n_epochs == 0 and out.epoch.tolist() == [0.0] and out.time_s.tolist() == [0.0]
    np.testing.assert_allclose(out.cost[0], res.cost[-1], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out.cost_jacobian[0], res.cost_jacobian[-1], rtol=1e-10, atol=0)
    np.testing.assert_allclose(out.cost_output[0], res.cost_output[-1], rtol=1e-10, atol=0)


def test_costs_equal_dense_reference():
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f, level=0.3)
    cj, co = _dense_costs(layer, X, Y, J)
    out = fit_by_gradient(layer, X.numpy(), Y.numpy(), J.numpy(), lam=0.7, epochs=0)
    np.testing.assert_allclose(out.cost_jacobian[0], cj, rtol=1e-12)
    np.testing.assert_allclose(out.cost_output[0], co, rtol=1e-12)
    np.testing.assert_allclose(out.cost[0], cj + 0.7 * co, rtol=1e-12)
    # At the exact solution the tiny residual is computed directly, not by cancellation.
    exact = fit_by_gradient(FlexibleLayer.from_decoupled(f), X, Y, J, epochs=0)
    assert exact.cost_jacobian[0] < 1e-26 and exact.cost_output[0] < 1e-26


def test_outputs_only_cost_equals_numpy_reference():
    _, X, Y, _ = _truth()
    layer = nn.Sequential(nn.Linear(m, 8), nn.Tanh(), nn.Linear(8, n)).double()
    with torch.no_grad():
        Yh = layer(X).numpy()
    Yr = Y.numpy()
    ref = np.sum((Yr - Yh) ** 2) / np.sum((Yr - Yr.mean(axis=0)) ** 2)
    for batch_size in (None, 64):  # the records are chunked by batch_size
        out = fit_by_gradient(layer, X, Y, epochs=0, batch_size=batch_size)
        np.testing.assert_allclose(out.cost[0], ref, rtol=1e-12)
        np.testing.assert_allclose(out.cost_output[0], ref, rtol=1e-12)
        assert np.isnan(out.cost_jacobian[0])


# ---------------------------------------------------------------------------- batches
def test_batch_terms_sum_to_full_data_terms_and_gradients():
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f, level=0.3)
    lam = 0.6
    prob = _FlexibleCost(layer, X, Y, DenseJacobian(J), lam, 0.0)
    full_cj, full_co = prob.batch_terms(None)
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    parts = [prob.batch_terms(idx) for idx in order.split(64)]  # 64, 64, 64, 8
    torch.testing.assert_close(sum(p[0] for p in parts), full_cj, rtol=1e-12, atol=0)
    torch.testing.assert_close(sum(p[1] for p in parts), full_co, rtol=1e-12, atol=0)
    cj_ref, co_ref = _dense_costs(layer, X, Y, J)
    np.testing.assert_allclose(float(full_cj.detach()), cj_ref, rtol=1e-12)
    np.testing.assert_allclose(float(full_co.detach()), co_ref, rtol=1e-12)
    # Equal batches: the minibatch losses average to the full-data cost.
    losses = [prob.batch_loss(idx) for idx in order.split(50)]
    torch.testing.assert_close(sum(losses) / 4, prob.batch_loss(None), rtol=1e-12, atol=0)

    # Gradients: structured full-batch loss vs autograd of the dense formulation, and the
    # size-weighted minibatch gradients sum to the full-data gradient.
    params = [layer.W, layer.V, layer.C, layer.b]
    grads = torch.autograd.grad(prob.batch_loss(None), params)
    Z = X @ layer.V
    Phi, dPhi = layer.basis.values_and_derivatives(Z)
    G = torch.einsum("krd,dr->kr", Phi, layer.C)
    H = torch.einsum("krd,dr->kr", dPhi, layer.C)
    Jh = torch.einsum("ir,jr,kr->ijk", layer.W, layer.V, H)
    Yc = Y - Y.mean(0)
    dense = ((J - Jh) ** 2).sum() / (J**2).sum() + lam * (
        (Y - layer.b - G @ layer.W.T) ** 2
    ).sum() / (Yc**2).sum()
    for g, r in zip(grads, torch.autograd.grad(dense, params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    summed = [torch.zeros_like(p) for p in params]
    for idx in order.split(64):
        gb = torch.autograd.grad(prob.batch_loss(idx) * idx.numel() / N, params)
        summed = [s + g for s, g in zip(summed, gb, strict=True)]
    for g, s in zip(grads, summed, strict=True):
        torch.testing.assert_close(s, g, rtol=1e-10, atol=1e-13)

    # A JacobianTensor that is not dense: same loss and gradient via its MTTKRPs.
    generic = _FlexibleCost(layer, X, Y, _Wrapped(J), lam, 0.0)
    loss = generic.batch_loss(None)
    torch.testing.assert_close(loss, prob.batch_loss(None), rtol=1e-12, atol=0)
    for g, r in zip(torch.autograd.grad(loss, params), grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)


def test_the_trained_loss_includes_the_ridge_penalty():
    # The records include the ridge (checked against cmtf_als above); the loss that Adam
    # minimises must too, on all samples and on a batch (once, not scaled by N / B), and
    # its gradient in W and C gains 2 ridge W and 2 ridge C.
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f, level=0.3)
    ridge = 0.1
    with_ridge = _FlexibleCost(layer, X, Y, DenseJacobian(J), 0.6, ridge)
    without = _FlexibleCost(layer, X, Y, DenseJacobian(J), 0.6, 0.0)
    params = [layer.W, layer.C, layer.V]
    for idx in (None, torch.arange(0, N, 3)):
        a, b = with_ridge.batch_loss(idx), without.batch_loss(idx)
        penalty = ridge * float((layer.W**2).sum().detach() + (layer.C**2).sum().detach())
        assert float((a - b).detach()) == pytest.approx(penalty, rel=1e-10)
        ga, gb = torch.autograd.grad(a, params), torch.autograd.grad(b, params)
        torch.testing.assert_close(ga[0] - gb[0], 2 * ridge * layer.W.detach())
        torch.testing.assert_close(ga[1] - gb[1], 2 * ridge * layer.C.detach())
        torch.testing.assert_close(ga[2], gb[2], rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- subspace
def _subspace_truth(k=2, seed=0):
    """Samples of ``f(x) = b + W g(x P Q)``, a decoupled function of ``k`` projected inputs
    (m=6, n=3, R=4 branches, Chebyshev D=5), and the true ``P`` (m, k) and ``g`` (of x P)."""
    gen = torch.Generator().manual_seed(seed)
    P = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))[0]
    g, Z, _, _ = decoupled_samples(n, k, 4, "chebyshev", D, N, seed=seed)
    X = torch.randn(N, m, generator=gen, dtype=torch.float64)
    X = X - (X @ P) @ P.T + Z @ P.T  # so that X P = Z, the points g's basis was fitted on
    f = FlexibleLayer.from_decoupled(g, projection=P)
    with torch.no_grad():
        Y = f(X)
    J = torch.func.vmap(torch.func.jacrev(lambda x: f(x[None])[0]))(X).permute(1, 2, 0)
    return g, P, X, Y, J.detach().contiguous()


def _layer_errors(layer, X, Y, J):
    """Ground truth from the layer itself: its forward pass and its autograd Jacobians."""
    with torch.no_grad():
        co = float(((Y - layer(X)) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum())
    Jh = torch.func.vmap(torch.func.jacrev(lambda x: layer(x[None])[0]))(X).permute(1, 2, 0)
    cj = float(((J - Jh.detach()) ** 2).sum() / (J**2).sum())
    return cj, co


@pytest.mark.parametrize("k", [2, m])
@pytest.mark.parametrize("batch_size", [None, 50])
def test_subspace_layer_costs_are_the_layers_errors(k, batch_size):
    # The branch inputs of a subspace layer are (x P) Q: the fit used to compute x Q, a
    # shape error for k < m and, for k = m, costs of another function than the layer's.
    _, X, Y, J = _truth()
    layer = FlexibleLayer(m, n, 4, "chebyshev", D, subspace=k, seed=0, dtype=torch.float64)
    P0 = layer.P.detach().clone()
    out = fit_by_gradient(layer, X, Y, J, lam=0.7, epochs=3, lr=1e-2, batch_size=batch_size)
    assert out.n_epochs == 3
    assert not torch.equal(layer.P, P0)  # P trains with the other parameters
    cj, co = _layer_errors(layer, X, Y, J)
    np.testing.assert_allclose(out.cost_jacobian[-1], cj, rtol=1e-10)
    np.testing.assert_allclose(out.cost_output[-1], co, rtol=1e-10)
    np.testing.assert_allclose(out.cost[-1], cj + 0.7 * co, rtol=1e-10)
    # The start record too, and the same costs as the equivalent layer without subspace.
    start = fit_by_gradient(layer, X, Y, J, lam=0.7, epochs=0)
    plain = FlexibleLayer.from_decoupled(layer.to_decoupled())
    ref = fit_by_gradient(plain, X, Y, J, lam=0.7, epochs=0)
    np.testing.assert_allclose(start.cost_jacobian[0], cj, rtol=1e-10)
    np.testing.assert_allclose(start.cost_output[0], co, rtol=1e-10)
    np.testing.assert_allclose(start.cost, ref.cost, rtol=1e-10)


def test_subspace_layer_gradient_reaches_p_and_q():
    _, X, Y, J = _truth()
    layer = FlexibleLayer(m, n, 4, "chebyshev", D, subspace=2, seed=0, dtype=torch.float64)
    lam = 0.6
    params = [layer.W, layer.V, layer.C, layer.b, layer.P]
    prob = _FlexibleCost(layer, X, Y, DenseJacobian(J), lam, 0.0)
    grads = torch.autograd.grad(prob.batch_loss(None), params)
    # Dense reference: the layer's own outputs and autograd Jacobians (double backward).
    out = layer(X)
    Jh = torch.func.vmap(torch.func.jacrev(lambda x: layer(x[None])[0]))(X).permute(1, 2, 0)
    dense = ((J - Jh) ** 2).sum() / (J**2).sum() + lam * ((Y - out) ** 2).sum() / (
        (Y - Y.mean(0)) ** 2
    ).sum()
    for g, r in zip(grads, torch.autograd.grad(dense, params), strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-13)
    # Minibatches and a JacobianTensor that is not dense give the same gradient.
    order = torch.randperm(N, generator=torch.Generator().manual_seed(0))
    summed = [torch.zeros_like(p) for p in params]
    for idx in order.split(64):
        gb = torch.autograd.grad(prob.batch_loss(idx) * idx.numel() / N, params)
        summed = [s + g for s, g in zip(summed, gb, strict=True)]
    generic = _FlexibleCost(layer, X, Y, _Wrapped(J), lam, 0.0)
    gg = torch.autograd.grad(generic.batch_loss(None), params)
    for g, s, h in zip(grads, summed, gg, strict=True):
        torch.testing.assert_close(s, g, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(h, g, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("freeze", [False, True])
def test_subspace_layer_training_on_exactly_decoupled_data(freeze):
    g, P, X, Y, J = _subspace_truth(k=2)
    gen = torch.Generator().manual_seed(1)

    def p(A, level=0.1):
        E = torch.randn(A.shape, generator=gen, dtype=A.dtype)
        return A + level * E * A.norm() / E.norm()

    start = DecoupledFunction(p(g.W), p(g.V), p(g.C), g.b.clone(), g.basis.clone())
    layer = FlexibleLayer.from_decoupled(start, projection=P if freeze else p(P))
    if freeze:  # the documented way to keep the subspace fixed
        layer.P.requires_grad_(False)
    out = fit_by_gradient(layer, X, Y, J, epochs=150, lr=3e-3, batch_size=50)
    assert out.cost[-1] < out.cost[0] / 100
    if freeze:
        assert torch.equal(layer.P, P)
    cj, co = _layer_errors(layer, X, Y, J)
    np.testing.assert_allclose(out.cost[-1], cj + co, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- training
# Measured cost reductions: 1.0e7 (full batches), 3.3e4 (batches of 50); the tenfold one
# asked before was three to six orders of magnitude short of what the training achieves.
@pytest.mark.parametrize(("batch_size", "reduction"), [(None, 1e5), (50, 1e3)])
def test_training_lowers_cost_on_exactly_decoupled_data(batch_size, reduction):
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f, level=0.1)
    out = fit_by_gradient(layer, X, Y, J, lam=1.0, epochs=150, lr=1e-2, batch_size=batch_size)
    assert out.n_epochs == 150 and out.stop_reason == "reached epochs=150"
    assert out.cost.shape == out.time_s.shape == out.epoch.shape == (151,)
    np.testing.assert_array_equal(out.epoch, np.arange(151.0))
    assert np.all(np.diff(out.time_s) >= 0)
    assert out.cost[-1] < out.cost[0] / reduction
    # The records describe the trained layer (up to the expanded square's rounding, about
    # 1e-16 of the normalised cost's scale).
    cj, co = _dense_costs(layer, X, Y, J)
    np.testing.assert_allclose(out.cost[-1], cj + co, rtol=1e-10, atol=1e-14)


def test_outputs_only_training_any_layer_and_float32():
    f, X, Y, _ = _truth()
    layer = _perturbed_layer(f, level=0.1).float()
    out = fit_by_gradient(layer, X.numpy(), Y.numpy(), epochs=100, lr=1e-2, batch_size=100)
    assert layer.W.dtype == torch.float32
    assert np.isnan(out.cost_jacobian).all()
    assert out.cost[-1] < out.cost[0] / 1e3  # measured 6e5
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(m, 16), nn.Tanh(), nn.Linear(16, n)).double()
    out = fit_by_gradient(mlp, X, Y, epochs=100, lr=1e-2)
    assert out.cost[-1] < out.cost[0] / 2


def test_same_seed_identical_different_seed_differs():
    f, X, Y, J = _truth()

    def run(seed):
        layer = _perturbed_layer(f, level=0.1)
        out = fit_by_gradient(layer, X, Y, J, epochs=5, lr=1e-2, batch_size=30, seed=seed)
        return layer, out

    a, ra = run(7)
    b, rb = run(7)
    c, rc = run(8)
    for name in ("W", "V", "C", "b"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    for key in ("cost", "cost_jacobian", "cost_output", "epoch"):
        np.testing.assert_array_equal(getattr(ra, key), getattr(rb, key))
    assert ra.cost[0] == rc.cost[0]  # same start
    assert not np.array_equal(ra.cost[1:], rc.cost[1:])
    assert not torch.equal(a.V, c.V)
    # seeds torch's generator cannot take are refused before any work (2**70 overflowed it)
    for bad, error in ((2**70, ValueError), (-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="seed must be an int >= 0"):
            fit_by_gradient(_perturbed_layer(f), X, Y, J, epochs=1, seed=bad)


def test_same_seed_identical_with_dropout_in_the_layer():
    # The seed drew only the batch orders: dropout inside the layer used the unseeded global
    # RNG, so two runs with the same seed gave different weights and costs.
    _, X, Y, _ = _truth()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(m, 16), nn.Dropout(0.5), nn.Linear(16, n)).double()

    def run(seed):
        layer = copy.deepcopy(net)
        return layer, fit_by_gradient(layer, X, Y, epochs=3, lr=1e-2, batch_size=50, seed=seed)

    torch.manual_seed(1)
    a, ra = run(7)
    outside = torch.rand(3)
    torch.manual_seed(2)
    b, rb = run(7)
    np.testing.assert_array_equal(ra.cost, rb.cost)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), outside)  # the caller's global RNG is left as it was


# ---------------------------------------------------------------------------- stopping
def test_time_limit_stops_training():
    f, X, Y, J = _truth()
    out = fit_by_gradient(_perturbed_layer(f), X, Y, J, epochs=1000, lr=1e-2, time_limit=0.0)
    assert out.n_epochs == 1 and "time_limit" in out.stop_reason
    assert out.time_s.shape == (2,) and out.time_s[1] > 0


def test_callback_stops_and_its_time_is_not_counted():
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f)
    seen = []

    def callback(info):
        seen.append(info)
        time.sleep(0.2)
        return info["epoch"] == 3

    out = fit_by_gradient(layer, X, Y, J, epochs=100, lr=1e-2, callback=callback)
    assert out.n_epochs == 3 and out.stop_reason == "stopped by callback"
    assert [i["epoch"] for i in seen] == [0, 1, 2, 3]
    assert set(seen[0]) == {"epoch", "time_s", "cost", "cost_jacobian", "cost_output", "layer"}
    assert seen[0]["layer"] is layer
    np.testing.assert_array_equal([i["cost"] for i in seen], out.cost)
    np.testing.assert_array_equal([i["time_s"] for i in seen], out.time_s)
    assert out.time_s[-1] < 0.2  # four 0.2 s sleeps in the callback are not charged
    # Stopping at the start: no epoch is trained.
    out0 = fit_by_gradient(layer, X, Y, J, epochs=10, callback=lambda info: True)
    assert out0.n_epochs == 0 and out0.cost.shape == (1,)
    assert out0.stop_reason == "stopped by callback"


def test_layer_mode_restored():
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f)
    modes = []
    layer.eval()
    fit_by_gradient(layer, X, Y, J, epochs=2, callback=lambda i: modes.append(i["layer"].training))
    assert modes == [False, False, False] and not layer.training


# ---------------------------------------------------------------------------- validation
def test_bad_inputs_raise_clear_errors():
    f, X, Y, J = _truth()
    layer = _perturbed_layer(f)
    with pytest.raises(ValueError, match=r"X must have shape \(N, m\) = \(200, 6\)"):
        fit_by_gradient(layer, X[:, :5], Y, J)
    with pytest.raises(ValueError, match=r"Y must have shape \(N, n\) = \(200, 3\)"):
        fit_by_gradient(layer, X, Y[:, :2], J)
    with pytest.raises(ValueError, match=r"J must have shape \(n, m, N\)"):
        fit_by_gradient(layer, X, Y, J[:, :, 0])
    with pytest.raises(ValueError, match=r"X must have shape \(N, m\) = \(199, 6\)"):
        fit_by_gradient(layer, X, Y, J[:, :, :199])
    with pytest.raises(ValueError, match="Y must have shape"):
        fit_by_gradient(layer, X, Y[:199])
    Xbad = X.clone()
    Xbad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="X contains NaN or Inf"):
        fit_by_gradient(layer, Xbad, Y, J)
    Jbad = J.clone()
    Jbad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="J contains NaN or Inf"):
        fit_by_gradient(layer, X, Y, Jbad)
    with pytest.raises(TypeError, match="must be a tenflex.nn.FlexibleLayer.*Linear"):
        fit_by_gradient(nn.Linear(m, n).double(), X, Y, J)
    with pytest.raises(ValueError, match="lam must be >= 0, got -1.0"):
        fit_by_gradient(layer, X, Y, J, lam=-1.0)
    with pytest.raises(ValueError, match="epochs must be >= 0, got -1"):
        fit_by_gradient(layer, X, Y, J, epochs=-1)
    with pytest.raises(ValueError, match="lr must be > 0, got 0.0"):
        fit_by_gradient(layer, X, Y, J, lr=0.0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        fit_by_gradient(layer, X, Y, J, batch_size=0)
    with pytest.raises(TypeError, match="batch_size must be an int"):
        fit_by_gradient(layer, X, Y, J, batch_size=2.5)
    with pytest.raises(ValueError, match="layer must map m = 6 inputs to n = 3 outputs"):
        fit_by_gradient(FlexibleLayer(5, n, R, "chebyshev", D, dtype=torch.float64), X, Y, J)
    with pytest.raises(ValueError, match="needs a dense J"):
        fit_by_gradient(layer, X, Y, _Wrapped(J), batch_size=10)
    with pytest.raises(ValueError, match="Y must match the layer's output"):
        fit_by_gradient(nn.Linear(m, 2).double(), X, Y)
    with pytest.raises(ValueError, match="Y is constant"):
        fit_by_gradient(layer, X, torch.ones_like(Y), J)
    with pytest.raises(ValueError, match="J is identically zero"):
        fit_by_gradient(layer, X, Y, torch.zeros_like(J))
    with pytest.raises(TypeError, match="layer must be a torch.nn.Module"):
        fit_by_gradient(lambda x: x, X, Y)


def test_magnitude_checks_and_messages_are_those_of_cmtf_als():
    _, X, Y, J = _truth()
    X, Y, J = X[:20], Y[:20], J[:, :, :20]
    layer = FlexibleLayer(m, n, R, "chebyshev", D, seed=0, dtype=torch.float64)
    # huge J used to give a NaN cost and "lower lr"; tiny J was called identically zero
    for scale, match in [(1e160, "J is too large in magnitude"), (1e-170, "J is too small")]:
        with pytest.raises(ValueError, match=match) as ours:
            fit_by_gradient(layer, X, Y, J * scale, epochs=1)
        with pytest.raises(ValueError) as theirs:
            cmtf_als(X, Y, J * scale, R, basis="chebyshev", n_functions=D, max_iter=1)
        assert str(ours.value) == str(theirs.value)
    # the output term's normalisation, with or without J
    for Jarg in (J, None):
        with pytest.raises(ValueError, match=r"Y \(centred\) is too large in magnitude"):
            fit_by_gradient(layer, X, Y * 1e160, Jarg, epochs=1)
    # finite float64 data beyond float32: not "NaN or Inf", and how to fix it
    layer32 = FlexibleLayer(m, n, R, "chebyshev", D, seed=0)
    with pytest.raises(ValueError, match=r"X has values up to 1e\+300 in magnitude, which overflow "
                       r"the layer's dtype torch.float32.*layer.to\(torch.float64\)"):
        fit_by_gradient(layer32, torch.full_like(X, 1e300), Y, J, epochs=1)
    # the Jacobian cost of cmtf_als needs single precision at least
    with pytest.raises(TypeError, match="with J given, the layer must be float32 or float64"):
        fit_by_gradient(layer32.half(), X, Y, J, epochs=1)


def test_every_module_gets_its_mode_back_and_a_frozen_batchnorm_its_statistics():
    # Only the top flag came back; a BatchNorm the caller had put in eval mode was trained
    # in train mode (its running statistics moved) and left in it.
    torch.manual_seed(0)
    _, X, Y, _ = _truth()
    net = nn.Sequential(nn.Linear(X.shape[1], 6), nn.BatchNorm1d(6), nn.Tanh(),
                        nn.Linear(6, Y.shape[1])).double()
    net.train()
    net[1].eval()
    net[1].requires_grad_(False)
    stats = net[1].running_mean.clone()
    modes = [m.training for m in net.modules()]
    fit_by_gradient(net, X, Y, epochs=2, batch_size=10)
    assert [m.training for m in net.modules()] == modes
    assert torch.equal(net[1].running_mean, stats)
    # a network given in eval mode trains in train mode and comes back in eval mode
    net.eval()
    net[3].train()
    modes = [m.training for m in net.modules()]
    fit_by_gradient(net, X, Y, epochs=1, batch_size=10)
    assert [m.training for m in net.modules()] == modes
    assert not torch.equal(net[1].running_mean, stats)  # the steps ran in train mode
