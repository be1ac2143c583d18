"""How the time and memory of CMTF-ALS grow with N, m and R; where the machine's limit is.

Three one-factor sweeps around a base point (default: the CNN classifier head of the book,
``m = 3136, n = 10, N = 5000, R = 12, D = 8``): the number of samples ``N``, the input size
``m`` and the number of branches ``R`` each vary while the others stay at the base value.
Each point is a random decoupled function with B-spline branches (noise-free samples, float64,
the problem of ``bench_cmtf.py`` with ``J`` built block by block so that building it does not
double the memory) measured in a fresh subprocess, so that its peak memory is its own:

* the time of the fit's set-up (``cmtf_als(..., init="linear", max_iter=0)``: validation,
  the linear start with its ``m x m`` Gram matrix, the initial C step; sampling is not
  involved);
* the time of one CMTF-ALS sweep: median over a few sweeps of a run started from that
  set-up's result, time-stamped by the callback (the first sweep, a warm-up, left out);
* the throughput of the machine's matrix product measured in the same process: a
  ``(n N, m) @ (m, R)`` float64 product (the size of ``J V``; a sweep costs about two or
  three of them), and the sweep time as a multiple of it;
* the resident memory: the subprocess' baseline before the data are built, the peak
  (``getrusage(RUSAGE_SELF).ru_maxrss``) of each stage (data, ``DenseJacobian``, set-up,
  sweeps, matrix product; the high-water mark is reset between them), the overall peak, and
  the bytes of the Jacobian tensor ``8 n m N``.

Per sweep the log-log slopes (least squares of log time and log memory against log N, m, R)
are stored. The machine's limit: its RAM (``MemTotal``, and ``MemAvailable`` at the start)
and the largest ``N`` that fits for the base ``m`` and ``n``, from a straight line fitted
to the peak resident memory against ``N`` along the N sweep.

A point whose Jacobian tensor would need more than half the memory available when it
starts is skipped with the reason recorded. The run is resumable: every finished point is
written to the output file at once (atomically), and a rerun skips the points already
measured (``--fresh`` starts over); a file measured with other ``--sweeps``, ``--repeat``
or ``--seed`` is not resumed, and the slopes and the limit use only the points measured
with this run's ``--threads``.

Usage::

    python benchmarks/bench_scaling.py               # full sweeps, 2 torch threads
    python benchmarks/bench_scaling.py --quick       # tiny sizes (seconds)
    python benchmarks/bench_scaling.py --threads 4 --N 1000 5000 20000 --out my.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

# benchmarks/ is on sys.path when this file runs as a script (also in its subprocesses).
from bench_cmtf import make_problem, timeit
from results_io import machine_description, write_json

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_scaling.json"
FACTORS = ("N", "m", "R")

#: The CNN classifier head of the book (7x7x64 -> 10) and the values swept around it.
FULL_BASE = {"m": 3136, "n": 10, "N": 5000, "R": 12, "D": 8}
FULL_SWEEPS = {
    "N": [1000, 2000, 5000, 10000],
    "m": [256, 784, 1568, 3136],
    "R": [4, 8, 12, 16, 32],
}
QUICK_BASE = {"m": 64, "n": 4, "N": 400, "R": 4, "D": 6}
QUICK_SWEEPS = {"N": [200, 800], "m": [32, 64], "R": [2, 4]}

#: A point is skipped when its Jacobian tensor needs more than this fraction of MemAvailable.
MEMORY_GUARD = 0.5
RESULT_MARK = "@@RESULT "


# ---------------------------------------------------------------------------------------
# Memory readings (Linux).


def meminfo() -> dict:
    """``MemTotal`` and ``MemAvailable`` of /proc/meminfo in bytes (None where unreadable)."""
    out = {"MemTotal": None, "MemAvailable": None}
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name in out:
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found in /proc/self/status")


def reset_peak() -> bool:
    """Reset this process' peak resident memory to its current value (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---------------------------------------------------------------------------------------
# One point, in its own process.


def measure_point(point: dict, threads: int, sweeps: int, repeat: int, seed: int) -> dict:
    """Time and memory of CMTF-ALS on one problem size; meant for a fresh process.

    The peak resident memory is read per stage (building the data, wrapping ``J`` in a
    ``DenseJacobian``, the set-up, the sweeps, the matrix product), the kernel's high-water
    mark being reset between stages where it can be (Linux >= 4.0); the peak of the point
    is the largest of them.
    """
    from tenflex.cpd import DenseJacobian
    from tenflex.fit import cmtf_als

    torch.set_num_threads(threads)
    m, n, N, R, D = (point[k] for k in ("m", "n", "N", "R", "D"))
    dtype = torch.float64
    rss_baseline = current_rss()
    peak_baseline = peak_rss()
    resettable = reset_peak()
    stages = {}

    def stage(name):
        stages[name] = peak_rss()
        reset_peak()

    t0 = time.perf_counter()
    _, X, Y, J = make_problem(m, n, N, R, D, seed=seed, dtype=dtype)
    data_s = time.perf_counter() - t0
    rss_data = current_rss()
    stage("data")
    Jt = DenseJacobian(J)  # J is a view of a (n, N, m) tensor: no copy
    stage("jacobian")

    def fit(init, max_iter, callback=None):
        return cmtf_als(X, Y, Jt, R, "bspline", D, lam=1.0, init=init, max_iter=max_iter,
                        tol=0.0, dtype=dtype, callback=callback)

    # The set-up alone; its result (linear start and first C step) starts the timed sweeps,
    # so that the set-up is not paid twice.
    start = fit("linear", 0)
    setup_s = start.time_s
    stage("setup")

    stamps = []
    t0 = time.perf_counter()
    res = fit(start.model, sweeps, lambda info: stamps.append(time.perf_counter()))
    intervals = np.diff([t0, *stamps])
    sweep_times = intervals[1:]  # the first one is a warm-up (and includes a light set-up)
    stage("sweeps")

    # The matrix product of the size of J V, on J's own storage (no second J in memory).
    A = J.permute(0, 2, 1).reshape(n * N, m)
    assert A.data_ptr() == J.data_ptr(), "the (n N, m) matrix must be a view of J"
    B = torch.randn(m, R, generator=torch.Generator().manual_seed(seed + 1), dtype=dtype)
    matmul_s = timeit(lambda: A @ B, repeat)
    stage("matmul")

    flops = 2.0 * n * N * m * R
    sweep_s = float(statistics.median(sweep_times)) if len(sweep_times) else float("nan")
    j_bytes = J.numel() * J.element_size()
    peak = max(peak_baseline, *stages.values())
    return {
        "torch_threads": torch.get_num_threads(),
        "J_bytes": j_bytes,
        "data_seconds": data_s,
        "setup_seconds": setup_s,
        "first_interval_seconds": float(intervals[0]) if len(intervals) else None,
        "sweep_seconds": sweep_s,
        "sweep_seconds_all": [float(t) for t in sweep_times],
        "matmul_seconds": matmul_s,
        "matmul_gflops": flops / matmul_s / 1e9,
        "sweep_in_matmuls": sweep_s / matmul_s,
        "n_iter": int(res.n_iter),
        "stop_reason": res.stop_reason,
        "rss_baseline_bytes": rss_baseline,
        "peak_rss_baseline_bytes": peak_baseline,
        "rss_after_data_bytes": rss_data,
        "peak_reset_per_stage": resettable,
        "peak_rss_stages_bytes": stages,
        "peak_stage": max(stages, key=stages.get),
        "peak_rss_bytes": peak,
        "peak_rss_above_baseline_bytes": peak - rss_baseline,
        "peak_above_baseline_over_J": (peak - rss_baseline) / j_bytes,
    }


def run_point(point: dict, args: argparse.Namespace) -> dict:
    """Measure ``point`` in a fresh interpreter; the result, or the reason it failed."""
    spec = {"point": point, "threads": args.threads, "sweeps": args.sweeps,
            "repeat": args.repeat, "seed": args.seed}
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(args.threads)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(command, check=False, capture_output=True, text=True, env=env,
                              timeout=args.point_timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {args.point_timeout} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"status": "failed", "wall_seconds": wall,
                "reason": f"exit code {proc.returncode}: " + " | ".join(tail)}
    return {"status": "ok", "wall_seconds": wall, **json.loads(lines[-1][len(RESULT_MARK):])}


# ---------------------------------------------------------------------------------------
# Analysis.


def point_key(p: dict) -> tuple:
    return (p["m"], p["n"], p["N"], p["R"], p["D"], p["dtype"], p["threads"])


def loglog_slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than two distinct x)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a and b and a > 0 and b > 0]
    if len({a for a, _ in pairs}) < 2:
        return None
    lx, ly = np.log([a for a, _ in pairs]), np.log([b for _, b in pairs])
    return float(np.polyfit(lx, ly, 1)[0])


def sweep_points(points: list[dict], base: dict, factor: str, values: list[int],
                 threads: int | None = None) -> list[dict]:
    """The measured points of the sweep of ``factor`` (other factors at the base), in order;
    with ``threads``, only the points measured on that many threads (a file may hold the
    points of runs with other ``--threads``, which must not enter this run's slopes)."""
    out = []
    for v in values:
        want = {**base, factor: v}
        for p in points:
            if (p["status"] == "ok" and all(p[k] == want[k] for k in ("m", "n", "N", "R", "D"))
                    and (threads is None or p["threads"] == threads)):
                out.append(p)
                break
    return out


def analyse(points: list[dict], base: dict, sweeps: dict, mem: dict,
            threads: int | None = None) -> tuple[dict, dict]:
    """Log-log slopes per sweep and the memory limit fitted along the N sweep (on the points
    measured on ``threads`` threads, when given)."""
    quantities = ("sweep_seconds", "setup_seconds", "matmul_seconds",
                  "peak_rss_above_baseline_bytes")
    summary = {}
    for factor in FACTORS:
        pts = sweep_points(points, base, factor, sweeps[factor], threads)
        x = [p[factor] for p in pts]
        summary[factor] = {
            "values": sweeps[factor],
            "measured": x,
            "slopes": {q: loglog_slope(x, [p[q] for p in pts]) for q in quantities},
            "sweep_in_matmuls": [p["sweep_in_matmuls"] for p in pts],
        }

    pts = sweep_points(points, base, "N", sweeps["N"], threads)
    limit = {"ram_bytes": mem["MemTotal"], "mem_available_at_start_bytes": mem["MemAvailable"],
             "m": base["m"], "n": base["n"], "R": base["R"], "D": base["D"],
             "J_bytes_per_sample": 8 * base["m"] * base["n"],
             "bytes_per_sample_fitted": None, "intercept_bytes": None,
             "max_N_estimate": None, "max_N_available_estimate": None,
             "model": "peak_rss_bytes = intercept + bytes_per_sample * N (least squares)",
             "from_N": [p["N"] for p in pts],
             "peak_stages": [p.get("peak_stage") for p in pts]}
    if len({p["N"] for p in pts}) >= 2:
        slope, intercept = np.polyfit([p["N"] for p in pts], [p["peak_rss_bytes"] for p in pts], 1)
        limit["bytes_per_sample_fitted"] = float(slope)
        limit["intercept_bytes"] = float(intercept)
        # Peak RSS comes in kB pages: under a byte per sample it did not grow with N (a
        # tiny problem, where the interpreter dominates), and RAM sets no limit on N.
        if slope >= 1.0:
            for name, ram in (("max_N_estimate", mem["MemTotal"]),
                              ("max_N_available_estimate", mem["MemAvailable"])):
                if ram is not None:
                    limit[name] = max(int((ram - intercept) // slope), 0)
    return summary, limit


def gib(b: float | None) -> str:
    return "?" if b is None else f"{b / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: results/bench_scaling.json; with --quick, "
                        "results/bench_scaling_quick.json)")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per point")
    parser.add_argument("--sweeps", type=int, default=4,
                        help="sweeps per run (the first is not timed)")
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats of the matmul")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=int, nargs=5, metavar=("m", "n", "N", "R", "D"),
                        help="base point (default: the CNN head, 3136 10 5000 12 8)")
    for factor in FACTORS:
        parser.add_argument(f"--{factor}", type=int, nargs="+", dest=f"sweep_{factor}",
                            help=f"values of {factor} swept around the base")
    parser.add_argument("--point-timeout", type=float, default=900.0,
                        help="seconds before a point's subprocess is stopped")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        spec = json.loads(args.worker)
        out = measure_point(spec["point"], spec["threads"], spec["sweeps"], spec["repeat"],
                            spec["seed"])
        print(RESULT_MARK + json.dumps(out), flush=True)
        return 0

    if args.sweeps < 2:
        parser.error(f"--sweeps must be >= 2 (the first sweep is not timed), got {args.sweeps}")
    if args.out is None:
        args.out = DEFAULT_OUT.with_name("bench_scaling_quick.json") if args.quick else DEFAULT_OUT
    base = dict(QUICK_BASE if args.quick else FULL_BASE)
    if args.base:
        base = dict(zip(("m", "n", "N", "R", "D"), args.base, strict=True))
    sweeps = {f: list(QUICK_SWEEPS[f] if args.quick else FULL_SWEEPS[f]) for f in FACTORS}
    for f in FACTORS:
        if getattr(args, f"sweep_{f}"):
            sweeps[f] = getattr(args, f"sweep_{f}")

    # The distinct points of the three sweeps (the base point is shared).
    grid = []
    for f in FACTORS:
        for v in sweeps[f]:
            p = {**base, f: v, "dtype": "float64", "threads": args.threads}
            if point_key(p) not in {point_key(q) for q in grid}:
                grid.append(p)

    mem = meminfo()
    result = {"points": []}
    if args.out.exists() and not args.fresh:
        result = json.loads(args.out.read_text())
        # A point is keyed by its sizes and threads only: its measurement settings must be
        # those of this run, or the file would describe points it does not hold.
        before = result.get("settings", {})
        now = {"sweeps": args.sweeps, "repeat": args.repeat, "seed": args.seed}
        other = {k: (before[k], v) for k, v in now.items() if k in before and before[k] != v}
        if other:
            parser.error(f"{args.out} holds points measured with other settings ("
                         + ", ".join(f"--{k} {a}, now {b}" for k, (a, b) in other.items())
                         + "): pass --fresh to start over or --out to write elsewhere")
    done = {point_key(p) for p in result["points"] if p.get("status") == "ok"}
    result.update({
        "benchmark": "bench_scaling",
        # This process computes nothing: the threads are those of the points' subprocesses.
        "machine": {**machine_description(), "threads": args.threads,
                    "mem_total_bytes": mem["MemTotal"],
                    "mem_available_at_start_bytes": mem["MemAvailable"]},
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"quick": args.quick, "threads": args.threads, "sweeps": args.sweeps,
                     "repeat": args.repeat, "seed": args.seed, "dtype": "float64",
                     "basis": "bspline", "init": "linear", "lam": 1.0, "base": base,
                     "sweeps_values": sweeps, "memory_guard_fraction": MEMORY_GUARD},
        "note": "wall-clock times; the machine may be shared with other processes",
    })

    def record(entry: dict) -> None:
        result["points"] = [q for q in result["points"] if point_key(q) != point_key(entry)]
        result["points"].append(entry)
        result["scaling"], result["limit"] = analyse(result["points"], base, sweeps, mem,
                                                      args.threads)
        write_json(args.out, result)

    start = time.perf_counter()
    for i, p in enumerate(grid, 1):
        label = (f"[{i}/{len(grid)}] m={p['m']} n={p['n']} N={p['N']} R={p['R']} D={p['D']}")
        if point_key(p) in done:
            print(f"{label}: already measured, skipped", flush=True)
            continue
        j_bytes = 8 * p["n"] * p["m"] * p["N"]
        available = meminfo()["MemAvailable"]
        if available is not None and j_bytes > MEMORY_GUARD * available:
            entry = {**p, "status": "skipped", "J_bytes": j_bytes,
                     "reason": f"J needs {gib(j_bytes)}, more than {MEMORY_GUARD:g} of the "
                               f"{gib(available)} available"}
            record(entry)
            print(f"{label}: skipped ({entry['reason']})", flush=True)
            continue
        entry = {**p, **run_point(p, args)}
        record(entry)
        if entry["status"] == "ok":
            print(f"{label}: sweep {entry['sweep_seconds']:.3f} s "
                  f"({entry['sweep_in_matmuls']:.2f} matmuls of {entry['matmul_seconds']:.3f} s, "
                  f"{entry['matmul_gflops']:.1f} GFLOP/s), set-up {entry['setup_seconds']:.2f} s, "
                  f"J {gib(entry['J_bytes'])}, peak {gib(entry['peak_rss_bytes'])} "
                  f"(+{gib(entry['peak_rss_above_baseline_bytes'])}, {entry['peak_stage']}), "
                  f"wall {entry['wall_seconds']:.1f} s", flush=True)
        else:
            print(f"{label}: FAILED ({entry['reason']})", flush=True)

    result["scaling"], result["limit"] = analyse(result["points"], base, sweeps, mem,
                                                  args.threads)
    result["wall_seconds_this_run"] = time.perf_counter() - start
    write_json(args.out, result)
    for f in FACTORS:
        s = result["scaling"][f]["slopes"]
        text = ", ".join(f"{q.removesuffix('_seconds').removesuffix('_bytes')} "
                         f"{'?' if v is None else f'{v:.2f}'}" for q, v in s.items())
        print(f"log-log slopes in {f}: {text}", flush=True)
    lim = result["limit"]
    per = lim["bytes_per_sample_fitted"]
    print(f"limit: RAM {gib(lim['ram_bytes'])}, "
          f"{'?' if per is None else f'{per / 1e3:.1f} kB'} per sample "
          f"(J alone {lim['J_bytes_per_sample'] / 1e3:.1f} kB) -> N <= {lim['max_N_estimate']} "
          f"for m={lim['m']}, n={lim['n']}", flush=True)
    print(f"wrote {args.out} ({result['wall_seconds_this_run']:.0f} s)", flush=True)
    failed = [p for p in result["points"] if p.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
