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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tenflex.files import atomic_write


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
        # Which vector kernels torch runs (AVX2, AVX512, ...): they round differently, so a
        # network trained on another capability is another network.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy": np.__version__,
        "tensorly": tensorly.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        **extra,
    }


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` to ``path`` atomically, readable by everyone like any other file."""
    atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=1) + "\n"), mode="w")
