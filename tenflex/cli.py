"""The ``tenflex`` command line.

Run ``tenflex --help`` for the list of commands and ``tenflex COMMAND --help``
for the options of one command.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from tenflex import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions and where data is looked for."""
    import numpy
    import tensorly
    import torch

    from tenflex import data

    info = {
        "tenflex": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tensorly": tensorly.__version__,
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        "data_dirs": {name: [str(p) for p in data.data_dirs(name)]
                      for name in ("mnist", "fashion-mnist")},
    }
    print(json.dumps(info, indent=2))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    """Check that a data set loads; print its shapes or the error that says how to fetch it."""
    from tenflex import data

    loader = {"mnist": data.load_mnist, "fashion_mnist": data.load_fashion_mnist}[args.dataset]
    status = 0
    for split in ("train", "test"):
        try:
            images, labels = loader(split)
        except data.DataError as exc:
            print(f"{args.dataset} {split}: MISSING OR DAMAGED\n  {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{args.dataset} {split}: images {images.shape} {images.dtype}, "
              f"labels {labels.shape}, classes {sorted(set(labels.tolist()))}")
    return status


def _dataset_name(text: str) -> str:
    """``fashion-mnist`` (the data package's name) and ``fashion_mnist`` both name it."""
    return text.replace("-", "_")


def _parse_span(text: str):
    """``"fc1"`` -> "fc1"; ``"fc1:fc2"`` -> ("fc1", "fc2"); integers are indices."""
    parts = [int(p) if p.lstrip("-").isdigit() else p for p in text.split(":")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"span must be LAYER or FIRST:LAST, got {text!r}")


def _write_json(path: str | None, data: dict) -> None:
    text = json.dumps(data, indent=2, default=float)
    if path is None:
        print(text)
        return
    from tenflex.files import atomic_write

    atomic_write(path, lambda handle: handle.write(text + "\n"), mode="w")


def _cmd_train(args: argparse.Namespace) -> int:
    """Train (or load from the cache) a reference network and print its test accuracy."""
    from tenflex import zoo

    _, info = zoo.pretrained(args.model, dataset=args.dataset, epochs=args.epochs, seed=args.seed,
                             cache_dir=args.cache_dir, retrain=args.retrain, progress=True,
                             return_info=True)
    _write_json(args.report, info)
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    """Compress a span of a pretrained reference network with a flexible layer."""
    from tenflex import zoo
    from tenflex.nn.compress import compress, save_compressed

    model = zoo.pretrained(args.model, dataset=args.dataset, seed=args.model_seed, progress=True)
    train_images, train_labels = zoo.dataset_tensors(args.dataset, "train")
    test_images, test_labels = zoo.dataset_tensors(args.dataset, "test")
    finetune = None
    if args.finetune_epochs:
        finetune = {"scope": args.finetune_scope, "epochs": args.finetune_epochs,
                    "lr": args.finetune_lr, "train_labels": train_labels}
    fit_options = {"max_iter": args.max_iter}
    result = compress(model, args.span, train_images, rank=args.rank, basis=args.basis,
                      n_functions=args.n_functions, lam=args.lam, n_samples=args.n_samples,
                      test_data=(test_images, test_labels), fit_options=fit_options,
                      finetune=finetune, seed=args.seed, progress=True)
    base = {"model": args.model}
    save_compressed(args.out, result, base, finetuned=finetune is not None)
    report = result.report.to_dict()
    report["output_file"] = str(args.out)
    _write_json(args.report, report)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Test accuracy of a compressed model file or of a pretrained reference network."""
    from pathlib import Path

    from tenflex import zoo
    from tenflex.nn.compress import count_parameters, load_compressed

    if Path(args.model).suffix in (".pt", ".pth") or Path(args.model).exists():
        model, info = load_compressed(args.model)
        source = {"file": str(args.model), "span": info["span"]}
    else:
        model = zoo.pretrained(args.model, dataset=args.dataset, progress=True)
        source = {"model": args.model}
    images, labels = zoo.dataset_tensors(args.dataset, "test")
    result = {**source, "dataset": args.dataset, "parameters": count_parameters(model),
              "test_accuracy": zoo.evaluate(model, images, labels)}
    _write_json(args.report, result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenflex",
        description="Compress neural networks with flexible layers (CMTF-ALS) and tensor methods.",
    )
    parser.add_argument("--version", action="version", version=f"tenflex {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    info = commands.add_parser("info", help="versions of tenflex and its dependencies, data folders")
    info.set_defaults(func=_cmd_info)

    check = commands.add_parser("data", help="check that a data set is installed and readable")
    check.add_argument("dataset", nargs="?", default="mnist", type=_dataset_name,
                       choices=["mnist", "fashion_mnist"], help="mnist or fashion-mnist")
    check.set_defaults(func=_cmd_data)

    models = ["reference_cnn", "lenet5"]
    datasets = ["mnist", "fashion_mnist", "digits"]
    train = commands.add_parser("train", help="train a reference network (cached) and report it")
    train.add_argument("--model", default="reference_cnn", choices=models)
    train.add_argument("--dataset", default="mnist", type=_dataset_name, choices=datasets)
    train.add_argument("--epochs", type=int, default=None, help="override the default epochs")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cache-dir", default=None, help="where trained weights are kept")
    train.add_argument("--retrain", action="store_true", help="ignore a cached model")
    train.add_argument("--report", default=None, help="write the JSON report here")
    train.set_defaults(func=_cmd_train)

    comp = commands.add_parser("compress", help="replace a span of a network by a flexible layer")
    comp.add_argument("--model", default="reference_cnn", choices=models)
    comp.add_argument("--dataset", default="mnist", type=_dataset_name, choices=datasets)
    comp.add_argument("--span", type=_parse_span, default=("fc1", "fc2"),
                      help="LAYER or FIRST:LAST by name or index (default fc1:fc2)")
    comp.add_argument("--rank", type=int, required=True, help="branches R of the flexible layer")
    comp.add_argument("--basis", default="bspline",
                      choices=["monomial", "chebyshev", "legendre", "bspline", "hinge"])
    comp.add_argument("--n-functions", type=int, default=8, help="basis functions D per branch")
    comp.add_argument("--lam", type=float, default=100.0,
                      help="weight of the output term against the Jacobian term (default 100)")
    comp.add_argument("--n-samples", type=int, default=5000, help="sampling points N")
    comp.add_argument("--max-iter", type=int, default=30, help="ALS sweeps (default 30)")
    comp.add_argument("--finetune-epochs", type=int, default=0)
    comp.add_argument("--finetune-scope", default="layer", choices=["layer", "all"])
    comp.add_argument("--finetune-lr", type=float, default=1e-3)
    comp.add_argument("--seed", type=int, default=0,
                      help="seeds the sampling points, the fit and fine-tuning")
    comp.add_argument("--model-seed", type=int, default=0,
                      help="training seed of the pretrained network to compress (default 0, "
                      "as `tenflex train`; another seed trains and caches another network)")
    comp.add_argument("--out", required=True, help="compressed model file (.pt)")
    comp.add_argument("--report", default=None, help="write the JSON report here")
    comp.set_defaults(func=_cmd_compress)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a model file or network")
    evaluate.add_argument("model", help="a file written by `tenflex compress`, or a network name")
    evaluate.add_argument("--dataset", default="mnist", type=_dataset_name, choices=datasets)
    evaluate.add_argument("--report", default=None, help="write the JSON result here")
    evaluate.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tenflex`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        # The library's errors say what was expected and how to fix it: print the message
        # as argparse prints its own (no traceback), with its exit status.
        parser.exit(2, f"tenflex {args.command}: error: {exc}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
