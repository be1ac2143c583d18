"""The evaluation-route benchmark: its quick run and the summary it draws."""

from __future__ import annotations

import math

import pytest

from tenflex.nn.tensorial import CHAIN_FLOP_ADVANTAGE

BENCH = "bench_route"  # the script the `bench` fixture imports


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, benchmark_result):
    out = tmp_path_factory.mktemp("route") / "bench_route.json"
    return benchmark_result(BENCH, "--quick", "--budget", "0.01", out=out, timeout=300)


def test_quick_run_times_every_route_and_applies_the_rule(quick_run):
    rows = quick_run["entries"]["quick"]
    assert quick_run["settings"]["chain_flop_advantage"] == CHAIN_FLOP_ADVANTAGE
    measured = [r for r in rows if "skipped" not in r]
    # 2 layers x 3 forms x 3 rates x 2 batches, minus rates that leave no rank
    assert 0 < len(measured) <= 36
    assert len(measured) + 2 * sum("skipped" in r for r in rows) == 36
    for r in measured:
        assert min(r["chain_s"], r["dense_s"], r["auto_s"], r["dense_layer_s"]) > 0
        assert r["chain_flops"] > 0 and r["dense_flops"] > 0
        cheap_chain = r["chain_flops"] < CHAIN_FLOP_ADVANTAGE * r["dense_flops"]
        assert r["auto_route"] == ("chain" if cheap_chain else "dense")
    s = quick_run["summary"]["quick"]
    assert s["n_cases"] == len(measured)
    assert s["auto_over_faster_max"] >= s["auto_over_faster_geomean"] >= 1.0


def test_summary_on_known_timings(bench):
    rows = [
        # auto takes the faster route: no loss, 10x over the chain
        {"chain_s": 1.0, "dense_s": 0.1, "auto_s": 0.1, "dense_layer_s": 0.05,
         "auto_route": "dense"},
        # auto takes the slower route: 2x the faster one, and 0.5x the chain's speed
        {"chain_s": 1.0, "dense_s": 2.0, "auto_s": 2.0, "dense_layer_s": 1.0,
         "auto_route": "dense"},
        {"skipped": "no rank"},
    ]
    s = bench.summary(rows)
    assert s["n_cases"] == 2
    assert s["auto_takes_faster_route"] == 1
    assert s["auto_within_10pct_of_faster"] == 1
    assert s["auto_over_faster_geomean"] == pytest.approx(math.sqrt(2.0))
    assert s["auto_over_faster_max"] == pytest.approx(2.0)
    assert s["chain_faster_cases"] == 1 and s["auto_chain_cases"] == 0
    assert s["speedup_over_chain_geomean"] == pytest.approx(math.sqrt(10 * 0.5))
    assert s["auto_over_dense_layer_geomean"] == pytest.approx(2.0)
    assert bench.summary([{"skipped": "x"}]) == {"n_cases": 0}


@pytest.mark.parametrize("budget", ["nan", "inf", "0"])
def test_a_budget_that_is_not_a_positive_number_is_refused(bench, budget, tmp_path):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", "--budget", budget, "--out", str(tmp_path / "r.json")])
    assert stop.value.code == 2
