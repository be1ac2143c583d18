"""Benchmark: compression of LeNet-5 on MNIST with tensorial and plain low-rank layers.

For every rate (default 5 %, 10 %, 20 %) and every form (reshaped CP / Tucker / tensor
train and plain CP / Tucker-2 / tensor train, truncated SVD for the fully connected
layers), the pretrained LeNet-5 (:func:`tenflex.zoo.pretrained`) is compressed with
:func:`tenflex.nn.compress_tnn.compress_and_train`: its layers conv2, fc1 and fc2 are
decomposed at the rate, distilled block by block, fine-tuned end to end with
cross-entropy on the MNIST training set, and evaluated on the MNIST test set. Each
compressed layer's forward pass is timed against the dense layer's at batch 256 on the CPU
(inputs: the activations the pretrained network feeds the layer on test images).

The result is a JSON file (default ``benchmarks/results/bench_tnn.json``; with ``--quick``
``benchmarks/results/bench_tnn_quick.json``) with a machine description, the date, the
command, the settings, one entry per (form, rate, seed) and the two targets of the
chapter, on the accuracy averaged over the seeds run:

* at a 10 % rate the best reshaped form is within 0.5 percentage points of the
  uncompressed network;
* at each rate every reshaped form is at least as accurate as the plain form of its family.

Seeds: ``--seeds 0 1 2 3 4 5`` (the default) trains every network once per seed (the seed
sets the order of the training batches and the random columns of a CP start whose rank
exceeds a mode's size; the other decompositions start from SVDs of the pretrained weights,
the same for every seed). At a generous rate the forms differ by a few test images in ten
thousand, as much as two seeds of the same form do; only an average over seeds can order
them. The comparison of two forms uses the seeds run for both and records the standard
error of the difference and the p-value of Welch's t-test of equal means.

The file is rewritten after every finished entry; running the same command again skips
the entries already there (``--fresh`` deletes the file first and starts over: with several
runs into one file, delete it once instead of passing ``--fresh`` to each). Entries made
with other settings are never mixed in: the script refuses to resume from a file with
different settings. Several runs may write the same file at once (say, one per seed, one
per core): each write merges the entries on disk under a lock. Every run records its seeds
in ``seeds_requested`` when it starts, and ``complete`` stays false until all of them have
every network.

Threads: ``--threads`` (default 1) sets both torch's and the BLAS thread pools. On a CPU
shared with other jobs, LeNet-5-sized operations run many times slower with two threads
than with one (threads wait for each other), so one thread is the default. The pretrained
LeNet-5, when it is not cached yet, is trained on ``tenflex.zoo.TRAIN_THREADS`` threads
whatever ``--threads`` says, so that every run compresses the same network.

Usage::

    python benchmarks/bench_tnn.py              # full run: 108 networks, about 3 h, 1 core
    python benchmarks/bench_tnn.py --quick      # one rate, small data (under a minute)
    # the same full run on three cores, two seeds each, into the same file:
    for s in "0 3" "1 4" "2 5"; do python benchmarks/bench_tnn.py --seeds $s & done; wait
    # the reshaped forms with the other reshaping (chapter 5), into bench_tnn_layout.json:
    python benchmarks/bench_tnn.py --reshaping layout --forms rcp rtk rtt
    # the two runs of chapter 5 at 20 %: a re-run of the benchmark's CP family, seeds 0-2
    # (about 11 min), and three times the fine-tuning for the CP and Tucker families, six
    # seeds (24 networks of about 230 s, 46 min on 2 cores):
    python benchmarks/bench_tnn.py --rates 0.2 --forms rcp cp --seeds 0 1 2 \
        --out benchmarks/results/bench_tnn_ft8.json
    for s in "0 1 2" "3 4 5"; do python benchmarks/bench_tnn.py --rates 0.2 \
        --finetune-epochs 24 --forms rcp cp rtk tucker --seeds $s \
        --out benchmarks/results/bench_tnn_ft24.json & done; wait
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fcntl
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from results_io import machine_description, write_json

from tenflex import zoo
from tenflex.nn.compress_tnn import (
    FAMILY,
    FORMS,
    PLAIN,
    RESHAPED,
    compress_and_train,
    default_layers,
    layer_inputs,
    time_forward,
)
from tenflex.nn.tensorial import evaluation_route

ROOT = Path(__file__).resolve().parent.parent
RATES = (0.05, 0.1, 0.2)

#: Training settings of the full run and of ``--quick``.
FULL = {
    "rates": list(RATES),
    "n_train": None,          # all 60000 training images
    "n_test": None,           # all 10000 test images
    "distill_samples": None,  # distil on all training images
    "distill_epochs": 2,
    "distill_lr": 3e-3,
    "finetune_samples": None,
    "finetune_epochs": 8,
    "finetune_lr": 3e-3,
    "batch_size": 128,
    "timing_batch": 256,
    "timing_repeat": 30,
}
QUICK = {
    **FULL,
    "rates": [0.1],
    "n_train": 5000,
    "n_test": 2000,
    "distill_samples": 2000,
    "distill_epochs": 1,
    "finetune_epochs": 1,
    "timing_repeat": 5,
}
#: Reshaping policies of the tensorial forms: extra settings, passed to compress_and_train.
#: "balanced" adds none, so that result files from before the option stay valid.
RESHAPINGS = {
    "balanced": {},
    "layout": {"modes": 2, "reshape_by_layout": True},
}
#: Targets: the best reshaped form at this rate within this many points of the dense net.
TARGET_RATE = 0.1
TARGET_GAP_PP = 0.5
#: Seed of the inputs the layers are timed on (the same for every entry).
TIMING_SEED = 0


def entry_key(form: str, rate: float, seed: int) -> str:
    return f"{form}@{rate:g}#{seed}"


def seed_accuracies(entries: dict, form: str, rate: float) -> dict[int, float]:
    """Fine-tuned test accuracy of ``form`` at ``rate``, by seed."""
    return {e["seed"]: e["accuracy"]["fine_tuned"] for e in entries.values()
            if e["form"] == form and e["rate"] == rate}


def compare(a: dict[int, float], b: dict[int, float]) -> dict[str, Any] | None:
    """Mean accuracies of two forms over the seeds run for both, the difference's standard
    error in points and the two-sided p-value of Welch's t-test of equal means (both None
    with fewer than two seeds, or when neither form varies); None without common seeds."""
    from scipy import stats

    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    xa, xb = [a[s] for s in seeds], [b[s] for s in seeds]
    mean_a, mean_b = sum(xa) / len(xa), sum(xb) / len(xb)
    se = p_value = None
    if len(seeds) > 1:
        var = (np.var(xa, ddof=1) + np.var(xb, ddof=1)) / len(seeds)
        se = 100 * math.sqrt(float(var))
        if var > 0:
            with warnings.catch_warnings():
                # scipy warns of "catastrophic cancellation" when one form's accuracies are
                # all equal (they are multiples of 1e-4); the test is well defined then
                warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
                p_value = float(stats.ttest_ind(xa, xb, equal_var=False).pvalue)
    return {"seeds": seeds, "mean": [mean_a, mean_b], "difference_pp": 100 * (mean_a - mean_b),
            "standard_error_pp": se, "p_value_welch": p_value}


def targets(result: dict) -> dict[str, Any]:
    """Evaluate the two targets on the entries present, on accuracies averaged over seeds
    (a target whose entries are missing is left out)."""
    dense = result["dense"]["test_accuracy"]
    entries = result["entries"]
    out: dict[str, Any] = {}
    if TARGET_RATE in result["settings"]["rates"]:
        accs = {f: seed_accuracies(entries, f, TARGET_RATE) for f in RESHAPED}
        if all(accs.values()):
            means = {f: sum(a.values()) / len(a) for f, a in accs.items()}
            best = max(means, key=means.get)
            gap = 100 * (dense - means[best])
            out["best_reshaped_within_gap"] = {
                "rate": TARGET_RATE, "best_form": best, "accuracy": means[best],
                "seeds": sorted(accs[best]), "dense_accuracy": dense, "gap_pp": gap,
                "allowed_gap_pp": TARGET_GAP_PP, "holds": bool(gap <= TARGET_GAP_PP),
            }
    pairs = []
    for rate in result["settings"]["rates"]:
        for reshaped in RESHAPED:
            plain = next(p for p in PLAIN if FAMILY[p] == FAMILY[reshaped])
            c = compare(seed_accuracies(entries, reshaped, rate),
                        seed_accuracies(entries, plain, rate))
            if c is not None:
                pairs.append({
                    "rate": rate, "family": FAMILY[reshaped], "reshaped": reshaped,
                    "plain": plain, "seeds": c["seeds"], "reshaped_accuracy": c["mean"][0],
                    "plain_accuracy": c["mean"][1], "difference_pp": c["difference_pp"],
                    "standard_error_pp": c["standard_error_pp"],
                    "p_value_welch": c["p_value_welch"],
                    "holds": bool(c["difference_pp"] >= 0),
                })
    out["reshaped_at_least_plain"] = pairs
    return out


def complete(result: dict) -> bool:
    """Whether every seed present or asked for (``seeds_requested``, by any of the runs
    writing the file) has an entry for every form run (``--forms``) at every rate.

    Seeds asked for count too: a run on other cores that has not finished its first network
    yet leaves no entry, and the file is not complete without it."""
    entries, settings = result["entries"], result["settings"]
    seeds = {e["seed"] for e in entries.values()} | set(result.get("seeds_requested", ()))
    return bool(seeds) and all(entry_key(f, r, s) in entries for s in seeds
                               for r in settings["rates"] for f in settings["forms"])


@contextlib.contextmanager
def locked(folder: Path):
    """An exclusive lock on ``folder`` (held by one writer at a time, across processes)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_result(out: Path, settings: dict, *, fresh: bool, seeds: list[int]) -> dict | None:
    """The result this run extends, with ``seeds`` added to ``seeds_requested``.

    The file's content if it holds a run with the same ``settings``; a new result if there is
    no file, or with ``fresh`` (the file is deleted: old entries must not come back through
    the merges of :func:`merge_and_write`); None if the file holds other settings.
    """
    if fresh:
        with locked(out.parent):
            out.unlink(missing_ok=True)
    result: dict[str, Any] = {"benchmark": "bench_tnn", "settings": settings, "entries": {}}
    if out.is_file():
        result = json.loads(out.read_text())
        if result.get("settings") != settings:
            return None
    result["seeds_requested"] = sorted(set(result.get("seeds_requested", ())) | set(seeds))
    return result


def merge_and_write(out: Path, result: dict) -> None:
    """Write ``result`` with the entries other runs have written to ``out`` meanwhile, and
    the targets recomputed on all of them; ``result`` is updated in place."""
    with locked(out.parent):
        if out.is_file():
            disk = json.loads(out.read_text())
            if disk.get("settings") == result["settings"]:
                result["entries"] = {**disk["entries"], **result["entries"]}
                result["seeds_requested"] = sorted(
                    set(disk.get("seeds_requested", ())) | set(result.get("seeds_requested", ())))
        result["targets"] = targets(result)
        result["complete"] = complete(result)
        result["seeds"] = sorted({e["seed"] for e in result["entries"].values()})
        result["wall_s_entries"] = sum(e["wall_s"] for e in result["entries"].values())
        cpu = [e["cpu_s"] for e in result["entries"].values() if "cpu_s" in e]
        result["cpu_s_entries"] = {"total": sum(cpu), "n_entries_measured": len(cpu)}
        write_json(out, result)


def time_entry(model: torch.nn.Module, pretrained: torch.nn.Module, names: list[str],
               inputs: dict[str, torch.Tensor], x_net: torch.Tensor, repeat: int) -> dict:
    """Forward time of every compressed layer next to its dense layer, and of the network.

    Tensorial layers are timed on their chain of generalized operations
    (``compressed_s``, also in the network's time) and through the formed kernel
    (``formed_kernel_s``); ``benchmarks/bench_route.py`` times the automatic choice.
    """
    with evaluation_route(model, "chain") as tensorial:
        layers = {}
        for name in names:
            layer, dense = model.get_submodule(name), pretrained.get_submodule(name)
            x = inputs[name]
            # Dense and compressed timed back to back, twice, so that load changes on a shared
            # machine hit both alike; the medians of the two rounds are averaged.
            t_dense, t_comp = [], []
            for _ in range(2):
                t_dense.append(time_forward(dense, x, repeat=repeat))
                t_comp.append(time_forward(layer, x, repeat=repeat))
            row = {
                "dense_s": float(np.mean(t_dense)),
                "compressed_s": float(np.mean(t_comp)),
                "module": type(layer).__name__,
            }
            if layer in tensorial:
                with evaluation_route(layer, "dense"):
                    row["formed_kernel_s"] = time_forward(layer, x, repeat=repeat)
            row["speedup"] = row["dense_s"] / row["compressed_s"]
            layers[name] = row
        net = {
            "dense_s": time_forward(pretrained, x_net, repeat=repeat),
            "compressed_s": time_forward(model, x_net, repeat=repeat),
        }
    return {"layers": layers, "network": net}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one rate (10 %%), 5000 training / 2000 test images, 1 epoch")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/bench_tnn.json, or "
                             "bench_tnn_quick.json with --quick)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch and BLAS threads (default 1, see the module docstring)")
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="train every network once per seed (default: 0 1 2 3 4 5; "
                             "with --quick: 0)")
    parser.add_argument("--reshaping", choices=sorted(RESHAPINGS), default="balanced",
                        help="reshaping of the tensorial forms: 'balanced' (the package's "
                             "default: 2 balanced modes for conv2, 3 for fc1 and fc2) or "
                             "'layout' (2 modes everywhere, fc1's along its 16 x 5 x 5 "
                             "layout); default balanced")
    parser.add_argument("--rates", nargs="+", type=float, default=None,
                        help="compression rates (default: 0.05 0.1 0.2; with --quick: 0.1)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="epochs of end-to-end fine-tuning (default 8; with --quick: 1); "
                             "another value names the default output ..._ft<E>.json")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore entries of an existing result file and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")

    if args.seeds is None:
        args.seeds = [0] if args.quick else list(range(6))
    if any(s < 0 for s in args.seeds):
        parser.error("--seeds must be integers >= 0")
    if args.rates is not None and not all(0 < r < 1 for r in args.rates):
        parser.error("--rates must lie strictly between 0 and 1")
    if args.rates is not None and len({f"{r:g}" for r in args.rates}) < len(set(args.rates)):
        # entries are keyed by the rate written with 6 significant digits (entry_key)
        parser.error(f"--rates {args.rates} holds rates that agree to 6 significant digits: "
                     "their entries would share keys")
    if args.finetune_epochs is not None and args.finetune_epochs < 0:
        parser.error("--finetune-epochs must be >= 0")
    settings = dict(QUICK if args.quick else FULL)
    settings["forms"] = list(args.forms)
    settings.update(RESHAPINGS[args.reshaping])
    name = "bench_tnn" + ("" if args.reshaping == "balanced" else f"_{args.reshaping}")
    if args.rates is not None:
        settings["rates"] = sorted(set(args.rates))
    if args.finetune_epochs is not None and args.finetune_epochs != settings["finetune_epochs"]:
        settings["finetune_epochs"] = args.finetune_epochs
        name += f"_ft{args.finetune_epochs}"
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{name}_quick.json" if args.quick else f"{name}.json")

    torch.set_num_threads(args.threads)
    limiter = contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass

    with limiter:
        return run(settings, out, args)


def run(settings: dict, out: Path, args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    pretrained, info = zoo.pretrained("lenet5", return_info=True, progress=not args.no_progress)
    x_train, y_train = zoo.mnist_tensors("train")
    x_test, y_test = zoo.mnist_tensors("test")
    if settings["n_train"] is not None:
        x_train, y_train = x_train[: settings["n_train"]], y_train[: settings["n_train"]]
    if settings["n_test"] is not None:
        x_test, y_test = x_test[: settings["n_test"]], y_test[: settings["n_test"]]
    names = default_layers(pretrained)
    settings = {**settings, "layers": names, "pretrained_key": info["key"] if info else None}

    result = open_result(out, settings, fresh=args.fresh, seeds=args.seeds)
    if result is None:
        print(f"{out} holds a run with other settings; pass --fresh to overwrite it "
              "or --out to write elsewhere", file=sys.stderr)
        return 2
    result["machine"] = machine_description(blas_threads=args.threads)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result["command"] = " ".join([Path(sys.executable).name, *sys.argv])

    # The uncompressed network: accuracy, layer sizes, inputs for the timings.
    gen = torch.Generator().manual_seed(TIMING_SEED)
    idx = torch.randperm(x_test.shape[0], generator=gen)[: settings["timing_batch"]]
    x_net = x_test[idx]
    inputs = layer_inputs(pretrained, names, x_net)
    result["dense"] = {
        "test_accuracy": zoo.evaluate(pretrained, x_test, y_test),
        "n_parameters": sum(p.numel() for p in pretrained.parameters()),
        "pretrained_info": info,
        "layers": {
            n: {
                "n_parameters": sum(p.numel() for p in pretrained.get_submodule(n).parameters()),
                "input_shape": list(inputs[n].shape[1:]),
                "module": repr(pretrained.get_submodule(n)),
            }
            for n in names
        },
    }

    merge_and_write(out, result)  # the seeds of this run count before its first network ends

    # Seeds outermost: a run stopped early leaves whole seeds, each one comparing all forms.
    todo = [(seed, rate, form) for seed in args.seeds for rate in settings["rates"]
            for form in settings["forms"]]
    done = sum(entry_key(f, r, s) in result["entries"] for s, r, f in todo)
    bar = tqdm(total=len(todo), initial=done, desc="bench_tnn", unit="net",
               disable=args.no_progress)
    for seed, rate, form in todo:
        key = entry_key(form, rate, seed)
        if key in result["entries"]:
            continue
        bar.set_postfix(form=form, rate=rate, seed=seed)
        t0, c0 = time.perf_counter(), time.process_time()
        model, res = compress_and_train(
            pretrained, form, rate, (x_train, y_train), (x_test, y_test),
            distill_samples=settings["distill_samples"],
            distill_epochs=settings["distill_epochs"], distill_lr=settings["distill_lr"],
            finetune_samples=settings["finetune_samples"],
            finetune_epochs=settings["finetune_epochs"], finetune_lr=settings["finetune_lr"],
            batch_size=settings["batch_size"], seed=seed,
            modes=settings.get("modes"),
            reshape_by_layout=settings.get("reshape_by_layout", False),
        )
        entry = {**res.to_dict(), "seed": seed}
        entry["timing"] = time_entry(model, pretrained, names, inputs, x_net,
                                     settings["timing_repeat"])
        entry["wall_s"] = time.perf_counter() - t0
        entry["cpu_s"] = time.process_time() - c0  # all threads; unaffected by other jobs
        result["entries"][key] = entry
        merge_and_write(out, result)
        bar.update(1)
    bar.close()

    result["elapsed_s_this_run"] = time.perf_counter() - t_start
    result["machine"]["load_average_at_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    merge_and_write(out, result)

    print(f"wrote {out}")
    dense = result["dense"]["test_accuracy"]
    print(f"uncompressed LeNet-5: {100 * dense:.2f} %, {result['dense']['n_parameters']} params")
    print(f"{'seed':>4} {'rate':>5} {'form':>7} {'params':>7} {'acc %':>6}  "
          "forward ms (conv2 fc1 fc2)")
    for seed, rate, form in todo:
        e = result["entries"][entry_key(form, rate, seed)]
        ms = " ".join(f"{1e3 * e['timing']['layers'][n]['compressed_s']:.3f}" for n in names)
        print(f"{seed:4d} {rate:5.2f} {form:>7} {e['n_compressed_layers']:7d} "
              f"{100 * e['accuracy']['fine_tuned']:6.2f}  {ms}")
    t = result["targets"]
    if "best_reshaped_within_gap" in t:
        g = t["best_reshaped_within_gap"]
        print(f"target 1 ({'holds' if g['holds'] else 'MISSED'}): best reshaped form at "
              f"{g['rate']:g}: {g['best_form']} {100 * g['accuracy']:.2f} % (mean of seeds "
              f"{g['seeds']}), "
              f"{g['gap_pp']:.2f} points below the dense network (allowed {TARGET_GAP_PP})")
    for p in t["reshaped_at_least_plain"]:
        se = p["standard_error_pp"]
        print(f"target 2 ({'holds' if p['holds'] else 'MISSED'}): rate {p['rate']:g} "
              f"{p['reshaped']} {100 * p['reshaped_accuracy']:.2f} % vs {p['plain']} "
              f"{100 * p['plain_accuracy']:.2f} % (seeds {p['seeds']}"
              + (f", difference {p['difference_pp']:+.2f} ± {se:.2f} points" if se is not None
                 else "")
              + (f", Welch p = {p['p_value_welch']:.2g})" if p.get("p_value_welch") is not None
                 else ")"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
