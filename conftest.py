"""Hand the book's MyST Markdown chapters (jupytext notebooks) to nbval.

nbval collects only ``.ipynb`` files. A chapter is a ``.md`` file that the book
(myst-nb) executes as a notebook: its YAML front matter says
``jupytext: text_representation: format_name: myst`` or ``file_format: mystnb``.
It is read with ``jupytext.read`` and then tested cell by cell exactly like a
notebook: a cell that raises fails the test run. ``_build`` is never collected (see
``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import types

import jupytext
import nbval.plugin
import yaml


def _is_myst_notebook(path) -> bool:
    """Whether myst-nb reads ``path`` as a notebook (the rule of its
    ``is_myst_markdown_notebook``), so that every chapter the book executes is tested."""
    if path.suffix != ".md":
        return False
    with open(path, encoding="utf-8-sig") as handle:
        lines = handle.read().splitlines()
    if not lines or not lines[0].startswith("---"):
        return False
    front = []
    for line in lines[1:]:
        if line.startswith(("---", "...")):
            break
        front.append(line)
    try:
        metadata = yaml.safe_load("\n".join(front))
    except yaml.YAMLError:
        # Collected, so that jupytext's error shows, rather than a chapter silently untested.
        return any(word in line for line in front for word in ("jupytext", "mystnb"))
    if not isinstance(metadata, dict):
        return False
    if metadata.get("file_format") == "mystnb":
        return True
    jupytext_meta = metadata.get("jupytext")
    representation = jupytext_meta.get("text_representation") if isinstance(
        jupytext_meta, dict) else None
    return isinstance(representation, dict) and representation.get("format_name") == "myst"


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
