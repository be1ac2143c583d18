"""Tests of tenflex.files: where tenflex keeps its files in a checkout and when installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tenflex
from tenflex import files, zoo

REPO = Path(tenflex.__file__).resolve().parent.parent


def test_a_source_checkout_is_recognised():
    assert files.source_checkout() == REPO
    assert (REPO / "pyproject.toml").is_file()


def test_an_installed_package_is_no_checkout(tmp_path, monkeypatch):
    site = tmp_path / "site-packages" / "tenflex"
    site.mkdir(parents=True)
    monkeypatch.setattr(files, "__file__", str(site / "files.py"))
    assert files.source_checkout() is None
    # The weights cache then goes to the user's cache folder, not beside site-packages.
    monkeypatch.delenv("TENFLEX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert zoo.default_cache_dir() == tmp_path / "cache" / "tenflex"


@pytest.mark.parametrize("project", ["another", "unreadable"])
def test_a_package_installed_into_another_project_is_no_checkout(project, tmp_path, monkeypatch):
    # pip install --target <project>: tenflex/ lies next to that project's pyproject.toml
    (tmp_path / "tenflex").mkdir()
    (tmp_path / "tenflex" / "zoo.py").write_text("")
    pyproject = tmp_path / "pyproject.toml"
    if project == "another":
        pyproject.write_text('[project]\nname = "myapp"\ndependencies = ["tenflex"]\n')
    else:
        pyproject.write_bytes(b"\xff\xfe not text")
    monkeypatch.setattr(files, "__file__", str(tmp_path / "tenflex" / "files.py"))
    assert files.source_checkout() is None
    monkeypatch.delenv("TENFLEX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert zoo.default_cache_dir() == tmp_path / "cache" / "tenflex"
    # tenflex's own pyproject.toml, as in this repository, makes it a checkout
    shutil.copyfile(REPO / "pyproject.toml", pyproject)
    assert files.source_checkout() == tmp_path


def test_installed_into_a_project_says_how_to_fetch_mnist_without_make(tmp_path):
    # The files of the wheel put into a project folder of the user's, beside its own
    # pyproject.toml (pip install --target): no data/ of that project, no `make data`.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "myapp"\nversion = "1"\n')
    data, cache, message = _run_installed_copy(
        tmp_path, tmp_path, "import tenflex.zoo as z\nprint(z.default_cache_dir())\n",
        XDG_CACHE_HOME=str(tmp_path / "cache"))[:3]
    assert Path(data) == tmp_path / "share" / "tenflex"
    assert Path(cache) == tmp_path / "cache" / "tenflex"
    assert "tenflex data mnist --fetch" in message and "make data" not in message


def test_user_folders_follow_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    assert files.user_folder("cache") == tmp_path / "c" / "tenflex"
    assert files.user_folder("data") == tmp_path / "d" / "tenflex"
    # Unset or relative (which the XDG specification says to ignore): the defaults.
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")
    assert files.user_folder("cache") == Path.home() / ".cache" / "tenflex"
    assert files.user_folder("data") == Path.home() / ".local" / "share" / "tenflex"
    with pytest.raises(ValueError, match=r"kind must be one of \['cache', 'data'\], got 'models'"):
        files.user_folder("models")


def test_installed_package_looks_for_data_in_the_user_folder(tmp_path):
    # The package copied alone, as a wheel installs it: no pyproject.toml above it.
    folder, message = _run_installed_copy(tmp_path, tmp_path / "site-packages")[:2]
    assert Path(folder) == tmp_path / "share" / "tenflex"
    assert "site-packages" not in message
    assert "tenflex data mnist --fetch" in message and "make data" not in message


def test_atomic_write_leaves_no_partial_or_temporary_file(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    files.atomic_write(target, lambda f: f.write("old\n"), mode="w")

    def failing(handle):
        handle.write("new, partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(target, failing, mode="w")
    with pytest.raises(ZeroDivisionError):
        files.atomic_write(tmp_path / "sub" / "g.bin", lambda f: (f.write(b"x"), 1 / 0))
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("mode", ["a", "ab", "r", "x", "w+"])
def test_atomic_write_refuses_other_modes(tmp_path, mode):
    target = tmp_path / "f.txt"
    target.write_text("old\n")
    # "a" used to replace the file with the appended text alone
    with pytest.raises(ValueError, match="mode must be 'wb'.*or 'w'"):
        files.atomic_write(target, lambda f: f.write("more\n"), mode=mode)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def _run_installed_copy(tmp_path, site, extra_script="", **env_extra):
    """Copy the package into ``site`` (as pip installs it) and run, from ``tmp_path``, a
    script printing its data folder, then ``extra_script``'s lines, then the message of a
    failed MNIST load (data and MNIST folders under ``tmp_path``). Returns stdout's lines."""
    shutil.copytree(REPO / "tenflex", site / "tenflex",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_DATA_HOME": str(tmp_path / "share"),
           "TENFLEX_DATA": str(tmp_path / "empty"), **env_extra}
    env.pop("TENFLEX_CACHE", None)
    script = ("import tenflex.data as d\nprint(d.PROJECT_DATA)\n" + extra_script
              + "try:\n    d.load_mnist('test')\nexcept d.DataError as e:\n    print(e)\n")
    run = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    return run.stdout.splitlines()
