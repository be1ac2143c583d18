"""The device benchmark: its quick run on the CPU (tests/test_cuda.py covers the GPU stages)."""

from __future__ import annotations

import pytest
import torch

BENCH = "bench_device"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, benchmark_result):
    folder = tmp_path_factory.mktemp("device")
    return benchmark_result(BENCH, "--quick", "--device", "cpu", "--repeat", "2",
                            "--cache-dir", str(folder / "cache"),
                            out=folder / "bench_device.json", timeout=300)


def test_quick_run_trains_then_compresses_the_same_way_twice(quick_run):
    settings, entries = quick_run["settings"], quick_run["entries"]
    assert settings["device"] == "cpu" and settings["quick"] and settings["repeat"] == 2
    assert quick_run["machine"]["device"] == {"type": "cpu"}
    network = entries["network"]
    assert network["cached_before"] is False  # a fresh cache: trained here
    assert network["train_time_s"] > 0 and network["load_or_train_s"] >= network["train_time_s"]
    assert entries["accuracy_before"] == network["test_accuracy"]
    first, second = entries["compressions"]
    # one seed: the same layer, so the same accuracy and fit error, whatever the timing
    assert first["accuracy_after"] == second["accuracy_after"]
    assert first["fit_output_error_validation"] == second["fit_output_error_validation"]
    for run in (first, second):
        stages = run["stage_times_s"]
        assert min(stages["sampling"], stages["fit"], stages["evaluation"]) > 0
        assert run["wall_s"] >= stages["total"] > 0
        assert 0 < run["fraction_model_kept"] < 1


def test_refuses_a_device_it_cannot_use(run_benchmark):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_benchmark(BENCH, "--quick", "--device", "cuda", timeout=120)
    assert proc.returncode == 2
    assert "--device 'cuda': no CUDA device is available" in proc.stderr
