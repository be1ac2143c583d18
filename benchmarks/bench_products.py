"""The solver's transposed products: ``A.T @ B`` against :func:`tenflex.cpd.transpose_matmul`.

CMTF-ALS multiplies tall matrices, transposed, by matrices with few columns: the mode-2
MTTKRP ``A^T (W ⊙ H)`` with ``A`` the Jacobian tensor stored as an ``(n N, m)`` matrix, and
``X^T (...)`` in every Gauss-Newton product of the V step. Written ``A.T @ B``, torch hands
these to a BLAS kernel that, with MKL and fewer than about a dozen columns, is many times
slower than the same product written ``(B.T @ A).T`` (what ``transpose_matmul`` computes).

For a grid of sizes ``K`` (rows of ``A``: ``n N``, or ``N`` for ``X``), ``m`` (columns of
``A``), ``R`` (columns of ``B``), layouts of ``B`` (stored row by row, or column by column
as the solver's ``H`` is: the transposed view of an ``(R, K)`` tensor), dtypes and thread
counts, this script times both forms
(median of repeats, after one warm-up), checks that they agree, and writes a JSON result
(default ``benchmarks/results/bench_products.json``) with the machine, the date, the command,
one entry per size and, per (dtype, threads, K, m, layout), the largest speed-up and the worst
slow-down of ``transpose_matmul`` over ``A.T @ B``.

Usage::

    python benchmarks/bench_products.py            # the reference CNN's sizes (about 6 minutes)
    python benchmarks/bench_products.py --quick    # small sizes (seconds)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import machine_description, write_json

from tenflex.cpd import transpose_matmul

RESULTS = Path(__file__).resolve().parent / "results"
#: (K, m): the reference CNN's Jacobian tensor (n N = 10 x 5000 rows, m = 3136) and its
#: sampling points X (N = 5000 rows).
FULL_SIZES = [(50000, 3136), (5000, 3136)]
FULL_RANKS = [2, 4, 6, 8, 11, 12, 16, 24, 32, 64]
QUICK_SIZES = [(2000, 300)]
QUICK_RANKS = [4, 16]
LAYOUTS = ("rows", "columns")


def median_time(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(K: int, m: int, R: int, dtype: torch.dtype, layout: str, repeat: int,
            seed: int = 0) -> dict:
    """Times of ``A.T @ B`` and ``transpose_matmul(A, B)`` for ``A`` (K, m), ``B`` (K, R)
    stored by ``"rows"`` or by ``"columns"``."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(K, m, generator=gen, dtype=dtype)
    if layout == "rows":
        B = torch.randn(K, R, generator=gen, dtype=dtype)
    else:
        B = torch.randn(R, K, generator=gen, dtype=dtype).T
    plain = A.T @ B
    ours = transpose_matmul(A, B)
    # The same sums in another order: they agree to rounding, relative to the largest entry.
    gap = float((plain - ours).abs().max() / plain.abs().max())
    t_plain = median_time(lambda: A.T @ B, repeat)
    t_ours = median_time(lambda: transpose_matmul(A, B), repeat)
    return {"K": K, "m": m, "R": R, "layout": layout, "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "plain_s": t_plain, "transpose_matmul_s": t_ours,
            "speedup": t_plain / t_ours, "max_difference_relative": gap}


def summarize(entries: list[dict]) -> list[dict]:
    """Per (dtype, threads, K, m, layout): the largest speed-up and the worst slow-down
    over R."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["dtype"], e["threads"], e["K"], e["m"], e["layout"]), []).append(e)
    rows = []
    for (dtype, threads, K, m, layout), group in groups.items():
        best = max(group, key=lambda e: e["speedup"])
        worst = min(group, key=lambda e: e["speedup"])
        rows.append({"dtype": dtype, "threads": threads, "K": K, "m": m, "layout": layout,
                     "max_speedup": best["speedup"], "at_R": best["R"],
                     "min_speedup": worst["speedup"], "min_at_R": worst["R"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one dtype (seconds)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to time (default: 1 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per product")
    parser.add_argument("--out", type=Path, default=None,
                        help="result file (default: benchmarks/results/bench_products.json, "
                             "or bench_products_quick.json with --quick)")
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be at least 1")
    sizes, ranks = (QUICK_SIZES, QUICK_RANKS) if args.quick else (FULL_SIZES, FULL_RANKS)
    dtypes = [torch.float64] if args.quick else [torch.float64, torch.float32]
    out = args.out or RESULTS / ("bench_products_quick.json" if args.quick
                                 else "bench_products.json")
    threads_before = torch.get_num_threads()
    entries = []
    try:
        for threads in args.threads:
            torch.set_num_threads(threads)
            for dtype in dtypes:
                for (K, m), layout, R in itertools.product(sizes, LAYOUTS, ranks):
                    e = measure(K, m, R, dtype, layout, args.repeat)
                    entries.append(e)
                    print(f"{e['dtype']} threads={threads} K={K} m={m} B by {layout} R={R}: "
                          f"A.T @ B {1e3 * e['plain_s']:.1f} ms, transpose_matmul "
                          f"{1e3 * e['transpose_matmul_s']:.1f} ms (x{e['speedup']:.1f})",
                          flush=True)
    finally:
        torch.set_num_threads(threads_before)
    write_json(out, {
        "benchmark": "bench_products",
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"quick": args.quick, "threads": args.threads, "repeat": args.repeat,
                     "sizes": sizes, "ranks": ranks, "layouts": list(LAYOUTS),
                     "dtypes": [str(d).removeprefix("torch.") for d in dtypes]},
        "entries": entries,
        "summary": summarize(entries),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
