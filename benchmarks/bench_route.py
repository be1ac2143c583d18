"""Which evaluation route of a tensorial layer is faster: its chain, or its formed kernel?

A tensorial layer (:class:`~tenflex.nn.tensorial.TensorialLinear`,
:class:`~tenflex.nn.tensorial.TensorialConv2d`) computes the same function by two routes:
the chain of generalized operations on its factors (``evaluation="chain"``), or one dense
matrix product / convolution with the kernel formed from the factors
(``evaluation="dense"``). ``evaluation="auto"``, the default, takes the chain only where
it needs fewer than :data:`~tenflex.nn.tensorial.CHAIN_FLOP_ADVANTAGE` times the formed
kernel's floating-point operations (counted on meta tensors by ``route_flops``).

For a grid of layers (fully connected and convolutional), forms (rcp, rtk, rtt), rates
(ranks from :func:`~tenflex.nn.compress_tnn.plan_layer`) and batch sizes, this script
times a forward pass (no gradient; median of repeats) by each route and by the dense
layer itself, and records both operation counts. The factors are random: a forward pass'
time does not depend on their values.

Two sets of layers. ``calibration``: the grid on which ``CHAIN_FLOP_ADVANTAGE`` was
chosen. ``held_out``: layer shapes not looked at when choosing it. For each set the
summary gives how often ``auto`` takes the faster route, the geometric mean and the worst
of its time over the faster route's, and its speed-up over the chain (the route tensorial
layers always took before ``auto``).

Usage::

    python benchmarks/bench_route.py            # both sets, 1 thread (about 10 minutes)
    python benchmarks/bench_route.py --quick    # two small layers (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import machine_description, write_json

from tenflex.nn.compress_tnn import plan_layer
from tenflex.nn.tensorial import (
    CHAIN_FLOP_ADVANTAGE,
    TensorialConv2d,
    TensorialLinear,
)

RESULTS = Path(__file__).resolve().parent / "results"

# (kind, in, out, kernel, image side, batch sizes). Linear 4096 x 4096 only at batch 1:
# its chain takes seconds per call at larger batches, and batch 1 is where a chain can win.
CALIBRATION = [
    ("linear", 400, 120, None, None, (1, 16, 256)),  # LeNet-5 fc1
    ("linear", 120, 84, None, None, (1, 16, 256)),  # LeNet-5 fc2
    ("linear", 3136, 128, None, None, (1, 16, 256)),  # reference CNN fc1
    ("linear", 1024, 1024, None, None, (1, 16, 256)),
    ("linear", 4096, 4096, None, None, (1,)),
    ("conv", 6, 16, 5, 14, (1, 16, 256)),  # LeNet-5 conv2
    ("conv", 32, 64, 5, 14, (1, 16, 256)),  # reference CNN conv2
    ("conv", 64, 128, 3, 16, (1, 16, 256)),
    ("conv", 256, 256, 3, 8, (1, 16, 256)),
    ("conv", 16, 32, 3, 32, (1, 16, 256)),
]
HELD_OUT = [
    ("linear", 784, 300, None, None, (1, 16, 256)),  # LeNet-300-100
    ("linear", 300, 100, None, None, (1, 16, 256)),
    ("linear", 2048, 512, None, None, (1, 16, 256)),
    ("conv", 3, 64, 3, 32, (1, 16, 256)),
    ("conv", 128, 128, 3, 16, (1, 16)),
    ("conv", 16, 16, 5, 28, (1, 16, 256)),
]
QUICK = [
    ("linear", 400, 120, None, None, (1, 256)),
    ("conv", 6, 16, 5, 14, (1, 64)),
]
FORMS = ("rcp", "rtk", "rtt")
RATES = (0.02, 0.05, 0.2)


def median_time(fn, x: torch.Tensor, budget: float) -> float:
    """Median seconds of ``fn(x)`` over as many calls as fit in ``budget`` (3 to 50)."""
    fn(x)  # warm-up (allocations, one-time dispatch)
    t0 = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t0
    if first > budget:
        return first  # a slow call: one measurement is enough to place it
    times = []
    for _ in range(max(3, min(50, int(budget / max(first, 1e-6))))):
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(kind: str, n_in: int, n_out: int, k: int | None, form: str, rate: float):
    """The dense layer and a tensorial layer at the ranks of ``rate`` (random factors)."""
    if kind == "linear":
        dense: nn.Module = nn.Linear(n_in, n_out)
    else:
        dense = nn.Conv2d(n_in, n_out, k, padding=k // 2)
    plan = plan_layer(dense, form, rate, name=f"{kind}{n_in}x{n_out}")
    common = {"form": form, "rank": plan.ranks, "in_factors": plan.in_factors,
              "out_factors": plan.out_factors, "seed": 0}
    if kind == "linear":
        layer = TensorialLinear(n_in, n_out, **common)
    else:
        layer = TensorialConv2d(n_in, n_out, k, padding=k // 2, **common)
    return dense, layer, plan


def measure(grid: list, budget: float, log) -> list[dict]:
    rows = []
    for kind, n_in, n_out, k, side, batches in grid:
        for form in FORMS:
            for rate in RATES:
                try:
                    dense, layer, plan = build(kind, n_in, n_out, k, form, rate)
                except ValueError as err:  # a rate that leaves no rank for this layer
                    rows.append({"kind": kind, "in": n_in, "out": n_out, "kernel": k,
                                 "form": form, "rate": rate, "skipped": str(err)})
                    continue
                for batch in batches:
                    shape = (batch, n_in) if kind == "linear" else (batch, n_in, side, side)
                    x = torch.randn(shape)
                    chain_flops, dense_flops = layer.route_flops(shape)
                    row = {"kind": kind, "in": n_in, "out": n_out, "kernel": k, "side": side,
                           "form": form, "rate": rate, "ranks": list(plan.ranks),
                           "in_factors": list(plan.in_factors),
                           "out_factors": list(plan.out_factors), "batch": batch,
                           "chain_flops": chain_flops, "dense_flops": dense_flops}
                    with torch.no_grad():
                        for route in ("chain", "dense", "auto"):
                            layer.evaluation = route
                            row[f"{route}_s"] = median_time(layer, x, budget)
                        row["dense_layer_s"] = median_time(dense, x, budget)
                    row["auto_route"] = layer.route(shape)
                    rows.append(row)
                    log(f"{kind:6} {n_in:4}->{n_out:<4} {form} {rate:4.2f} B={batch:<3} "
                        f"chain {1e3 * row['chain_s']:9.3f} ms  formed {1e3 * row['dense_s']:8.3f} "
                        f"ms  auto={row['auto_route']:5} {1e3 * row['auto_s']:8.3f} ms  "
                        f"(dense layer {1e3 * row['dense_layer_s']:.3f} ms)")
    return rows


def summary(rows: list[dict]) -> dict:
    """How well ``auto`` chooses, judged by the routes' own (forced) timings."""
    rows = [r for r in rows if "skipped" not in r]
    if not rows:
        return {"n_cases": 0}
    best = [min(r["chain_s"], r["dense_s"]) for r in rows]
    chosen = [r[f"{r['auto_route']}_s"] for r in rows]
    regret = [c / b for c, b in zip(chosen, best)]
    gain = [r["chain_s"] / c for r, c in zip(rows, chosen)]
    faster = ["chain" if r["chain_s"] < r["dense_s"] else "dense" for r in rows]
    return {
        "n_cases": len(rows),
        "auto_takes_faster_route": sum(r["auto_route"] == f for r, f in zip(rows, faster)),
        # a wrong pick between two routes within 10 % of each other costs little
        "auto_within_10pct_of_faster": sum(x <= 1.1 for x in regret),
        "auto_over_faster_geomean": math.exp(statistics.fmean(math.log(x) for x in regret)),
        "auto_over_faster_max": max(regret),
        "chain_faster_cases": faster.count("chain"),
        "auto_chain_cases": sum(r["auto_route"] == "chain" for r in rows),
        "speedup_over_chain_geomean": math.exp(statistics.fmean(math.log(x) for x in gain)),
        "speedup_over_chain_max": max(gain),
        "auto_over_dense_layer_geomean": math.exp(statistics.fmean(
            math.log(r["auto_s"] / r["dense_layer_s"]) for r in rows)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small layers (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--budget", type=float, default=0.2,
                        help="seconds of repeats per timing (default 0.2)")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (default benchmarks/results/bench_route.json, or "
                             "bench_route_quick.json with --quick)")
    args = parser.parse_args(argv)
    if args.threads < 1 or not 0 < args.budget < math.inf:
        parser.error("--threads must be >= 1 and --budget finite and > 0")
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / ("bench_route_quick.json" if args.quick else "bench_route.json")
    t0 = time.perf_counter()
    sets = {"quick": QUICK} if args.quick else {"calibration": CALIBRATION,
                                                "held_out": HELD_OUT}
    entries = {name: measure(grid, args.budget, print) for name, grid in sets.items()}
    result = {
        "benchmark": "bench_route",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/bench_route.py",
                             *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "settings": {"threads": args.threads, "budget_s": args.budget, "forms": list(FORMS),
                     "rates": list(RATES), "chain_flop_advantage": CHAIN_FLOP_ADVANTAGE},
        "entries": entries,
        "summary": {name: summary(rows) for name, rows in entries.items()},
        "elapsed_s": time.perf_counter() - t0,
    }
    RESULTS.mkdir(exist_ok=True)
    write_json(out, result)
    for name, s in result["summary"].items():
        print(f"{name}: {s}")
    print(f"wrote {out} ({result['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
