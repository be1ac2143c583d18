"""The solver's products with tall matrices: torch's ``@`` against tenflex's two helpers.

CMTF-ALS multiplies tall matrices by matrices with few columns: ``J V`` with ``J`` the
Jacobian tensor stored as an ``(n N, m)`` matrix, the mode-2 MTTKRP ``J^T (W ⊙ H)``,
``X D`` and ``X^T (...)`` in every Gauss-Newton product of the V step, and the branch inputs
``Z = X V`` at every trial point of the line search and of the extrapolation
(:func:`tenflex.model.branch_inputs_product`, a ``tall_matmul``; ``K = N`` below). With MKL,
the kernel torch's ``@`` reaches depends on the number of columns ``R``, and some are many
times slower than the same product written the other way round:

* ``A.T @ B`` with fewer than about a dozen columns (:func:`tenflex.cpd.transpose_matmul`
  computes ``(B.T @ A).T`` instead, at every ``R``);
* ``A @ B`` with 13 columns or more (:func:`tenflex.cpd.tall_matmul` computes
  ``(B.T @ A.T).T`` there, and ``A @ B`` below).

For a grid of sizes ``K`` (rows of ``A``: ``n N``, or ``N`` for ``X``), ``m`` (columns of
``A``), ``R`` (columns of ``B``), layouts of ``B`` for the transposed product (stored row by
row, or column by column as the solver's ``H`` is: the transposed view of an ``(R, K)``
tensor), dtypes and thread counts, this script times both ways of each product (median of
repeats, after one warm-up), checks that they agree, and writes a JSON result (default
``benchmarks/results/bench_products.json``) with the machine, the date, the command, one
entry per case and, per (product, dtype, threads, K, m, layout), the largest speed-up and the
worst slow-down of tenflex's helper over torch's ``@``.

Usage::

    python benchmarks/bench_products.py            # the reference CNN's sizes (about 12 minutes)
    python benchmarks/bench_products.py --quick    # small sizes (seconds)
"""

from __future__ import annotations

import argparse
import itertools
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_cmtf import timeit
from results_io import machine_description, write_json

from tenflex import zoo
from tenflex.cpd import tall_matmul, transpose_matmul

RESULTS = Path(__file__).resolve().parent / "results"
#: (K, m): the reference CNN's Jacobian tensor (n N = 10 x 5000 rows, m = 3136) and its
#: sampling points X (N = 5000 rows).
FULL_SIZES = [(50000, 3136), (5000, 3136)]
FULL_RANKS = [2, 4, 6, 8, 11, 12, 13, 16, 24, 32, 64]
QUICK_SIZES = [(2000, 300)]
QUICK_RANKS = [4, 16]
#: (product, layout of B) pairs timed.
CASES = [("transposed", "rows"), ("transposed", "columns"), ("plain", "rows")]


def measure(product: str, K: int, m: int, R: int, dtype: torch.dtype, layout: str,
            repeat: int, seed: int = 0) -> dict:
    """Times of torch's ``@`` and tenflex's helper for one product.

    ``product="transposed"``: ``A.T @ B`` against ``transpose_matmul(A, B)``, ``A`` (K, m),
    ``B`` (K, R) stored by ``layout`` (``"rows"`` or ``"columns"``). ``product="plain"``:
    ``A @ B`` against ``tall_matmul(A, B)``, ``B`` (m, R) stored by rows.
    """
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(K, m, generator=gen, dtype=dtype)
    rows = K if product == "transposed" else m
    if layout == "rows":
        B = torch.randn(rows, R, generator=gen, dtype=dtype)
    else:
        B = torch.randn(R, rows, generator=gen, dtype=dtype).T
    if product == "transposed":
        def with_torch():
            return A.T @ B

        def with_tenflex():
            return transpose_matmul(A, B)
    else:
        def with_torch():
            return A @ B

        def with_tenflex():
            return tall_matmul(A, B)
    reference, ours = with_torch(), with_tenflex()
    # The same sums in another order: they agree to rounding, relative to the largest entry.
    gap = float((reference - ours).abs().max() / reference.abs().max())
    t_torch = timeit(with_torch, repeat)
    t_tenflex = timeit(with_tenflex, repeat)
    return {"product": product, "K": K, "m": m, "R": R, "layout": layout,
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "torch_s": t_torch, "tenflex_s": t_tenflex, "speedup": t_torch / t_tenflex,
            "max_difference_relative": gap}


def summarize(entries: list[dict]) -> list[dict]:
    """Per (product, dtype, threads, K, m, layout): the largest speed-up and the worst
    slow-down over R."""
    fields = ("product", "dtype", "threads", "K", "m", "layout")
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault(tuple(e[f] for f in fields), []).append(e)
    rows = []
    for group_key, group in groups.items():
        best = max(group, key=lambda e: e["speedup"])
        worst = min(group, key=lambda e: e["speedup"])
        rows.append({**dict(zip(fields, group_key)),
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
    entries = []
    for threads in args.threads:
        with zoo.torch_threads(threads):
            for dtype in dtypes:
                for (product, layout), (K, m), R in itertools.product(CASES, sizes, ranks):
                    e = measure(product, K, m, R, dtype, layout, args.repeat)
                    entries.append(e)
                    print(f"{product} {e['dtype']} threads={threads} K={K} m={m} B by "
                          f"{layout} R={R}: torch {1e3 * e['torch_s']:.1f} ms, tenflex "
                          f"{1e3 * e['tenflex_s']:.1f} ms (x{e['speedup']:.1f})", flush=True)
    write_json(out, {
        "benchmark": "bench_products",
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"quick": args.quick, "threads": args.threads, "repeat": args.repeat,
                     "sizes": sizes, "ranks": ranks, "cases": CASES,
                     "dtypes": [str(d).removeprefix("torch.") for d in dtypes]},
        "entries": entries,
        "summary": summarize(entries),
    })
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
