"""The decision rules of the comparison benchmark: Pareto front and time to accuracy."""

from __future__ import annotations

import pytest

BENCH = "bench_compare"  # the script the `bench` fixture imports




def test_pareto_front_against_brute_force(bench):
    points = [(100, 0.90, "a"), (100, 0.95, "b"), (120, 0.95, "c"), (90, 0.80, "d"),
              (130, 0.97, "e"), (130, 0.97, "f")]
    # a: b has as many parameters and more accuracy; c: b has fewer and as much;
    # e and f tie (neither beats the other).
    assert bench.pareto_front(points) == {"b", "d", "e", "f"}


def test_flexible_parameters_counts_w_v_c_b(bench):
    # R (n + m + D) + n: W (n, R), V (m, R), C (D, R), b (n,)
    assert bench.flexible_parameters(12, 3136, 10, 8) == 12 * 10 + 12 * 3136 + 12 * 8 + 10


def _run(times, accuracies, costs=None, with_jacobian=False):
    return {"time_s": times, "accuracy": accuracies,
            "cost": costs if costs is not None else [1.0] * len(times),
            "with_jacobian": with_jacobian}


def test_time_to_accuracy_uses_final_gradient_accuracy(bench):
    tta = {"runs": {
        "als": _run([0.0, 1.0, 2.0, 3.0], [0.90, 0.95, 0.97, 0.98]),
        # A noisy peak (0.99) that the run does not keep: the reference is its final 0.97.
        "adam-a": _run([0.0, 5.0, 10.0, 20.0], [0.90, 0.99, 0.96, 0.97]),
        "adam-b": _run([0.0, 5.0, 10.0], [0.90, 0.93, 0.95]),
    }}
    s = bench.time_to_accuracy_summary(tta)["test_accuracy"]
    assert s["gradient_run"] == "adam-a" and s["gradient_accuracy"] == 0.97
    assert s["gradient_time_s"] == 5.0  # first reached (at the peak)
    assert s["als_time_s"] == 2.0
    assert s["speedup"] == 2.5
    assert s["decided"] is True and s["target_one_fifth"] is False
    assert "cost" not in bench.time_to_accuracy_summary(tta)  # no run on the same cost


def test_time_to_accuracy_when_als_never_gets_there(bench):
    tta = {"runs": {"als": _run([0.0, 1.0], [0.90, 0.91]),
                    "adam": _run([0.0, 50.0], [0.90, 0.95])}}
    s = bench.time_to_accuracy_summary(tta)["test_accuracy"]
    assert s["als_time_s"] is None and s["speedup"] is None
    assert s["target_one_fifth"] is False
    # ALS stopped after 1 s, before a fifth of 50 s: the run cannot tell.
    assert s["decided"] is False
    tta["runs"]["als"] = _run([0.0, 1.0, 12.0], [0.90, 0.91, 0.92])
    s = bench.time_to_accuracy_summary(tta)["test_accuracy"]
    assert s["decided"] is True and s["target_one_fifth"] is False
    tta["runs"]["als"] = _run([0.0, 1.0, 9.0], [0.90, 0.91, 0.96])
    s = bench.time_to_accuracy_summary(tta)["test_accuracy"]
    assert s["als_time_s"] == 9.0 and s["target_one_fifth"] is True


def test_a_start_that_is_already_best_decides_nothing(bench):
    tta = {"runs": {"als": _run([0.0, 1.0], [0.99, 0.98], [1.0, 0.5]),
                    "adam": _run([0.0, 50.0, 100.0], [0.99, 0.97, 0.97], [1.0, 0.8, 0.7],
                                 with_jacobian=True),
                    "adam-worse": _run([0.0, 100.0], [0.99, 0.95], [1.0, 0.9],
                                       with_jacobian=True)}}
    s = bench.time_to_accuracy_summary(tta)
    assert s["test_accuracy"]["gradient_time_s"] == 0.0
    assert s["test_accuracy"]["decided"] is False
    assert s["test_accuracy"]["target_one_fifth"] is False
    # On the cost both minimise: the lowest final cost (0.7, reached at 100 s) is beaten by
    # ALS after 1 s.
    c = s["cost"]
    assert c["gradient_run"] == "adam" and c["gradient_cost"] == 0.7
    assert c["gradient_time_s"] == 100.0 and c["als_time_s"] == 1.0
    assert c["decided"] is True and c["target_one_fifth"] is True and c["speedup"] == 100.0


def test_resume_tells_time_to_accuracy_settings_from_the_entries_settings(bench):
    settings = {"ranks": [4, 8], "max_iter": 30, "tta_sweeps": 40, "tta_time_limit": 180.0}
    longer_race = {**settings, "tta_sweeps": 2000}
    other_fit = {**settings, "max_iter": 50}
    # Other time-to-accuracy settings keep the entries (only those runs are redone) ...
    assert bench._entry_settings(longer_race) == bench._entry_settings(settings)
    # ... any other setting makes the entries another benchmark.
    assert bench._entry_settings(other_fit) != bench._entry_settings(settings)
    assert set(bench._entry_settings(settings)) == {"ranks", "max_iter"}


def test_a_rank_or_method_given_twice_is_fitted_once(bench, monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(bench, "run_jobs", lambda result, jobs, args: seen.update(jobs=jobs))
    monkeypatch.setattr(bench, "finish", lambda result, args: None)
    out = tmp_path / "result.json"
    assert bench.main(["--ranks", "4", "8", "4", "--methods", "svd", "svd", "linear",
                       "--out", str(out)]) == 0
    assert seen["jobs"] == [(4, "svd"), (4, "linear"), (8, "svd"), (8, "linear")]
    with pytest.raises(SystemExit) as stop:
        bench.main(["--ranks", "0", "--out", str(out)])
    assert stop.value.code == 2
