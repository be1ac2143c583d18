"""The tall-product benchmark: its quick run and the summary it draws."""

from __future__ import annotations

import pytest

BENCH = "bench_products"  # the script the `bench` fixture imports


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, benchmark_result):
    out = tmp_path_factory.mktemp("products") / "bench_products.json"
    return benchmark_result(BENCH, "--quick", "--threads", "1", "--repeat", "1", out=out,
                            timeout=120)


def test_quick_run_times_both_forms_on_the_grid(quick_run):
    entries = quick_run["entries"]
    settings = quick_run["settings"]
    grid = {(product, layout, K, m, R) for product, layout in settings["cases"]
            for K, m in settings["sizes"] for R in settings["ranks"]}
    assert {(e["product"], e["layout"], e["K"], e["m"], e["R"]) for e in entries} == grid
    assert len(entries) == len(grid)
    assert {e["product"] for e in entries} == {"transposed", "plain"}
    for e in entries:
        assert e["torch_s"] > 0 and e["tenflex_s"] > 0 and e["threads"] == 1
        assert e["speedup"] == pytest.approx(e["torch_s"] / e["tenflex_s"])
        # float64 sums of at most 2000 terms in another order
        assert e["max_difference_relative"] < 1e-12
    assert len(quick_run["summary"]) == len(settings["cases"])


def test_summary_on_known_timings(bench):
    base = {"product": "transposed", "dtype": "float64", "threads": 2, "K": 10, "m": 3,
            "layout": "rows"}
    entries = [{**base, "R": 4, "speedup": 8.0}, {**base, "R": 16, "speedup": 0.5},
               {**base, "R": 32, "speedup": 1.5},
               {**base, "layout": "columns", "R": 4, "speedup": 3.0}]
    rows = {r["layout"]: r for r in bench.summarize(entries)}
    assert rows["rows"]["max_speedup"] == 8.0 and rows["rows"]["at_R"] == 4
    assert rows["rows"]["min_speedup"] == 0.5 and rows["rows"]["min_at_R"] == 16
    assert rows["columns"]["max_speedup"] == rows["columns"]["min_speedup"] == 3.0


def test_bad_arguments_are_refused(run_benchmark):
    proc = run_benchmark(BENCH, "--threads", "0", timeout=60)
    assert proc.returncode == 2 and "--threads and --repeat must be at least 1" in proc.stderr
