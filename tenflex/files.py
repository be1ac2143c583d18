"""Where tenflex keeps its files, and writing result files so that an interrupted run never
leaves a half-written one."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "source_checkout", "user_folder"]


def source_checkout() -> Path | None:
    """The repository tenflex runs from, or None when it is an installed package.

    A source checkout (``pip install -e .`` or the ``make`` set-up) is recognised by the
    folder above the package holding tenflex's own ``pyproject.toml`` (the project named
    ``tenflex``) next to ``tenflex/zoo.py``; an installed wheel sits in ``site-packages``,
    whose parent is no project, or was put into a project of someone else's
    (``pip install --target``), whose ``pyproject.toml`` names another project.

    Returns
    -------
    pathlib.Path or None
        The folder that holds ``pyproject.toml`` and ``tenflex/``.
    """
    root = Path(__file__).resolve().parent.parent
    if not (root / "tenflex" / "zoo.py").is_file():
        return None
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    # name = "tenflex" of the [project] table, found as a line: tomllib is not in Python 3.10.
    if re.search(r"""^\s*name\s*=\s*["']tenflex["']\s*(#.*)?$""", text, re.MULTILINE):
        return root
    return None


def user_folder(kind: str) -> Path:
    """The per-user folder of an installed tenflex, following the XDG base directories.

    Parameters
    ----------
    kind : {"cache", "data"}
        ``"cache"``: ``$XDG_CACHE_HOME/tenflex`` (``~/.cache/tenflex``), for what can be
        rebuilt (trained weights); ``"data"``: ``$XDG_DATA_HOME/tenflex``
        (``~/.local/share/tenflex``), for downloaded data sets.

    Returns
    -------
    pathlib.Path
        The folder (not created).
    """
    defaults = {"cache": ("XDG_CACHE_HOME", Path(".cache")),
                "data": ("XDG_DATA_HOME", Path(".local") / "share")}
    if kind not in defaults:
        raise ValueError(f"kind must be one of {sorted(defaults)}, got {kind!r}")
    variable, below_home = defaults[kind]
    # The XDG specification ignores relative paths in these variables.
    env = os.environ.get(variable)
    base = Path(env).expanduser() if env and Path(env).expanduser().is_absolute() \
        else Path.home() / below_home
    return base / "tenflex"


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    Parameters
    ----------
    path : path-like
        The file to (over)write; missing parent folders are created.
    write : callable
        Called with the open temporary file; writes the whole content.
    mode : {"wb", "w"}
        Binary or text (anything else, an append mode included, raises a ValueError).

    Notes
    -----
    An interrupted write leaves ``path`` as it was (absent, or its previous content) and
    removes the temporary file on any exception (only a killed process can leave a hidden
    ``.tmp`` file behind). The file gets the usual permissions under the umask (not the
    private 0600 of :func:`tempfile.mkstemp`).
    """
    if mode not in ("wb", "w"):
        # "a" would replace the file rather than append to it, "r" fail on the temporary file.
        raise ValueError(f"mode must be 'wb' (binary) or 'w' (text), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened exclusively.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, mode.replace("w", "x")) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
