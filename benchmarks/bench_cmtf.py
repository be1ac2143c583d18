"""Benchmark of the CMTF-ALS solver and its MTTKRPs.

For each problem size (m, n, N, R, D) of a grid, on noise-free samples of a random decoupled
function (B-spline branches):

* GFLOP/s of the Jacobian-tensor products (``J V``, the mode-1, mode-2 and mode-3 MTTKRPs)
  next to a plain matrix product of the same size ``(n N, m) @ (m, R)`` run in the same
  process;
* the time of one CMTF-ALS sweep (median over a few sweeps);
* the time and number of sweeps to reach a relative Jacobian error of ``1e-6`` from the
  truth perturbed by 1% (and, on the small sizes, from a random start).

Results go to a JSON file (default ``benchmarks/results/bench_cmtf.json``; with ``--quick``
the git-ignored ``bench_cmtf_quick.json``) with a machine description, the date and the
command line.

Usage::

    python benchmarks/bench_cmtf.py            # full grid, includes the CNN-head case
    python benchmarks/bench_cmtf.py --quick    # small grid (seconds)
    python benchmarks/bench_cmtf.py --threads 2 --out my.json
    # the reference CNN's head alone, on two threads (results/bench_cmtf_cnn_head.json):
    python benchmarks/bench_cmtf.py --sizes 3136,10,5000,32,8 --threads 2 --max-iter 40 \
        --out benchmarks/results/bench_cmtf_cnn_head.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from results_io import machine_description, write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_cmtf.json"

from tenflex.basis import make_basis
from tenflex.cpd import DenseJacobian
from tenflex.fit import cmtf_als
from tenflex.model import DecoupledFunction

#: (m, n, N, R, D): the last one is the size of a CNN classifier head (7x7x64 -> 10).
FULL_GRID = [
    (64, 10, 2000, 8, 8),
    (256, 10, 2000, 16, 8),
    (1024, 10, 5000, 16, 8),
    (3136, 10, 5000, 32, 8),
]
QUICK_GRID = [
    (16, 4, 500, 4, 6),
    (64, 10, 1000, 8, 8),
]


def make_problem(
    m: int, n: int, N: int, R: int, D: int, seed: int = 0, dtype: torch.dtype = torch.float64,
    chunk_bytes: int = 2**25,
):
    """Noise-free samples X (N, m), Y (N, n), J (n, m, N) of a random decoupled function.

    ``J`` is filled block by block of samples into its ``(n, N, m)`` storage (the solver's
    layout, handed over as an ``(n, m, N)`` view), so that building it needs the tensor
    itself plus a block of at most ``chunk_bytes``, not two tensors of its size: the peak
    memory of a point is then the solver's, not the test problem's.

    Returns
    -------
    truth : DecoupledFunction
    X : (N, m), Y : (N, n), J : (n, m, N)
    """
    gen = torch.Generator().manual_seed(seed)
    dt = dtype
    W = torch.randn(n, R, generator=gen, dtype=dt)
    V = torch.randn(m, R, generator=gen, dtype=dt) / math.sqrt(m)
    C = torch.randn(D, R, generator=gen, dtype=dt)
    b = torch.randn(n, generator=gen, dtype=dt)
    X = torch.randn(N, m, generator=gen, dtype=dt)
    Z = X @ V
    basis = make_basis("bspline", D).fit_domain(Z)
    truth = DecoupledFunction(W, V, C, b, basis)
    G, H = truth.branch_outputs_and_derivatives(Z)
    Y = G @ W.T + b
    A = torch.empty(n, N, m, dtype=dt)
    step = max(1, chunk_bytes // (n * m * A.element_size()))
    for k0 in range(0, N, step):
        Hk = H[k0:k0 + step]
        # A[i, k, j] = sum_r W[i, r] H[k, r] V[j, r]
        block = (W[:, None, :] * Hk[None, :, :]).reshape(-1, R) @ V.T
        A[:, k0:k0 + len(Hk), :] = block.view(n, len(Hk), m)
    return truth, X, Y, A.permute(0, 2, 1)


def timeit(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_products(Jt: DenseJacobian, R: int, repeat: int, seed: int = 1) -> dict:
    n, m, N = Jt.shape
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(m, R, generator=gen, dtype=Jt.dtype)
    W = torch.randn(n, R, generator=gen, dtype=Jt.dtype)
    H = torch.randn(N, R, generator=gen, dtype=Jt.dtype)
    A = torch.randn(n * N, m, generator=gen, dtype=Jt.dtype)
    B = torch.randn(m, R, generator=gen, dtype=Jt.dtype)
    big = 2.0 * n * N * m * R  # flops of one product of the size of J with R vectors

    def mode1():
        return Jt.mttkrp_output(Jt.contract_input(V), H)

    def mode3():
        return Jt.mttkrp_samples(Jt.contract_input(V), W)

    timings = {
        "matmul": timeit(lambda: A @ B, repeat),
        "contract_input": timeit(lambda: Jt.contract_input(V), repeat),
        "mttkrp_mode1": timeit(mode1, repeat),
        "mttkrp_mode2": timeit(lambda: Jt.mttkrp_input(W, H), repeat),
        "mttkrp_mode3": timeit(mode3, repeat),
    }
    out = {}
    for name, seconds in timings.items():
        out[name] = {"seconds": seconds, "gflops": big / seconds / 1e9}
    for name in ("contract_input", "mttkrp_mode1", "mttkrp_mode2", "mttkrp_mode3"):
        out[name]["fraction_of_matmul"] = out[name]["gflops"] / out["matmul"]["gflops"]
    return out


def perturbed_init(truth: DecoupledFunction, level: float, seed: int = 2) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def perturb(A):
        E = torch.randn(A.shape, generator=gen, dtype=A.dtype)
        return A + level * E * A.norm() / E.norm()

    # Same basis configuration as the solver's: the truth's C and affine map are reused.
    return truth.__class__(
        perturb(truth.W),
        perturb(truth.V),
        perturb(truth.C),
        truth.b.clone(),
        truth.basis.clone(),
    )


def bench_solver(
    X, Y, J, truth, R: int, D: int, init, max_iter: int, sweeps: int, solver: str
) -> dict:
    dtype = X.dtype
    # Per-sweep times from the callback's time stamps.
    stamps = []

    def cb(info):
        stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    cmtf_als(
        X,
        Y,
        J,
        R,
        "bspline",
        D,
        lam=1.0,
        init=init,
        max_iter=sweeps,
        tol=0.0,
        solver=solver,
        dtype=dtype,
        callback=cb,
    )
    sweep_times = np.diff([t0, *stamps])[1:]  # the first interval includes the set-up
    sweep_s = float(np.median(sweep_times)) if len(sweep_times) else float("nan")

    reached = {}

    def cb_target(info):
        if math.sqrt(max(info["cost_jacobian"], 0.0)) < 1e-6 and "it" not in reached:
            reached["it"] = info["iteration"]
            reached["t"] = time.perf_counter()
            return True
        return None

    t0 = time.perf_counter()
    res = cmtf_als(
        X,
        Y,
        J,
        R,
        "bspline",
        D,
        lam=1.0,
        init=init,
        max_iter=max_iter,
        tol=1e-14,
        solver=solver,
        dtype=dtype,
        callback=cb_target,
    )
    return {
        "sweep_seconds": sweep_s,
        "time_to_1e-6_seconds": (reached["t"] - t0) if reached else None,
        "sweeps_to_1e-6": reached.get("it"),
        "final_relative_error_jacobian": res.relative_error_jacobian,
        "final_relative_error_output": res.relative_error_output,
        "n_iter": res.n_iter,
        "stop_reason": res.stop_reason,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="result file (default: results/bench_cmtf.json; with --quick "
                             "results/bench_cmtf_quick.json, git-ignored)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats per product")
    parser.add_argument("--sweeps", type=int, default=5, help="sweeps timed per size")
    parser.add_argument("--max-iter", type=int, default=100, help="sweep limit to 1e-6")
    parser.add_argument("--solvers", default="als,gn", help="cmtf_als solvers to time")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument(
        "--sizes",
        type=str,
        default=None,
        help="override the grid: 'm,n,N,R,D;m,n,N,R,D;...'",
    )
    args = parser.parse_args(argv)
    # Checked before the first size: the result is written only at the end, so a bad value
    # found at a later size or solver would lose every measurement made before it.
    if args.threads is not None and args.threads < 1 or args.repeat < 1 or args.max_iter < 0:
        parser.error("--threads and --repeat must be >= 1, --max-iter >= 0")
    if args.sweeps < 2:
        parser.error(f"--sweeps must be >= 2 (the first sweep is not timed), got {args.sweeps}")
    solvers = args.solvers.split(",")
    if not solvers or not set(solvers) <= {"als", "gn"}:
        parser.error(f"--solvers must be a comma-separated list of als and gn, got "
                     f"{args.solvers!r}")
    if args.quick and args.out == DEFAULT_OUT:  # never over the committed result
        args.out = DEFAULT_OUT.with_name("bench_cmtf_quick.json")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.sizes:
        try:
            grid = [tuple(int(v) for v in item.split(",")) for item in args.sizes.split(";")]
        except ValueError:
            grid = []
        if not grid or any(len(size) != 5 or min(size) < 1 for size in grid):
            parser.error(f"--sizes must be 'm,n,N,R,D;...' with five integers >= 1 per size, "
                         f"got {args.sizes!r}")
    else:
        grid = QUICK_GRID if args.quick else FULL_GRID

    results = []
    for m, n, N, R, D in grid:
        print(f"size m={m} n={n} N={N} R={R} D={D}", flush=True)
        truth, X, Y, J = make_problem(m, n, N, R, D, dtype=getattr(torch, args.dtype))
        Jt = DenseJacobian(J)
        entry = {
            "m": m,
            "n": n,
            "N": N,
            "R": R,
            "D": D,
            "dtype": args.dtype,
            "J_bytes": J.numel() * J.element_size(),
        }
        entry["products"] = bench_products(Jt, R, args.repeat)
        for name, rec in entry["products"].items():
            frac = rec.get("fraction_of_matmul")
            tail = f" ({frac:.2f} of matmul)" if frac is not None else ""
            print(f"  {name:15s} {rec['seconds'] * 1e3:9.2f} ms {rec['gflops']:8.2f} GFLOP/s{tail}")
        inits = {"perturbed_1pct": perturbed_init(truth, 0.01)}
        if m * N <= 2_000_000:
            inits["random"] = "random"
        entry["solver"] = {}
        for (name, init), solver in itertools.product(inits.items(), solvers):
            rec = bench_solver(X, Y, Jt, truth, R, D, init, args.max_iter, args.sweeps, solver)
            entry["solver"][f"{solver}/{name}"] = rec
            name = f"{solver}/{name}"
            t6 = rec["time_to_1e-6_seconds"]
            t6s = (
                f"{t6:.2f} s ({rec['sweeps_to_1e-6']} sweeps)" if t6 is not None else "not reached"
            )
            print(f"  {name:22s} sweep {rec['sweep_seconds']:.3f} s, to 1e-6: {t6s}")
        results.append(entry)
        del truth, X, Y, J, Jt

    report = {
        "benchmark": "bench_cmtf",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_description(),
        "note": "wall-clock times; the machine may be shared with other processes",
        "results": results,
    }
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
