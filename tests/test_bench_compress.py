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
])
def test_capacity_settings_parse(bench, text, expected):
    assert bench.parse_capacity(text) == expected


@pytest.mark.parametrize("text, message", [
    ("max_iter", "SETTING=VALUE"),
    ("lam=10", "SETTING=VALUE"),          # lam has its own ablation
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
                         ("max_iter", 150), ("n_samples", 10000), ("n_functions", 16)])]
    keys = [bench.key(entry) for entry in variants]
    assert len(set(keys)) == len(variants)
    assert set(bench.ABLATION_FIELDS) == {"lam", "init", "seed", "max_iter", "n_samples",
                                          "n_functions"}
    # A span given as a tuple or a list, other fields ignored: the same entry.
    same = {**grid, "span": ("fc1", "relu3", "fc2"), "accuracy": 0.99}
    assert bench.key(same) == bench.key(grid)
    assert bench.key({**grid, "method": "svd", "basis": None}) != bench.key(grid)
