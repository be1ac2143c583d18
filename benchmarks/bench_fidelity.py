"""How faithfully each compression of the reference CNN's fully connected part follows the
original network, and whether the accuracy gaps between methods exceed chance; writes a
JSON result.

bench_compress ranks the compressions by test accuracy. Near the original's accuracy that
ranking can turn on a few images, and accuracy mixes two things: on how many images a
compression changes the original's prediction, and whether the changes happen to fix or
break it. For the B-spline flexible layers of bench_compress's grid (its settings, read
from its result file: the same fits, checked against its accuracies), for the truncated SVD
and the linear replacement at each budget, and for bench_compress's capacity fit with the
output weight chosen on held-out images (every training image, ``lam = 1000``), this
script records (``tenflex.nn.fidelity``)

* test accuracy, agreement with the original's predictions, relative output (logit) error,
  the images fixed (original wrong, compressed right) and broken (the reverse);
* McNemar's exact test between the flexible layer and each baseline at the same budget: the
  images that only one of the two gets right, and the two-sided p-value of equal accuracy.

Usage::

    python benchmarks/bench_fidelity.py            # about 6 minutes on 2 cores
    python benchmarks/bench_fidelity.py --quick    # a briefly trained network, digits set
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_compress import DEFAULT_OUT as COMPRESS_RESULT
from bench_compress import FC_SPAN, baseline_model, key
from results_io import machine_description, write_json

from tenflex import zoo
from tenflex.nn.compress import compress, count_parameters
from tenflex.nn.fidelity import fidelity, mcnemar_exact
from tenflex.nn.surgery import resolve_span

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_fidelity.json"
#: bench_compress's capacity fit whose output weight was chosen on held-out images.
VALIDATED = {"n_samples": 58000, "lam": 1000.0}
#: Settings of the quick run (a network trained for two epochs on the 8x8 digits).
QUICK = {"ranks": [4, 8], "n_functions": 6, "n_samples": 300, "max_iter": 15, "lam": 100.0,
         "seed": 0, "validated": {"n_samples": 600, "lam": 1000.0}, "n_validation": 300}


def read_compress_result(path: Path) -> dict:
    """bench_compress's result file, or a clear exit naming the command that writes it."""
    if not path.exists():
        raise SystemExit(f"bench_fidelity: {path} not found: run "
                         f"`python benchmarks/bench_compress.py` first (or pass "
                         f"--compress-result FILE)")
    return json.loads(path.read_text())


def grid_settings(compress_result: dict) -> dict:
    """The fully connected grid's settings of a bench_compress result."""
    settings = compress_result["settings"]
    return {"ranks": settings["ranks"], "n_functions": settings["n_functions"],
            "n_samples": settings["n_samples"], "max_iter": settings["max_iter"],
            "lam": settings["lam"], "seed": settings["seed"],
            "validated": VALIDATED if VALIDATED in settings["capacity"] else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compress-result", type=Path, default=COMPRESS_RESULT,
                        help="bench_compress's result, whose grid settings are used and whose "
                             "accuracies the fits are checked against")
    parser.add_argument("--quick", action="store_true",
                        help="a network trained for two epochs on the digits set, ranks 4 8")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"result JSON (default {DEFAULT_OUT}, or bench_fidelity_quick.json "
                             f"with --quick)")
    args = parser.parse_args(argv)
    out_path = args.out or DEFAULT_OUT.with_name(
        "bench_fidelity_quick.json" if args.quick else DEFAULT_OUT.name)
    start = time.perf_counter()

    if args.quick:
        settings, expected = QUICK, {}
        train_images, train_labels = zoo.digits_tensors("train")
        test_images, test_labels = zoo.digits_tensors("test")
        model = zoo.build_model("reference_cnn", seed=0)
        zoo.train(model, (train_images, train_labels), epochs=2, lr=3e-3, seed=0)
    else:
        compress_result = read_compress_result(args.compress_result)
        settings = grid_settings(compress_result)
        # bench_compress's accuracies, by its own entry key
        expected = {key(e): e["accuracy"] for e in compress_result["entries"]}
        model = zoo.pretrained("reference_cnn", progress=True)
        train_images, _ = zoo.mnist_tensors("train")
        test_images, test_labels = zoo.mnist_tensors("test")
    model.eval()
    reference = zoo.predict(model, test_images)
    span = resolve_span(model, FC_SPAN)

    def describe(logits: torch.Tensor, **fields) -> dict:
        fid = fidelity(logits, reference, test_labels)
        correct = logits.argmax(1).cpu() == test_labels
        return {**fields, **fid.to_dict(), "_correct": correct}

    def flexible(rank: int, n_samples: int, lam: float) -> tuple:
        result = compress(model, FC_SPAN, train_images, rank=rank, basis="bspline",
                          n_functions=settings["n_functions"], lam=lam, n_samples=n_samples,
                          fit_options={"max_iter": settings["max_iter"]},
                          seed=settings["seed"], progress=not args.quick,
                          # compress's default n_validation (2000) unless the run says
                          **{k: settings[k] for k in ("n_validation",) if k in settings})
        return result.model, result.report.to_dict()

    rows, comparisons, span_samples = [], [], {}
    jobs = [(rank, None) for rank in settings["ranks"]]
    if settings["validated"]:
        jobs.append((max(settings["ranks"]), settings["validated"]))
    for rank, change in jobs:
        n_samples = change["n_samples"] if change else settings["n_samples"]
        lam = change["lam"] if change else settings["lam"]
        t0 = time.perf_counter()
        flex_model, report = flexible(rank, n_samples, lam)
        flex = describe(zoo.predict(flex_model, test_images), method="flexible", rank=rank,
                        n_samples=n_samples, lam=lam, parameters=count_parameters(flex_model),
                        wall_s=time.perf_counter() - t0)
        flex["bench_compress_accuracy"] = expected.get(key(
            {"method": "flexible", "span": span.names, "rank": rank, "basis": "bspline",
             **(change or {})}))
        rows.append(flex)
        if change:  # the baselines are those of the grid's fit at this rank
            baselines = [r for r in rows if r["method"] != "flexible" and r["rank"] == rank]
        else:
            baselines = []
            for method in ("svd", "linear"):
                model_b, rank_b = baseline_model(method, model, span, report, train_images,
                                                 settings["n_samples"], settings["seed"],
                                                 span_samples)
                row = describe(zoo.predict(model_b, test_images), method=method, rank=rank,
                               baseline_rank=rank_b, parameters=count_parameters(model_b))
                row["bench_compress_accuracy"] = expected.get(
                    key({"method": method, "span": span.names, "rank": rank}))
                rows.append(row)
                baselines.append(row)
        for other in baselines:
            test = mcnemar_exact(flex["_correct"], other["_correct"])
            comparisons.append({"rank": rank, "flexible": {"n_samples": n_samples, "lam": lam},
                                "baseline": other["method"],
                                "accuracy_difference_pp": 100 * (flex["accuracy"]
                                                                 - other["accuracy"]),
                                "only_flexible_right": test.only_a,
                                "only_baseline_right": test.only_b, "p_value": test.p_value})
        print(json.dumps({k: flex[k] for k in ("rank", "n_samples", "lam", "accuracy",
                                                "agreement", "output_error")}), flush=True)

    for row in rows:
        del row["_correct"]
    checked = [r for r in rows if r["bench_compress_accuracy"] is not None]
    result = {
        "benchmark": "bench_fidelity",
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {**settings, "quick": args.quick},
        "reference": {"accuracy": zoo.accuracy(reference, test_labels),
                      "n_images": len(test_labels)},
        "rows": rows,
        "comparisons": comparisons,
        # The same fits as bench_compress's: every accuracy found there is reproduced.
        "matches_bench_compress": {"n_checked": len(checked), "all_equal": all(
            r["accuracy"] == r["bench_compress_accuracy"] for r in checked)},
        "elapsed_s": time.perf_counter() - start,
    }
    write_json(out_path, result)
    print(json.dumps(result["matches_bench_compress"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
