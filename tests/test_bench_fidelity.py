"""The fidelity benchmark: its quick run (a briefly trained network on the digits set)."""

from __future__ import annotations

import pytest

BENCH = "bench_fidelity"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, benchmark_result):
    out = tmp_path_factory.mktemp("fidelity") / "bench_fidelity.json"
    return benchmark_result(BENCH, "--quick", out=out, timeout=300)


def test_quick_run_compares_every_compression_with_the_original(quick_run):
    rows = quick_run["rows"]
    assert [(r["method"], r["rank"]) for r in rows] == [
        ("flexible", 4), ("svd", 4), ("linear", 4), ("flexible", 8), ("svd", 8),
        ("linear", 8), ("flexible", 8)]
    assert [r.get("n_samples") for r in rows if r["method"] == "flexible"] == [300, 300, 600]
    n = quick_run["reference"]["n_images"]
    for row in rows:
        assert row["n_images"] == n == 360
        assert row["reference_accuracy"] == quick_run["reference"]["accuracy"]
        # accuracy moves by the images fixed minus those broken
        assert row["accuracy"] - row["reference_accuracy"] == pytest.approx(
            (row["fixed"] - row["broken"]) / n, abs=1e-12)
        # an image fixed or broken changed its prediction
        assert 1 - row["agreement"] >= (row["fixed"] + row["broken"]) / n - 1e-12
        assert row["output_error"] >= 0 and 0 < row["p_value"] <= 1
    # each flexible layer against both baselines at its budget
    assert [(c["rank"], c["baseline"]) for c in quick_run["comparisons"]] == [
        (4, "svd"), (4, "linear"), (8, "svd"), (8, "linear"), (8, "svd"), (8, "linear")]
    by_key = {(r["method"], r["rank"], r.get("n_samples")): r for r in rows}
    for c in quick_run["comparisons"]:
        flex = by_key[("flexible", c["rank"], c["flexible"]["n_samples"])]
        other = by_key[(c["baseline"], c["rank"], None)]
        assert c["accuracy_difference_pp"] == pytest.approx(
            100 * (flex["accuracy"] - other["accuracy"]), abs=1e-9)
        assert (c["only_flexible_right"] - c["only_baseline_right"]) / n == pytest.approx(
            flex["accuracy"] - other["accuracy"], abs=1e-12)
    # no bench_compress result is read in the quick run
    assert quick_run["matches_bench_compress"] == {"n_checked": 0, "all_equal": True}


def test_a_missing_compress_result_is_named(tmp_path, run_benchmark):
    proc = run_benchmark(BENCH, "--compress-result", str(tmp_path / "none.json"),
                         "--out", str(tmp_path / "out.json"), timeout=120)
    assert proc.returncode != 0
    assert "none.json not found: run `python benchmarks/bench_compress.py` first" in proc.stderr
    assert not (tmp_path / "out.json").exists()
