"""Tests of tenflex.zoo: reference networks, training, evaluation, pretrained cache.

Training runs on scikit-learn's 8x8 digits drawn into the MNIST frame (1437 training
images), so the file runs in seconds and needs no downloaded data.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest
import torch
from problems import Interrupt, stop_in_epoch
from torch import nn

from tenflex import zoo
from tenflex.data import DataError
from tenflex.files import atomic_write

# A pretrained() configuration that trains in a fraction of a second.
TINY = {"dataset": "digits", "epochs": 1, "n_train": 200}


@pytest.fixture(scope="module")
def digits():
    return zoo.digits_tensors("train"), zoo.digits_tensors("test")


def _conv_params(c_in, c_out, k):
    return c_out * c_in * k * k + c_out


def _fc_params(n_in, n_out):
    return n_in * n_out + n_out


# ---------------------------------------------------------------------------- models


def test_reference_cnn_layers_and_shapes():
    model = zoo.ReferenceCNN()
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2",
    ]  # fmt: skip
    assert model.fc1 is model[7] and model.conv2 is model[3]
    x = torch.randn(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model[:7](x).shape == (3, 3136)
    assert model[:3](x).shape == (3, 32, 14, 14)
    assert zoo.ReferenceCNN(n_classes=4)(x).shape == (3, 4)
    assert model.input_shape == (1, 28, 28)


def test_lenet5_layers_and_shapes():
    model = zoo.LeNet5()
    names = [name for name, _ in model.named_children()]
    assert names == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten",
        "fc1", "relu3", "fc2", "relu4", "fc3",
    ]  # fmt: skip
    x = torch.randn(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    assert model[:3](x).shape == (2, 6, 14, 14)
    assert model[:6](x).shape == (2, 16, 5, 5)
    assert model[:7](x).shape == (2, 400)
    assert model[:10](x).shape == (2, 84)


def test_parameter_counts_match_hand_computation():
    ref = (
        _conv_params(1, 32, 5) + _conv_params(32, 64, 5)
        + _fc_params(64 * 7 * 7, 128) + _fc_params(128, 10)
    )  # fmt: skip
    assert ref == 454_922
    assert zoo.ReferenceCNN().n_parameters == ref
    assert zoo.count_parameters(zoo.ReferenceCNN()) == ref
    lenet = (
        _conv_params(1, 6, 5) + _conv_params(6, 16, 5)
        + _fc_params(400, 120) + _fc_params(120, 84) + _fc_params(84, 10)
    )  # fmt: skip
    assert lenet == 61_706
    assert zoo.LeNet5().n_parameters == lenet
    model = zoo.LeNet5()
    model.conv1.weight.requires_grad_(False)
    assert zoo.count_parameters(model, trainable_only=True) == lenet - 150


def test_build_model_registry_and_seed():
    assert set(zoo.MODELS) == {"reference_cnn", "lenet5"}
    assert isinstance(zoo.build_model("lenet5"), zoo.LeNet5)
    assert isinstance(zoo.build_model("reference_cnn", n_classes=3), zoo.ReferenceCNN)
    state = torch.random.get_rng_state()
    a = zoo.build_model("lenet5", seed=1)
    b = zoo.build_model("lenet5", seed=1)
    c = zoo.build_model("lenet5", seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_bad_model_name():
    with pytest.raises(ValueError, match=r"unknown model name 'resnet'.*lenet5.*reference_cnn"):
        zoo.build_model("resnet")
    with pytest.raises(ValueError, match="unknown model name"):
        zoo.pretrained("lenet", dataset="digits")
    with pytest.raises(ValueError, match="n_classes"):
        zoo.LeNet5(n_classes=0)


# ------------------------------------------------------------------------------ data


def test_normalize_images_values():
    raw = np.zeros((2, 28, 28), dtype=np.uint8)
    raw[1] = 255
    x = zoo.normalize_images(raw)
    assert x.shape == (2, 1, 28, 28) and x.dtype == torch.float32
    mean, std = zoo.NORMALIZATION["mnist"]
    torch.testing.assert_close(x[0], torch.full((1, 28, 28), -mean / std))
    torch.testing.assert_close(x[1], torch.full((1, 28, 28), (1 - mean) / std))
    # (N, 1, 28, 28) input and torch input give the same result
    torch.testing.assert_close(zoo.normalize_images(torch.as_tensor(raw)[:, None]), x)
    with pytest.raises(ValueError, match="shape"):
        zoo.normalize_images(np.zeros((2, 3, 28, 28)))
    with pytest.raises(ValueError, match="unknown dataset"):
        zoo.normalize_images(raw, "cifar")


def test_mnist_normalisation_constants_match_training_set():
    try:
        x, y = zoo.mnist_tensors("train")
    except DataError:
        pytest.skip("MNIST files not available")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std()) - 1.0) < 1e-3


def test_digits_tensors(digits):
    (x, y), (xt, _) = digits
    assert x.shape == (1437, 1, 28, 28) and xt.shape == (360, 1, 28, 28)
    assert y.dtype == torch.int64 and set(y.tolist()) == set(range(10))
    background = -zoo.NORMALIZATION["digits"][0] / zoo.NORMALIZATION["digits"][1]
    # the 4-pixel border of the MNIST frame is empty
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert torch.allclose(x[:, 0][:, border], torch.tensor(background))
    # every image has ink, and values are rounded raw pixels normalised
    assert bool((x.amax(dim=(1, 2, 3)) > 1.0).all())
    raw = x * zoo.NORMALIZATION["digits"][1] + zoo.NORMALIZATION["digits"][0]
    torch.testing.assert_close(raw * 255, (raw * 255).round(), atol=1e-3, rtol=0)
    # deterministic split, disjoint halves of the 1797 images
    x2, y2 = zoo.digits_tensors("train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError, match="split"):
        zoo.digits_tensors("valid")
    with pytest.raises(ValueError, match="unknown dataset"):
        zoo.dataset_tensors("cifar10")


# -------------------------------------------------------------------- train/evaluate


def test_training_is_deterministic(digits):
    (x, y), _ = digits
    data = (x[:600], y[:600])
    models = [zoo.build_model("lenet5", seed=3) for _ in range(3)]
    r0 = zoo.train(models[0], data, epochs=1, batch_size=64, lr=3e-3, seed=7)
    r1 = zoo.train(models[1], data, epochs=1, batch_size=64, lr=3e-3, seed=7)
    zoo.train(models[2], data, epochs=1, batch_size=64, lr=3e-3, seed=8)
    np.testing.assert_array_equal(r0.losses, r1.losses)
    for p0, p1, p2 in zip(*(m.parameters() for m in models), strict=True):
        assert torch.equal(p0, p1)
    assert any(
        not torch.equal(p0, p2)
        for p0, p2 in zip(models[0].parameters(), models[2].parameters(), strict=True)
    )
    assert r0.n_steps == math.ceil(600 / 64) == len(r0.losses)


def test_training_learns_reference_cnn(digits):
    (x, y), (xt, yt) = digits
    model = zoo.build_model("reference_cnn", seed=0)
    before = zoo.evaluate(model, xt, yt)
    result = zoo.train(model, (x, y), epochs=1, batch_size=64, lr=2e-3, schedule="constant")
    # an untrained classifier has cross-entropy close to log(10)
    assert abs(result.losses[0] - math.log(10)) < 0.3
    assert result.losses[-5:].mean() < 0.25 * result.losses[0]
    after = zoo.evaluate(model, xt, yt)
    assert after > 0.75, (before, after)
    assert after > before + 0.5
    assert result.time_s > 0 and result.num_threads == torch.get_num_threads()


def test_training_learns_lenet5(digits):
    (x, y), (xt, yt) = digits
    model = zoo.build_model("lenet5", seed=0)
    result = zoo.train(model, (x, y), epochs=3, batch_size=64, lr=5e-3, seed=0)
    assert result.epoch_losses[-1] < 0.2 * result.epoch_losses[0]
    assert zoo.evaluate(model, xt, yt) > 0.9


def test_one_cycle_schedule():
    total = 40
    f = np.array([zoo.one_cycle_factor(k, total) for k in range(total)])
    assert f[0] == pytest.approx(1 / 25) and f[10] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(1e-4)
    assert f.argmax() == 10
    assert np.all(np.diff(f[:11]) > 0) and np.all(np.diff(f[10:]) < 0)
    # half-way through the decay the cosine is at its mid point
    mid = 10 + (total - 1 - 10) / 2
    assert zoo.one_cycle_factor(mid, total) == pytest.approx((1 + 1e-4) / 2)
    # degenerate lengths are fine
    assert zoo.one_cycle_factor(0, 1) == pytest.approx(1 / 25)
    assert [zoo.one_cycle_factor(k, 2) for k in range(2)] == pytest.approx([1 / 25, 1.0])


def _one_full_batch_step(**kwargs):
    """One optimizer step on a linear classifier; returns (p0, gradient, p1)."""
    x = torch.randn(20, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 4
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    p0 = [p.detach().clone() for p in model.parameters()]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    result = zoo.train(model, (x, y), epochs=1, batch_size=20, **kwargs)
    assert result.n_steps == 1
    return p0, grads, [p.detach() for p in model.parameters()]


def test_optimizer_steps_match_update_rules():
    # SGD, Nesterov momentum 0.9, first step: p - lr * (g + 0.9 * g)
    p0, grads, p1 = _one_full_batch_step(lr=0.1, optimizer="sgd", schedule="constant")
    for a, g, b in zip(p0, grads, p1, strict=True):
        torch.testing.assert_close(b, a - 0.1 * 1.9 * g)
    # Adam, first step (bias corrected): p - lr * g / (|g| + eps)
    p0, grads, p1 = _one_full_batch_step(lr=0.01, optimizer="adam", schedule="constant")
    for a, g, b in zip(p0, grads, p1, strict=True):
        torch.testing.assert_close(b, a - 0.01 * g / (g.abs() + 1e-8))
    # one-cycle starts at lr / 25
    p0, grads, p1 = _one_full_batch_step(lr=0.01, optimizer="adam", schedule="onecycle")
    for a, g, b in zip(p0, grads, p1, strict=True):
        torch.testing.assert_close(b, a - 0.01 / 25 * g / (g.abs() + 1e-8))


def test_train_leaves_global_state(digits):
    (x, y), _ = digits
    flag = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    zoo.train(zoo.LeNet5(), (x[:64], y[:64]), epochs=1, batch_size=64, lr=1e-3, seed=0)
    assert torch.are_deterministic_algorithms_enabled() == flag
    assert torch.get_num_threads() == threads


def test_train_rejects_bad_input(digits):
    (x, y), _ = digits
    model = zoo.LeNet5()
    with pytest.raises(ValueError, match=r"labels must have shape \(10,\)"):
        zoo.train(model, (x[:10], y[:9]), epochs=1)
    with pytest.raises(TypeError, match="pair"):
        zoo.train(model, x[:10], epochs=1)
    with pytest.raises(TypeError, match="labels must be integers"):
        zoo.train(model, (x[:10], y[:10].float()), epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        zoo.train(model, (torch.full_like(x[:10], float("nan")), y[:10]), epochs=1)
    with pytest.raises(ValueError, match="epochs"):
        zoo.train(model, (x[:10], y[:10]), epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        zoo.train(model, (x[:10], y[:10]), epochs=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        zoo.train(model, (x[:10], y[:10]), epochs=1, lr=-1.0)
    with pytest.raises(TypeError, match="deterministic must be a bool \\(True or False\\), got int"):
        zoo.train(model, (x[:10], y[:10]), epochs=1, deterministic=1)


def test_layers_by_name():
    model = zoo.ReferenceCNN()
    assert model["fc1"] is model.fc1 and model["conv2"] is model[3]
    with pytest.raises(KeyError, match="no layer named 'fc3'.*fc2"):
        zoo.ReferenceCNN()["fc3"]
    assert zoo.LeNet5()["fc3"].out_features == 10


def test_accuracy_counts_nan_rows_as_wrong_and_checks_the_logits():
    labels = torch.zeros(4, dtype=torch.int64)
    # argmax of an all-NaN row is 0: a network that outputs NaN scored 100 % on label 0
    assert zoo.accuracy(torch.full((4, 3), math.nan), labels) == 0.0
    logits = torch.tensor([[1.0, 0, 0], [1, math.nan, 0], [0, 1, 0], [2, 0, 0]])
    assert zoo.accuracy(logits, labels) == 0.5
    assert zoo.accuracy(logits.numpy(), labels.numpy()) == 0.5
    assert zoo.accuracy(torch.eye(3, dtype=torch.int64), [0, 1, 2]) == 1.0
    for bad in (torch.randn(4), torch.empty(0, 3), torch.randn(4, 0), torch.randn(4, 3, 1)):
        with pytest.raises(ValueError, match="logits must have shape"):
            zoo.accuracy(bad, labels[: len(bad)])
    with pytest.raises(TypeError, match="real numbers"):
        zoo.accuracy(torch.ones(4, 3, dtype=torch.complex64), labels)


def test_evaluate_of_a_nan_network_is_zero(digits):
    (x, _), _ = digits
    model = zoo.build_model("lenet5", seed=0)
    with torch.no_grad():
        model.fc3.bias.fill_(math.nan)
    assert zoo.evaluate(model, x[:50], torch.zeros(50, dtype=torch.int64)) == 0.0


def test_flags_must_be_bools(tmp_path, digits):
    for flag in ("retrain", "progress", "return_info"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path, **{flag: "no"})
    assert not any(tmp_path.iterdir())  # refused before training
    (x, y), _ = digits
    with pytest.raises(TypeError, match="progress must be a bool"):
        zoo.train(zoo.build_model("lenet5", seed=0), (x[:10], y[:10]), progress=None)


def test_evaluate_matches_dense_computation(digits):
    (x, y), _ = digits
    x, y = x[:300], y[:300]
    model = zoo.build_model("lenet5", seed=5)
    model.train()
    with torch.no_grad():
        expected = float((model.eval()(x).argmax(1) == y).double().mean())
    model.train()
    assert zoo.evaluate(model, x, y) == pytest.approx(expected, abs=0)
    assert zoo.evaluate(model, x, y, batch_size=7) == pytest.approx(expected, abs=0)
    assert model.training  # mode restored
    # a model that reads the label off the input is always right
    oracle = nn.Sequential(nn.Flatten(), nn.Linear(10, 10, bias=False))
    with torch.no_grad():
        oracle[1].weight.copy_(torch.eye(10))
    onehot = torch.nn.functional.one_hot(y, 10).float()
    assert zoo.evaluate(oracle, onehot, y) == 1.0
    assert zoo.evaluate(oracle, onehot, (y + 1) % 10) == 0.0
    # a model without a class dimension is refused, not indexed out of range
    scalar = nn.Sequential(nn.Flatten(), nn.Linear(10, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"logits \(B, n_classes\), got \(300,\)"):
        zoo.evaluate(scalar, onehot, y)
    # uint8 raw pixels are normalised with the shared preprocessing
    raw = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    labels = np.arange(50) % 10
    assert zoo.evaluate(model, raw, labels) == zoo.evaluate(
        model, zoo.normalize_images(raw), torch.as_tensor(labels)
    )
    # ... MNIST-shaped ones only: MNIST's constants would silently misnormalise others
    colour = np.zeros((50, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(TypeError, match=r"raw uint8 images are normalised here only when "
                                        r"MNIST-shaped.*got \(50, 3, 32, 32\)"):
        zoo.evaluate(model, colour, labels)


def test_images_of_another_dtype_than_the_model_are_refused_clearly(digits):
    # A float64 model on float32 images used to fail inside torch ("Input type (float) and
    # bias type (double) should be the same") although a TypeError was documented.
    (x, y), _ = digits
    x, y = x[:50], y[:50]
    model = zoo.build_model("lenet5", seed=0).double()
    fix = (r"images have dtype torch.float32 but the model's parameters are torch.float64; "
           r"convert one of them \(e.g. images.to\(torch.float64\) or "
           r"model.to\(torch.float32\)\)")
    with pytest.raises(TypeError, match="images: " + fix):
        zoo.predict(model, x)
    with pytest.raises(TypeError, match="images/labels: " + fix):
        zoo.evaluate(model, x, y)
    with pytest.raises(TypeError, match="train_data: " + fix):
        zoo.train(model, (x, y), epochs=1)
    with pytest.raises(TypeError, match="validation: " + fix):
        zoo.train(model, (x.double(), y), epochs=1, validation=(x, y))
    with pytest.raises(TypeError, match="images have dtype torch.float64 but the model's "
                                        "parameters are torch.float32"):
        zoo.predict(zoo.build_model("lenet5", seed=0), x.double())
    # images in the model's dtype work (and agree with the dense computation)
    with torch.no_grad():
        expected = model.eval()(x.double())
    torch.testing.assert_close(zoo.predict(model, x.double()), expected, rtol=0, atol=0)
    assert zoo.evaluate(model, x.double(), y) == float((expected.argmax(1) == y).double().mean())
    # raw uint8 pixels are normalised in the model's dtype
    raw = np.random.default_rng(0).integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    logits = zoo.predict(model, raw)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, zoo.predict(model, zoo.normalize_images(raw).double()),
                               rtol=0, atol=0)


# --------------------------------------------------------------------- pretrained cache


def test_pretrained_cache_round_trip(tmp_path, monkeypatch):
    config = {"dataset": "digits", "epochs": 1, "seed": 1, "n_train": 300}
    model, info = zoo.pretrained("lenet5", **config, cache_dir=tmp_path, return_info=True)
    weights, sidecar = zoo.cache_paths("lenet5", **config, cache_dir=tmp_path)
    assert weights.is_file() and sidecar.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([weights.name, sidecar.name])
    assert json.loads(sidecar.read_text()) == info
    umask = os.umask(0)
    os.umask(umask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file
    assert info["config"]["model"] == "lenet5" and info["config"]["epochs"] == 1
    assert info["config"]["torch"] == torch.__version__
    assert info["n_train"] == 300 and info["n_test"] == 360
    assert info["n_parameters"] == 61_706
    assert not model.training
    xt, yt = zoo.digits_tensors("test")
    assert zoo.evaluate(model, xt, yt) == info["test_accuracy"]

    def no_training(*args, **kwargs):
        raise AssertionError("pretrained() trained although the cache holds the model")

    monkeypatch.setattr(zoo, "train", no_training)
    again, info2 = zoo.pretrained("lenet5", **config, cache_dir=tmp_path, return_info=True)
    assert info2 == info
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(AssertionError, match="trained although"):
        zoo.pretrained("lenet5", **config, cache_dir=tmp_path, retrain=True)
    # a different configuration is a different key: it has to train
    for change in ({"epochs": 2}, {"seed": 2}, {"n_train": 301}, {"dataset": "mnist"}):
        other, _ = zoo.cache_paths("lenet5", **{**config, **change}, cache_dir=tmp_path)
        assert other != weights, change
    with pytest.raises(AssertionError, match="trained although"):
        zoo.pretrained("lenet5", **{**config, "seed": 2}, cache_dir=tmp_path)


def test_as_device_names_what_it_refuses(monkeypatch):
    assert zoo.as_device(None) == torch.device("cpu")
    assert zoo.as_device("cpu") == torch.device("cpu")
    assert zoo.as_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(TypeError, match=r"device must be None, a str such as 'cpu'.*got int"):
        zoo.as_device(0)
    with pytest.raises(ValueError, match=r"--device 'tpu9' is not a device torch knows .*"
                                         r"use 'cpu', 'cuda' or 'cuda:N'"):
        zoo.as_device("tpu9", "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda:0': no CUDA device is available"):
        zoo.as_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert zoo.as_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2': only 2 CUDA device\(s\) present"):
        zoo.as_device("cuda:2")
    with pytest.raises(ValueError, match="no CUDA device"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        zoo.pretrained("lenet5", dataset="digits", device="cuda")


def test_networks_trained_on_a_gpu_are_cached_apart(tmp_path, monkeypatch):
    config = {"dataset": "digits", "epochs": 1, "seed": 1, "cache_dir": tmp_path}
    cpu, _ = zoo.cache_paths("lenet5", **config)
    # The CPU's key is the one of versions without a device entry: caches stay valid.
    assert zoo.cache_paths("lenet5", **config, device="cpu")[0] == cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu, _ = zoo.cache_paths("lenet5", **config, device="cuda")
    assert zoo.cache_paths("lenet5", **config, device="cuda:0")[0] == gpu != cpu
    assert zoo._pretrained_config("lenet5", "digits", 1, 1, None, "cuda")["device"] == "cuda"
    assert "device" not in zoo._pretrained_config("lenet5", "digits", 1, 1, None, "cpu")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("TENFLEX_CACHE", raising=False)
    root = os.path.dirname(os.path.dirname(os.path.abspath(zoo.__file__)))
    if os.path.isfile(os.path.join(root, "pyproject.toml")):
        assert zoo.default_cache_dir() == zoo.Path(root) / "data" / "models"
    monkeypatch.setenv("TENFLEX_CACHE", str(tmp_path / "c"))
    assert zoo.default_cache_dir() == tmp_path / "c"
    weights, _ = zoo.cache_paths("lenet5", dataset="digits")
    assert weights.parent == tmp_path / "c" and weights.name.startswith("lenet5-digits-")


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    weights, sidecar = zoo.cache_paths("lenet5", **TINY, cache_dir=tmp_path)

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    assert not weights.exists()
    assert [p.name for p in tmp_path.iterdir()] == [sidecar.name]  # no temporary left
    monkeypatch.undo()
    zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    assert weights.is_file()

    # an interrupted overwrite keeps the previous content
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def failing(handle):
        handle.write(b"new, partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, failing)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [weights.name, sidecar.name, "x.bin"]
    )


def test_damaged_cache_retrains_with_warning(tmp_path):
    model = zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    weights, _ = zoo.cache_paths("lenet5", **TINY, cache_dir=tmp_path)
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # retraining with the same seed gives the same model
    rewritten = torch.load(weights, weights_only=True)  # the file was repaired
    for key, value in model.state_dict().items():
        assert torch.equal(rewritten[key], value)
    # a state dict of another model is damaged too
    torch.save(zoo.ReferenceCNN().state_dict(), weights)
    with pytest.warns(RuntimeWarning, match="damaged"):
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)


# ----------------------------------------------------------------- argument checks


def _tiny_classifier():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 2, 3)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4)), x, torch.arange(8) % 4


@pytest.mark.parametrize("label", [4, -1])
def test_labels_outside_the_classes_fail_before_training(label):
    model, x, y = _tiny_classifier()
    bad = y.clone()
    bad[2] = label
    before = [p.detach().clone() for p in model.parameters()]
    calls = []
    with pytest.raises(ValueError, match=r"train_data: labels must be class indices in \[0, 4\)"
                                         rf".*\[{label}\]"):
        zoo.train(model, (x, bad), epochs=1, callback=lambda *a: calls.append(a))
    assert calls == []  # no optimizer step was made
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)
    # evaluate used to count them as wrong
    with pytest.raises(ValueError, match=r"images/labels: labels must be class indices in \[0, 4"):
        zoo.evaluate(model, x, bad)
    assert zoo.evaluate(model, x, y, batch_size=3) == pytest.approx(
        float((model(x).argmax(1) == y).double().mean()), abs=0)


def test_train_learning_rate_and_callback_checks():
    model, x, y = _tiny_classifier()
    for lr in (True, "0.01", None):
        with pytest.raises(TypeError, match="lr must be a positive finite number"):
            zoo.train(model, (x, y), epochs=1, lr=lr)
    for lr in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            zoo.train(model, (x, y), epochs=1, lr=lr)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        zoo.train(model, (x, y), epochs=1, weight_decay=float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match="callback must be callable or None, got int"):
        zoo.train(model, (x, y), epochs=1, callback=3)
    for a, b in zip(before, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_train_accepts_a_numpy_learning_rate():
    p0, grads, p1 = _one_full_batch_step(lr=np.float32(0.01), optimizer="sgd",
                                         schedule="constant")
    for a, g, b in zip(p0, grads, p1, strict=True):
        torch.testing.assert_close(b, a - float(np.float32(0.01)) * 1.9 * g)


def test_one_cycle_factor_checks_its_arguments():
    # the scheduler asks once more after the last step: the floor value
    assert zoo.one_cycle_factor(10, 10) == pytest.approx(1e-4)
    assert zoo.one_cycle_factor(np.int64(0), np.int64(4)) == pytest.approx(1 / 25)
    for step in (-5, 11, 50, float("nan")):
        with pytest.raises(ValueError, match=r"step must be in \[0, total_steps\] = \[0, 10\]"):
            zoo.one_cycle_factor(step, 10)
    with pytest.raises(ValueError, match="total_steps must be >= 1, got 0"):
        zoo.one_cycle_factor(0, 0)
    with pytest.raises(TypeError, match="total_steps must be an int"):
        zoo.one_cycle_factor(0, 10.5)
    with pytest.raises(TypeError, match="step must be a number"):
        zoo.one_cycle_factor("1", 10)


def test_normalize_images_refuses_nan_and_inf():
    raw = np.zeros((2, 28, 28))
    for value in (np.nan, np.inf):
        raw[1, 3, 4] = value
        with pytest.raises(ValueError, match="images contain NaN or Inf"):
            zoo.normalize_images(raw)


def test_build_model_accepts_numpy_class_counts():
    model = zoo.build_model("lenet5", n_classes=np.int64(7), seed=0)
    assert model.fc3.out_features == 7 and type(model.fc3.out_features) is int
    for bad in (10.0, True, np.float64(3)):
        with pytest.raises(ValueError, match="n_classes must be a positive int"):
            zoo.build_model("reference_cnn", n_classes=bad)


# ------------------------------------------------------------------ training threads


def test_pretrained_trains_on_fixed_threads_whatever_the_caller_set(tmp_path, monkeypatch):
    seen = []
    real_train = zoo.train

    def recording_train(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr(zoo, "train", recording_train)
    before = torch.get_num_threads()
    models = []
    try:
        for caller_threads in (1, 3):
            torch.set_num_threads(caller_threads)
            model, info = zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path / str(caller_threads),
                                         return_info=True)
            assert torch.get_num_threads() == caller_threads  # the caller's count comes back
            assert info["num_threads"] == zoo.TRAIN_THREADS
            models.append(model)
    finally:
        torch.set_num_threads(before)
    assert seen == [zoo.TRAIN_THREADS, zoo.TRAIN_THREADS]
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)  # one configuration, one network


def test_cache_trained_on_other_threads_is_trained_again(tmp_path):
    model, info = zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path, return_info=True)
    weights, sidecar = zoo.cache_paths("lenet5", **TINY, cache_dir=tmp_path)
    # what an older tenflex wrote when its caller had set one thread: other weights, one key
    stale = {k: v + 1.0 for k, v in model.state_dict().items()}
    torch.save(stale, weights)
    sidecar.write_text(json.dumps({**info, "num_threads": zoo.TRAIN_THREADS + 1}))
    with pytest.warns(RuntimeWarning, match=rf"trained on {zoo.TRAIN_THREADS + 1} thread\(s\), "
                                            rf"not on tenflex.zoo.TRAIN_THREADS = "):
        again, info2 = zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path, return_info=True)
    assert info2["num_threads"] == zoo.TRAIN_THREADS
    assert json.loads(sidecar.read_text()) == info2
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)  # trained from a fresh start, not from the stale weights
    # a sidecar without the entry (or none at all) cannot tell: the weights are used (a
    # missing sidecar is rebuilt from them, with its own warning, not retrained)
    sidecar.unlink()
    with pytest.warns(RuntimeWarning, match=r"sidecar .* is missing") as caught:
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    assert not [w for w in caught if "thread(s)" in str(w.message)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with zoo.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), zoo.torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="n must be"), zoo.torch_threads(0):
        pass


# ------------------------------------------------------------ resumable training


@pytest.mark.parametrize("options", [{"optimizer": "adam", "schedule": "onecycle"},
                                     {"optimizer": "sgd", "schedule": "constant"}])
@pytest.mark.parametrize("stop_epoch", [1, 2])
def test_train_resumes_bitwise_from_its_checkpoint(digits, tmp_path, options, stop_epoch):
    (x, y), _ = digits
    data = (x[:500], y[:500])
    settings = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "seed": 7, **options}
    reference = zoo.build_model("reference_cnn", seed=3)
    expected = zoo.train(reference, data, **settings)

    path = tmp_path / "run.ckpt"
    model = zoo.build_model("reference_cnn", seed=3)
    with pytest.raises(Interrupt):
        zoo.train(model, data, **settings, checkpoint=path,
                  callback=stop_in_epoch(stop_epoch))
    assert path.is_file()  # the state after epoch stop_epoch - 1

    # A new process starts from a freshly built model, initialised as the first run's (a
    # model initialised otherwise is another run: refused, see
    # test_checkpoint_of_another_initialisation_is_refused).
    resumed_model = zoo.build_model("reference_cnn", seed=3)
    steps = []
    resumed = zoo.train(resumed_model, data, **settings, checkpoint=path,
                        callback=lambda epoch, step, loss: steps.append((epoch, step)))
    per_epoch = math.ceil(500 / 64)
    # only the epochs after the checkpoint ran, numbered as in one run
    assert steps[0] == (stop_epoch, stop_epoch * per_epoch + 1)
    assert len(steps) == (3 - stop_epoch) * per_epoch
    np.testing.assert_array_equal(resumed.losses, expected.losses)
    np.testing.assert_array_equal(resumed.epoch_losses, expected.epoch_losses)
    for a, b in zip(reference.state_dict().values(), resumed_model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert resumed.config == expected.config
    assert resumed.time_s > 0
    assert not path.exists()  # training completed: nothing to resume


def test_interrupted_training_closes_its_progress_bar(monkeypatch):
    import tqdm.auto

    bars = []

    class Recorded(tqdm.auto.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    def interrupt(epoch, step, loss):
        raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorded)
    model, x, y = _tiny_classifier()
    with pytest.raises(KeyboardInterrupt):
        zoo.train(model, (x, y), epochs=2, batch_size=4, progress=True, callback=interrupt)
    # closed now, so that nothing redraws it after the caller's message (tqdm sets disable)
    assert len(bars) == 1 and bars[0].disable


def test_train_refuses_the_checkpoint_of_another_run(digits, tmp_path):
    (x, y), _ = digits
    data = (x[:300], y[:300])
    settings = {"epochs": 2, "batch_size": 64, "seed": 0}
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        zoo.train(zoo.build_model("lenet5", seed=0), data, **settings, checkpoint=path,
                  callback=stop_in_epoch(1))
    saved = path.read_bytes()
    for change, differs in (({"lr": 1e-3}, "lr"), ({"epochs": 3}, "epochs"),
                            ({"seed": 1}, "seed")):
        model = zoo.build_model("lenet5", seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=rf"checkpoint .*run.ckpt was written by another "
                                             rf"training \(it differs in {differs}:.*Delete it"):
            zoo.train(model, data, **{**settings, **change}, checkpoint=path)
        for a, b in zip(before, model.parameters(), strict=True):
            assert torch.equal(a, b)  # refused before any step
    other_images = (x[:300].flip(-1), y[:300])
    with pytest.raises(ValueError, match=r"differs in fingerprint\.data_sha256"):
        zoo.train(zoo.build_model("lenet5", seed=0), other_images, **settings, checkpoint=path)
    with pytest.raises(ValueError, match=r"differs in fingerprint\.initial_sha256, "
                       r"fingerprint\.state, fingerprint\.trained"):
        zoo.train(zoo.build_model("reference_cnn", seed=0), data, **settings, checkpoint=path)
    frozen = zoo.build_model("lenet5", seed=0)
    frozen.conv1.requires_grad_(False)  # fine-tuning another part is another run
    with pytest.raises(ValueError, match=r"differs in fingerprint\.trained"):
        zoo.train(frozen, data, **settings, checkpoint=path)
    # Another start is another run (it used to resume the seed-0 run silently).
    with pytest.raises(ValueError, match=r"differs in fingerprint\.initial_sha256.*Delete it "
                       r"to start over \(pretrained: retrain=True, or `tenflex train "
                       r"--retrain`\)"):
        zoo.train(zoo.build_model("lenet5", seed=1), data, **settings, checkpoint=path)
    assert path.read_bytes() == saved  # left as it was
    with pytest.raises(TypeError, match="checkpoint must be a file path or None, got int"):
        zoo.train(zoo.build_model("lenet5", seed=0), data, **settings, checkpoint=3)
    with pytest.raises(ValueError, match=r"checkpoint .* is a folder; give the path of a file"):
        zoo.train(zoo.build_model("lenet5", seed=0), data, **settings, checkpoint=tmp_path)


def test_train_starts_over_from_an_unreadable_checkpoint(digits, tmp_path):
    (x, y), _ = digits
    data = (x[:300], y[:300])
    settings = {"epochs": 2, "batch_size": 64, "seed": 0}
    expected = zoo.train(zoo.build_model("lenet5", seed=0), data, **settings)
    for content in (b"", b"not a checkpoint", None):
        path = tmp_path / "run.ckpt"
        if content is None:  # a file torch reads, but no checkpoint of tenflex's
            torch.save({"weights": torch.zeros(3)}, path)
        else:
            path.write_bytes(content)
        with pytest.warns(RuntimeWarning, match=r"training checkpoint .*run.ckpt cannot be "
                                                r"read .*training from the first epoch"):
            result = zoo.train(zoo.build_model("lenet5", seed=0), data, **settings,
                               checkpoint=path)
        np.testing.assert_array_equal(result.losses, expected.losses)
        assert not path.exists()


def test_pretrained_resumes_an_interrupted_training(tmp_path, monkeypatch):
    config = {"dataset": "digits", "epochs": 2, "seed": 1, "n_train": 300}
    expected = zoo.pretrained("lenet5", **config, cache_dir=tmp_path / "whole")
    weights, sidecar = zoo.cache_paths("lenet5", **config, cache_dir=tmp_path / "cut")
    partial = weights.with_suffix(".partial.pt")

    train = zoo.train
    monkeypatch.setattr(zoo, "train", lambda *args, **kwargs: train(
        *args, callback=stop_in_epoch(1), **kwargs))
    with pytest.raises(Interrupt):
        zoo.pretrained("lenet5", **config, cache_dir=tmp_path / "cut")
    # nothing that would be loaded as the trained network, only the state after epoch 0
    assert sorted(p.name for p in weights.parent.iterdir()) == [partial.name]

    epochs_run = []
    monkeypatch.setattr(zoo, "train", lambda *args, **kwargs: train(
        *args, callback=lambda epoch, step, loss: epochs_run.append(epoch), **kwargs))
    model, info = zoo.pretrained("lenet5", **config, cache_dir=tmp_path / "cut",
                                 return_info=True)
    assert set(epochs_run) == {1}  # epoch 0 came from the checkpoint
    for a, b in zip(expected.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sorted(p.name for p in weights.parent.iterdir()) == sorted([weights.name,
                                                                        sidecar.name])
    assert info["train_time_s"] > 0

    # retrain discards an interrupted training's checkpoint and starts from epoch 0
    monkeypatch.setattr(zoo, "train", lambda *args, **kwargs: train(
        *args, callback=stop_in_epoch(1), **kwargs))
    with pytest.raises(Interrupt):
        zoo.pretrained("lenet5", **config, cache_dir=tmp_path / "cut", retrain=True)
    assert partial.is_file()
    epochs_run.clear()
    monkeypatch.setattr(zoo, "train", lambda *args, **kwargs: train(
        *args, callback=lambda epoch, step, loss: epochs_run.append(epoch), **kwargs))
    zoo.pretrained("lenet5", **config, cache_dir=tmp_path / "cut", retrain=True)
    assert set(epochs_run) == {0, 1} and not partial.exists()


# ------------------------------------------------------------- validation selection


def test_train_keeps_the_epoch_best_on_validation(digits):
    (x, y), _ = digits
    data, held_out = (x[:400], y[:400]), (x[400:800], y[400:800])
    settings = {"epochs": 4, "batch_size": 64, "lr": 3e-3, "seed": 2}
    plain_model = zoo.build_model("lenet5", seed=0)
    plain = zoo.train(plain_model, data, **settings)
    assert plain.validation_accuracy is None and plain.best_epoch is None

    states = []  # the weights after each epoch, to compare with the one kept
    per_epoch = math.ceil(400 / 64)

    def keep(epoch, step, loss):
        if step % per_epoch == 0:
            states.append({k: v.clone() for k, v in model.state_dict().items()})

    model = zoo.build_model("lenet5", seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = zoo.train(model, data, **settings, validation=held_out, callback=keep)
    # the same steps as without validation
    np.testing.assert_array_equal(result.losses, plain.losses)
    for a, b in zip(states[-1].values(), plain_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the accuracies are those of the states, and the model ends with the first best one
    accuracy = result.validation_accuracy
    assert accuracy.shape == (5,)
    for state, expected in zip([start, *states], accuracy, strict=True):
        probe = zoo.build_model("lenet5")
        probe.load_state_dict(state)
        assert zoo.evaluate(probe, *held_out) == expected
    assert result.best_epoch == int(np.argmax(accuracy))
    kept = ([start, *states])[result.best_epoch]
    for name, value in model.state_dict().items():
        assert torch.equal(value, kept[name]), name


def test_validation_keeps_the_start_when_training_only_harms(digits):
    (x, y), _ = digits
    model = zoo.build_model("lenet5", seed=0)
    zoo.train(model, (x[:600], y[:600]), epochs=2, lr=3e-3, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # training on shuffled labels can only spoil what the network has learnt
    noise = torch.randperm(600, generator=torch.Generator().manual_seed(0))
    result = zoo.train(model, (x[:600], y[:600][noise]), epochs=2, lr=3e-3, seed=0,
                       validation=(x[600:1000], y[600:1000]))
    assert result.best_epoch == 0
    assert result.validation_accuracy[0] > result.validation_accuracy[1:].max()
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_validation_is_checked_and_resumed(digits, tmp_path):
    (x, y), _ = digits
    data, held_out = (x[:300], y[:300]), (x[300:500], y[300:500])
    settings = {"epochs": 3, "batch_size": 64, "seed": 0}
    model = zoo.build_model("lenet5", seed=0)
    with pytest.raises(ValueError, match=r"validation images must have the shape of the "
                                         r"training images, \(N, 1, 28, 28\), got \(200, 784\)"):
        zoo.train(model, data, **settings, validation=(held_out[0].flatten(1), held_out[1]))
    with pytest.raises(ValueError, match=r"validation: labels must be class indices in \[0, 10\)"):
        zoo.train(model, data, **settings, validation=(held_out[0], held_out[1] + 10))
    with pytest.raises(TypeError, match="validation"):
        zoo.train(model, data, **settings, validation=held_out[0])

    whole_model = zoo.build_model("lenet5", seed=0)
    whole = zoo.train(whole_model, data, **settings, validation=held_out)
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        zoo.train(zoo.build_model("lenet5", seed=0), data, **settings, validation=held_out,
                  checkpoint=path, callback=stop_in_epoch(2))
    with pytest.raises(ValueError, match=r"differs in fingerprint\.validation_sha256"):
        zoo.train(zoo.build_model("lenet5", seed=0), data, **settings,
                  validation=(x[500:700], y[500:700]), checkpoint=path)
    resumed_model = zoo.build_model("lenet5", seed=0)  # the same start (else refused)
    resumed = zoo.train(resumed_model, data, **settings, validation=held_out, checkpoint=path)
    np.testing.assert_array_equal(resumed.validation_accuracy, whole.validation_accuracy)
    assert resumed.best_epoch == whole.best_epoch
    for a, b in zip(whole_model.state_dict().values(), resumed_model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


# ------------------------------------------------------- divergence, cache folder, sidecar


def test_train_stops_at_the_first_non_finite_loss(digits, tmp_path):
    (x, y), _ = digits
    path = tmp_path / "run.ckpt"
    with pytest.raises(ValueError, match=r"training diverged: the loss of epoch 0, step 2 of "
                       r"2 is nan \(lr = 1e\+10, .*\); train with a lower lr"):
        zoo.train(zoo.build_model("lenet5", seed=0), (x[:200], y[:200]), epochs=1, lr=1e10,
                  checkpoint=path)
    assert not path.exists()


def test_pretrained_caches_no_diverged_network(tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.DEFAULT_TRAIN_CONFIG, "lenet5",
                        {**zoo.DEFAULT_TRAIN_CONFIG["lenet5"], "lr": 1e10})
    with pytest.raises(ValueError, match="training diverged.*lower lr"):
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_folder_is_refused_before_training(tmp_path, monkeypatch):
    from tenflex import cli

    a_file = tmp_path / "a-file"
    a_file.write_text("")

    def no_data(*args, **kwargs):
        raise AssertionError("data loaded before the cache folder was checked")

    monkeypatch.setattr(zoo, "dataset_tensors", no_data)
    with pytest.raises(ValueError, match=r"cannot write to the cache folder .*a-file .*a file, "
                       r"not a folder.*cache_dir=.*TENFLEX_CACHE.*--cache-dir"):
        zoo.pretrained("lenet5", **TINY, cache_dir=a_file)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(zoo.tempfile, "mkstemp", refuse)  # a read-only folder (even as root)
    with pytest.raises(ValueError, match=r"cache folder .*ro of pretrained networks \(Permission denied\).*cache_dir="):
        zoo.pretrained("lenet5", **TINY, cache_dir=tmp_path / "ro")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--model", "lenet5", "--dataset", "digits", "--epochs", "1",
                  "--cache-dir", str(a_file)])
    assert exit_info.value.code == 2


def test_unusable_sidecar_is_rebuilt_from_the_cached_weights(tmp_path):
    tiny = {"dataset": "digits", "epochs": 1, "n_train": 300}
    _, info = zoo.pretrained("lenet5", **tiny, cache_dir=tmp_path, return_info=True)
    weights, sidecar = zoo.cache_paths("lenet5", **tiny, cache_dir=tmp_path)
    saved = weights.read_bytes()
    other_key = json.dumps({**info, "key": "0123456789abcdef"})
    for content in (None, '{"config": {', "[1, 2]", other_key):
        if content is None:
            sidecar.unlink()
        else:
            sidecar.write_text(content)
        with pytest.warns(RuntimeWarning, match=r"sidecar .* of cached weights .*measuring the "
                                                r"test accuracy of the weights again"):
            _, rebuilt = zoo.pretrained("lenet5", **tiny, cache_dir=tmp_path,
                                        return_info=True)
        assert rebuilt["key"] == info["key"] and rebuilt["config"] == info["config"]
        assert rebuilt["test_accuracy"] == info["test_accuracy"]
        assert rebuilt["n_train"] == 300 and rebuilt["n_test"] == info["n_test"]
        assert rebuilt["final_epoch_loss"] is None and rebuilt["sidecar_rebuilt"] is True
        assert json.loads(sidecar.read_text()) == rebuilt  # written back
        assert weights.read_bytes() == saved  # not retrained
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert zoo.pretrained("lenet5", **tiny, cache_dir=tmp_path,
                                  return_info=True)[1] == rebuilt


def test_n_train_beyond_the_training_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"n_train = 1438 exceeds the 1437 training images "
                       r"of digits"):
        zoo.pretrained("lenet5", dataset="digits", n_train=1438, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="exceeds the 60000 training images of mnist"):
        zoo.cache_paths("lenet5", n_train=60001)
    # All of the training set is the network of n_train=None: one key.
    assert (zoo.cache_paths("lenet5", dataset="digits", n_train=1437, cache_dir=tmp_path)
            == zoo.cache_paths("lenet5", dataset="digits", cache_dir=tmp_path))


def test_labels_of_strings_or_objects_are_refused_clearly():
    model, x, _ = _tiny_classifier()
    for labels in (np.array(["a"] * 8), np.array([object()] * 8)):
        with pytest.raises(TypeError, match=r"train_data: labels must be integers, got an "
                                            r"array of dtype"):
            zoo.train(model, (x, labels), epochs=1)
