"""The JSON writing and machine description shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import stat

import pytest

BENCH = "results_io"


def test_write_json_is_atomic_and_readable(bench, tmp_path):
    path = tmp_path / "sub" / "result.json"
    bench.write_json(path, {"entries": [1, 2.5, "a"]})
    assert json.loads(path.read_text()) == {"entries": [1, 2.5, "a"]}
    umask = os.umask(0)
    os.umask(umask)
    # not mkstemp's private 0600: a result file is for everyone, like any other file
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    # a write that fails half-way leaves the previous result and no temporary file
    with pytest.raises(TypeError):
        bench.write_json(path, {"entries": [object()]})
    assert json.loads(path.read_text()) == {"entries": [1, 2.5, "a"]}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_machine_description(bench):
    machine = bench.machine_description(threads=3, note="x")
    for key in ("platform", "processor", "cpu_count", "python", "torch", "torch_threads"):
        assert machine[key] not in (None, "")
    assert machine["threads"] == 3 and machine["note"] == "x"
    json.dumps(machine)  # what the scripts store must be JSON
