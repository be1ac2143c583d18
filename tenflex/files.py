"""Writing result files so that an interrupted run never leaves a half-written one."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` through a temporary file in the same folder and ``os.replace``.

    Parameters
    ----------
    path : path-like
        The file to (over)write; missing parent folders are created.
    write : callable
        Called with the open temporary file; writes the whole content.
    mode : {"wb", "w"}
        Binary or text.

    Notes
    -----
    An interrupted write leaves ``path`` as it was (absent, or its previous content) and
    removes the temporary file on any exception (only a killed process can leave a hidden
    ``.tmp`` file behind). The file gets the usual permissions under the umask (not the
    private 0600 of :func:`tempfile.mkstemp`).
    """
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
