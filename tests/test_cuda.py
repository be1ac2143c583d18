"""The package on a CUDA device: every stage runs there and agrees with the CPU.

Skipped where no CUDA device is present (as in CI); on a machine with one,
``python -m pytest tests/test_cuda.py``. Each test runs the same computation on the CPU and
on the GPU, checks that what the GPU run returns lives on the GPU, and compares the two: to
rounding for the float64 layers and solvers, to the image for the accuracies of the float32
networks trained on both.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from problems import WrappedCNN, decoupled_samples
from torch import nn

from tenflex import zoo
from tenflex.basis import make_basis
from tenflex.cpd import FactoredJacobian
from tenflex.fit import cmtf_als, decouple_cpd
from tenflex.gradfit import fit_by_gradient
from tenflex.nn import FlexibleLayer, ProjectedKAN
from tenflex.nn.compress import compress, load_compressed, save_compressed
from tenflex.nn.compress_tnn import compress_and_train, compress_network
from tenflex.nn.lowrank import decompose_layer
from tenflex.nn.tensorial import tensor_op
from tenflex.sampling import sample_function
from tenflex.subspace import active_subspace

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def _on_cuda(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cuda" for t in tensors)


def _close(gpu: torch.Tensor, cpu: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-10):
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def decoupled():
    """An exactly decoupled B-spline function and its noise-free samples (CPU, float64)."""
    return decoupled_samples(4, 5, 3, "bspline", 6, 400, seed=7)


@pytest.fixture(scope="module")
def digits():
    return zoo.digits_tensors("train"), zoo.digits_tensors("test")


@pytest.mark.parametrize("name", ["monomial", "chebyshev", "legendre", "bspline", "hinge"])
def test_bases_match_the_cpu(name):
    Z = torch.randn(300, 4, dtype=torch.float64) * 2
    basis = make_basis(name, 6).fit_domain(Z)
    G, dG = basis.values_and_derivatives(Z)
    G_gpu, dG_gpu = copy.deepcopy(basis).to(CUDA).values_and_derivatives(Z.to(CUDA))
    assert _on_cuda(G_gpu, dG_gpu)
    _close(G_gpu, G)
    _close(dG_gpu, dG)


def test_factored_jacobian_matches_the_cpu():
    gen = torch.Generator().manual_seed(3)
    K, A = (torch.randn(*shape, generator=gen, dtype=torch.float64)
            for shape in [(4, 6, 50), (6, 9)])
    W, V, H = (torch.randn(*shape, generator=gen, dtype=torch.float64)
               for shape in [(4, 3), (9, 3), (50, 3)])
    cpu, gpu = FactoredJacobian(K, A), FactoredJacobian(K.to(CUDA), A.to(CUDA))
    assert gpu.device.type == "cuda" and _on_cuda(gpu.A)
    assert gpu.norm_sq() == pytest.approx(cpu.norm_sq(), rel=1e-12)
    T = cpu.contract_input(V)
    T_gpu = gpu.contract_input(V.to(CUDA))
    assert _on_cuda(T_gpu)
    _close(T_gpu, T)
    _close(gpu.mttkrp_input(W.to(CUDA), H.to(CUDA)), cpu.mttkrp_input(W, H))
    _close(gpu.contract_input_adjoint(T.to(CUDA)), cpu.contract_input_adjoint(T))


def test_flexible_layer_forward_and_gradients_match_the_cpu(decoupled):
    f, X, _, _ = decoupled
    layer = f.to_module()
    layer_gpu = copy.deepcopy(layer).to(CUDA)
    assert isinstance(layer_gpu, FlexibleLayer)
    layer(X).square().sum().backward()
    y_gpu = layer_gpu(X.to(CUDA))
    y_gpu.square().sum().backward()
    assert _on_cuda(y_gpu)
    _close(y_gpu, layer(X))
    for (name, p), p_gpu in zip(layer.named_parameters(), layer_gpu.parameters()):
        assert p_gpu.grad is not None and _on_cuda(p_gpu.grad), name
        _close(p_gpu.grad, p.grad, rtol=1e-8, atol=1e-8)


def test_decoupled_function_outputs_and_jacobians_match_the_cpu(decoupled):
    f, X, Y, J = decoupled
    Y_gpu, J_gpu = f.to(device=CUDA).outputs_and_jacobian(X.to(CUDA))
    assert _on_cuda(Y_gpu, J_gpu)
    _close(Y_gpu, Y)
    _close(J_gpu, J)


def test_sampling_a_cuda_module_matches_the_cpu():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(7, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    X = torch.randn(250, 7, dtype=torch.float64)
    cpu = sample_function(net, X)
    gpu = sample_function(copy.deepcopy(net).to(CUDA), X.to(CUDA))
    assert _on_cuda(gpu.X, gpu.Y, gpu.J)
    _close(gpu.Y, cpu.Y)
    _close(gpu.J, cpu.J)


@pytest.mark.parametrize("solver", ["als", "gn"])
def test_cmtf_als_on_cuda_follows_the_cpu_run(decoupled, solver):
    _, X, Y, J = decoupled
    kwargs = {"init": "random", "seed": 3, "max_iter": 40, "solver": solver, "lam": 10.0}
    cpu = cmtf_als(X, Y, J, 3, "bspline", 6, **kwargs)
    gpu = cmtf_als(X.to(CUDA), Y.to(CUDA), J.to(CUDA), 3, "bspline", 6, **kwargs)
    assert gpu.model.device.type == "cuda"
    assert np.all(np.diff(gpu.cost) <= 1e-12 * gpu.cost[:-1])  # never increases
    assert gpu.n_iter == cpu.n_iter
    # The same start and the same steps: the histories agree to rounding.
    np.testing.assert_allclose(gpu.cost, cpu.cost, rtol=1e-6)
    Yhat_gpu = gpu.model(X.to(CUDA))
    _close(Yhat_gpu, cpu.model(X), rtol=1e-5, atol=1e-6)


def test_cmtf_als_from_the_cpd_recovers_the_truth_on_cuda(decoupled):
    _, X, Y, J = decoupled
    res = cmtf_als(X.to(CUDA), Y.to(CUDA), J.to(CUDA), 3, "bspline", 6,
                   cpd_options={"n_starts": 2, "cpd_method": "nls"})
    Yhat, Jhat = res.model.outputs_and_jacobian(X.to(CUDA))
    assert _on_cuda(Yhat, Jhat)
    assert (Yhat.cpu() - Y).norm() / (Y - Y.mean(0)).norm() < 1e-6
    assert (Jhat.cpu() - J).norm() / J.norm() < 1e-6


def test_decouple_cpd_on_cuda_recovers_a_polynomial():
    _, X, Y, J = decoupled_samples(4, 6, 2, "monomial", 3, 200, seed=3)
    res = decouple_cpd(X.to(CUDA), Y.to(CUDA), J.to(CUDA), 2, "monomial", 3, n_starts=2)
    Yhat, Jhat = res.model.outputs_and_jacobian(X.to(CUDA))
    assert _on_cuda(Yhat, Jhat)
    assert (Yhat.cpu() - Y).norm() / (Y - Y.mean(0)).norm() < 1e-8
    assert (Jhat.cpu() - J).norm() / J.norm() < 1e-8


def test_gradient_fit_on_cuda_follows_the_cpu_run(decoupled):
    f, X, Y, J = decoupled
    start = copy.deepcopy(f.to_module())
    with torch.no_grad():
        start.V.mul_(1.1)
    cpu_layer, gpu_layer = copy.deepcopy(start), copy.deepcopy(start).to(CUDA)
    kwargs = {"lam": 10.0, "epochs": 20, "lr": 1e-3, "batch_size": 100, "seed": 0}
    cpu = fit_by_gradient(cpu_layer, X, Y, J, **kwargs)
    gpu = fit_by_gradient(gpu_layer, X.to(CUDA), Y.to(CUDA), J.to(CUDA), **kwargs)
    assert _on_cuda(*gpu_layer.parameters())
    assert gpu.cost[-1] < gpu.cost[0]
    np.testing.assert_allclose(gpu.cost, cpu.cost, rtol=1e-6)


def test_projected_kan_forward_and_gradients_match_the_cpu():
    torch.manual_seed(0)
    kan = ProjectedKAN(12, 3, 4).double()
    kan_gpu = copy.deepcopy(kan).to(CUDA)
    x = torch.randn(64, 12, dtype=torch.float64)
    kan(x).square().sum().backward()
    y_gpu = kan_gpu(x.to(CUDA))
    y_gpu.square().sum().backward()
    _close(y_gpu, kan(x))
    for p, p_gpu in zip(kan.parameters(), kan_gpu.parameters()):
        _close(p_gpu.grad, p.grad, rtol=1e-8, atol=1e-8)


def test_generalized_tensor_operations_match_the_cpu():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 13, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 4, 4, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    for impl in ("torch", "unfold"):
        out = tensor_op("bsh,tsh->bth|h", x, w, conv={"h": {"padding": 1}}, impl=impl)
        out_gpu = tensor_op("bsh,tsh->bth|h", x.to(CUDA), w.to(CUDA),
                            conv={"h": {"padding": 1}}, impl=impl)
        assert _on_cuda(out_gpu)
        _close(out_gpu, out)
    # partial outer product along b, contraction along r
    _close(tensor_op("br,brk->bk", a.to(CUDA), b.to(CUDA)), tensor_op("br,brk->bk", a, b))


@pytest.mark.parametrize("method", ["cp", "tucker2", "tt"])
def test_low_rank_convolutions_decompose_a_cuda_layer(method):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, padding=1).double()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    conv_gpu = copy.deepcopy(conv).to(CUDA)
    gpu = decompose_layer(conv_gpu, method, rank=3)
    cpu = decompose_layer(conv, method, rank=3)
    assert _on_cuda(*gpu.parameters())
    with torch.no_grad():
        y_gpu, y = gpu(x.to(CUDA)), cpu(x)
        dense = conv(x)
    assert _on_cuda(y_gpu)
    # Both are rank-3 approximations of the same kernel, equally good up to the solver's
    # rounding (CP is fitted iteratively, so its factors need not agree entry by entry).
    err_gpu = (y_gpu.cpu() - dense).norm() / dense.norm()
    err_cpu = (y - dense).norm() / dense.norm()
    assert err_gpu < 1 and abs(err_gpu - err_cpu) < 1e-3 * max(err_cpu, 1e-12) + 1e-6


def test_zoo_training_and_compression_of_a_cuda_cnn(digits, tmp_path):
    (train_x, train_y), (test_x, test_y) = digits
    model = zoo.build_model("reference_cnn", seed=0).to(CUDA)
    zoo.train(model, (train_x, train_y), epochs=2, lr=3e-3, seed=0)
    model.eval()
    assert _on_cuda(*model.parameters())
    accuracy = zoo.evaluate(model, test_x, test_y)
    assert accuracy > 0.8
    result = compress(model, ("fc1", "fc2"), train_x, rank=6, n_functions=6, n_samples=600,
                      n_validation=300, test_data=(test_x, test_y),
                      fit_options={"max_iter": 25, "init": "random"}, seed=0,
                      finetune={"scope": "layer", "epochs": 1, "lr": 1e-3,
                                "train_labels": train_y})
    assert _on_cuda(*result.model.parameters(), *result.finetuned_model.parameters())
    report = result.report
    assert report.accuracy_before == pytest.approx(accuracy)
    assert report.accuracy_after > accuracy - 0.1
    assert report.fit_output_error_validation < 0.6
    # Saved from the GPU, loaded back (on the CPU) with the same accuracy.
    path = tmp_path / "compressed.pt"
    save_compressed(path, result, {"model": "reference_cnn"})
    loaded, _ = load_compressed(path)
    assert zoo.evaluate(loaded, test_x, test_y) == pytest.approx(report.accuracy_after)
    # A network of one's own: saved from the GPU, loaded into a copy of a CUDA instance,
    # which comes back on the CPU while the instance given stays on the GPU.
    mine = compress(WrappedCNN(model).eval(), "classifier", train_x, rank=4, n_functions=6,
                    n_samples=600, n_validation=0, fit_options={"max_iter": 5}, seed=0)
    save_compressed(tmp_path / "mine.pt", mine)
    given = WrappedCNN(zoo.build_model("reference_cnn", seed=1)).to(CUDA)
    loaded, _ = load_compressed(tmp_path / "mine.pt", model=given)
    assert not _on_cuda(*loaded.parameters()) and _on_cuda(*given.parameters())
    with torch.no_grad():
        # float32 convolutions on the GPU may run in TF32 (10-bit mantissa): about 1e-3.
        torch.testing.assert_close(loaded(test_x[:64]), mine.model(test_x[:64].to(CUDA)).cpu(),
                                   rtol=1e-2, atol=1e-2)


def test_active_subspace_and_a_subspace_compression_on_cuda(digits):
    (train_x, _train_y), (test_x, test_y) = digits
    gen = torch.Generator().manual_seed(3)
    K = torch.randn(3, 6, 80, generator=gen, dtype=torch.float64)
    A = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    cpu = active_subspace(FactoredJacobian(K, A), 4, seed=2)
    gpu = active_subspace(FactoredJacobian(K.to(CUDA), A.to(CUDA)), 4, seed=2)
    assert _on_cuda(gpu.P, gpu.energy)
    _close(gpu.energy, cpu.energy, rtol=1e-8)
    _close(torch.linalg.svdvals(gpu.P.T @ cpu.P.to(CUDA)), torch.ones(4, dtype=torch.float64),
           rtol=0, atol=1e-8)
    model = zoo.build_model("reference_cnn", seed=0).eval()
    runs = {}
    for device in ("cpu", "cuda"):
        net = copy.deepcopy(model).to(device)
        runs[device] = compress(net, ("fc1", "fc2"), train_x, rank=12, subspace=3,
                                n_functions=6, n_samples=600, n_validation=300,
                                test_data=(test_x, test_y), fit_options={"max_iter": 5}, seed=0)
    assert _on_cuda(*runs["cuda"].model.parameters()) and runs["cuda"].layer.P.is_cuda
    assert runs["cuda"].report.subspace_captured == pytest.approx(
        runs["cpu"].report.subspace_captured, rel=1e-6)
    assert abs(runs["cuda"].report.accuracy_after - runs["cpu"].report.accuracy_after) <= 0.01


def test_tensorial_compression_and_training_of_a_cuda_lenet(digits):
    train, test = digits
    model = zoo.build_model("lenet5", seed=0).to(CUDA)
    zoo.train(model, train, epochs=4, batch_size=64, lr=5e-3, seed=0)
    model.eval()
    for form in ("rcp", "rtt", "tucker"):
        net, _ = compress_network(model, form, 0.2, n_iter_max=5)
        assert _on_cuda(*net.parameters()), form
        with torch.no_grad():
            assert net(test[0][:4].to(CUDA)).shape == (4, 10)
    kwargs = {"distill_samples": 400, "distill_epochs": 2, "finetune_samples": 600,
              "finetune_epochs": 1, "batch_size": 64, "seed": 3, "n_iter_max": 20}
    net, result = compress_and_train(model, "rcp", 0.1, train, test, **kwargs)
    assert _on_cuda(*net.parameters())
    for name, err in result.block_error.items():
        assert err["final"] < err["initial"], name
    assert result.accuracy["fine_tuned"] == pytest.approx(zoo.evaluate(net, *test))
    # The CPU run of the same settings from the same (copied) network.
    _, cpu = compress_and_train(copy.deepcopy(model).cpu(), "rcp", 0.1, train, test, **kwargs)
    # float32 on both, so rounding differs; seen on an H100: every accuracy the same to the
    # image, the block errors to 1e-6 relative.
    n_test = len(test[1])
    for stage, accuracy in result.accuracy.items():
        assert abs(accuracy - cpu.accuracy[stage]) <= 2 / n_test, stage
    for name, err in result.block_error.items():
        for when in ("initial", "final"):
            assert err[when] == pytest.approx(cpu.block_error[name][when], rel=1e-4), name
    # same seed, same network, on the GPU too (distillation asks for deterministic kernels)
    net2, result2 = compress_and_train(model, "rcp", 0.1, train, test, **kwargs)
    assert result2.accuracy == result.accuracy
    for (k, v), (k2, v2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_command_line_trains_compresses_and_evaluates_on_cuda(tmp_path, capsys):
    import json

    from tenflex.cli import main

    cache = str(tmp_path / "cache")
    assert main(["train", "--dataset", "digits", "--device", "cuda", "--cache-dir", cache,
                 "--report", str(tmp_path / "train.json")]) == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert trained["config"]["device"] == "cuda" and trained["test_accuracy"] > 0.8
    out = str(tmp_path / "model.pt")
    assert main(["compress", "--dataset", "digits", "--rank", "6", "--n-samples", "600",
                 "--n-validation", "300", "--max-iter", "10", "--device", "cuda", "--cache-dir", cache, "--out", out,
                 "--report", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    # the network trained above (on the GPU, cached under its own key) was the one compressed
    assert report["accuracy_before"] == pytest.approx(trained["test_accuracy"])
    capsys.readouterr()
    accuracies = []
    for device in ("cuda", "cpu"):
        assert main(["evaluate", out, "--device", device]) == 0
        accuracies.append(json.loads(capsys.readouterr().out)["test_accuracy"])
    assert accuracies[0] == pytest.approx(report["accuracy_after"])
    assert abs(accuracies[1] - accuracies[0]) <= 2 / 360  # float32 rounding, CPU vs GPU
