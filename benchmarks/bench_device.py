"""Train and compress the reference CNN on one device: CPU or GPU, cold and warm.

What a user of ``tenflex train`` / ``tenflex compress --device ...`` waits for: training the
reference CNN (if it is not cached yet for that device), then compressing its fully
connected part (``fc1 -> relu3 -> fc2``) with a flexible layer of ``R`` branches, several
times in one process. The first compression pays the one-time costs of the process (on a GPU
mostly CUDA's start-up and the first kernels); the later ones show the steady state. Every
compression uses the same seed, so they must give the same layer and accuracy.

Results go to ``benchmarks/results/bench_device_<cpu|cuda>.json`` (``--quick``: the small
digits set and a few sweeps, into ``..._quick.json``, which git ignores).

Usage::

    python benchmarks/bench_device.py                  # cuda if present, else cpu
    python benchmarks/bench_device.py --device cpu     # about 2 minutes on 2 cores (cached CNN)
    python benchmarks/bench_device.py --quick          # seconds
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import machine_description, write_json

from tenflex import zoo
from tenflex.nn.compress import compress

RESULTS = Path(__file__).resolve().parent / "results"
SPAN = ("fc1", "fc2")


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a wall-clock reading covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_description(device: torch.device) -> dict:
    """The device's name (and memory for a GPU); the machine description covers the CPU."""
    if device.type != "cuda":
        return {"type": device.type}
    props = torch.cuda.get_device_properties(device)
    return {"type": "cuda", "name": props.name, "memory_gib": props.total_memory / 2**30,
            "cuda": torch.version.cuda}


def run(args: argparse.Namespace, device: torch.device) -> dict:
    weights, _ = zoo.cache_paths("reference_cnn", dataset=args.dataset,
                                 cache_dir=args.cache_dir, device=device)
    cached = weights.is_file()
    t0 = time.perf_counter()
    model, info = zoo.pretrained("reference_cnn", dataset=args.dataset, cache_dir=args.cache_dir,
                                 device=device, progress=True, return_info=True)
    load_or_train_s = time.perf_counter() - t0
    model.to(device)
    train_images, _ = zoo.dataset_tensors(args.dataset, "train")
    test_data = zoo.dataset_tensors(args.dataset, "test")

    runs = []
    for i in range(args.repeat):
        _synchronize(device)
        t0 = time.perf_counter()
        result = compress(model, SPAN, train_images, rank=args.rank, n_samples=args.n_samples,
                          n_validation=args.n_validation, test_data=test_data,
                          fit_options={"max_iter": args.max_iter}, seed=0)
        _synchronize(device)
        wall = time.perf_counter() - t0
        report = result.report
        runs.append({"wall_s": wall, "stage_times_s": report.times,
                     "accuracy_after": report.accuracy_after,
                     "fit_output_error_validation": report.fit_output_error_validation,
                     "fraction_model_kept": report.fraction_model_kept})
        print(f"compression {i + 1}/{args.repeat}: {wall:.2f} s (sampling "
              f"{report.times['sampling']:.2f}, fit {report.times['fit']:.2f}, evaluation "
              f"{report.times['evaluation']:.2f}); test accuracy {report.accuracy_after:.2%}",
              flush=True)
    info = info or {}  # None for a cached file without its sidecar
    return {
        "network": {"cached_before": cached, "load_or_train_s": load_or_train_s,
                    **{k: info.get(k) for k in ("train_time_s", "test_accuracy", "config")}},
        "accuracy_before": result.report.accuracy_before,
        "compressions": runs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (default: cuda if present)")
    parser.add_argument("--rank", type=int, default=12, help="branches R of the flexible layer")
    parser.add_argument("--repeat", type=int, default=3, help="compressions in one process")
    parser.add_argument("--quick", action="store_true",
                        help="digits set, R = 4, 300 samples, 5 sweeps: a check in seconds")
    parser.add_argument("--cache-dir", default=None, help="cache of trained networks")
    parser.add_argument("--out", default=None, help="result file (default: under results/)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.rank < 1:
        parser.error("--repeat and --rank must be at least 1")
    try:
        device = zoo.as_device(args.device, "--device")
    except ValueError as exc:
        parser.error(str(exc))
    quick = args.quick
    args.dataset = "digits" if quick else "mnist"
    args.rank = 4 if quick else args.rank
    args.n_samples, args.n_validation = (300, 100) if quick else (5000, 2000)
    args.max_iter = 5 if quick else 30
    out = Path(args.out) if args.out else RESULTS / (
        f"bench_device_{device.type}{'_quick' if quick else ''}.json")

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = run(args, device)
    result = {
        "benchmark": "bench_device",
        "date": started,
        "command": "python benchmarks/bench_device.py " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
        "machine": machine_description(device=device_description(device)),
        "settings": {"device": str(device), "rank": args.rank, "repeat": args.repeat,
                     "dataset": args.dataset, "n_samples": args.n_samples,
                     "n_validation": args.n_validation, "max_iter": args.max_iter,
                     "span": list(SPAN), "quick": quick},
        "entries": entries,
    }
    write_json(out, result)
    walls = [r["wall_s"] for r in entries["compressions"]]
    print(f"wrote {out}: first compression {walls[0]:.2f} s, then "
          f"{', '.join(f'{w:.2f}' for w in walls[1:]) or '-'} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
