"""Shared fixtures of the unit tests."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tenflex import zoo

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def run_benchmark():
    """Run ``benchmarks/<name>.py`` with command-line arguments, from the repository root as
    a user would: ``run_benchmark(name, *args, timeout=...)`` -> the completed process."""

    def run(name: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
                              capture_output=True, text=True, timeout=timeout,
                              cwd=BENCHMARKS.parent, check=False)

    return run


@pytest.fixture(scope="session")
def benchmark_result(run_benchmark):
    """Run a benchmark that must succeed and return the JSON result it wrote:
    ``benchmark_result(name, *args, out=path, timeout=...)`` (``--out path`` is passed)."""

    def run(name: str, *args: str, out: Path, timeout: float) -> dict:
        proc = run_benchmark(name, *args, "--out", str(out), timeout=timeout)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return json.loads(Path(out).read_text())

    return run


@pytest.fixture(scope="module")
def bench(request):
    """The benchmark script named by the test module's ``BENCH``, imported as a module
    (benchmarks/ is not a package)."""
    monkey = pytest.MonkeyPatch()
    monkey.syspath_prepend(str(BENCHMARKS))
    yield importlib.import_module(request.module.BENCH)
    monkey.undo()


@pytest.fixture
def single_thread():
    """Run the test with one torch thread: tiny problems are dominated by thread
    synchronisation on a busy 2-core machine (``pytestmark`` of the modules that use it)."""
    with zoo.torch_threads(1):
        yield


@pytest.fixture(scope="module")
def single_thread_module():
    """One torch thread for a whole module, its module-scoped fixtures included (restored
    after): ``pytestmark = pytest.mark.usefixtures("single_thread_module")``."""
    with zoo.torch_threads(1):
        yield
