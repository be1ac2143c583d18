"""What every benchmark script writes with its figures: the machine, and the file itself.

One description of the machine (so the book can say where a figure was measured) and one
way of writing a result: through a temporary file and ``os.replace``, so that an interrupted
run never leaves a half-written JSON behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def machine_description(**extra: Any) -> dict[str, Any]:
    """Platform, processor, CPUs, library versions, threads and load; ``extra`` is added.

    ``processor`` is the model name from ``/proc/cpuinfo`` where there is one (Python's
    ``platform.processor()`` is often empty on Linux).
    """
    processor = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    import tensorly

    return {
        "platform": platform.platform(),
        "processor": processor,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "numpy": np.__version__,
        "tensorly": tensorly.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **extra,
    }


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically, readable by everyone like any other file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a result is for everyone
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
