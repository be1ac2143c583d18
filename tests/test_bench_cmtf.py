"""The CMTF-ALS benchmark's command line: bad values refused before the first size runs."""

from __future__ import annotations

import pytest

BENCH = "bench_cmtf"  # the script the `bench` fixture imports


@pytest.mark.parametrize("args", [
    ["--sizes", "16,4,500,4,6;16,4,500"],  # the second size short of a value
    ["--sizes", "16,4,500,0,6"],
    ["--sizes", "a,b,c,d,e"],
    ["--solvers", "als,newton"],
    ["--repeat", "0"],
    ["--threads", "0"],
    ["--sweeps", "1"],  # the first sweep is not timed: nothing left to time
    ["--max-iter", "-1"],
])
def test_bad_arguments_are_refused_before_the_first_size(bench, monkeypatch, tmp_path, args):
    monkeypatch.setattr(bench, "make_problem",
                        lambda *a, **k: pytest.fail("a size ran before the arguments were checked"))
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as stop:
        bench.main([*args, "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()


def test_quick_grid_runs_and_writes(bench, tmp_path):
    import json

    out = tmp_path / "result.json"
    assert bench.main(["--sizes", "8,2,60,2,5", "--repeat", "1", "--sweeps", "2",
                       "--max-iter", "2", "--solvers", "als", "--out", str(out)]) == 0
    (entry,) = json.loads(out.read_text())["results"]
    assert (entry["m"], entry["n"], entry["N"], entry["R"], entry["D"]) == (8, 2, 60, 2, 5)
    assert set(entry["solver"]) == {"als/perturbed_1pct", "als/random"}
