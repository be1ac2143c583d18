"""The factored Jacobian tensor of a span that starts with a fully connected layer, against the
dense one; writes a JSON result.

The reference CNN's fully connected part (``fc1 -> relu3 -> fc2``) starts with ``fc1``, which
maps ``m = 3136`` features to ``h = 128``; its Jacobians are ``J_k = K_k A`` with ``A`` the
weight of ``fc1``. At each number of sampling points ``N`` this script samples the span the
two ways ``tenflex.nn.compress`` can (``jacobian="dense"``: the ``(n, m, N)`` tensor;
``"factored"``: ``K`` of shape ``(n, h, N)`` and ``A``), and records

* the time of the sampling and the bytes each form stores;
* the median time of the solver's two expensive products with each, ``contract_input``
  (``J V``) and the mode-2 MTTKRP, at each rank ``R``, and their relative difference.

The dense tensor is sampled only up to ``--dense-max`` points (it takes ``8 n m N`` bytes:
4.7 GiB at N = 20 000).

Usage::

    python benchmarks/bench_factored.py            # N 5000 20000 58000, R 4 8 12 16 32
    python benchmarks/bench_factored.py --quick    # an untrained network on the digits set
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_cmtf import timeit
from results_io import machine_description, write_json

from tenflex import zoo
from tenflex.cpd import FactoredJacobian
from tenflex.nn.compress import _linear_first_stage, _sample_span
from tenflex.nn.surgery import resolve_span

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_factored.json"
SPAN = ("fc1", "fc2")


def stored_bytes(J) -> int:
    """Bytes of the tensors a Jacobian form keeps (float64)."""
    n, m, N = J.shape
    if isinstance(J, FactoredJacobian):  # K and A
        return 8 * (n * J.K.m * N + J.A.numel())
    return 8 * n * m * N


def products(J, R: int, repeat: int, seed: int = 1) -> dict:
    """Median times of ``contract_input`` and ``mttkrp_input`` at rank ``R``, and their values."""
    n, m, N = J.shape
    gen = torch.Generator().manual_seed(seed)
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    W = torch.randn(n, R, generator=gen, dtype=torch.float64)
    H = torch.randn(N, R, generator=gen, dtype=torch.float64)
    return {
        "contract_input": (timeit(lambda: J.contract_input(V), repeat), J.contract_input(V)),
        "mttkrp_input": (timeit(lambda: J.mttkrp_input(W, H), repeat), J.mttkrp_input(W, H)),
    }


def run(model, images: torch.Tensor, sizes: list[int], ranks: list[int], dense_max: int,
        repeat: int) -> list[dict]:
    span = resolve_span(model, SPAN)
    module = span.module(model)
    with torch.no_grad():
        warm = span.prefix(model)(images[:8])
    warm_stage = _linear_first_stage(module, tuple(warm.shape[1:]))
    for stage in (warm_stage, None):  # torch.func's first calls are slow: not timed
        _sample_span(module, stage, warm, False, span.label)
    entries = []
    for N in sizes:
        with torch.no_grad():
            X_in = span.prefix(model)(images[:N])
        stage = _linear_first_stage(module, tuple(X_in.shape[1:]))
        forms = {}
        sampling = {}
        for form in ("factored", "dense") if N <= dense_max else ("factored",):
            t0 = time.perf_counter()
            _, _, forms[form] = _sample_span(module, stage if form == "factored" else None,
                                             X_in, False, span.label)
            sampling[form] = time.perf_counter() - t0
        entry = {"N": N, "shape": list(forms["factored"].shape), "h": int(stage[0].out_features),
                 "sampling_s": sampling,
                 "stored_bytes": {form: stored_bytes(J) for form, J in forms.items()},
                 "products": []}
        for R in ranks:
            timed = {form: products(J, R, repeat) for form, J in forms.items()}
            for name in ("contract_input", "mttkrp_input"):
                row = {"R": R, "product": name,
                       **{f"{form}_s": timed[form][name][0] for form in forms}}
                if "dense" in forms:
                    dense, factored = timed["dense"][name][1], timed["factored"][name][1]
                    row["relative_difference"] = float((dense - factored).norm() / dense.norm())
                entry["products"].append(row)
        entries.append(entry)
        summary = ", ".join(f"{form} {sampling[form]:.1f} s, "
                            f"{entry['stored_bytes'][form] / 2**20:.0f} MiB" for form in forms)
        print(f"N = {N}: sampling {summary}", flush=True)
        del forms
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 58000],
                        help="numbers of sampling points N")
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 12, 16, 32])
    parser.add_argument("--dense-max", type=int, default=20000,
                        help="largest N at which the dense tensor is sampled too")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per product")
    parser.add_argument("--quick", action="store_true",
                        help="an untrained reference CNN on the digits set, N 200 400, R 4 12")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="result file (default: results/bench_factored.json; with --quick "
                             "results/bench_factored_quick.json, git-ignored)")
    args = parser.parse_args(argv)
    if args.quick and args.out == DEFAULT_OUT:  # never over the committed result
        args.out = DEFAULT_OUT.with_name("bench_factored_quick.json")
    if min(args.sizes) < 1 or min(args.ranks) < 1 or args.repeat < 1:
        parser.error("--sizes, --ranks and --repeat must be >= 1")

    if args.quick:
        args.sizes, args.ranks, args.repeat = [200, 400], [4, 12], 2
        model = zoo.build_model("reference_cnn", seed=0).eval()
        images, _ = zoo.digits_tensors("train")
    else:
        model = zoo.pretrained("reference_cnn", progress=True)
        images, _ = zoo.mnist_tensors("train")
    if max(args.sizes) > len(images):
        parser.error(f"--sizes: at most {len(images)} training images")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    entries = run(model, images[order], args.sizes, args.ranks, args.dense_max, args.repeat)
    write_json(args.out, {
        "benchmark": "bench_factored",
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "span": list(SPAN),
        "entries": entries,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
