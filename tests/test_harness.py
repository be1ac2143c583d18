"""Tests of the test harness itself: a broken chapter must fail both `make test` and `make book`.

`make test` runs pytest, whose conftest.py hands MyST chapters to nbval; `make book` runs the
Makefile's `html` target (jupyter-book with -n -W --keep-going). Both are exercised here on
fixture chapters that live outside the book.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def run(cmd, cwd=ROOT, timeout=600):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.mark.parametrize(("chapter", "passes"), [("good_chapter.md", True), ("broken_chapter.md", False)])
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
