"""The factored-Jacobian benchmark: its quick run (an untrained network on the digits set)."""

from __future__ import annotations

import pytest

BENCH = "bench_factored"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, benchmark_result):
    out = tmp_path_factory.mktemp("factored") / "bench_factored.json"
    return benchmark_result(BENCH, "--quick", out=out, timeout=300)


def test_quick_run_times_both_forms_which_agree(quick_run):
    assert quick_run["span"] == ["fc1", "fc2"]
    assert [e["N"] for e in quick_run["entries"]] == [200, 400]
    for entry in quick_run["entries"]:
        n, m, N = entry["shape"]
        assert (n, m, N, entry["h"]) == (10, 3136, entry["N"], 128)
        # K (n, h, N) and A (h, m) against J (n, m, N)
        assert entry["stored_bytes"] == {"factored": 8 * (n * 128 * N + 128 * m),
                                         "dense": 8 * n * m * N}
        assert min(entry["sampling_s"].values()) > 0
        rows = entry["products"]
        assert sorted((r["R"], r["product"]) for r in rows) == [
            (4, "contract_input"), (4, "mttkrp_input"), (12, "contract_input"),
            (12, "mttkrp_input")]
        for row in rows:
            assert row["dense_s"] > 0 and row["factored_s"] > 0
            assert row["relative_difference"] < 1e-12


def test_dense_max_leaves_the_dense_tensor_out(tmp_path, benchmark_result):
    small, large = benchmark_result(BENCH, "--quick", "--dense-max", "300",
                                    out=tmp_path / "bench.json", timeout=300)["entries"]
    assert set(small["sampling_s"]) == {"factored", "dense"}
    assert set(large["sampling_s"]) == {"factored"} and set(large["stored_bytes"]) == {"factored"}
    assert all("dense_s" not in r and "relative_difference" not in r for r in large["products"])
