"""Tests of tenflex.nn.compress: compress a span of a network, report, save and load."""

from __future__ import annotations

import copy
import functools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from problems import Headed, Interrupt, Looped, WrappedCNN, stop_in_epoch
from torch import nn

from tenflex import zoo
from tenflex.cli import main as cli_main
from tenflex.metrics import relative_error
from tenflex.nn import FlexibleLayer
from tenflex.nn import compress as compress_module
from tenflex.nn.compress import (
    compress,
    count_parameters,
    finetune_replacement,
    load_compressed,
    save_compressed,
)
from tenflex.nn.surgery import resolve_span, span_inputs


@pytest.fixture(scope="module")
def digits():
    """The 8x8 digits drawn into the MNIST frame, and a briefly trained reference CNN."""
    torch.manual_seed(0)
    train_images, train_labels = zoo.digits_tensors("train")
    test_images, test_labels = zoo.digits_tensors("test")
    model = zoo.build_model("reference_cnn", seed=0)
    zoo.train(model, (train_images, train_labels), epochs=2, lr=3e-3, seed=0)
    model.eval()
    return model, train_images, train_labels, test_images, test_labels


@pytest.fixture(scope="module")
def compressed(digits):
    model, train_images, train_labels, test_images, test_labels = digits
    return compress(model, ("fc1", "fc2"), train_images, rank=6, basis="bspline", n_functions=6,
                    n_samples=600, n_validation=300, test_data=(test_images, test_labels),
                    fit_options={"max_iter": 25, "init": "random"}, seed=0,
                    finetune={"scope": "layer", "epochs": 1, "lr": 1e-3,
                              "train_labels": train_labels})


def test_report_is_consistent(digits, compressed):
    model = digits[0]
    report = compressed.report
    assert report.span == ["fc1", "relu3", "fc2"]
    assert report.input_shape == [3136] and report.output_shape == [10]
    assert report.parameters_span_before == 3136 * 128 + 128 + 128 * 10 + 10
    assert report.parameters_span_after == 6 * (3136 + 10 + 6) + 10
    assert report.parameters_model_before == sum(p.numel() for p in model.parameters())
    assert report.parameters_model_after == sum(p.numel() for p in compressed.model.parameters())
    assert report.fraction_model_kept == pytest.approx(
        report.parameters_model_after / report.parameters_model_before)
    assert set(report.times) >= {"sampling", "fit", "splice", "evaluation", "total"}
    json.dumps(report.to_dict())  # serialisable as is


def test_flexible_layer_reproduces_the_span(digits, compressed):
    model, train_images = digits[0], digits[1]
    report = compressed.report
    # The fit explains most of the span's output variation, on samples and on held-out images.
    assert report.fit_output_error_train < 0.5
    assert report.fit_output_error_validation < 0.6
    assert isinstance(compressed.model.flex_fc1_fc2, FlexibleLayer)
    # The spliced model computes prefix -> flexible layer, exactly.
    x = train_images[:16]
    with torch.no_grad():
        features = model[:7](x)
        torch.testing.assert_close(compressed.model(x), compressed.layer(features))
    # The accuracy of the compressed network is close to that of the original.
    assert report.accuracy_after > report.accuracy_before - 0.1
    assert report.finetune["scope"] == "layer"
    assert 0 <= report.finetune["accuracy"] <= 1


def test_report_compares_the_compressed_network_with_the_original(digits, compressed):
    model, test_images, test_labels = digits[0], digits[3], digits[4]
    report = compressed.report
    fid = report.test_fidelity
    with torch.no_grad():
        before, after = model(test_images), compressed.model(test_images)
    y = test_labels
    assert fid["n_images"] == len(y)
    assert fid["accuracy"] == report.accuracy_after == zoo.evaluate(compressed.model, test_images, y)
    assert fid["reference_accuracy"] == report.accuracy_before == zoo.evaluate(model, test_images, y)
    assert fid["agreement"] == pytest.approx(
        float((after.argmax(1) == before.argmax(1)).double().mean()), abs=1e-12)
    assert fid["output_error"] == pytest.approx(
        float((after - before).norm() / before.norm()), rel=1e-5)
    right, right_before = after.argmax(1) == y, before.argmax(1) == y
    assert fid["fixed"] == int((right & ~right_before).sum())
    assert fid["broken"] == int((right_before & ~right).sum())
    assert (fid["fixed"] - fid["broken"]) / len(y) == pytest.approx(
        report.accuracy_after - report.accuracy_before, abs=1e-12)
    assert 0 < fid["p_value"] <= 1


def test_finetuning_the_layer_leaves_the_rest_untouched(compressed):
    before, after = compressed.model, compressed.finetuned_model
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(getattr(after, name).weight, getattr(before, name).weight)
    assert not torch.equal(after.flex_fc1_fc2.V, before.flex_fc1_fc2.V)


def test_finetune_replacement_repeats_compress_s_fine_tuning(digits, compressed):
    train_images, train_labels = digits[1], digits[2]
    settings = {"scope": "layer", "epochs": 1, "lr": 1e-3, "train_labels": train_labels}
    before = copy.deepcopy(compressed.model.state_dict())
    # Same seed as compress (0): the same steps, the same weights, bit for bit; by module
    # or by name.
    for part in (compressed.model.flex_fc1_fc2, "flex_fc1_fc2"):
        tuned, report = finetune_replacement(compressed.model, part, train_images, settings,
                                             seed=0, test_data=digits[3:])
        for name, value in compressed.finetuned_model.state_dict().items():
            assert torch.equal(tuned.state_dict()[name], value), name
        assert report["accuracy"] == compressed.report.finetune["accuracy"]
        assert report["scope"] == "layer" and report["epochs"] == 1
    for name, value in compressed.model.state_dict().items():  # the model given is untouched
        assert torch.equal(before[name], value)


def test_finetune_replacement_trains_a_baseline_alone(digits):
    from tenflex.nn.baselines import svd_span

    model, train_images, train_labels, test_images, test_labels = digits
    svd, _ = svd_span(model, resolve_span(model, ("fc1", "fc2")), 6 * (3136 + 16) + 10)
    settings = {"scope": "layer", "epochs": 1, "lr": 1e-3, "train_labels": train_labels}
    tuned, report = finetune_replacement(svd, "svd_fc1_fc2", train_images, settings,
                                         test_data=(test_images, test_labels))
    for name, value in svd.state_dict().items():
        moved = not torch.equal(tuned.state_dict()[name], value)
        assert moved == name.startswith("svd_fc1_fc2."), name
    assert report["accuracy"] == zoo.evaluate(tuned, test_images, test_labels)
    assert not tuned.training
    with pytest.raises(ValueError, match="no submodule 'svd_fc9'.*'svd_fc1_fc2'"):
        finetune_replacement(svd, "svd_fc9", train_images, settings)
    with pytest.raises(ValueError, match="part must be a submodule of model"):
        finetune_replacement(svd, nn.Linear(3, 3), train_images, settings)
    with pytest.raises(ValueError, match="train_labels"):
        finetune_replacement(svd, "svd_fc1_fc2", train_images, {"epochs": 1})
    with pytest.raises(TypeError, match="normalised float"):
        finetune_replacement(svd, "svd_fc1_fc2", (train_images * 255).to(torch.uint8),
                             settings)
    # A bad test set is refused before the training, not after it.
    with pytest.raises(TypeError, match="test_data must be a pair"):
        finetune_replacement(svd, "svd_fc1_fc2", train_images, settings, test_data=test_images)
    with pytest.raises(ValueError, match=r"test_data\[1\].*class indices in \[0, 10\)"):
        finetune_replacement(svd, "svd_fc1_fc2", train_images, settings,
                             test_data=(test_images, test_labels + 10))


def test_fine_tuning_with_validation_keeps_the_best_state(digits, compressed):
    train_images, train_labels = digits[1], digits[2]
    settings = {"scope": "layer", "epochs": 2, "lr": 1e-3, "train_labels": train_labels,
                "validation": 300}
    tuned, report = finetune_replacement(compressed.model, "flex_fc1_fc2", train_images,
                                         settings, seed=4)
    # the held-out images: a subset drawn with the fine-tuning's seed
    order = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(4))
    out = order[:300].sort().values
    held_out = report["validation"]
    assert held_out["n_images"] == 300 and len(held_out["accuracy"]) == 3
    assert held_out["best_epoch"] == int(np.argmax(held_out["accuracy"]))
    assert held_out["accuracy"][0] == zoo.evaluate(compressed.model, train_images[out],
                                                   train_labels[out])
    assert zoo.evaluate(tuned, train_images[out], train_labels[out]) == max(held_out["accuracy"])
    json.dumps(report)
    for bad in (0, len(train_images), 2.5, "300"):
        with pytest.raises(ValueError, match=r"finetune\['validation'\] must be a number of "
                                             r"training images to hold out"):
            finetune_replacement(compressed.model, "flex_fc1_fc2", train_images,
                                 {**settings, "validation": bad})


def test_interrupted_fine_tuning_resumes_from_its_checkpoint(tmp_path, digits, compressed):
    train_images, train_labels = digits[1], digits[2]
    settings = {"scope": "layer", "epochs": 2, "lr": 1e-3, "train_labels": train_labels}
    whole, _ = finetune_replacement(compressed.model, "flex_fc1_fc2", train_images, settings)

    path = tmp_path / "finetune.ckpt"
    with pytest.raises(Interrupt):
        finetune_replacement(compressed.model, "flex_fc1_fc2", train_images,
                             {**settings, "checkpoint": path, "callback": stop_in_epoch(1)})
    assert path.is_file()
    epochs_run = []
    resumed, _ = finetune_replacement(
        compressed.model, "flex_fc1_fc2", train_images,
        {**settings, "checkpoint": path, "callback": lambda e, s, l: epochs_run.append(e)})
    assert set(epochs_run) == {1} and not path.exists()
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name


def test_save_and_load_round_trip(tmp_path, digits, compressed):
    test_images, test_labels = digits[3], digits[4]
    path = tmp_path / "model.pt"
    save_compressed(path, compressed, {"model": "reference_cnn"})
    loaded, info = load_compressed(path)
    assert info["span"] == ["fc1", "relu3", "fc2"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(test_images[:32]), compressed.model(test_images[:32]))
    assert zoo.evaluate(loaded, test_images, test_labels) == compressed.report.accuracy_after
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


@pytest.mark.parametrize(("version", "message"), [
    (2, "has model file format version 2, which this tenflex .* cannot read"),
    (None, "is a damaged tenflex model file: its format version is None"),
    (True, "is a damaged tenflex model file: its format version is True"),
])
def test_load_refuses_another_file_format(tmp_path, compressed, version, message):
    path = tmp_path / "model.pt"
    save_compressed(path, compressed, {"model": "reference_cnn"})
    payload = torch.load(path, weights_only=True)
    payload["version"] = version
    torch.save(payload, path)
    with pytest.raises(ValueError, match=message):
        load_compressed(path)


def test_interrupted_save_leaves_no_file(tmp_path, compressed, monkeypatch):
    def broken_save(obj, handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(compress_module.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_compressed(tmp_path / "model.pt", compressed, {"model": "reference_cnn"})
    assert list(tmp_path.iterdir()) == []


def test_a_base_load_compressed_cannot_rebuild_is_refused_at_save_time(compressed, tmp_path):
    for base in ({"model": "mine"}, {}, "reference_cnn"):
        with pytest.raises(ValueError, match=r"a network of tenflex.zoo \(\['lenet5', "
                                             r"'reference_cnn'\]\).*base=None.*model="):
            save_compressed(tmp_path / "model.pt", compressed, base)
    assert list(tmp_path.iterdir()) == []


def test_a_network_of_your_own_saves_and_loads_back_with_its_model(digits, tmp_path):
    model, train_images, test_images = digits[0], digits[1], digits[3]
    wrapped = WrappedCNN(model).eval()
    ours = compress(wrapped, ("classifier.fc1", "classifier.fc2"), train_images, rank=3,
                    n_functions=5, n_samples=300, n_validation=0, fit_options={"max_iter": 3},
                    seed=0)
    path = tmp_path / "mine.pt"
    save_compressed(path, ours)
    with pytest.raises(ValueError, match=r"mine.pt holds a compressed network of your own "
                                         r"\(problems.WrappedCNN\); pass an instance.*"
                                         r"load_compressed\(path, model="):
        load_compressed(path)
    # Any instance of the class will do: its weights are replaced by the file's.
    fresh = WrappedCNN(zoo.build_model("reference_cnn", seed=5))
    untouched = {k: v.clone() for k, v in fresh.state_dict().items()}
    loaded, info = load_compressed(path, model=fresh)
    assert type(loaded) is WrappedCNN and not loaded.training
    assert info["base"] is None and info["span"] == ours.report.span
    with torch.no_grad():
        torch.testing.assert_close(loaded(test_images[:32]), ours.model(test_images[:32]),
                                   rtol=0, atol=0)
    for name, value in fresh.state_dict().items():  # the model given is left as it was
        torch.testing.assert_close(value, untouched[name], rtol=0, atol=0)
    # A network that is not the one compressed: the span is missing, or its shapes differ.
    with pytest.raises(ValueError, match=r"mine.pt does not fit the model given \(it was made "
                                         r"from problems.WrappedCNN, span .*classifier.fc1"):
        load_compressed(path, model=model)
    other = WrappedCNN(model)
    other.features[3] = nn.Conv2d(32, 32, 5, padding=2)
    with pytest.raises(ValueError, match=r"(?s)does not fit the model given.*size mismatch"):
        load_compressed(path, model=other)
    with pytest.raises(TypeError, match="model must be the uncompressed torch.nn.Module"):
        load_compressed(path, model=ours.model.state_dict())


def test_a_float64_model_loads_back_in_float64(digits, tmp_path):
    model, train_images, test_images = digits[0], digits[1], digits[3]
    double = compress(copy.deepcopy(model).double(), "fc2", train_images.double(), rank=3,
                      n_functions=5, n_samples=300, n_validation=0, fit_options={"max_iter": 3},
                      seed=0)
    path = tmp_path / "double.pt"
    save_compressed(path, double, {"model": "reference_cnn"})
    loaded, _ = load_compressed(path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    with torch.no_grad():
        torch.testing.assert_close(loaded(test_images[:8].double()),
                                   double.model(test_images[:8].double()), rtol=0, atol=0)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tenflex compress"):
        load_compressed(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.pt is not a tenflex model file: expected a file "
                                         "written by `tenflex compress"):
        load_compressed(tmp_path / "junk.pt")
    torch.save({"format": "tenflex-compressed-model", "base": {"model": "reference_cnn"},
                "state_dict": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="odd.pt is a damaged tenflex model file"):
        load_compressed(tmp_path / "odd.pt")


def test_evaluate_command_on_a_saved_model(tmp_path, compressed, capsys, monkeypatch):
    path = tmp_path / "model.pt"
    save_compressed(path, compressed, {"model": "reference_cnn"})
    assert cli_main(["evaluate", str(path), "--dataset", "digits"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_accuracy"] == compressed.report.accuracy_after
    assert result["parameters"] == compressed.report.parameters_model_after


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"span": ["conv2", "fc1"]}, ValueError, "contiguous"),
        ({"rank": 0}, ValueError, "rank must be an integer >= 1"),
        ({"rank": 700, "n_samples": 600}, ValueError, "larger than the data supports"),
        ({"n_samples": 5000}, ValueError, "exceeds the"),
        ({"train_images": torch.zeros(50, 1, 20, 20)}, ValueError, "expects"),
        ({"train_images": torch.zeros(50, 28, 28, dtype=torch.uint8)}, TypeError, "float"),
        ({"train_images": torch.zeros(950, 1, 28, 28, dtype=torch.float64)}, TypeError,
         r"train_images has dtype torch.float64 but the model's parameters are torch.float32: "
         + r"convert one to the other, e.g. train_images.to\(torch.float32\)"),
        ({"test_data": (torch.zeros(5, 1, 28, 28, dtype=torch.float64), torch.zeros(5).long())},
         TypeError, r"test_data\[0\] has dtype torch.float64 .* \.to\(torch.float32\)"),
        ({"finetune": {"epochs": 1}}, ValueError, "train_labels"),
        ({"finetune": {"train_labels": torch.zeros(3, dtype=torch.long)}}, ValueError,
         r"train_labels'\] must have shape"),
        ({"finetune": {"train_labels": None, "scope": "head"}}, ValueError, "'layer' or 'all'"),
        ({"finetune": {"train_labels": None, "epochz": 2}}, ValueError, "unknown keys"),
        ({"finetune": {"train_labels": None, "lr": -1.0}}, ValueError, "lr must be"),
        ({"finetune": {"train_labels": None, "epochs": 0}}, ValueError, "epochs"),
        ({"finetune": {"train_labels": None, "optimizer": "lbfgs"}}, ValueError,
         "unknown optimizer"),
        ({"n_samples": 0}, ValueError, "n_samples must be an integer >= 1"),
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1"),
        ({"seed": -1}, ValueError, "seed must be an int >= 0"),
        ({"seed": 1.5}, TypeError, "seed must be an int >= 0"),
        ({"basis": "rbf"}, ValueError, "valid names"),
        ({"basis_options": {"degre": 2}}, TypeError, "degre"),
        ({"lam": -1.0}, ValueError, "lam"),
        ({"n_functions": 700}, ValueError, "N must be >= D"),
        ({"fit_options": {"max_iters": 5}}, ValueError, "unknown keys"),
        ({"fit_options": {"init": "svd"}}, ValueError, "init"),
        ({"fit_options": {"n_starts": 3}}, ValueError, "n_starts=3 needs a random"),
        # cmtf_als's own option checks, made before the sampling (and by check_only)
        ({"fit_options": {"tol": -1.0}}, ValueError, r"fit_options\['tol'\] must be a finite"),
        ({"fit_options": {"ridge": float("nan")}}, ValueError, r"fit_options\['ridge'\]"),
        ({"fit_options": {"n_starts": 0}}, ValueError, r"fit_options\['n_starts'\] must be"),
        ({"fit_options": {"max_iter": -1}}, ValueError, r"fit_options\['max_iter'\] must be"),
        ({"fit_options": {"max_iter": 2.0}}, TypeError, r"fit_options\['max_iter'\] must be"),
        ({"fit_options": {"solver": "lbfgs"}}, ValueError, "'als' or 'gn'"),
        ({"fit_options": {"seed": -2}}, ValueError, r"fit_options\['seed'\] must be an int"),
        ({"fit_options": {"verbose": "yes"}}, TypeError, "True or False"),
        ({"fit_options": {"callback": 3}}, TypeError, "callable"),
        ({"fit_options": {"cpd_options": {"cpd_method": "als"}}}, ValueError, "cpd_method"),
        ({"fit_options": {"dtype": torch.float32}}, ValueError, "compress sets .*'dtype'"),
        ({"fit_options": "max_iter=5"}, TypeError, "fit_options must be a dict"),
        ({"progress": None}, TypeError, "progress must be a bool \\(True or False\\)"),
        ({"jacobian": "sparse"}, ValueError, "jacobian must be one of 'auto', 'dense', "),
        ({"subspace": 0}, ValueError, r"subspace must be an integer k with 1 <= k < m = 3136"),
        ({"subspace": 3136}, ValueError, "1 <= k < m = 3136"),
        ({"subspace": 2.0}, ValueError, "subspace must be an integer"),
        ({"subspace": 2, "rank": 21}, ValueError,
         r"R <= min\(n k, N\) = 20 in a subspace of dimension k = 2"),
        ({"span": ("conv2", "fc2"), "jacobian": "factored"}, ValueError,
         (r"jacobian='factored' needs a span that starts with a fully connected layer "
          r"\(nn.Linear, after any nn.Flatten\(\)\); the span conv2..fc2 does not")),
    ],
)
def test_bad_input_fails_before_any_long_computation(digits, monkeypatch, kwargs, error, message):
    model, train_images = digits[0], digits[1]

    def no_sampling(*args, **kw):  # the checks must come first
        raise AssertionError("sampling started before the input was validated")

    monkeypatch.setattr("tenflex.sampling.sample_function", no_sampling)
    arguments = {"span": ("fc1", "fc2"), "train_images": train_images, "rank": 4,
                 "n_samples": 600, "n_validation": 300}
    arguments.update(kwargs)
    finetune = arguments.get("finetune")
    if finetune is not None and finetune.get("train_labels", 0) is None:
        # labels that fit: another setting is wrong
        arguments["finetune"] = {**finetune, "train_labels": digits[2]}
    with pytest.raises(error, match=message):
        compress(model, arguments.pop("span"), arguments.pop("train_images"), **arguments)


def test_too_few_samples_and_too_much_memory(digits, monkeypatch):
    model, train_images = digits[0], digits[1]
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(784, 2), nn.Tanh(), nn.Linear(2, 1))
    with pytest.raises(ValueError, match="too few sampling points"):  # 3 equations, 12 unknowns
        compress(tiny, (2, 3), train_images, rank=1, n_samples=1, n_validation=0)
    monkeypatch.setattr(compress_module, "memory_bytes", lambda: 2**20)
    with pytest.raises(ValueError, match="needs .* GiB"):
        compress(model, ("fc1", "fc2"), train_images, rank=4, n_samples=600, n_validation=300)


class _Sampled(Exception):
    """Raised by the stand-in for sample_function: the checks are over."""


def _stop_at_sampling(monkeypatch):
    seen = {}

    def sample_function(f, X, **kw):
        seen["f"], seen["X"] = f, X
        raise _Sampled

    monkeypatch.setattr("tenflex.sampling.sample_function", sample_function)
    return seen


def test_labels_are_checked_before_any_long_computation(digits, monkeypatch):
    model, train_images, train_labels, test_images, test_labels = digits
    _stop_at_sampling(monkeypatch)
    arguments = {"rank": 4, "n_samples": 600, "n_validation": 300}
    bad_cases = [
        ({"finetune": {"train_labels": train_labels.float()}}, TypeError,
         r"finetune\['train_labels'\]: labels must be integers"),
        ({"finetune": {"train_labels": train_labels.numpy() + 10}}, ValueError,
         r"finetune\['train_labels'\]: labels must be class indices in \[0, 10\)"),
        ({"test_data": (test_images, test_labels.double())}, TypeError,
         r"test_data\[1\]: labels must be integers"),
        ({"test_data": (test_images, test_labels - 1)}, ValueError,
         r"test_data\[1\]: labels must be class indices in \[0, 10\).*\[-1\]"),
        ({"test_data": test_images}, TypeError, "test_data must be a pair"),
    ]
    for kwargs, error, message in bad_cases:
        with pytest.raises(error, match=message):
            compress(model, ("fc1", "fc2"), train_images, **arguments, **kwargs)
    # valid labels get as far as the sampling
    with pytest.raises(_Sampled):
        compress(model, ("fc1", "fc2"), train_images, **arguments,
                 test_data=(test_images, test_labels),
                 finetune={"train_labels": train_labels.numpy()})


def test_factored_and_dense_jacobians_give_the_same_compression(digits):
    # The fully connected part starts with fc1 (3136 -> 128): J_k = K_k A is the same tensor
    # as the dense one, so the fits agree to rounding (the factored one is the default). The
    # float64 rounding differences of the two paths are amplified by the solver's steps: the
    # cost histories agreed to 1e-8 relative on AVX-512 kernels and to 1.5e-8 on AVX2 ones.
    model, train_images = digits[0], digits[1]
    settings = {"rank": 4, "n_functions": 6, "n_samples": 600, "n_validation": 300,
                "fit_options": {"max_iter": 10}, "seed": 1}
    factored = compress(model, ("fc1", "fc2"), train_images, **settings)
    dense = compress(model, ("fc1", "fc2"), train_images, jacobian="dense", **settings)
    assert (factored.report.jacobian, dense.report.jacobian) == ("factored", "dense")
    assert len(factored.fit.cost) == len(dense.fit.cost) == 11
    np.testing.assert_allclose(factored.fit.cost, dense.fit.cost, rtol=1e-7)
    for name in ("fit_output_error_train", "fit_jacobian_error_train",
                 "fit_output_error_validation"):
        assert getattr(factored.report, name) == pytest.approx(getattr(dense.report, name),
                                                               rel=1e-6)
    # V itself drifts further along the cost's flat directions (a branch's scale moves
    # between V, C and the basis map): compared in norm, not entry by entry, where one small
    # entry decides (1e-6 relative on AVX2 kernels).
    Vf, Vd = factored.layer.V.detach(), dense.layer.V.detach()
    assert float(torch.linalg.matrix_norm(Vf - Vd) / torch.linalg.matrix_norm(Vd)) < 1e-5


def test_the_jacobian_is_factored_only_through_a_narrowing_linear_layer(digits, monkeypatch):
    model, train_images = digits[0], digits[1]
    seen = _stop_at_sampling(monkeypatch)
    settings = {"rank": 4, "n_samples": 600, "n_validation": 300}
    # a span that starts at a convolution: the whole span is sampled
    with pytest.raises(_Sampled):
        compress(model, ("conv2", "fc2"), train_images, **settings)
    assert list(seen["f"]) == [model.conv2, model.relu2, model.pool2, model.flatten, model.fc1,
                               model.relu3, model.fc2]
    # flatten + fc1 start the span: the layers after fc1 are sampled at fc1's outputs
    with pytest.raises(_Sampled):
        compress(model, ("flatten", "fc2"), train_images, **settings)
    assert list(seen["f"]) == [model.relu3, model.fc2] and seen["X"].shape == (600, 128)
    # a widening first layer (4 -> 8) gains nothing: dense, unless asked
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    images = torch.randn(40, 1, 2, 2)
    with pytest.raises(_Sampled):
        compress(wide, (1, 3), images, rank=2, n_samples=30, n_validation=0)
    assert len(seen["f"]) == 3
    with pytest.raises(_Sampled):
        compress(wide, (1, 3), images, rank=2, n_samples=30, n_validation=0,
                 jacobian="factored")
    assert list(seen["f"]) == [wide[2], wide[3]]


def test_a_model_without_parameters_is_refused():
    with pytest.raises(ValueError, match="model has no parameters"):
        compress(nn.Sequential(nn.Flatten(), nn.ReLU()), 1, torch.randn(20, 1, 2, 2), rank=1,
                 n_samples=10, n_validation=0)


@pytest.mark.filterwarnings("ignore:the flexible layer of rank")  # a toy span of 18 parameters
def test_the_span_of_a_model_with_a_repeated_module_is_sampled_at_its_inputs(monkeypatch):
    torch.manual_seed(0)
    act = nn.Tanh()
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), act, nn.Linear(5, 5), act,
                          nn.Linear(5, 3))
    images = torch.randn(30, 1, 2, 3)
    seen = _stop_at_sampling(monkeypatch)
    with pytest.raises(_Sampled):
        compress(model, 5, images, rank=2, n_samples=20, n_validation=0, jacobian="dense")
    # the last Linear reads the output of the second tanh
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))[:20]
    with torch.no_grad():
        expected = act(model[3](act(model[1](images[order].flatten(1)))))
    torch.testing.assert_close(seen["X"], expected, rtol=0, atol=0)
    assert list(seen["f"]) == [model[5]]
    # factored (the default for a narrowing Linear): what follows the Linear (nothing) is
    # sampled at its outputs
    with pytest.raises(_Sampled):
        compress(model, 5, images, rank=2, n_samples=20, n_validation=0)
    with torch.no_grad():
        linear = model[5]
        torch.testing.assert_close(seen["X"], nn.functional.linear(
            expected.double(), linear.weight.double(), linear.bias.double()))
    assert list(seen["f"]) == []


@pytest.mark.filterwarnings("ignore:the flexible layer of rank")  # ranks this large compress nothing
def test_a_rank_whose_sweeps_would_not_fit_in_memory_fails_before_sampling(digits, monkeypatch):
    # m = 3136, n = 10, N = 600: the dense Jacobian (144 MiB) fits a 450 MiB machine; at
    # R = 200, D = 8 the C step's 1600 x 1600 system and its kin (127 MiB) do not. The largest
    # rank the message offers passes the check, one more does not.
    model, train_images = digits[0], digits[1]
    _stop_at_sampling(monkeypatch)
    monkeypatch.setattr(compress_module, "memory_bytes", lambda: 450 * 2**20)
    arguments = {"n_samples": 600, "n_validation": 300, "n_functions": 8, "jacobian": "dense"}
    with pytest.raises(ValueError, match=r"rank R = 200 with D = 8 basis functions needs about "
                                         r".* 1600 x 1600 system .* use R <= \d+$") as info:
        compress(model, ("fc1", "fc2"), train_images, rank=200, **arguments)
    largest = int(str(info.value).rsplit(" ", 1)[1])
    assert 100 < largest < 200
    with pytest.raises(_Sampled):
        compress(model, ("fc1", "fc2"), train_images, rank=largest, **arguments)
    with pytest.raises(ValueError, match=f"rank R = {largest + 1} "):
        compress(model, ("fc1", "fc2"), train_images, rank=largest + 1, **arguments)
    # The book's fit (m = 3136, N = 5000, R = 12; a 1.2 GiB Jacobian) fits a 4 GiB machine:
    # the Jacobian counts once, and small ranks are never refused for it.
    compress_module._check_solver_memory(12, 8, 5000, 8 * 10 * 3136 * 5000, 4 * 2**30)


def test_a_rank_that_compresses_nothing_is_warned_about(digits, monkeypatch):
    model, train_images = digits[0], digits[1]
    _stop_at_sampling(monkeypatch)
    span = resolve_span(model, ("fc1", "fc2"))
    span_parameters = count_parameters(span.module(model))  # 3136 * 128 + 128 + 1290
    keeps_fewer = (span_parameters - 11) // (3136 + 10 + 8)
    warned = pytest.warns(UserWarning, match=f"compresses nothing; ranks R <= {keeps_fewer} keep")
    with warned, pytest.raises(_Sampled):
        compress(model, ("fc1", "fc2"), train_images, rank=keeps_fewer + 1, n_samples=600,
                     n_validation=300, n_functions=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(_Sampled):
            compress(model, ("fc1", "fc2"), train_images, rank=keeps_fewer, n_samples=600,
                     n_validation=300, n_functions=8)


def _mlp_with_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(),
                          nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():  # running statistics that are not the defaults
        model.train()
        model(torch.randn(256, 8, 8))
    return model


def test_compress_leaves_the_models_training_flags_and_statistics_alone():
    model = _mlp_with_batchnorm()
    model.train()
    model[2].eval()  # mixed flags come back as they were, not as one flag for all
    flags = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = torch.randn(300, 8, 8), torch.randint(0, 4, (300,))
    compress(model, (4, 6), images, rank=2, n_samples=100, n_validation=50,
             test_data=(images[:50], labels[:50]), fit_options={"max_iter": 2})
    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_layer_fine_tuning_keeps_the_later_layers_frozen_batchnorm_included():
    model = _mlp_with_batchnorm().eval()
    images, labels = torch.randn(300, 8, 8), torch.randint(0, 4, (300,))
    out = compress(model, (4, 6), images, rank=2, n_samples=100, n_validation=50,
                   fit_options={"max_iter": 2},
                   finetune={"scope": "layer", "epochs": 1, "train_labels": labels})
    tuned, spliced = out.finetuned_model, out.model
    # The flexible layer (index 4) moved; the BatchNorm after it (index 5 in the spliced
    # model: Flatten, Linear, BatchNorm, ReLU, flexible, Linear, BatchNorm, ...) did not.
    assert not torch.equal(tuned[4].V, spliced[4].V)
    for name, value in spliced.state_dict().items():
        if not name.startswith("flex_"):
            torch.testing.assert_close(tuned.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_a_span_inside_a_network_of_your_own_compresses_as_in_a_sequential_one(digits):
    model, train_images, train_labels, test_images, test_labels = digits
    wrapped = WrappedCNN(model).eval()
    torch.testing.assert_close(wrapped(test_images[:50]), model(test_images[:50]))
    settings = {"rank": 4, "n_functions": 6, "n_samples": 600, "n_validation": 300,
                "test_data": (test_images, test_labels), "fit_options": {"max_iter": 5},
                "seed": 3, "finetune": {"scope": "layer", "epochs": 1,
                                        "train_labels": train_labels}}
    ours = compress(wrapped, ("classifier.fc1", "classifier.fc2"), train_images, **settings)
    plain = compress(model, ("fc1", "fc2"), train_images, **settings)
    # The same samples, hence the same fit, to the last bit.
    np.testing.assert_array_equal(ours.fit.cost, plain.fit.cost)
    torch.testing.assert_close(ours.layer.V, plain.layer.V, rtol=0, atol=0)
    assert ours.report.span == ["classifier.fc1", "classifier.relu3", "classifier.fc2"]
    assert ours.report.accuracy_after == plain.report.accuracy_after
    assert ours.report.parameters_model_after == plain.report.parameters_model_after
    assert type(ours.model) is WrappedCNN and ours.model.classifier.flex_fc1_fc2 is ours.layer
    # Fine-tuning the layer alone: every step runs the whole frozen network instead of
    # cached features, the same steps on the same batches.
    tuned = ours.finetuned_model.classifier.flex_fc1_fc2
    torch.testing.assert_close(tuned.V, plain.finetuned_model.flex_fc1_fc2.V)
    assert not torch.equal(tuned.V, ours.layer.V)
    for name, value in ours.model.state_dict().items():
        if "flex_" not in name:
            torch.testing.assert_close(ours.finetuned_model.state_dict()[name], value,
                                       rtol=0, atol=0, msg=name)
    # One named submodule: the flexible layer replaces the whole classifier.
    whole = compress(wrapped, "classifier", train_images, **{**settings, "finetune": None})
    assert whole.model.classifier is whole.layer
    assert whole.report.accuracy_after == plain.report.accuracy_after


def test_a_whole_classifier_as_the_span_has_its_jacobians_factored(digits):
    # The span "classifier" is one nn.Sequential (fc1, relu3, fc2): its first layer is fc1,
    # so the Jacobians are factored through it, the same fit as for the chain fc1..fc2.
    model, train_images = digits[0], digits[1]
    settings = {"rank": 3, "n_functions": 6, "n_samples": 400, "n_validation": 0,
                "fit_options": {"max_iter": 4}, "seed": 2}
    whole = compress(WrappedCNN(model).eval(), "classifier", train_images, **settings)
    chain = compress(model, ("fc1", "fc2"), train_images, **settings)
    assert whole.report.jacobian == chain.report.jacobian == "factored"
    assert whole.report.span == ["classifier"]
    np.testing.assert_array_equal(whole.fit.cost, chain.fit.cost)


def test_a_span_that_varies_in_a_subspace_is_fitted_there():
    """f(x) = W2 tanh(A x + c) + b2 changes along the 3 rows of A only: its active subspace
    holds all of the Jacobians' energy and a rank-3 flexible layer fitted there reproduces
    it, with the directions stored as P Q."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 3), nn.Tanh(), nn.Linear(3, 4)).double()
    X = torch.randn(1500, 20, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 115 parameters do not compress the 79 of the span
        result = compress(net, (0, 2), X, rank=3, subspace=3, n_functions=10, n_samples=1000,
                          n_validation=300, fit_options={"max_iter": 100})
    report, layer = result.report, result.layer
    assert report.subspace == 3 and report.subspace_captured == pytest.approx(1, abs=1e-12)
    assert layer.subspace == 3 and layer.P.shape == (20, 3)
    row_space = torch.linalg.qr(net[0].weight.detach().T)[0]
    assert torch.allclose(torch.linalg.svdvals(layer.P.detach().T @ row_space),
                          torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert report.fit_output_error_train < 0.01 and report.fit_output_error_validation < 0.01
    assert report.fit_jacobian_error_train < 0.05
    assert report.parameters_span_after == layer.n_parameters == 20 * 3 + 3 * (3 + 4 + 10) + 4
    assert "subspace" in report.times
    with torch.no_grad():
        x = torch.randn(50, 20, dtype=torch.float64)
        torch.testing.assert_close(result.model(x), result.fit.model(x @ layer.P), rtol=1e-12,
                                   atol=1e-12)
        assert relative_error(result.model(x), net(x)) < 0.02


def test_a_subspace_fit_of_the_cnn_head_reports_what_lies_outside_and_loads_back(digits, tmp_path):
    model, train_images, _labels, test_images, test_labels = digits
    result = compress(model, ("fc1", "fc2"), train_images, rank=24, subspace=5, n_functions=6,
                      n_samples=600, n_validation=300, test_data=(test_images, test_labels),
                      fit_options={"max_iter": 10}, seed=0)
    report = result.report
    assert 0 < report.subspace_captured < 1
    # The Jacobians' energy outside the subspace is error the fit cannot remove.
    assert report.fit_jacobian_error_train >= math.sqrt(1 - report.subspace_captured) - 1e-12
    assert report.parameters_span_after == 3136 * 5 + 24 * (5 + 10 + 6) + 10
    assert report.fraction_model_kept < 0.2
    with torch.no_grad():  # the spliced layer is the fit at the projected inputs
        inputs = span_inputs(model, resolve_span(model, ("fc1", "fc2")), test_images[:64])
        projected = inputs.double() @ result.layer.P.double()
        torch.testing.assert_close(result.layer(inputs), result.fit.model(projected).float(),
                                   rtol=1e-4, atol=1e-4)
    path = tmp_path / "sub.pt"
    save_compressed(path, result, {"model": "reference_cnn"})
    loaded, info = load_compressed(path)
    assert info["layer"]["subspace"] == 5
    assert zoo.evaluate(loaded, test_images, test_labels) == report.accuracy_after


@pytest.mark.filterwarnings("ignore:the flexible layer of rank")  # toy spans
def test_a_chain_that_the_forward_loops_over_is_refused_before_sampling(monkeypatch):
    # The forward runs blocks' layers in its own residual loop: the chain blocks.0..2 never
    # runs as nn.Sequential.forward computes it, and a layer fitted to that chain would be
    # wrong in the model (relative error near 1 while the fit reported 0.04).
    seen = _stop_at_sampling(monkeypatch)
    X = torch.randn(600, 6)
    with pytest.raises(ValueError, match=r"never calls 'blocks', the nn.Sequential that "
                                         r"holds the span blocks.0..2"):
        compress(Looped(), ("blocks.0", "blocks.2"), X, rank=6, n_samples=400,
                 n_validation=100)
    assert not seen
    # One layer of the loop, or the chain of a forward that calls blocks, is sampled.
    with pytest.raises(_Sampled):
        compress(Looped(), "blocks.2", X, rank=2, n_samples=400, n_validation=100,
                 jacobian="dense")
    with pytest.raises(_Sampled):
        compress(Looped(call=True), ("blocks.0", "blocks.2"), X, rank=2, n_samples=400,
                 n_validation=100, jacobian="dense")
    order = torch.randperm(600, generator=torch.Generator().manual_seed(0))[:400]
    torch.testing.assert_close(seen["X"], X[order], rtol=0, atol=0)


def test_parameters_shared_with_the_rest_of_the_model_are_counted_once():
    # The span (shared, tanh, last) reuses the first layer: splicing it out removes only the
    # last Linear (27 parameters); a rank-2 layer (35) makes the model larger, not smaller.
    torch.manual_seed(0)
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(8, 3))
    with pytest.warns(UserWarning, match=r"has 35 parameters, no fewer than the 27 that "
                                         r"removing the span 2..4 saves \(another 72 of its "
                                         r"parameters are used outside it and stay\): it "
                                         r"compresses nothing; ranks R <= 1 keep fewer"):
        result = compress(model, (2, 4), torch.randn(200, 8), rank=2, n_functions=5,
                          n_samples=100, n_validation=20, fit_options={"max_iter": 3})
    report = result.report
    assert count_parameters(model) == report.parameters_model_before == 99
    assert report.parameters_span_before == 27 and report.parameters_span_after == 35
    assert report.parameters_model_after == count_parameters(result.model) == 99 - 27 + 35
    assert report.fraction_model_kept == pytest.approx(107 / 99)
    # Tied weights (one Parameter in two modules) stay too; a layer used only in the span goes.
    head = nn.Linear(4, 4)
    tied = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), head, nn.Tanh(), nn.Linear(4, 2))
    tied[0].weight = head.weight
    span = resolve_span(tied, (2, 4))
    assert compress_module._span_parameters(tied, span) == (4 + 10, 16)
    net = WrappedCNN(zoo.build_model("reference_cnn", seed=0))
    span = resolve_span(net, ("classifier.fc1", "classifier.fc2"))
    assert compress_module._span_parameters(net, span) == (
        count_parameters(span.module(net)), 0)


def test_a_basis_instance_brings_its_own_number_of_functions(monkeypatch):
    # D = 40 from the basis, not the n_functions argument (8): the layer's 2 (8 + 3 + 40) + 3
    # = 105 parameters are no fewer than the span's 99, and the warning says so.
    from tenflex.basis import make_basis

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 3))
    _stop_at_sampling(monkeypatch)
    with pytest.warns(UserWarning, match=r"rank 2 has 105 parameters, no fewer than the 99 "
                                         r"that removing the span 2..4 saves: it compresses "
                                         r"nothing; ranks R <= 1 keep fewer"), \
            pytest.raises(_Sampled):
        compress(model, (2, 4), torch.randn(200, 8), rank=2, basis=make_basis("bspline", 40),
                 n_samples=100, n_validation=20)
    # The pre-checks use that D too: 40 functions need N >= 40 sampling points.
    with pytest.raises(ValueError, match="N must be >= D"):
        compress(model, (2, 4), torch.randn(200, 8), rank=1, basis=make_basis("bspline", 40),
                 n_samples=30, n_validation=0)


def test_a_span_whose_output_is_one_number_per_image_is_validated():
    # The span maps (B, 5) to (B,): n = 1, and the validation images' outputs are (B,) too.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    X = torch.randn(300, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 3 (5 + 1 + 8) + 1 = 43 parameters against 57
        result = compress(net, (0, 3), X, rank=3, n_samples=150, n_validation=30,
                          fit_options={"max_iter": 5})
    report = result.report
    assert report.input_shape == [5] and report.output_shape == []
    valid = torch.randperm(300, generator=torch.Generator().manual_seed(0))[150:180]
    with torch.no_grad():
        expected = relative_error(result.fit.model(X[valid].double()),
                                  net(X[valid]).double()[:, None])
        assert report.fit_output_error_validation == pytest.approx(expected, rel=1e-6)
        assert result.model(X[:7]).shape == (7,)
        torch.testing.assert_close(result.model(X[:7]).double(),
                                   result.fit.model(X[:7].double())[:, 0], rtol=1e-5, atol=1e-5)
    # A span whose inputs are (B,) has no feature dimension to sample: refused up front.
    scalar = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0), nn.Tanh())
    with pytest.raises(ValueError, match=r"the span 2 takes inputs of shape \(B,\), one "
                                         r"number per image: .* start the span at a layer"):
        compress(scalar, 2, X, rank=1, n_samples=150, n_validation=30)


@pytest.mark.parametrize("jacobian", ["auto", "dense", "factored"])
def test_non_finite_weights_are_named_before_sampling(monkeypatch, jacobian):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 8),
                          nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].weight[2, 5] = float("nan")
        model[5].bias[0] = float("inf")
    images = torch.randn(200, 8, 8)  # finite

    def no_sampling(*args, **kw):
        raise AssertionError("sampling started before the weights were checked")

    monkeypatch.setattr("tenflex.sampling.sample_function", no_sampling)
    with pytest.raises(ValueError, match=r"the model's parameters contain NaN or Inf values: "
                                         r"3.weight \(1 of 128 entries\), 5.bias \(1 of 3 "
                                         r"entries\); .*load or train finite weights"):
        compress(model, (3, 5), images, rank=2, n_samples=100, n_validation=20,
                 jacobian=jacobian)


def test_non_finite_span_inputs_and_outputs_are_blamed_on_the_network(monkeypatch):
    # Finite weights and images, but the network overflows: the message says where.
    class Exp(nn.Module):
        def forward(self, x):
            return torch.exp(x)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), Exp(), nn.Linear(6, 6), Exp(), nn.Linear(6, 2))
    model = model.double()
    images = 1e3 * torch.randn(100, 4, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a toy span
        with pytest.raises(ValueError, match=r"the inputs of the span 2..4 contain NaN or Inf "
                                             r"values at \d+ of 60 sampling points, though the "
                                             r"images and the model's parameters are finite: "
                                             r"the layers before it overflow there"):
            compress(model, (2, 4), images, rank=2, n_samples=60, n_validation=0)
        with pytest.raises(ValueError, match=r"the outputs of the span 0..4 contain NaN or Inf "
                                             r"values at \d+ of 60 sampling points, .*: its "
                                             r"layers overflow there"):
            compress(model, (0, 4), images, rank=2, n_samples=60, n_validation=0,
                     jacobian="dense")


def test_check_only_makes_the_checks_and_nothing_else(digits, monkeypatch):
    _, train_images, train_labels, test_images, test_labels = digits

    def no_sampling(*args, **kwargs):
        raise AssertionError("check_only sampled the span")

    monkeypatch.setattr(compress_module, "_sample_span", no_sampling)
    settings = {"rank": 6, "n_functions": 6, "n_samples": 600, "n_validation": 300,
                "test_data": (test_images, test_labels),
                "finetune": {"epochs": 1, "train_labels": train_labels}}
    # an untrained network of the same architecture is enough
    untrained = zoo.build_model("reference_cnn", seed=1)
    assert compress(untrained, ("fc1", "fc2"), train_images, check_only=True, **settings) is None
    # the same refusals as a real run, before any work
    with pytest.raises(ValueError, match="rank R = 700 is larger than the data supports"):
        compress(untrained, ("fc1", "fc2"), train_images, check_only=True,
                 **{**settings, "rank": 700})
    with pytest.raises(ValueError, match="finetune has unknown keys"):
        compress(untrained, ("fc1", "fc2"), train_images, check_only=True,
                 **{**settings, "finetune": {"epochs": 1, "train_labels": train_labels,
                                             "epoch": 2}})
    with pytest.raises(ValueError, match="exceeds the"):
        compress(untrained, ("fc1", "fc2"), train_images, check_only=True,
                 **{**settings, "n_samples": len(train_images)})


def _in_place_head() -> Headed:
    """A network of one's own whose span starts with an in-place ReLU."""
    torch.manual_seed(0)
    return Headed(nn.Linear(10, 12), nn.ReLU(inplace=True), nn.Linear(12, 8), nn.Tanh(),
                  nn.Linear(8, 4))


@pytest.mark.parametrize("sequential", [False, True])
def test_a_span_that_starts_in_place_is_fitted_and_validated_on_its_inputs(sequential):
    # The span's inputs were captured after its in-place ReLU had overwritten them (a
    # network of one's own), and its validation inputs were overwritten by the span before
    # the flexible layer was measured on them (both): the layer was fitted or measured on
    # rectified inputs, which it never gets in the network.
    net = _in_place_head().eval()
    model = net.head if sequential else net
    span = (1, 2) if sequential else ("head.1", "head.2")
    x = torch.randn(500, 10, generator=torch.Generator().manual_seed(1))
    n_samples, n_validation, seed = 300, 200, 0
    result = compress(model, span, x, rank=3, n_functions=4, n_samples=n_samples,
                      n_validation=n_validation, seed=seed, fit_options={"max_iter": 5})
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        inputs = net.head[0](x[order[n_samples:]])  # the span's inputs, negative ones too
        expected = net.head[2](torch.relu(inputs))
        measured = relative_error(result.layer(inputs).double(), expected.double())
        # The compressed network is the layer on the span's true inputs.
        torch.testing.assert_close(result.model(x[:7]), net.head[4](net.head[3](
            result.layer(net.head[0](x[:7])))))
    assert (inputs < 0).any()
    assert result.report.fit_output_error_validation == pytest.approx(measured, rel=1e-5)


def test_a_data_loader_or_a_meta_model_is_refused_clearly():
    # A DataLoader failed in torch.as_tensor with a message about NumPy object arrays, a
    # list of (image, label) pairs in NumPy ("inhomogeneous shape"), a model or images on
    # the meta device with "Tensor.item() cannot be called on meta tensors".
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(40, 6)
    kwargs = {"rank": 2, "n_samples": 20, "n_validation": 10, "check_only": True}
    assert compress(model, (0, 2), x, **kwargs) is None
    pairs = [(x[i], i % 3) for i in range(40)]
    for images in (DataLoader(TensorDataset(x), batch_size=8), pairs):
        with pytest.raises(TypeError, match=r"train_images must be a tensor or NumPy array of "
                                            r"model inputs \(N, \.\.\.\), got "
                                            r"(DataLoader|list); "
                                            r"gather a DataLoader's inputs first"):
            compress(model, (0, 2), images, **kwargs)
    with pytest.raises(ValueError, match=r"train_images is on the 'meta' device"):
        compress(model, (0, 2), x.to("meta"), **kwargs)
    with pytest.raises(ValueError, match=r"parameters or buffers \['0.weight', '0.bias', "
                                         r"'2.weight', '2.bias'\] are on the 'meta' device.*"
                                         r"model.to_empty\(device='cpu'\)"):
        compress(model.to("meta"), (0, 2), x, **kwargs)


def test_fine_tuning_the_layer_keeps_the_frozen_parameters_frozen():
    # scope="layer" froze the copy, trained the layer, then set requires_grad on every
    # parameter: those frozen in the network given came back trainable.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    model[0].requires_grad_(False)
    x, y = torch.randn(300, 6), torch.randint(0, 3, (300,))
    result = compress(model, (2, 3), x, rank=2, n_functions=4, n_samples=100, n_validation=50,
                      fit_options={"max_iter": 2},
                      finetune={"scope": "layer", "train_labels": y, "epochs": 1})
    flags = {n: p.requires_grad for n, p in result.model.named_parameters()}
    assert flags == {n: p.requires_grad for n, p in result.finetuned_model.named_parameters()}
    assert not flags["0.weight"] and not flags["0.bias"] and flags["4.weight"]
    tuned, _ = finetune_replacement(result.model, "flex_2_3", x,
                                    {"scope": "layer", "train_labels": y, "epochs": 1})
    assert flags == {n: p.requires_grad for n, p in tuned.named_parameters()}


def test_each_stage_time_is_reported_under_its_own_name(monkeypatch):
    # compress's clock advances only inside the stages, by a distinct known amount each: the
    # report must give each stage exactly its own, and the total all of them; times swapped
    # between stages, or a stage's clock not started anew, fail.
    import types

    import tenflex.fit

    clock = [0.0]
    spent = {"sampling": 1.0, "fit": 10.0, "splice": 100.0, "evaluation": 1000.0}

    def slowed(function, stage):
        @functools.wraps(function)  # compress checks fit_options against its signature
        def slow(*args, **kwargs):
            clock[0] += spent[stage]
            return function(*args, **kwargs)
        return slow

    monkeypatch.setattr(compress_module, "time",
                        types.SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(compress_module, "_sample_span",
                        slowed(compress_module._sample_span, "sampling"))
    monkeypatch.setattr(tenflex.fit, "cmtf_als", slowed(tenflex.fit.cmtf_als, "fit"))
    monkeypatch.setattr(compress_module, "splice", slowed(compress_module.splice, "splice"))
    monkeypatch.setattr(compress_module, "fidelity",
                        slowed(compress_module.fidelity, "evaluation"))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X = torch.randn(120, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a toy span: the layer compresses nothing
        times = compress(model, (0, 2), X, rank=1, n_functions=4, n_samples=80,
                         n_validation=20, test_data=(X[:30], torch.zeros(30, dtype=int)),
                         fit_options={"max_iter": 2}).report.times
    assert times == {**spent, "total": sum(spent.values())}


def test_the_report_counts_the_functions_and_parameters_of_the_layer_it_built():
    # A basis instance brings its own D (5, not the n_functions argument 8): the report gives
    # the layer's D, and its counts are those of the layer and of the spliced model, by hand.
    from tenflex.basis import make_basis

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 10), nn.Tanh(),
                          nn.Linear(10, 2))
    result = compress(model, (2, 4), torch.randn(150, 6), rank=2,
                      basis=make_basis("bspline", 5), n_samples=100, n_validation=20,
                      fit_options={"max_iter": 2})
    report = result.report
    assert report.n_functions == result.layer.n_functions == 5
    assert report.parameters_span_before == 10 * 10 + 10 + 10 * 2 + 2
    assert report.parameters_span_after == 2 * (10 + 2 + 5) + 2
    assert report.parameters_model_before == 6 * 10 + 10 + 132
    assert report.parameters_model_after == 70 + 36
    assert report.fraction_model_kept == pytest.approx(106 / 202)


def test_the_reported_jacobian_error_is_that_of_the_fit_at_the_samples():
    # Ground truth: the span's Jacobians at the sampled inputs, by autograd, against those of
    # the fitted function; a relative Frobenius norm error (not its square).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    X = torch.randn(100, 5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a toy span: the layer compresses nothing
        result = compress(model, (0, 2), X, rank=2, n_functions=5, n_samples=60,
                          n_validation=10, fit_options={"max_iter": 3}, jacobian="dense")
    samples = X[torch.randperm(100, generator=torch.Generator().manual_seed(0))[:60]]
    with torch.no_grad():
        true = torch.func.vmap(torch.func.jacrev(model))(samples)  # (N, n, m)
        fitted = result.fit.model.jacobian(samples).permute(2, 0, 1)  # (n, m, N) -> (N, n, m)
        expected = float((fitted - true).norm() / true.norm())
    assert 0.01 < expected < 1  # not a perfect fit: the square would differ
    assert result.report.fit_jacobian_error_train == pytest.approx(expected, rel=1e-6)
