"""Every way of compressing the reference CNN's fully connected part, at equal budgets.

The span ``fc1 -> relu3 -> fc2`` (3136 -> 128 -> 10, 402,826 parameters) of the pretrained
reference CNN is replaced, at the parameter budgets of flexible layers with ``R`` = 4, 8,
12 and 16 branches (``D = 8``), by:

* CMTF-ALS flexible layers (λ = 100, linear start, 30 sweeps), one per basis
  (B-splines, Chebyshev polynomials, hinges; monomials and Legendre polynomials span the
  same functions as Chebyshev polynomials of the same degree);
* the same architecture fitted by the structured CPD (λ = 0), by an outputs-only fit
  (λ = 10⁶: the Jacobian term weighs a millionth of the output term), and by the
  first-order decoupling of Dreesen et al. (CPD of the Jacobian tensor, then the branches);
* the same architecture trained by Adam on output distillation from the same start;
* a projected Kolmogorov-Arnold layer (linear projection to ``w`` inputs, then a KAN layer
  with B-spline edges), started from the best rank-``w`` linear map, trained by Adam;
* truncated SVD of fc1, a reduced-rank linear replacement of the span, and the
  tensorial forms (reshaped CP, Tucker, tensor train) of fc1, initialised by decomposing
  fc1 and trained by distillation of fc1's outputs.

Every method then gets the same fine-tuning: one epoch of Adam (cross-entropy, one-cycle
schedule, lr 1e-3) on the 60,000 training images, through the replacement only (the
convolutional features are computed once). Reported per method and budget: parameters,
test accuracy before and after fine-tuning, fit time, fine-tuning time and inference time
(batch 256, one thread).

Time to accuracy (R = 12, B-splines): CMTF-ALS against Adam on the same model, the same
samples and the same start (the linear start, then a seeded random one), Adam on the
outputs only and on the CMTF cost itself, at two learning rates each; every run gets the
same wall time (``--tta-time-limit``; ALS also stops after ``--tta-sweeps``); the test
accuracy is recorded after every sweep / epoch (the evaluation time is not charged to the
solver).

Results go to ``benchmarks/results/bench_compare.json``; the run is resumable (finished
entries are kept, ``--fresh`` starts over; other ``--tta-*`` settings redo the
time-to-accuracy runs only).

Usage::

    python benchmarks/bench_compare.py            # full run: the entries about 35 minutes
                                                  # on 2 cores, the races 46 minutes more
    python benchmarks/bench_compare.py --quick    # ranks 4 and 8, short runs
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from results_io import machine_description, write_json
from torch import nn

from tenflex import zoo
from tenflex.fit import cmtf_als, decouple_cpd
from tenflex.gradfit import fit_by_gradient
from tenflex.model import DecoupledFunction
from tenflex.nn.baselines import LinearReplacement, reduced_rank_regression
from tenflex.nn.compress import count_parameters
from tenflex.nn.compress_tnn import compress_layer, plan_layer, time_forward
from tenflex.nn.flexible import FlexibleLayer
from tenflex.nn.kan import ProjectedKAN, kan_width_for_budget
from tenflex.nn.lowrank import SVDLinear
from tenflex.nn.surgery import resolve_span
from tenflex.sampling import sample_function

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_compare.json"
SPAN = ("fc1", "fc2")
#: The two time-to-accuracy comparisons: the start they share, and their key in the result.
TTA_KEYS = {"linear": "time_to_accuracy", "random": "time_to_accuracy_random"}

#: Every method of the comparison, with the family it belongs to (for the plot legend).
METHODS = {
    "cmtf-bspline": "CMTF-ALS flexible layer",
    "cmtf-chebyshev": "CMTF-ALS flexible layer",
    "cmtf-hinge": "CMTF-ALS flexible layer",
    "structured-cpd": "structured CPD (λ = 0)",
    "outputs-only": "outputs-only ALS (λ = 1e6)",
    "dreesen": "Dreesen first-order decoupling",
    "gd-flexible": "flexible layer trained by Adam",
    "kan": "projected KAN (B-spline edges)",
    "svd": "truncated SVD of fc1",
    "linear": "reduced-rank linear map",
    "rcp": "reshaped CP of fc1 (TNN)",
    "rtk": "reshaped Tucker of fc1 (TNN)",
    "rtt": "reshaped tensor train of fc1 (TNN)",
}


def flexible_parameters(rank: int, m: int, n: int, D: int) -> int:
    """``W, V, C, b`` of a flexible layer."""
    return rank * (n + m + D) + n


class Workbench:
    """The pretrained span, its features on MNIST and the samples every method fits."""

    def __init__(self, n_samples: int, seed: int) -> None:
        model = zoo.pretrained("reference_cnn", progress=True)
        self.model_parameters = count_parameters(model)
        span = resolve_span(model, SPAN)
        self.span = span.module(model).eval()
        self.fc1, self.fc2 = model.fc1, model.fc2
        self.span_parameters = count_parameters(self.span)
        prefix = span.prefix(model).eval()
        train_images, self.train_labels = zoo.mnist_tensors("train")
        test_images, self.test_labels = zoo.mnist_tensors("test")
        with torch.no_grad():
            # The convolutional features never change: compute them once (float32).
            self.train_features = torch.cat([prefix(b) for b in train_images.split(2000)])
            self.test_features = torch.cat([prefix(b) for b in test_images.split(2000)])
        self.reference_accuracy = zoo.evaluate(self.span, self.test_features, self.test_labels)
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train_images), generator=generator)[:n_samples]
        t0 = time.perf_counter()
        samples = sample_function(self.span, self.train_features[idx], progress=True)
        self.sampling_s = time.perf_counter() - t0
        self.X, self.Y, self.J = samples.X, samples.Y, samples.J
        self.test_x64 = self.test_features.double()
        self.m, self.n = self.X.shape[1], self.Y.shape[1]

    def accuracy(self, replacement: nn.Module) -> float:
        dtype = _dtype(replacement)
        x = self.test_x64 if dtype == torch.float64 else self.test_features.to(dtype)
        return zoo.evaluate(replacement, x, self.test_labels)

    def finetune(self, replacement: nn.Module, epochs: int, seed: int) -> tuple[nn.Module, float]:
        tuned = copy.deepcopy(replacement).float()
        t0 = time.perf_counter()
        zoo.train(tuned, (self.train_features, self.train_labels), epochs=epochs, lr=1e-3,
                  batch_size=128, seed=seed, progress=False)
        return tuned.eval(), time.perf_counter() - t0

    def inference_ms(self, replacement: nn.Module) -> float:
        with zoo.torch_threads(1), torch.no_grad():
            module = copy.deepcopy(replacement).float()
            return 1e3 * time_forward(module, self.test_features[:256])


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _test_accuracy_of_state(bench: Workbench, basis, info: dict) -> float:
    """Test accuracy of ``b + W g(V^T x)`` from a CMTF-ALS callback's parameters."""
    model = DecoupledFunction(info["W"], info["V"], info["C"], info["b"], basis)
    return bench.accuracy(FlexibleLayer.from_decoupled(model))


def fit_method(bench: Workbench, method: str, rank: int, args) -> tuple[nn.Module, dict]:
    """Build the replacement of the span for ``method`` at the budget of rank ``rank``."""
    m, n, D = bench.m, bench.n, args.n_functions
    budget = flexible_parameters(rank, m, n, D)
    X, Y, J = bench.X, bench.Y, bench.J
    details: dict = {}
    t0 = time.perf_counter()
    cmtf = {"max_iter": args.max_iter, "seed": args.seed, "init": "linear"}
    if method.startswith("cmtf-") or method in ("structured-cpd", "outputs-only"):
        basis = method.removeprefix("cmtf-") if method.startswith("cmtf-") else "bspline"
        lam = {"structured-cpd": 0.0, "outputs-only": 1e6}.get(method, args.lam)
        fit = cmtf_als(X, Y, J, rank, basis, D, lam=lam, **cmtf)
        replacement = FlexibleLayer.from_decoupled(fit.model)
        details.update(lam=lam, basis=basis, n_iter=fit.n_iter,
                       relative_error_output=fit.relative_error_output,
                       relative_error_jacobian=fit.relative_error_jacobian)
    elif method == "dreesen":
        fit = decouple_cpd(X, Y, J, rank, "bspline", D, n_starts=1, seed=args.seed,
                           n_iter_max=args.cpd_iter)
        replacement = FlexibleLayer.from_decoupled(fit.model)
        details.update(basis="bspline", relative_error_output=fit.relative_error_output,
                       relative_error_jacobian=fit.relative_error_jacobian)
    elif method == "gd-flexible":
        start = cmtf_als(X, Y, J, rank, "bspline", D, lam=args.lam, **{**cmtf, "max_iter": 0})
        replacement = FlexibleLayer.from_decoupled(start.model)
        history = fit_by_gradient(replacement, X, Y, epochs=args.gd_epochs, lr=args.gd_lr,
                                  batch_size=args.gd_batch, seed=args.seed,
                                  time_limit=args.gd_time_limit)
        details.update(basis="bspline", epochs=history.n_epochs, stop=history.stop_reason,
                       final_cost=float(history.cost[-1]))
    elif method == "kan":
        width = kan_width_for_budget(m, n, D, budget)
        r = min(width, n)  # a linear map has rank at most n
        P, U, b = reduced_rank_regression(X, Y, r)
        if width > r:  # further inputs of the KAN start random, their edges at zero
            g = torch.Generator().manual_seed(args.seed)
            P = torch.cat([P, torch.randn(m, width - r, generator=g, dtype=P.dtype) / m**0.5], 1)
            U = torch.cat([U, torch.zeros(n, width - r, dtype=U.dtype)], 1)
        replacement = ProjectedKAN.from_linear(P, U, b, basis="bspline", n_functions=D, x=X)
        history = fit_by_gradient(replacement, X, Y, epochs=args.gd_epochs, lr=args.gd_lr,
                                  batch_size=args.gd_batch, seed=args.seed,
                                  time_limit=args.gd_time_limit)
        details.update(width=width, epochs=history.n_epochs, stop=history.stop_reason,
                       final_cost=float(history.cost[-1]))
    elif method == "svd":
        per_rank = bench.fc1.in_features + bench.fc1.out_features
        others = count_parameters(bench.fc2) + bench.fc1.out_features
        svd_rank = (budget - others) // per_rank
        replacement = nn.Sequential(SVDLinear.from_dense(bench.fc1, rank=svd_rank), nn.ReLU(),
                                    copy.deepcopy(bench.fc2))
        details.update(svd_rank=svd_rank)
    elif method == "linear":
        lin_rank = min((budget - n) // (m + n), m, n)
        P, U, b = reduced_rank_regression(X, Y, lin_rank)
        replacement = LinearReplacement(m, n, lin_rank).double()
        with torch.no_grad():
            replacement.project.weight.copy_(P.T)
            replacement.expand.weight.copy_(U)
            replacement.expand.bias.copy_(b)
        details.update(linear_rank=lin_rank)
    elif method in ("rcp", "rtk", "rtt"):
        fc1 = copy.deepcopy(bench.fc1).double()
        rate = (budget - count_parameters(bench.fc2)) / count_parameters(bench.fc1)
        plan = plan_layer(fc1, method, rate, name="fc1")
        layer = compress_layer(fc1, plan, seed=args.seed)
        layer.evaluation = "dense"  # trained through the formed kernel: fast on a CPU
        with torch.no_grad():
            target = fc1(X)
        history = fit_by_gradient(layer, X, target, epochs=args.gd_epochs, lr=args.gd_lr,
                                  batch_size=args.gd_batch, seed=args.seed,
                                  time_limit=args.gd_time_limit)
        replacement = nn.Sequential(layer, nn.ReLU(), copy.deepcopy(bench.fc2).double())
        details.update(ranks=list(plan.ranks), in_factors=list(plan.in_factors),
                       out_factors=list(plan.out_factors), rate=rate,
                       decomposition_error=plan.decomposition_error,
                       epochs=history.n_epochs, stop=history.stop_reason)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    fit_s = time.perf_counter() - t0
    details["fit_s"] = fit_s
    return replacement.eval(), details


def time_to_accuracy(bench: Workbench, args, start_kind: str = "linear") -> dict:
    """CMTF-ALS and Adam from the same start: test accuracy and cost against wall time.

    ``start_kind`` is the ``init`` of :func:`tenflex.fit.cmtf_als` that makes the common
    start: ``"linear"`` (the solver's default, already accurate) or ``"random"`` (seeded),
    from which both solvers have all the work to do.
    """
    X, Y, J, R, D = bench.X, bench.Y, bench.J, args.tta_rank, args.n_functions
    t0 = time.perf_counter()
    start = cmtf_als(X, Y, J, R, "bspline", D, lam=args.lam, init=start_kind, max_iter=0,
                     seed=args.seed)
    start_s = time.perf_counter() - t0
    basis = start.model.basis
    runs: dict = {}

    # ALS: wall time of the solver only (the callback's evaluation is subtracted).
    curve = {"time_s": [0.0], "accuracy": [bench.accuracy(FlexibleLayer.from_decoupled(
        start.model))], "cost": [float(start.cost[-1])]}
    excluded = [0.0]
    t_start = time.perf_counter()

    def on_sweep(info: dict) -> bool:
        t_eval = time.perf_counter()
        curve["time_s"].append(t_eval - t_start - excluded[0])
        curve["accuracy"].append(_test_accuracy_of_state(bench, basis, info))
        curve["cost"].append(float(info["cost"]))
        excluded[0] += time.perf_counter() - t_eval
        return curve["time_s"][-1] >= args.tta_time_limit  # the time Adam gets, as Adam

    cmtf_als(X, Y, J, R, basis, lam=args.lam, init=start.model, max_iter=args.tta_sweeps,
             tol=0.0, seed=args.seed, callback=on_sweep)
    runs["als"] = {**curve, "label": "CMTF-ALS"}

    def adam(with_jacobian: bool, lr: float) -> dict:
        layer = FlexibleLayer.from_decoupled(start.model)
        out = {"time_s": [], "accuracy": [], "cost": []}

        def on_epoch(info: dict) -> None:
            out["time_s"].append(info["time_s"])
            out["cost"].append(float(info["cost"]))
            out["accuracy"].append(bench.accuracy(info["layer"]))

        fit_by_gradient(layer, X, Y, J if with_jacobian else None, lam=args.lam,
                        epochs=10**6, lr=lr, batch_size=args.tta_batch, seed=args.seed,
                        time_limit=args.tta_time_limit, callback=on_epoch)
        what = "CMTF cost" if with_jacobian else "outputs only"
        return {**out, "label": f"Adam, {what}, lr {lr:g}", "lr": lr,
                "with_jacobian": with_jacobian}

    for with_jacobian in (False, True):
        for lr in args.tta_lrs:
            name = f"adam-{'cmtf' if with_jacobian else 'outputs'}-lr{lr:g}"
            runs[name] = adam(with_jacobian, lr)
            print(f"time-to-accuracy ({start_kind} start) {name}: best {max(runs[name]['accuracy']):.4f} "
                  f"after {runs[name]['time_s'][-1]:.0f} s", flush=True)

    return {"rank": R, "basis": "bspline", "lam": args.lam, "start": start_kind,
            "start_s": start_s, "batch_size": args.tta_batch,
            "time_limit_s": args.tta_time_limit, "als_max_sweeps": args.tta_sweeps,
            "als_time_limit_s": args.tta_time_limit, "runs": runs}


def _first_time(times: list[float], values: list[float], reached) -> float | None:
    return next((t for t, v in zip(times, values) if reached(v)), None)


def _race(als: dict, name: str, run: dict, what: str) -> dict:
    """When ALS first does as well as the final ``what`` ("accuracy", higher is better, or
    "cost", lower is better) of the gradient ``run``, and whether that is a fifth of the time.
    """
    target = run[what][-1]
    reached = (lambda v: v >= target) if what == "accuracy" else (lambda v: v <= target)
    t_grad = _first_time(run["time_s"], run[what], reached)
    t_als = _first_time(als["time_s"], als[what], reached)
    return {
        "gradient_run": name, f"gradient_{what}": target, "gradient_time_s": t_grad,
        "als_time_s": t_als, f"als_final_{what}": als[what][-1],
        f"start_{what}": als[what][0], "als_stopped_s": als["time_s"][-1],
        # ALS must have got there, or have run for a fifth of the gradient time.
        "decided": t_grad > 0 and (t_als is not None or als["time_s"][-1] >= t_grad / 5),
        "speedup": None if not t_als else t_grad / t_als,
        "target_one_fifth": t_als is not None and t_grad > 0 and t_als <= t_grad / 5}


def time_to_accuracy_summary(tta: dict) -> dict:
    """When CMTF-ALS reaches what gradient training reached, in test accuracy and in cost.

    * Test accuracy: the reference is the best *final* accuracy of the Adam runs (a single
      test-set reading fluctuates by a few images; the maximum of a noisy curve overstates
      what the training reached), first reached at ``gradient_time_s``.
    * Fit accuracy: the CMTF cost, which ALS and the Adam runs on the CMTF cost both
      minimise; the reference is the lowest final cost of those runs.

    ``target_one_fifth``: ALS gets there in at most a fifth of the gradient run's time.
    ``decided`` is False when the comparison says nothing: the start is already as accurate
    as the reference (``gradient_time_s`` 0), or ALS stopped (after its sweeps) before a
    fifth of the gradient time without getting there.
    """
    runs = tta["runs"]
    adam = [k for k in runs if k != "als"]
    name = max(adam, key=lambda k: runs[k]["accuracy"][-1])
    out = {"test_accuracy": _race(runs["als"], name, runs[name], "accuracy")}
    same_cost = [k for k in adam if runs[k].get("with_jacobian")]
    if same_cost:
        name = min(same_cost, key=lambda k: runs[k]["cost"][-1])
        out["cost"] = _race(runs["als"], name, runs[name], "cost")
    return out


def _entry_settings(settings: dict) -> dict:
    """The settings the per-budget entries depend on (all but the time-to-accuracy ones)."""
    return {k: v for k, v in settings.items() if not k.startswith("tta_")}


def pareto_front(points: list[tuple[int, float, str]]) -> set[str]:
    """Names of the points no other point beats (fewer or equal parameters, higher accuracy)."""
    front = set()
    for p, a, name in points:
        dominated = any((q <= p and b > a) or (q < p and b >= a) for q, b, _ in points)
        if not dominated:
            front.add(name)
    return front


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 12, 16])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--n-functions", type=int, default=8)
    parser.add_argument("--n-samples", type=int, default=5000)
    parser.add_argument("--lam", type=float, default=100.0)
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--cpd-iter", type=int, default=100,
                        help="CPD iterations of the Dreesen decoupling")
    parser.add_argument("--gd-epochs", type=int, default=200)
    parser.add_argument("--gd-lr", type=float, default=1e-3)
    parser.add_argument("--gd-batch", type=int, default=250)
    parser.add_argument("--gd-time-limit", type=float, default=120.0)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--tta-rank", type=int, default=12)
    parser.add_argument("--tta-sweeps", type=int, default=2000,
                        help="most sweeps of ALS in the time-to-accuracy runs (it stops at "
                             "--tta-time-limit too)")
    parser.add_argument("--tta-lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--tta-batch", type=int, default=500)
    parser.add_argument("--tta-time-limit", type=float, default=180.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="ranks 4 and 8, short runs")
    parser.add_argument("--fresh", action="store_true", help="ignore earlier results")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    # A rank or method given twice would be fitted twice and entered twice.
    args.ranks, args.methods = list(dict.fromkeys(args.ranks)), list(dict.fromkeys(args.methods))
    if min(args.ranks) < 1:
        parser.error(f"--ranks must be >= 1, got {min(args.ranks)}")
    if args.quick:
        args.ranks, args.n_samples, args.max_iter, args.cpd_iter = [4, 8], 1000, 5, 20
        args.gd_epochs, args.gd_time_limit, args.tta_rank, args.tta_sweeps = 5, 10.0, 4, 3
        args.tta_time_limit, args.tta_lrs = 5.0, [1e-3]
        if args.out == DEFAULT_OUT:
            args.out = DEFAULT_OUT.with_name("bench_compare_quick.json")

    result = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "fresh", "methods")}
    before = result.get("settings", settings)
    if _entry_settings(before) != _entry_settings(settings):
        raise SystemExit(f"{args.out} was made with other settings; rerun with --fresh "
                         f"(was {result['settings']}, now {settings})")
    if before != settings:  # only time-to-accuracy settings changed: redo those runs
        for key in TTA_KEYS.values():
            result.pop(key, None)
    result.setdefault("entries", [])
    result.update({"benchmark": "bench_compare", "settings": settings, "methods": METHODS})
    done = {(e["method"], e["budget_rank"]) for e in result["entries"]}
    jobs = [(r, meth) for r in args.ranks for meth in args.methods if (meth, r) not in done]
    if jobs or any(key not in result for key in (*TTA_KEYS.values(), "reference")):
        run_jobs(result, jobs, args)
    finish(result, args)
    return 0


def run_jobs(result: dict, jobs: list[tuple[int, str]], args) -> None:
    """Fit, fine-tune and time every (budget, method) of ``jobs``, then the time to accuracy.

    The reference (the uncompressed span, its timing) and the date, command and machine are
    (re)written only with new entries, so that they describe the entries' measurements; a
    time-to-accuracy comparison carries its own date.
    """
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    bench = Workbench(args.n_samples, args.seed)
    if jobs or "reference" not in result:
        result.update({"machine": machine_description(), "date": now,
                       "command": " ".join([Path(sys.executable).name, *sys.argv])})
        result["reference"] = {
            "model_parameters": bench.model_parameters, "span": list(SPAN),
            "span_parameters": bench.span_parameters, "accuracy": bench.reference_accuracy,
            "inference_ms": bench.inference_ms(bench.span), "sampling_s": bench.sampling_s,
            "m": bench.m, "n": bench.n, "N": args.n_samples,
            "jacobian_bytes": bench.J.numel() * 8,
        }
        write_json(args.out, result)

    for i, (rank, method) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {method} at the budget of R = {rank}", flush=True)
        replacement, details = fit_method(bench, method, rank, args)
        params = count_parameters(replacement)
        budget = flexible_parameters(rank, bench.m, bench.n, args.n_functions)
        if params > budget:  # every method must fit the budget
            raise RuntimeError(f"{method} uses {params} parameters, over the budget {budget}")
        accuracy = bench.accuracy(replacement)
        tuned, finetune_s = bench.finetune(replacement, args.finetune_epochs, args.seed)
        entry = {
            "method": method, "family": METHODS[method], "budget_rank": rank,
            "budget_parameters": budget, "parameters": params,
            "parameters_model": bench.model_parameters - bench.span_parameters + params,
            "accuracy": accuracy, "accuracy_finetuned": bench.accuracy(tuned),
            "finetune_s": finetune_s, "inference_ms": bench.inference_ms(replacement),
            **details,
        }
        entry["fraction_kept"] = entry["parameters_model"] / bench.model_parameters
        result["entries"].append(entry)
        write_json(args.out, result)
        print(json.dumps({k: entry[k] for k in ("method", "budget_rank", "parameters",
                                                "accuracy", "accuracy_finetuned", "fit_s")}),
              flush=True)

    for start_kind, key in TTA_KEYS.items():
        if key not in result:
            result[key] = {**time_to_accuracy(bench, args, start_kind), "date": now}
            write_json(args.out, result)


def finish(result: dict, args) -> None:
    """The targets, from the entries and the time-to-accuracy curves in ``result``."""

    # Targets: CMTF on the Pareto front at every budget (before and after fine-tuning).
    cmtf = [m for m in METHODS if m.startswith("cmtf-")]
    on_front, fronts = {}, {}
    for column in ("accuracy", "accuracy_finetuned"):
        points = [(e["parameters"], e[column], f"{e['method']}@{e['budget_rank']}")
                  for e in result["entries"]]
        front = pareto_front(points)
        fronts[column] = sorted(front)
        on_front[column] = {str(r): any(f"{m}@{r}" in front for m in cmtf) for r in args.ranks}
    result["pareto_front"] = fronts  # "method@budget_rank" of the points on each front
    decided = {}
    for start_kind, key in TTA_KEYS.items():
        tta = time_to_accuracy_summary(result[key])
        result[key] = {k: v for k, v in result[key].items()
                       if k in ("rank", "basis", "lam", "start", "start_s", "batch_size",
                                "time_limit_s", "als_max_sweeps", "als_time_limit_s", "runs",
                                "date")}
        result[key]["summary"] = tta
        decided.update({f"{start_kind} start, {what}": tta[what]["target_one_fifth"]
                        for what in tta if tta[what]["decided"]})
    result["targets"] = {
        "cmtf_on_pareto_front": on_front,
        # Both before and after the common fine-tuning, at every budget.
        "cmtf_on_pareto_front_at_every_budget": all(
            all(column.values()) for column in on_front.values()),
        # Only where the start is not already as good as the reference of the comparison.
        "als_within_one_fifth_of_gradient_time": decided,
    }
    write_json(args.out, result)
    print(json.dumps(result["targets"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
