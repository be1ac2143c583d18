"""The decision rules of the TNN benchmark: accuracies averaged over seeds, merged writes."""

from __future__ import annotations

import json
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

BENCH = "bench_tnn"  # the script the `bench` fixture imports
SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks"




def _entry(form, rate, seed, acc):
    return {"form": form, "rate": rate, "seed": seed, "accuracy": {"fine_tuned": acc},
            "wall_s": 1.0, "cpu_s": 1.0}


def _result(bench, accuracies, rates=(0.1,)):
    """``accuracies[(form, rate)] = [acc of seed 0, acc of seed 1, ...]``."""
    entries = {}
    for (form, rate), accs in accuracies.items():
        for seed, acc in enumerate(accs):
            entries[bench.entry_key(form, rate, seed)] = _entry(form, rate, seed, acc)
    return {"settings": {"rates": list(rates), "forms": list(bench.FORMS)},
            "dense": {"test_accuracy": 0.99}, "entries": entries}


def test_compare_uses_common_seeds_and_the_standard_error(bench):
    a = {0: 0.990, 1: 0.992, 2: 0.994}
    b = {0: 0.991, 1: 0.991}  # seed 2 not run: left out of both means
    c = bench.compare(a, b)
    assert c["seeds"] == [0, 1]
    assert c["mean"] == pytest.approx([0.991, 0.991])
    assert c["difference_pp"] == pytest.approx(0.0, abs=1e-12)
    # sample variances 2e-6 and 0, over 2 seeds: SE = sqrt(1e-6) = 1e-3 = 0.1 points
    assert c["standard_error_pp"] == pytest.approx(0.1)
    one = bench.compare({0: 0.99}, {0: 0.98})
    assert one["standard_error_pp"] is None and one["difference_pp"] == pytest.approx(1.0)
    assert bench.compare({0: 0.99}, {1: 0.98}) is None
    assert one["p_value_welch"] is None and c["p_value_welch"] is not None


def test_compare_welch_p_value(bench):
    from scipy import stats

    a = {0: 0.995, 1: 0.993, 2: 0.997, 3: 0.994}
    b = {0: 0.989, 1: 0.990, 2: 0.990, 3: 0.988}
    c = bench.compare(a, b)
    # Welch's t and Welch-Satterthwaite degrees of freedom, written out
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    va, vb, n = xa.var(ddof=1) / 4, xb.var(ddof=1) / 4, 4
    t = (xa.mean() - xb.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    assert c["p_value_welch"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert 0 < c["p_value_welch"] < 0.05
    # no spread at all: no test
    assert bench.compare({0: 0.99, 1: 0.99}, {0: 0.98, 1: 0.98})["p_value_welch"] is None


def test_targets_average_over_seeds(bench):
    acc = {("rcp", 0.1): [0.985, 0.989], ("rtk", 0.1): [0.987, 0.987],
           ("rtt", 0.1): [0.980, 0.982], ("cp", 0.1): [0.990, 0.982],
           ("tucker", 0.1): [0.986, 0.986], ("tt", 0.1): [0.982, 0.982]}
    t = bench.targets(_result(bench, acc))
    best = t["best_reshaped_within_gap"]
    # rcp and rtk both average 0.987; the first of them counts as the best
    assert best["best_form"] == "rcp" and best["accuracy"] == pytest.approx(0.987)
    assert best["gap_pp"] == pytest.approx(0.3) and best["holds"]
    pairs = {p["reshaped"]: p for p in t["reshaped_at_least_plain"]}
    # cp wins seed 0 by 0.5 points and loses seed 1 by 0.7: on average rcp is ahead
    assert pairs["rcp"]["holds"] and pairs["rcp"]["difference_pp"] == pytest.approx(0.1)
    assert pairs["rtk"]["holds"] and pairs["rtk"]["difference_pp"] == pytest.approx(0.1)
    assert not pairs["rtt"]["holds"] and pairs["rtt"]["difference_pp"] == pytest.approx(-0.1)
    # sample variances 8e-6 (rcp) and 32e-6 (cp), 2 seeds: SE = sqrt(40e-6 / 2)
    assert pairs["rcp"]["standard_error_pp"] == pytest.approx(100 * math.sqrt(20e-6))


def test_target1_waits_for_every_reshaped_form(bench):
    t = bench.targets(_result(bench, {("rcp", 0.1): [0.99], ("cp", 0.1): [0.98]}))
    assert "best_reshaped_within_gap" not in t
    assert [p["reshaped"] for p in t["reshaped_at_least_plain"]] == ["rcp"]


def test_complete_needs_every_form_and_rate_for_every_seed(bench):
    full = {(f, r): [0.98, 0.98] for f in bench.FORMS for r in (0.1, 0.2)}
    result = _result(bench, full, rates=(0.1, 0.2))
    assert bench.complete(result)
    del result["entries"][bench.entry_key("tt", 0.2, 1)]
    assert not bench.complete(result)
    # a run of some forms (--forms) is complete with those
    result["settings"]["forms"] = ["rcp", "cp", "tucker"]
    assert bench.complete(result)
    del result["entries"][bench.entry_key("rcp", 0.1, 0)]
    assert not bench.complete(result)


def _write_entries(out, seed, n):
    import sys

    sys.path.insert(0, str(SCRIPTS))
    import bench_tnn

    result = {"settings": {"rates": [0.1], "forms": list(bench_tnn.FORMS)},
              "dense": {"test_accuracy": 0.99}, "entries": {}}
    for i in range(n):
        form = bench_tnn.FORMS[i % len(bench_tnn.FORMS)]
        result["entries"][f"{form}@0.1#{seed}"] = _entry(form, 0.1, seed, 0.98)
        bench_tnn.merge_and_write(Path(out), result)


def test_concurrent_writers_keep_every_entry(bench, tmp_path):
    out = tmp_path / "result.json"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_entries, args=(str(out), seed, 6)) for seed in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = json.loads(out.read_text())
    assert len(result["entries"]) == 18 and result["seeds"] == [0, 1, 2]
    assert result["complete"] is True  # every form at the one rate, for every seed
    assert result["wall_s_entries"] == 18.0


def test_merge_ignores_a_file_with_other_settings(bench, tmp_path):
    out = tmp_path / "result.json"
    out.write_text(json.dumps({"settings": {"rates": [0.2]}, "entries": {"x": {}}}))
    result = _result(bench, {("rcp", 0.1): [0.99]})
    bench.merge_and_write(out, result)
    assert set(json.loads(out.read_text())["entries"]) == {"rcp@0.1#0"}


def test_rates_and_finetune_epochs_options(bench, monkeypatch):
    import torch

    seen = {}
    monkeypatch.setattr(bench, "run",
                        lambda settings, out, args: seen.update(settings=settings, out=out) or 0)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # main sets the pool size
    assert bench.main(["--rates", "0.2", "0.2", "--finetune-epochs", "24",
                       "--forms", "rcp", "cp"]) == 0
    settings = seen["settings"]
    assert settings["rates"] == [0.2] and settings["finetune_epochs"] == 24
    assert settings["forms"] == ["rcp", "cp"]
    assert seen["out"].name == "bench_tnn_ft24.json"
    # every other setting is the full run's, so that such files hold comparable entries
    assert {k: v for k, v in settings.items() if k not in ("rates", "finetune_epochs", "forms")} \
        == {k: v for k, v in bench.FULL.items() if k not in ("rates", "finetune_epochs", "forms")}
    # the default number of epochs is the default run, under its own name
    assert bench.main(["--finetune-epochs", "8"]) == 0
    assert seen["out"].name == "bench_tnn.json" and seen["settings"]["rates"] == bench.FULL["rates"]
    for bad in (["--rates", "1.5"], ["--rates", "0"], ["--finetune-epochs", "-1"]):
        with pytest.raises(SystemExit) as stop:
            bench.main(bad)
        assert stop.value.code == 2, bad


def test_complete_waits_for_seeds_requested_by_any_run(bench, tmp_path):
    out = tmp_path / "result.json"
    full = {(f, 0.1): [0.98] for f in bench.FORMS}  # seed 0, every form
    first = _result(bench, full)
    first["seeds_requested"] = [0]
    bench.merge_and_write(out, first)
    assert json.loads(out.read_text())["complete"] is True
    # a second run, for seed 1, registers before its first network ends
    second = bench.open_result(out, first["settings"], fresh=False, seeds=[1])
    assert second["seeds_requested"] == [0, 1] and len(second["entries"]) == len(bench.FORMS)
    bench.merge_and_write(out, second)
    assert json.loads(out.read_text())["complete"] is False
    # the first run's next write keeps the second run's seed
    bench.merge_and_write(out, first)
    disk = json.loads(out.read_text())
    assert disk["seeds_requested"] == [0, 1] and disk["complete"] is False
    for form in bench.FORMS:
        second["entries"][bench.entry_key(form, 0.1, 1)] = _entry(form, 0.1, 1, 0.98)
    bench.merge_and_write(out, second)
    disk = json.loads(out.read_text())
    assert disk["complete"] is True and disk["seeds"] == [0, 1]


def test_open_result_fresh_drops_old_entries_and_refuses_other_settings(bench, tmp_path):
    out = tmp_path / "result.json"
    old = _result(bench, {("rcp", 0.1): [0.99]})
    bench.merge_and_write(out, old)
    resumed = bench.open_result(out, old["settings"], fresh=False, seeds=[0])
    assert list(resumed["entries"]) == [bench.entry_key("rcp", 0.1, 0)]
    fresh = bench.open_result(out, old["settings"], fresh=True, seeds=[0])
    assert fresh["entries"] == {} and not out.exists()
    fresh["dense"] = old["dense"]  # set by the run before its first write
    fresh["entries"][bench.entry_key("cp", 0.1, 0)] = _entry("cp", 0.1, 0, 0.98)
    bench.merge_and_write(out, fresh)  # the deleted entry does not come back
    assert list(json.loads(out.read_text())["entries"]) == [bench.entry_key("cp", 0.1, 0)]
    other = {**old["settings"], "rates": [0.2]}
    assert bench.open_result(out, other, fresh=False, seeds=[0]) is None
    assert bench.open_result(out, other, fresh=True, seeds=[0])["entries"] == {}


def test_rates_that_share_an_entry_key_are_refused(bench, monkeypatch):
    # 0.1 and 0.1000001 are both written "0.1" in the entry keys: the second rate's entries
    # would be taken as done and left out of the targets.
    monkeypatch.setattr(bench, "run", lambda settings, out, args: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        bench.main(["--rates", "0.1", "0.1000001"])
    assert stop.value.code == 2
