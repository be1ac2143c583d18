"""The CNN-compression benchmark's bookkeeping: which entry is which, and its ablation flags.

The benchmark itself needs full MNIST and minutes of fitting; the chapter that reads its
committed result checks the result (chapter 4).
"""

from __future__ import annotations

import argparse

import pytest

BENCH = "bench_compress"  # the script the `bench` fixture imports


@pytest.mark.parametrize("text, expected", [
    ("max_iter=150", {"max_iter": 150}),
    ("n_samples=10000", {"n_samples": 10000}),
    ("n_functions=16", {"n_functions": 16}),
    ("n_samples=58000,lam=1000", {"n_samples": 58000, "lam": 1000.0}),
])
def test_capacity_settings_parse(bench, text, expected):
    assert bench.parse_capacity(text) == expected


@pytest.mark.parametrize("text, message", [
    ("max_iter", "SETTING=VALUE"),
    ("lam=10", "lam alone is the lam ablation"),  # it has its own
    ("n_samples=100,n_samples=200", "each SETTING once"),
    ("n_samples=100,lam=-1", "lam must be >= 0"),
    ("n_samples=100,lam=nan", "lam must be >= 0"),
    ("n_samples=100,lam=x", "lam needs a number"),
    ("n_samples=ten", "needs an integer"),
    ("n_functions=1.5", "needs an integer"),
    ("max_iter=0", ">= 1"),
])
def test_capacity_settings_refused_with_the_reason(bench, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        bench.parse_capacity(text)


def test_key_tells_each_ablation_from_the_grid(bench):
    grid = {"method": "flexible", "span": ["fc1", "relu3", "fc2"], "rank": 16,
            "basis": "bspline"}
    variants = [grid, *({**grid, field: value} for field, value in
                        [("lam", 10.0), ("init", "linear+jacobian"), ("seed", 1),
                         ("max_iter", 150), ("n_samples", 10000), ("n_functions", 16),
                         ("subspace", 15)])]
    variants.append({**grid, "n_samples": 58000, "lam": 1000.0})  # two settings raised
    keys = [bench.key(entry) for entry in variants]
    assert len(set(keys)) == len(variants)
    assert set(bench.ABLATION_FIELDS) == {"lam", "init", "seed", "max_iter", "n_samples",
                                          "n_functions", "subspace"}
    # A span given as a tuple or a list, other fields ignored: the same entry.
    same = {**grid, "span": ("fc1", "relu3", "fc2"), "accuracy": 0.99}
    assert bench.key(same) == bench.key(grid)
    assert bench.key({**grid, "method": "svd", "basis": None}) != bench.key(grid)


@pytest.mark.parametrize("m, rank, expected", [(3136, 16, (15, 103)), (3136, 12, (11, 110)),
                                               (3136, 4, (3, 30)), (6272, 12, (11, 110)),
                                               (6272, 16, (15, 150))])
def test_the_subspace_layer_fills_the_budget_of_the_plain_one(bench, m, rank, expected):
    n, D = 10, 8  # m: the fully connected part's inputs, or the conv span's
    k, branches = bench.subspace_layout(rank, m, n, D)
    assert (k, branches) == expected
    plain = rank * (m + n + D) + n
    used = m * k + branches * (k + n + D) + n
    assert used <= plain  # never more parameters than the plain layer it is compared with
    assert branches == n * k or used + (k + n + D) > plain  # and no branch left unpaid for


def _refuse_to_load(*args, **kwargs):
    raise AssertionError("loaded the network: the arguments were not checked first")


@pytest.mark.parametrize("args", [["--ranks", "0"], ["--conv-ranks", "-1"],
                                  ["--subspace-ranks", "1"], ["--n-samples", "0"],
                                  ["--n-functions", "0"], ["--max-iter", "-1"],
                                  ["--lam", "nan"], ["--lam", "-1"], ["--ablation-lams", "inf"],
                                  ["--finetune-epochs", "-1"], ["--bases", "spline"]])
def test_bad_arguments_are_refused_before_anything_is_written(bench, monkeypatch, tmp_path,
                                                             args):
    monkeypatch.setattr(bench.zoo, "pretrained", _refuse_to_load)
    out = tmp_path / "result.json"
    with pytest.raises(SystemExit) as stop:
        bench.main([*args, "--out", str(out)])
    assert stop.value.code == 2 and not out.exists()


def test_resume_refuses_a_file_made_with_other_entry_settings(bench, monkeypatch, tmp_path):
    import json

    monkeypatch.setattr(bench.zoo, "pretrained", _refuse_to_load)
    out = tmp_path / "result.json"
    settings = {"n_functions": 8, "n_samples": 5000, "max_iter": 30, "lam": 100.0,
                "finetune_epochs": 1, "seed": 0, "jacobian": "auto"}
    text = json.dumps({"settings": settings, "entries": []})
    out.write_text(text)
    # The grid's entries carry none of these in their key: they would be skipped as done
    # and the file would name this run's settings beside the other run's entries.
    for args in (["--n-samples", "300"], ["--seed", "7"], ["--lam", "10"]):
        with pytest.raises(SystemExit, match="other settings"):
            bench.main([*args, "--out", str(out)])
        assert out.read_text() == text  # untouched
    # The same settings resume (and get as far as loading the network).
    with pytest.raises(AssertionError, match="loaded the network"):
        bench.main(["--out", str(out)])
    assert bench.load_existing(out, True, {**settings, "seed": 7}) == {"entries": []}
