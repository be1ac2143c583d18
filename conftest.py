"""Hand the book's MyST Markdown chapters (jupytext notebooks) to nbval.

nbval collects only ``.ipynb`` files. A chapter is a ``.md`` file whose YAML
front matter carries a jupytext section and a kernelspec; it is read with
``jupytext.read`` and then tested cell by cell exactly like a notebook: a cell
that raises fails the test run. ``_build`` is never collected (see
``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import types

import jupytext
import nbval.plugin


def _is_myst_notebook(path) -> bool:
    if path.suffix != ".md":
        return False
    with open(path, encoding="utf-8") as handle:
        head = handle.read(2000)
    return head.startswith("---") and "jupytext:" in head and "kernelspec:" in head


@contextlib.contextmanager
def _nbval_reads(notebook):
    """Make nbval's ``nbformat.read`` return ``notebook`` (parsed by jupytext)."""
    original = nbval.plugin.nbformat
    nbval.plugin.nbformat = types.SimpleNamespace(read=lambda *args, **kwargs: notebook)
    try:
        yield
    finally:
        nbval.plugin.nbformat = original


class MystNotebookFile(nbval.plugin.IPyNbFile):
    """An nbval collector for a jupytext MyST Markdown notebook."""

    def collect(self):
        notebook = jupytext.read(self.path)
        with _nbval_reads(notebook):
            yield from super().collect()


def pytest_collect_file(file_path, parent):
    option = parent.config.option
    if (option.nbval or option.nbval_lax) and _is_myst_notebook(file_path):
        return MystNotebookFile.from_parent(parent, path=file_path)
    return None
