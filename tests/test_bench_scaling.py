"""The scaling benchmark's quick mode: JSON structure, internal consistency, resumability."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch

BENCH = "bench_scaling"  # the script the `bench` fixture imports
HUGE_N = 10**11  # a Jacobian tensor of terabytes: must be skipped by the memory guard
ARGS = ["--quick", "--threads", "1", "--N", "200", "800", str(HUGE_N), "--R", "4"]




@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, run_benchmark):
    out = tmp_path_factory.mktemp("scaling") / "bench_scaling.json"
    proc = run_benchmark(BENCH, *ARGS, "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout, json.loads(out.read_text())


def ok_points(data):
    return [p for p in data["points"] if p["status"] == "ok"]


def test_report_structure(quick_run):
    _, stdout, data = quick_run
    assert data["benchmark"] == "bench_scaling"
    for key in ("machine", "date", "command", "settings", "points", "scaling", "limit"):
        assert key in data
    assert data["machine"]["threads"] == 1
    assert data["machine"]["mem_total_bytes"] > 0
    settings = data["settings"]
    assert settings["quick"] is True and settings["threads"] == 1
    assert settings["sweeps_values"] == {"N": [200, 800, HUGE_N], "m": [32, 64], "R": [4]}
    base = settings["base"]
    # N sweep (3 values) + the m sweep's 32 and the base (N = 400): 5 distinct points.
    assert len(data["points"]) == 5
    assert {(p["m"], p["N"], p["R"]) for p in data["points"]} == {
        (64, 200, 4), (64, 800, 4), (64, HUGE_N, 4), (32, 400, 4), (64, 400, 4)}
    assert all(p["n"] == base["n"] and p["D"] == base["D"] for p in data["points"])
    assert sum(ln.startswith("[") for ln in stdout.splitlines()) == 5  # one line per point
    assert "wrote" in stdout


def test_points_are_consistent(quick_run):
    _, _, data = quick_run
    sweeps = data["settings"]["sweeps"]
    points = ok_points(data)
    assert len(points) == 4
    for p in points:
        n, m, N, R = p["n"], p["m"], p["N"], p["R"]
        assert p["torch_threads"] == 1
        assert p["J_bytes"] == 8 * n * m * N
        assert p["n_iter"] == sweeps
        assert len(p["sweep_seconds_all"]) == sweeps - 1
        assert p["sweep_seconds"] == statistics.median(p["sweep_seconds_all"]) > 0
        assert p["setup_seconds"] > 0 and p["matmul_seconds"] > 0
        assert math.isclose(p["matmul_gflops"], 2 * n * N * m * R / p["matmul_seconds"] / 1e9)
        assert math.isclose(p["sweep_in_matmuls"], p["sweep_seconds"] / p["matmul_seconds"])
        stages = p["peak_rss_stages_bytes"]
        assert set(stages) == {"data", "jacobian", "setup", "sweeps", "matmul"}
        assert p["peak_rss_bytes"] == max(p["peak_rss_baseline_bytes"], *stages.values())
        assert p["peak_stage"] in stages
        assert p["peak_rss_bytes"] >= p["rss_after_data_bytes"] >= p["rss_baseline_bytes"] > 0
        assert p["peak_rss_above_baseline_bytes"] == p["peak_rss_bytes"] - p["rss_baseline_bytes"]
        assert math.isclose(p["peak_above_baseline_over_J"],
                            p["peak_rss_above_baseline_bytes"] / p["J_bytes"])


def test_memory_guard_skips(quick_run):
    _, stdout, data = quick_run
    (skipped,) = [p for p in data["points"] if p["status"] != "ok"]
    assert skipped["status"] == "skipped" and skipped["N"] == HUGE_N
    assert skipped["J_bytes"] == 8 * skipped["n"] * skipped["m"] * HUGE_N
    assert "available" in skipped["reason"] and "sweep_seconds" not in skipped
    assert "skipped" in stdout


def test_slopes_and_limit(quick_run, bench):
    _, _, data = quick_run
    base = data["settings"]["base"]
    points = ok_points(data)
    for factor, others in (("N", {"m": base["m"]}), ("m", {"N": base["N"]})):
        pts = sorted((p for p in points if all(p[k] == v for k, v in others.items())
                      and p["R"] == base["R"] and (factor != "N" or p["N"] != base["N"])),
                     key=lambda p: p[factor])
        summary = data["scaling"][factor]
        assert summary["measured"] == [p[factor] for p in pts]
        for q, slope in summary["slopes"].items():
            x, y = np.log([p[factor] for p in pts]), np.log([p[q] for p in pts])
            assert slope == pytest.approx((y[1] - y[0]) / (x[1] - x[0]), rel=1e-9)
    # A sweep of one value has no slope.
    assert data["scaling"]["R"]["measured"] == [4]
    assert all(v is None for v in data["scaling"]["R"]["slopes"].values())

    limit = data["limit"]
    with open("/proc/meminfo") as handle:
        total = next(int(ln.split()[1]) * 1024 for ln in handle if ln.startswith("MemTotal:"))
    assert limit["ram_bytes"] == total == data["machine"]["mem_total_bytes"]
    assert limit["from_N"] == [200, 800]
    n_pts = sorted((p for p in points if p["m"] == base["m"] and p["N"] in (200, 800)),
                   key=lambda p: p["N"])
    slope = (n_pts[1]["peak_rss_bytes"] - n_pts[0]["peak_rss_bytes"]) / 600
    intercept = n_pts[0]["peak_rss_bytes"] - 200 * slope
    assert limit["J_bytes_per_sample"] == 8 * base["m"] * base["n"]
    # least squares through two points is the two-point slope, up to rounding (abs: a slope
    # of 0 when the peak did not grow between the two points)
    assert limit["bytes_per_sample_fitted"] == pytest.approx(slope, rel=1e-6, abs=1e-6)
    if slope >= 1.0:
        assert limit["max_N_estimate"] == pytest.approx((total - intercept) / slope, abs=2)
    else:
        assert limit["max_N_estimate"] is None


def test_rerun_skips_measured_points(quick_run, bench, capsys):
    out, _, data = quick_run
    threads = torch.get_num_threads()
    assert bench.main([*ARGS, "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the driver sets nothing in its process
    printed = capsys.readouterr().out
    assert printed.count("already measured") == 4
    again = json.loads(out.read_text())
    assert ok_points(again) == ok_points(data)


def test_block_filled_problem_is_exact(bench):
    from bench_cmtf import make_problem

    for size in ((12, 3, 50, 4, 6), (5, 2, 17, 3, 5)):
        truth, X, Y, J = make_problem(*size, seed=3, chunk_bytes=500)
        _, X2, Y2, _ = make_problem(*size, seed=3)  # one block: the same draws
        assert torch.equal(X, X2) and torch.equal(Y, Y2)
        H = truth.branch_outputs_and_derivatives(X @ truth.V)[1]
        reference = torch.einsum("ir,kr,jr->ijk", truth.W, H, truth.V)  # (n, m, N)
        torch.testing.assert_close(J, reference, rtol=1e-12, atol=1e-12)
        assert J.permute(0, 2, 1).is_contiguous()  # the solver's (n, N, m) layout


def test_loglog_slope(bench):
    x = [1.0, 2.0, 5.0, 10.0]
    assert bench.loglog_slope(x, [3 * v**1.5 for v in x]) == pytest.approx(1.5, rel=1e-12)
    assert bench.loglog_slope([2.0, 2.0], [1.0, 3.0]) is None
    assert bench.loglog_slope([1.0], [1.0]) is None


def test_rerun_with_other_measurement_settings_is_refused(quick_run, bench):
    out, _, _ = quick_run
    text = out.read_text()
    # Points are keyed by sizes and threads: with another seed or number of sweeps every
    # point would be skipped as measured while the file named this run's settings.
    for extra in (["--seed", "5"], ["--sweeps", "3"], ["--repeat", "2"]):
        with pytest.raises(SystemExit) as stop:
            bench.main([*ARGS, *extra, "--out", str(out)])
        assert stop.value.code == 2
        assert out.read_text() == text


def test_slopes_use_only_the_points_of_this_runs_threads(bench):
    base = {"m": 8, "n": 2, "N": 100, "R": 2, "D": 5}
    sweeps = {"N": [100, 200], "m": [8], "R": [2]}
    mem = {"MemTotal": 2**30, "MemAvailable": 2**29}

    def point(N, threads, seconds):
        return {**base, "N": N, "dtype": "float64", "threads": threads, "status": "ok",
                "sweep_seconds": seconds, "setup_seconds": 1.0, "matmul_seconds": 1.0,
                "peak_rss_above_baseline_bytes": 1.0, "sweep_in_matmuls": seconds,
                "peak_rss_bytes": 10**6 * N, "peak_stage": "sweeps"}

    # An earlier run on 1 thread (time constant in N), this run on 2 (time doubling with N).
    points = [point(100, 1, 1.0), point(200, 1, 1.0), point(100, 2, 1.0), point(200, 2, 2.0)]
    summary, _ = bench.analyse(points, base, sweeps, mem, threads=2)
    assert summary["N"]["slopes"]["sweep_seconds"] == pytest.approx(1.0)
    assert summary["N"]["sweep_in_matmuls"] == [1.0, 2.0]
    summary, _ = bench.analyse(points, base, sweeps, mem, threads=1)
    assert summary["N"]["slopes"]["sweep_seconds"] == pytest.approx(0.0, abs=1e-12)
