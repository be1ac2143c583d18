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

    loader = {"mnist": data.load_mnist, "fashion-mnist": data.load_fashion_mnist}[args.dataset]
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
    check.add_argument("dataset", nargs="?", default="mnist", choices=["mnist", "fashion-mnist"])
    check.set_defaults(func=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tenflex`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
