"""Compress a pretrained sequential network by replacing a span of layers with a flexible layer.

The pipeline of Zniyed, Usevich, Miron and Brie (2021): run training images through the
layers before the span to get the span's inputs ``X``; compute the span's outputs ``Y`` and
Jacobians ``J`` there (:func:`tenflex.sampling.sample_function`); fit ``b + W g(Vᵀx)`` by
constrained CMTF-ALS (:func:`tenflex.fit.cmtf_als`); splice the resulting
:class:`~tenflex.nn.FlexibleLayer` into the network; evaluate; optionally fine-tune.

A span that starts with a fully connected layer ``x -> A x + c`` that narrows its input
(``h < m``) has Jacobians ``J_k = K_k A``; by default only the Jacobians ``K`` of the layers
after ``A`` are sampled, and the solver works with :class:`tenflex.cpd.FactoredJacobian`
(``h / m`` of the memory and of the products' cost).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tenflex.checks import all_finite, check_bool, check_seed, is_int
from tenflex.cpd import DenseJacobian, FactoredJacobian, JacobianTensor
from tenflex.files import atomic_write
from tenflex.metrics import relative_error
from tenflex.nn.fidelity import fidelity
from tenflex.nn.flexible import FlexibleLayer
from tenflex.nn.surgery import (
    Span,
    _kept_modules,
    check_materialized,
    flat_layers,
    resolve_span,
    span_inputs,
    span_shapes,
    splice,
)
from tenflex.subspace import active_subspace

__all__ = [
    "Compression",
    "CompressionReport",
    "compress",
    "count_parameters",
    "finetune_replacement",
    "load_compressed",
    "memory_bytes",
    "save_compressed",
]

#: How ``compress`` may hold the Jacobian tensor.
JACOBIAN_FORMS = ("auto", "dense", "factored")

# Fraction of the machine's memory the Jacobian tensor may take (the solver needs a few
# more arrays of the size of X besides J).
_MEMORY_FRACTION = 0.5


def _check_solver_memory(rank: int, n_functions: int, n_samples: int, jacobian_bytes: int,
                         available: int) -> None:
    """Refuse a rank whose CMTF-ALS sweeps would not fit in memory, before any work.

    The C step builds and factors an ``(R D) x (R D)`` float64 system: at its peak about five
    arrays of that size live at once, besides a few ``(N, R, D)`` basis arrays and the
    Jacobian tensor. Measured for R = 1000, D = 8, N = 1500 on the reference CNN's fully
    connected part: one sweep peaks 3.1 GiB above the loaded model; this estimate gives
    3.1 GiB (2.4 for the systems, 0.36 for the basis arrays, 0.35 for the Jacobian). The
    Jacobian alone is checked before (at most half of the memory), so ``budget >= 0`` here.
    """
    if not available:
        return
    rd = rank * n_functions
    solver_bytes = 8 * (5 * rd**2 + 4 * n_samples * rd)
    budget = _MEMORY_FRACTION * available - jacobian_bytes
    if solver_bytes <= budget:
        return
    # Largest R with 40 D^2 R^2 + 32 N D R <= budget.
    a, b = 40 * n_functions**2, 32 * n_samples * n_functions
    largest = int((-b + math.sqrt(b * b + 4 * a * max(budget, 0))) / (2 * a))
    raise ValueError(
        f"rank R = {rank} with D = {n_functions} basis functions needs about "
        f"{(solver_bytes + jacobian_bytes) / 2**30:.1f} GiB: each CMTF-ALS sweep solves an "
        f"(R D) x (R D) = {rd} x {rd} system next to the Jacobian tensor, more than half of "
        f"this machine's {available / 2**30:.1f} GiB; "
        + (f"use R <= {largest}" if largest >= 1 else "use fewer sampling points")
    )


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def memory_bytes() -> int:
    """Physical memory of this machine in bytes (0 if unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 0


@dataclass
class CompressionReport:
    """What a compression did and measured. All times in seconds, accuracies in [0, 1].

    ``accuracy_*``, ``test_fidelity`` and ``finetune`` are None when no test data /
    fine-tuning was given; ``subspace`` (``k``) and ``subspace_captured`` (the fraction of
    the sampled Jacobians' energy in the active subspace) None without a subspace.
    ``test_fidelity`` compares the compressed network with the original on the test images
    (:class:`tenflex.nn.fidelity.ClassifierFidelity` as a dict: agreement of their
    predictions, relative output error, images fixed and broken, McNemar p-value).
    Parameters are counted once each (a shared layer or tied weights once):
    ``parameters_span_before`` counts those that the splice removes, not the span's
    parameters that the rest of the model uses too (they stay), and
    ``parameters_model_after`` is the count of the compressed model.
    """

    span: list[str]
    input_shape: list[int]
    output_shape: list[int]
    rank: int
    basis: str
    n_functions: int
    lam: float
    n_samples: int
    seed: int
    jacobian: str
    parameters_span_before: int
    parameters_span_after: int
    parameters_model_before: int
    parameters_model_after: int
    fraction_model_kept: float
    fit_output_error_train: float
    fit_output_error_validation: float
    fit_jacobian_error_train: float
    fit_converged: bool
    fit_stop_reason: str
    fit_iterations: int
    times: dict[str, float] = field(default_factory=dict)
    subspace: int | None = None
    subspace_captured: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    test_fidelity: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return asdict(self)


@dataclass
class Compression:
    """The result of :func:`compress`.

    Attributes
    ----------
    model : torch.nn.Module
        The compressed network (the input model's dtype and device): an ``nn.Sequential``
        for a span of a sequential model's own layers, otherwise a copy of the model's class.
    layer : FlexibleLayer
        The flexible layer inside ``model``.
    report : CompressionReport
    fit : tenflex.fit.FitResult
        The solver's result (cost history, decoupled function in float64).
    finetuned_model : torch.nn.Module or None
        The fine-tuned copy, when fine-tuning was asked for.
    """

    model: nn.Sequential
    layer: FlexibleLayer
    report: CompressionReport
    fit: Any
    finetuned_model: nn.Sequential | None = None


@torch.no_grad()
def _batched(module: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([module(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


def _check_images(images: Any, name: str, model_input_shape: tuple | None = None) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        try:
            array = np.asarray(images) if not isinstance(images, (str, bytes)) else None
        except (ValueError, TypeError):  # ragged: a list of (image, label) pairs
            array = None
        if array is None or array.dtype == object or array.dtype.kind in "SUV":
            # A DataLoader: np.asarray makes an object array, and torch's message names
            # NumPy types, not what compress takes.
            raise TypeError(
                f"{name} must be a tensor or NumPy array of model inputs (N, ...), got "
                f"{type(images).__name__}; gather a DataLoader's inputs first, e.g. "
                "torch.cat([x for x, _ in loader])"
            )
        images = torch.as_tensor(array)
    if images.is_meta:
        raise ValueError(f"{name} is on the 'meta' device: it has a shape but no values; "
                         "pass the inputs themselves")
    if images.ndim < 2 or images.shape[0] < 1:
        raise ValueError(f"{name} must be a batch of model inputs (N, ...), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(
            f"{name} must hold normalised float inputs (see tenflex.zoo.normalize_images), "
            f"got dtype {images.dtype}"
        )
    if not all_finite(images):
        raise ValueError(f"{name} contains NaN or Inf values")
    if model_input_shape is not None and tuple(images.shape[1:]) != model_input_shape:
        raise ValueError(
            f"{name} has inputs of shape {tuple(images.shape[1:])}, expected "
            f"{model_input_shape} like the training images"
        )
    return images


# What compress sets itself; the other keyword arguments of cmtf_als may go in fit_options.
# The samples are float64 (sample_function's dtype), so the fit runs in float64 too.
_SET_BY_COMPRESS = ("X", "Y", "J", "rank", "basis", "n_functions", "basis_options", "lam",
                    "dtype")


def _check_fit_settings(base: Any, lam: Any, fit_options: dict[str, Any] | None, rank: int,
                        n: int, m: int, n_samples: int, seed: int, progress: bool
                        ) -> dict[str, Any]:
    """The checks :func:`tenflex.fit.cmtf_als` would make after sampling, made before it.

    ``base`` is the basis as :func:`tenflex.fit._prepare_basis` makes it (name and options
    already checked). Returns the keyword arguments of ``cmtf_als`` beyond the data and the
    basis.
    """
    import inspect

    from tenflex.fit import (
        _RUN_OPTIONS,
        _check_float,
        _check_init,
        _check_n_starts,
        _check_run_options,
        _check_sizes,
        cmtf_als,
    )

    _check_float(lam, "lam")
    if fit_options is not None and not isinstance(fit_options, dict):
        raise TypeError(f"fit_options must be a dict of cmtf_als keyword arguments or None, "
                        f"got {type(fit_options).__name__} ({fit_options!r})")
    options = dict(fit_options or {})
    allowed = [p for p in inspect.signature(cmtf_als).parameters if p not in _SET_BY_COMPRESS]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"fit_options has unknown keys {unknown}; cmtf_als takes {allowed} "
                         f"(compress sets {list(_SET_BY_COMPRESS[3:])} itself)")
    init = options.setdefault("init", "linear")
    _check_init(init, "fit_options['init']")
    # From the linear start most of the gain comes in the first sweeps (chapter 4).
    options.setdefault("max_iter", 30)
    options.setdefault("seed", seed)
    options.setdefault("verbose", progress)
    _check_sizes(rank, n, m, n_samples, base.n_functions, float(lam) > 0)
    # The option checks cmtf_als makes, now: after the sampling they would come late (and
    # check_only, run before training the network, would miss them).
    defaults = {p.name: p.default for p in inspect.signature(cmtf_als).parameters.values()}
    _check_run_options(**{key: options.get(key, defaults[key]) for key in _RUN_OPTIONS},
                       where="fit_options")
    _check_n_starts(options.get("n_starts", 1), init, rank, n, m)
    return options


def _check_finetune(finetune: Any, n_train: int, n_classes: int | None) -> None:
    """Fine-tuning settings that :func:`_finetune` can run, checked before the fit."""
    import inspect

    from tenflex import zoo

    if not isinstance(finetune, dict):
        raise TypeError(f"finetune must be a dict or None, got {type(finetune).__name__}")
    if "train_labels" not in finetune:
        raise ValueError("finetune needs 'train_labels', the labels of train_images")
    labels = torch.as_tensor(finetune["train_labels"])
    if labels.shape != (n_train,):
        raise ValueError(f"finetune['train_labels'] must have shape ({n_train},) like "
                         f"train_images, got {tuple(labels.shape)}")
    _check_labels(labels, n_train, n_classes, "finetune['train_labels']")
    scope = finetune.get("scope", "layer")
    if scope not in ("layer", "all"):
        raise ValueError(f"finetune scope must be 'layer' or 'all', got {scope!r}")
    allowed = ["train_labels", "scope"] + [
        p for p in inspect.signature(zoo.train).parameters
        if p not in ("model", "train_data", "progress")]
    unknown = sorted(set(finetune) - set(allowed))
    if unknown:
        raise ValueError(f"finetune has unknown keys {unknown}; valid keys: {allowed}")
    if "validation" in finetune:
        # Here a number of held-out training images (zoo.train takes the images themselves).
        k = finetune["validation"]
        if not is_int(k) or not 1 <= k < n_train:
            raise ValueError(f"finetune['validation'] must be a number of training images to "
                             f"hold out, an integer in [1, {n_train}), got {k!r}")
    # zoo.train's own checks, now rather than after the fit
    zoo._check_train_options(**{k: v for k, v in finetune.items()
                                if k not in ("train_labels", "scope", "validation")})


def _check_labels(labels: Any, n: int, n_classes: int | None, argname: str) -> None:
    """Integer labels ``(n,)`` in ``[0, n_classes)``, as zoo.train / zoo.evaluate need them."""
    from tenflex import zoo

    labels = zoo._check_labels(labels, n, argname)
    if n_classes is not None:
        zoo._check_label_range(labels, n_classes, argname)


def _check_finite_parameters(model: nn.Module) -> None:
    """Refuse a model with NaN or Inf parameters, naming them, before any sampling.

    A non-finite weight makes the span's inputs, outputs or Jacobians non-finite, which the
    sampling would otherwise blame on the sampling points ``X`` or on ``J``.
    """
    bad = []
    for name, parameter in model.named_parameters():
        if not all_finite(parameter):
            count = int((~torch.isfinite(parameter.detach())).sum())
            bad.append(f"{name} ({count} of {parameter.numel()} entries)")
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise ValueError(
            f"the model's parameters contain NaN or Inf values: {shown}; a model with "
            "non-finite weights computes NaN/Inf wherever they enter, so the span cannot be "
            "sampled: load or train finite weights (a diverged training, a damaged checkpoint)"
        )


def _span_parameters(model: nn.Module, span: Span) -> tuple[int, int]:
    """``(removed, shared)``: how many of the span's parameters splicing it out removes,
    and how many stay because the rest of the model uses them too (a layer used both in
    and outside the span, tied weights).

    The model is walked as :func:`tenflex.nn.surgery.splice` copies it: everything but the
    span's children of its parent (wherever that parent occurs) is kept.
    """
    outside = {id(p) for module in _kept_modules(model, span)
               for p in module._parameters.values() if p is not None}
    removed = shared = 0
    for parameter in span.module(model).parameters():  # each parameter once
        if id(parameter) in outside:
            shared += parameter.numel()
        else:
            removed += parameter.numel()
    return removed, shared


def _linear_first_stage(span_module: nn.Sequential, in_shape: tuple[int, ...]
                        ) -> tuple[nn.Linear, nn.Sequential] | None:
    """``(linear, rest)`` when the span starts with a fully connected layer, else None.

    Leading ``nn.Flatten()`` layers (which make the input a vector) may come first. Only a
    plain ``nn.Linear`` qualifies: a subclass may compute something else in ``forward``.
    Plain ``nn.Sequential`` layers (a whole ``classifier`` as the span) are looked into.
    """
    layers = flat_layers(span_module)
    i = 0
    while (i < len(layers) and type(layers[i][1]) is nn.Flatten
           and (layers[i][1].start_dim, layers[i][1].end_dim) == (1, -1)):
        i += 1
    if i == len(layers) or type(layers[i][1]) is not nn.Linear:
        return None
    linear = layers[i][1]
    if (i == 0 and len(in_shape) != 1) or linear.in_features != math.prod(in_shape):
        return None
    return linear, nn.Sequential(*(layer for _, layer in layers[i + 1:]))


def _choose_jacobian(jacobian: Any, stage: tuple | None, span: Span, m: int) -> bool:
    """Whether to factor the Jacobian through the span's first layer (see ``compress``)."""
    if jacobian not in JACOBIAN_FORMS:
        raise ValueError(f"jacobian must be one of {', '.join(map(repr, JACOBIAN_FORMS))}, "
                         f"got {jacobian!r}")
    if jacobian == "factored" and stage is None:
        raise ValueError(
            f"jacobian='factored' needs a span that starts with a fully connected layer "
            f"(nn.Linear, after any nn.Flatten()); the span {span.label} does not: use "
            "jacobian='dense' or 'auto'"
        )
    if jacobian == "auto":
        return stage is not None and stage[0].out_features < m
    return jacobian == "factored"


def _check_finite_samples(label: str, what: str, values: torch.Tensor, point_dim: int,
                          where: str, points: str = "sampling points") -> None:
    """Refuse non-finite span inputs, outputs or Jacobians, naming where they come from.

    :func:`compress` has checked the images and the model's parameters: what is left is an
    overflow in the network (``where``), not bad sampling points.
    """
    if all_finite(values):
        return
    bad = (~torch.isfinite(values)).movedim(point_dim, 0)
    count = int(bad.reshape(bad.shape[0], -1).any(dim=1).sum())
    raise ValueError(
        f"the {what} of the span {label} contain NaN or Inf values at {count} of "
        f"{bad.shape[0]} {points}, though the images and the model's parameters are "
        f"finite: {where} overflow there; check the model on these images (inputs far outside "
        "the range it was trained on?) or choose another span"
    )


def _sample_span(span_module: nn.Sequential, stage: tuple | None, X_in: torch.Tensor,
                 progress: bool, label: str
                 ) -> tuple[torch.Tensor, torch.Tensor, JacobianTensor]:
    """``(X, Y, J)`` of the span at its inputs ``X_in`` (float64), ``J`` a
    :class:`DenseJacobian` ``(n, m, N)`` or, given the first stage ``(linear, rest)``, a
    :class:`FactoredJacobian`. Non-finite inputs, outputs or Jacobians are refused, blamed
    on the layers before the span or on the span (``label``)."""
    from tenflex.sampling import sample_function

    _check_finite_samples(label, "inputs", X_in, 0, "the layers before it")
    if stage is None:
        samples = sample_function(span_module, X_in, dtype=torch.float64, progress=progress)
        X, J = samples.X, samples.J
    else:
        linear, rest = stage
        X = X_in.flatten(1).double()
        A = linear.weight.detach().double()
        bias = None if linear.bias is None else linear.bias.detach().double()
        # J_k = K_k A: only the Jacobians K of the layers after the linear stage are sampled.
        samples = sample_function(rest, nn.functional.linear(X, A, bias), dtype=torch.float64,
                                  progress=progress)
        J = samples.J
    _check_finite_samples(label, "outputs", samples.Y, 0, "its layers")
    _check_finite_samples(label, "Jacobians", J, -1, "its layers' derivatives")
    return X, samples.Y, DenseJacobian(J) if stage is None else FactoredJacobian(J, A)


def compress(
    model: nn.Sequential,
    span: Any,
    train_images: Any,
    *,
    rank: int,
    basis: str = "bspline",
    n_functions: int = 8,
    basis_options: dict[str, Any] | None = None,
    lam: float = 100.0,
    n_samples: int = 5000,
    n_validation: int = 2000,
    test_data: tuple[Any, Any] | None = None,
    fit_options: dict[str, Any] | None = None,
    finetune: dict[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 500,
    jacobian: str = "auto",
    subspace: int | None = None,
    progress: bool = False,
    check_only: bool = False,
) -> Compression | None:
    """Replace ``span`` of a pretrained ``model`` by a flexible layer fitted with CMTF-ALS.

    Parameters
    ----------
    model : torch.nn.Module
        The pretrained network; it is not modified. An ``nn.Sequential`` or a network of
        one's own whose spans are named by dotted paths.
    span : int, str, slice, sequence or Span
        The contiguous layers to replace (see :func:`tenflex.nn.surgery.resolve_span`),
        e.g. ``("fc1", "fc2")`` for the whole fully connected part, ``"fc1"`` for one layer,
        ``("conv2", "fc2")`` for a span starting at a convolution; in a network of one's own
        ``("classifier.0", "classifier.2")`` (a chain of an ``nn.Sequential`` inside it) or
        ``"classifier"`` (one submodule). Inputs are those the network hands the span
        (flattened as the network does; see :func:`tenflex.nn.surgery.span_inputs`);
        outputs are reshaped back.
    train_images : tensor, shape (N_train, *input_shape)
        Normalised training inputs of ``model``; sampling points and validation points are
        drawn from them without overlap.
    rank : int
        Number of branches ``R`` of the flexible layer.
    subspace : int, optional
        ``k``: fit the flexible layer in the ``k``-dimensional active subspace ``P`` of the
        span's sampled Jacobians (:func:`tenflex.subspace.active_subspace`), on the inputs
        ``X P`` and Jacobians ``J_k P``, and store its input directions factored, ``V = P
        Q`` (:class:`~tenflex.nn.FlexibleLayer` with ``subspace=k``). Then ``R`` may exceed
        ``k`` (up to ``n k``): the directions cost ``m k`` parameters once, so a budget of
        ``R0`` plain branches pays for ``k = R0 - 1`` directions and many more branches.
        Default None: ``V`` is fitted in the full input space.
    basis, n_functions, basis_options
        Basis of the activation functions: a name with its number of functions ``D`` and
        options (see :func:`tenflex.basis.make_basis`), or a :class:`tenflex.basis.Basis`,
        which brings its own ``D`` (``n_functions`` is then not used).
    lam : float
        Weight ``λ`` of the output term against the Jacobian term in the CMTF cost (both
        relative). The default 100 suits classifiers, whose accuracy depends on the outputs
        only: on the reference CNN it was at least as accurate as λ = 1 and λ = 10 at every
        rank tried (4 to 12), while the Jacobian term still keeps the fit from interpolating
        the samples (see chapter 4). With many more samples the outputs need less of that
        help: fitted on every training image (N = 58000, R = 16), λ = 1000 had the lowest
        output error on unseen images of λ = 100, 1000 and 10 000; choose λ on such held-out
        images (``n_validation``, reported as ``fit_output_error_validation``).
    n_samples : int
        Number of sampling points ``N``. The Jacobian tensor takes ``8·n·m·N`` bytes, or
        ``8·n·h·N`` factored (see ``jacobian``).
    n_validation : int
        Further training images on which the fitted layer's output error is measured.
    test_data : (images, labels), optional
        Test set for the accuracies before and after.
    fit_options : dict, optional
        Extra keyword arguments of :func:`tenflex.fit.cmtf_als` (``max_iter``, ``tol``,
        ``init``, ``n_starts``, ``ridge``, ``solver``, ...; ``max_iter`` defaults to 30 here).
        The default ``init="linear"``
        starts from the best rank-``R`` linear replacement of the span for the same cost
        (see :func:`tenflex.fit.cmtf_als`).
    finetune : dict, optional
        Fine-tune a copy after splicing: ``{"scope": "layer" | "all", "epochs": 1,
        "lr": 1e-3, "train_labels": labels, ...}``; further keys go to
        :func:`tenflex.zoo.train`. ``train_labels`` (the labels of ``train_images``) is
        required. ``"layer"`` trains the flexible layer alone: the layers after it are
        frozen (no step, eval mode: BatchNorm statistics kept, dropout off); afterwards
        the fine-tuned copy has the ``requires_grad`` flags of the compressed model.
        ``"validation": k`` holds ``k`` training images out of the fine-tuning (a subset
        drawn with the fine-tuning's seed) and keeps the weights, before fine-tuning or
        after one of its epochs, that classify them best (see :func:`tenflex.zoo.train`);
        the report's ``validation`` entry has their accuracies.
    seed : int
        Seeds the choice of sampling points, the solver and fine-tuning.
    batch_size : int
        Batch size of the forward passes that produce the span's inputs.
    jacobian : {"auto", "dense", "factored"}
        How the Jacobian tensor is held. ``"factored"``: for a span that starts with a fully
        connected layer ``A`` of width ``h`` (after any ``nn.Flatten()``), ``J_k = K_k A``
        with only ``K`` sampled (:class:`tenflex.cpd.FactoredJacobian`); the same fit, on
        ``h / m`` of the memory, with products ``h / m`` as costly. ``"dense"``: the full
        ``(n, m, N)`` tensor. ``"auto"`` (default): factored when the span starts with a
        fully connected layer with ``h < m``, dense otherwise.
    progress : bool
        Progress bars for sampling and fitting.
    check_only : bool
        Only make the checks listed under Raises that come before any long computation,
        then return None. They depend on the architecture, not on the weights, so they can
        run on an untrained network of the same architecture before training the real one
        (``tenflex compress`` does so); the one exception is the check for NaN/Inf
        parameters.

    Returns
    -------
    Compression or None
        None with ``check_only``.

    Raises
    ------
    TypeError, ValueError
        Before any long computation: a span that is not a contiguous chain (or a chain
        inside the model that its ``forward`` does not run through its ``nn.Sequential``,
        see :func:`tenflex.nn.surgery.span_inputs`), a span whose inputs have shape
        ``(B,)``, a rank below 1 or larger than the data supports, training images of the
        wrong shape, too few sampling points for the number of unknowns, a Jacobian tensor
        or ALS sweeps that would not fit in memory, an unknown ``jacobian`` or
        ``"factored"`` for a span that does not start with a fully connected layer, an
        unknown basis or basis option, a negative ``lam`` or ``seed``, ``fit_options`` that
        is not a dict, has unknown keys (or ``dtype``: the fit runs in float64) or values
        that :func:`tenflex.fit.cmtf_als` refuses (``init``, ``tol``, ``n_starts``, ...),
        fine-tuning without labels (or with labels
        of the wrong length, an unknown scope or unknown keys), ``test_data`` that is not a
        pair, labels (of ``test_data`` or fine-tuning) that are not integers ``(N,)`` in
        ``[0, n_classes)``, a model without parameters or with NaN/Inf parameters (named),
        images of another dtype than the model's parameters, images that are not a tensor
        or array (a ``DataLoader``), a model or images on the ``'meta'`` device. After
        sampling: span inputs, outputs or Jacobians that are not finite though the model's
        parameters and the images are (an overflow in the network).

    Warns
    -----
    UserWarning
        A rank at which the flexible layer has no fewer parameters than splicing the span
        out removes (the span's parameters that layers outside it use too stay).
    """
    from tenflex.fit import cmtf_als
    from tenflex.sampling import evaluation_mode

    times: dict[str, float] = {}
    t_start = time.perf_counter()
    resolved: Span = resolve_span(model, span)
    train_images = _check_images(train_images, "train_images")
    first = next(model.parameters(), None)
    if first is None:
        raise ValueError("model has no parameters: there is nothing to compress")
    check_materialized(model)
    _check_finite_parameters(model)
    param_dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if param_dtypes and train_images.dtype not in param_dtypes:
        raise TypeError(
            f"train_images has dtype {train_images.dtype} but the model's parameters are "
            f"{first.dtype}: convert one to the other, e.g. train_images.to({first.dtype}) "
            "(or .astype for a NumPy array)"
        )
    device = first.device
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(train_images.shape[1:]) != tuple(expected):
        raise ValueError(f"train_images has inputs of shape {tuple(train_images.shape[1:])}, but "
                         f"the model expects {tuple(expected)}")
    try:
        in_shape, out_shape = span_shapes(model, resolved, train_images[:2].to(device))
    except RuntimeError as exc:
        raise ValueError(f"train_images of shape {tuple(train_images.shape[1:])} cannot be fed "
                         f"to the model: {exc}") from exc
    if not in_shape:
        raise ValueError(
            f"the span {resolved.label} takes inputs of shape (B,), one number per image: "
            "the sampling and the flexible layer need inputs (B, *input_shape) with a feature "
            "dimension; start the span at a layer whose input keeps it (e.g. before an "
            "nn.Flatten(0))"
        )
    # An output of shape (B,) is one number per image: n = 1, reshaped back to (B,).
    m, n = math.prod(in_shape), math.prod(out_shape)

    # Every check that can fail is done here, before sampling and fitting.
    for name, value, low in (("rank", rank, 1), ("n_samples", n_samples, 1),
                             ("n_validation", n_validation, 0), ("batch_size", batch_size, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    seed = check_seed(seed)
    check_bool(progress, "progress")
    if subspace is not None and (not is_int(subspace) or not 1 <= subspace < m):
        raise ValueError(f"subspace must be an integer k with 1 <= k < m = {m} (the span's "
                         f"input dimension), or None; got {subspace!r}")
    k = m if subspace is None else int(subspace)  # the inputs the fit sees
    limit = min(m, n_samples) if subspace is None else min(n * k, n_samples)
    if rank > limit:
        raise ValueError(
            f"rank R = {rank} is larger than the data supports: the span maps R^{m} to R^{n} "
            f"and is sampled at N = {n_samples} points, so R <= "
            + (f"min(m, N) = {limit}" if subspace is None else
               f"min(n k, N) = {limit} in a subspace of dimension k = {k}")
        )
    if n_samples + n_validation > len(train_images):
        raise ValueError(
            f"n_samples + n_validation = {n_samples + n_validation} exceeds the "
            f"{len(train_images)} training images given; lower n_samples or n_validation "
            "(the validation images are kept apart from the samples)"
        )
    from tenflex.fit import _prepare_basis

    # D of the fit: a Basis instance brings its own number of functions.
    base = _prepare_basis(basis, n_functions, basis_options)  # unknown names, bad options
    n_basis = base.n_functions
    unknowns = rank * (k + n + n_basis) + n  # of the fit
    equations = n_samples * n * (k + 1)
    if equations < unknowns:
        raise ValueError(
            f"too few sampling points: N = {n_samples} gives {equations} equations (outputs "
            f"and Jacobian entries) for {unknowns} unknowns; use N >= "
            f"{math.ceil(unknowns / (n * (k + 1)))}"
        )
    projection_parameters = 0 if subspace is None else m * k  # P, not fitted by the ALS
    layer_parameters = unknowns + projection_parameters
    stage = _linear_first_stage(resolved.module(model), in_shape)
    factored = _choose_jacobian(jacobian, stage, resolved, m)
    width = stage[0].out_features if factored else m  # of the stored Jacobians
    jacobian_bytes = 8 * n * width * n_samples
    available = memory_bytes()
    if available and jacobian_bytes > _MEMORY_FRACTION * available:
        raise ValueError(
            f"the Jacobian tensor (n, {'h' if factored else 'm'}, N) = ({n}, {width}, "
            f"{n_samples}) needs {jacobian_bytes / 2**30:.1f} GiB in float64, more than half "
            f"of this machine's {available / 2**30:.1f} GiB; use fewer sampling points "
            f"(n_samples <= {int(_MEMORY_FRACTION * available / (8 * n * width))})"
        )
    options = _check_fit_settings(base, lam, fit_options, rank, n, k, n_samples, seed,
                                  progress)
    _check_solver_memory(rank, n_basis, n_samples, jacobian_bytes, available)
    # Only the parameters that the splice removes count: those the rest of the model uses
    # too (a layer used again outside the span, tied weights) stay.
    span_parameters, shared_parameters = _span_parameters(model, resolved)
    if layer_parameters >= span_parameters:
        fewer = (span_parameters - n - 1 - projection_parameters) // (k + n + n_basis)
        shared_note = (f" (another {shared_parameters} of its parameters are used outside it "
                       "and stay)" if shared_parameters else "")
        warnings.warn(
            f"the flexible layer of rank {rank} has {layer_parameters} parameters, no fewer "
            f"than the {span_parameters} that removing the span {resolved.label} saves"
            f"{shared_note}: it compresses nothing; "
            + (f"ranks R <= {fewer} keep fewer" if fewer >= 1 else "no rank keeps fewer"),
            UserWarning, stacklevel=2)
    n_classes = None
    if finetune is not None or test_data is not None:
        from tenflex.zoo import _n_outputs

        n_classes = _n_outputs(model, train_images[:1])  # the labels must index its logits
    if finetune is not None:
        _check_finetune(finetune, len(train_images), n_classes)
    if test_data is not None:
        if not isinstance(test_data, (tuple, list)) or len(test_data) != 2:
            raise TypeError(
                f"test_data must be a pair (images, labels), got {type(test_data).__name__}"
            )
        test_images = _check_images(test_data[0], "test_data[0]", tuple(train_images.shape[1:]))
        if param_dtypes and test_images.dtype not in param_dtypes:
            raise TypeError(f"test_data[0] has dtype {test_images.dtype} but the model's "
                            f"parameters are {first.dtype}: convert the images with "
                            f".to({first.dtype})")
        test_labels = torch.as_tensor(test_data[1])
        if test_labels.shape != (len(test_images),):
            raise ValueError(f"test labels must have shape ({len(test_images)},), got "
                             f"{tuple(test_labels.shape)}")
        _check_labels(test_labels, len(test_images), n_classes, "test_data[1]")
    if check_only:
        return None

    from tenflex import zoo

    # The work runs in eval mode (no BatchNorm statistics updated, no dropout); the caller's
    # model gets its own training flags back however this ends.
    with evaluation_mode(model):
        span_module = resolved.module(model)

        def inputs_of_span(images: torch.Tensor) -> torch.Tensor:
            return span_inputs(model, resolved, images)

        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_images), generator=generator)
        sample_idx, valid_idx = order[:n_samples], order[n_samples:n_samples + n_validation]

        t0 = time.perf_counter()
        X_in = _batched(inputs_of_span, train_images[sample_idx].to(device), batch_size)
        X, Y, J = _sample_span(span_module, stage if factored else None, X_in, progress,
                               resolved.label)
        times["sampling"] = time.perf_counter() - t0

        active = None
        if subspace is not None:
            t0 = time.perf_counter()
            active = active_subspace(J, k, seed=seed)
            full_norm_sq = J.norm_sq()
            X, J = active.project(X, J)
            outside = max(full_norm_sq - J.norm_sq(), 0.0)  # ||J (I - P P^T)||^2
            times["subspace"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fit = cmtf_als(X, Y, J, rank, basis=basis, n_functions=n_functions,
                       basis_options=basis_options, lam=lam, **options)
        times["fit"] = time.perf_counter() - t0
        decoupled = fit.model
        train_output_error = relative_error(decoupled(X), Y)
        H = decoupled.branch_derivatives(decoupled.branch_inputs(X))
        residual = J.residual_norm_sq(decoupled.W, decoupled.V, H)
        if active is None:
            train_jacobian_error = math.sqrt(residual / J.norm_sq())
        else:  # relative to the full Jacobians: the part outside P is not fitted at all
            train_jacobian_error = math.sqrt((residual + outside) / full_norm_sq)
        del X, Y, J, H

        t0 = time.perf_counter()
        dtype = first.dtype
        projection = None if active is None else active.P
        layer = FlexibleLayer.from_decoupled(decoupled, output_shape=out_shape,
                                             projection=projection).to(device=device,
                                                                       dtype=dtype)
        compressed = splice(model, resolved, layer)
        compressed.eval()
        times["splice"] = time.perf_counter() - t0

        if n_validation:
            valid_in = _batched(inputs_of_span, train_images[valid_idx].to(device), batch_size)
            # reshape, not flatten(1): a span's output may be (B,) (n = 1)
            # On a copy: a span that starts with an in-place layer would overwrite valid_in.
            valid_out = _batched(span_module, valid_in.clone(), batch_size)
            valid_out = valid_out.reshape(len(valid_out), -1).double()
            for what, values, where in (("inputs", valid_in, "the layers before it"),
                                        ("outputs", valid_out, "its layers")):
                _check_finite_samples(resolved.label, what, values, 0, where,
                                      "validation images")
            valid_x = valid_in.flatten(1).double()
            valid_fit = decoupled(valid_x if active is None else valid_x @ active.P.double())
            validation_error = relative_error(valid_fit, valid_out)
        else:
            validation_error = float("nan")

        accuracy_before = accuracy_after = test_fidelity = None
        if test_data is not None:
            t0 = time.perf_counter()
            comparison = fidelity(zoo.predict(compressed, test_images, batch_size),
                                  zoo.predict(model, test_images, batch_size), test_labels)
            accuracy_before, accuracy_after = comparison.reference_accuracy, comparison.accuracy
            test_fidelity = comparison.to_dict()
            times["evaluation"] = time.perf_counter() - t0

        finetuned = None
        finetune_report = None
        if finetune is not None:
            start = resolved.start if resolved.has_prefix else None
            finetuned, finetune_report = _finetune(compressed, layer, start, train_images,
                                                   finetune, seed, test_data, batch_size,
                                                   progress)
            times["finetune"] = finetune_report["time_s"]
        times["total"] = time.perf_counter() - t_start

        before_span, after_span = span_parameters, layer.n_parameters
        before_model = count_parameters(model)
        after_model = count_parameters(compressed)  # = before - removed span + layer
        report = CompressionReport(
            span=list(resolved.paths), input_shape=list(in_shape), output_shape=list(out_shape),
            rank=int(rank), basis=str(basis if isinstance(basis, str) else basis.name),
            n_functions=int(decoupled.n_functions), lam=float(lam), n_samples=int(n_samples),
            seed=int(seed), jacobian="factored" if factored else "dense",
            parameters_span_before=before_span, parameters_span_after=after_span,
            parameters_model_before=before_model, parameters_model_after=after_model,
            fraction_model_kept=after_model / before_model,
            fit_output_error_train=train_output_error,
            fit_output_error_validation=validation_error,
            fit_jacobian_error_train=train_jacobian_error,
            fit_converged=bool(fit.converged), fit_stop_reason=str(fit.stop_reason),
            fit_iterations=int(fit.n_iter), times=times,
            subspace=None if active is None else active.k,
            subspace_captured=None if active is None else active.captured,
            accuracy_before=accuracy_before,
            accuracy_after=accuracy_after, test_fidelity=test_fidelity,
            finetune=finetune_report,
        )
        return Compression(model=compressed, layer=layer, report=report, fit=fit,
                           finetuned_model=finetuned)


class _OnlyPartTrains(nn.Module):
    """Runs ``model`` with ``part`` alone in training mode, the rest in eval mode (BatchNorm
    statistics kept, dropout off) whatever mode is asked for."""

    def __init__(self, model: nn.Module, part: nn.Module):
        super().__init__()
        self.model, self.part = model, part

    def train(self, mode: bool = True) -> _OnlyPartTrains:
        self.training = mode
        self.model.eval()
        self.part.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def finetune_replacement(model: nn.Module, part: nn.Module | str, train_images: Any,
                         finetune: dict[str, Any], *, seed: int = 0,
                         test_data: tuple[Any, Any] | None = None, batch_size: int = 256,
                         progress: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``model`` whose ``part`` replaced a span, as
    ``compress(..., finetune=...)`` fine-tunes its flexible layer.

    For comparisons on equal terms: a baseline replacement of the same span (a truncated
    SVD from :func:`tenflex.nn.baselines.svd_span`, a linear map, ...) gets the same steps,
    on the same images, in the same order, as the flexible layer.

    Parameters
    ----------
    model : torch.nn.Module
        The network with the replacement in place (left unchanged: a copy is trained).
    part : torch.nn.Module or str
        The replacement: a submodule of ``model`` or its dotted name (``"svd_fc1_fc2"``).
    train_images : torch.Tensor, shape (N, *input_shape)
        Normalised float training inputs.
    finetune : dict
        As :func:`compress`'s ``finetune``: ``{"scope": "layer" | "all", "epochs": 1,
        "lr": 1e-3, "train_labels": labels, ...}``. ``"layer"`` trains ``part`` alone.
    seed : int
        Seeds the shuffling (unless ``finetune`` has its own ``"seed"``).
    test_data : (images, labels), optional
        Test set; the report then holds the accuracy after fine-tuning.
    batch_size : int
        Batch size of the forward passes that cache the inputs of ``part``.
    progress : bool
        tqdm progress bar over the training steps.

    Returns
    -------
    model : torch.nn.Module
        The fine-tuned copy, in eval mode.
    report : dict
        ``scope``, the training settings, ``time_s`` and, with ``test_data``, ``accuracy``.

    Raises
    ------
    TypeError, ValueError
        ``part`` not in ``model``, bad images, labels or settings (as :func:`compress`),
        before any step.
    """
    from tenflex import zoo

    if isinstance(part, str):
        named = dict(model.named_modules(remove_duplicate=False))  # every position
        if part not in named or part == "":
            raise ValueError(f"model has no submodule {part!r}; submodules: "
                             f"{[n for n in named if n][:20]}")
        part = named[part]
    elif not isinstance(part, nn.Module) or not any(m is part for m in model.modules()):
        raise ValueError("part must be a submodule of model (or its dotted name)")
    train_images = _check_images(train_images, "train_images")
    n_classes = zoo._n_outputs(model, train_images[:1])  # the labels must index its logits
    _check_finetune(finetune, len(train_images), n_classes)
    if test_data is not None:  # checked now, not after the training
        if not isinstance(test_data, (tuple, list)) or len(test_data) != 2:
            raise TypeError(
                f"test_data must be a pair (images, labels), got {type(test_data).__name__}")
        test_images = _check_images(test_data[0], "test_data[0]", tuple(train_images.shape[1:]))
        _check_labels(test_data[1], len(test_images), n_classes, "test_data[1]")
    seed = check_seed(seed)
    children = list(model._modules.values())
    # Layers before part run once, their outputs cached, when part is a child of a
    # sequential model (as the flexible layer compress splices usually is).
    start = next((i for i, m in enumerate(children) if m is part), None) \
        if isinstance(model, nn.Sequential) else None
    return _finetune(model, part, start, train_images, finetune, seed, test_data, batch_size,
                     progress)


def _finetune(compressed: nn.Module, layer: nn.Module, start: int | None,
              train_images: torch.Tensor, options: dict[str, Any], seed: int, test_data,
              batch_size: int, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune a copy of ``compressed``: the replacement ``layer`` alone or the whole
    network.

    With ``scope="layer"``, when ``layer`` is child ``start`` of a sequential model, the
    frozen layers before it are run once and their outputs cached, so each epoch only runs
    ``layer`` and what follows it; otherwise (``start`` None) every step runs the whole
    (frozen) model.
    """
    import copy

    from tenflex import zoo

    options = dict(options)
    labels = torch.as_tensor(options.pop("train_labels"))
    scope = options.pop("scope", "layer")
    if scope not in ("layer", "all"):
        raise ValueError(f"finetune scope must be 'layer' or 'all', got {scope!r}")
    options.setdefault("epochs", 1)
    options.setdefault("lr", 1e-3)
    options.setdefault("seed", seed)
    n_held_out = options.pop("validation", None)
    held_out = None
    if n_held_out is not None:
        # A seeded subset is held out; the fine-tuning sees the rest, in its order.
        order = torch.randperm(len(train_images),
                               generator=torch.Generator().manual_seed(int(options["seed"])))
        out, kept = order[:n_held_out].sort().values, order[n_held_out:].sort().values
        held_out = (train_images[out], labels[out])
        train_images, labels = train_images[kept], labels[kept]
    memo: dict[int, Any] = {}
    model = copy.deepcopy(compressed, memo)
    t0 = time.perf_counter()
    if scope == "layer":
        # Only the flexible layer's copy trains; the rest gets no gradient step and runs in
        # eval mode (BatchNorm statistics stay as trained, dropout is off).
        trained = memo[id(layer)]
        # The copy gets its own requires_grad flags back afterwards: parameters frozen in
        # the network given stay frozen.
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        trained.requires_grad_(True)
        if start is not None:
            # The replacement is child `start` of a sequential model: the frozen layers
            # before it run once, their outputs cached, and each epoch runs only the
            # replacement and what follows it.
            # _modules, not children(): a module used twice runs (and counts) twice.
            layers = list(model._modules.values())
            device = next(model.parameters()).device
            prefix = nn.Sequential(*layers[:start])
            features = _batched(prefix, train_images.to(device), batch_size)
            if held_out is not None:
                held_out = (_batched(prefix, held_out[0].to(device), batch_size), held_out[1])
            result = zoo.train(_OnlyPartTrains(nn.Sequential(*layers[start:]), trained),
                               (features, labels), progress=progress, validation=held_out,
                               **options)
        else:
            result = zoo.train(_OnlyPartTrains(model, trained), (train_images, labels),
                               progress=progress, validation=held_out, **options)
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
    else:
        result = zoo.train(model, (train_images, labels), progress=progress,
                           validation=held_out, **options)
    model.eval()
    report: dict[str, Any] = {"scope": scope, **{k: v for k, v in options.items()
                                                 if isinstance(v, (int, float, str))}}
    if held_out is not None:
        report["validation"] = {"n_images": int(n_held_out),
                                "accuracy": result.validation_accuracy.tolist(),
                                "best_epoch": result.best_epoch}
    report["time_s"] = time.perf_counter() - t0
    if test_data is not None:
        report["accuracy"] = zoo.evaluate(model, test_data[0], test_data[1])
    return model, report


# --------------------------------------------------------------------------- saving and loading

_FORMAT = "tenflex-compressed-model"
_FORMAT_VERSION = 1


def save_compressed(path: str | os.PathLike, compression: Compression,
                    base: dict[str, Any] | None = None, *, finetuned: bool = False) -> None:
    """Write a compressed model atomically: its state dict plus what rebuilds it.

    Parameters
    ----------
    path : path-like
        Target file (``torch.save`` format). Written to a temporary file in the same
        folder first and renamed, so an interrupted run never leaves a half-written file.
    compression : Compression
    base : dict or None
        How to rebuild the uncompressed network. ``{"model": name}`` for
        :func:`tenflex.zoo.build_model` (plus its keyword arguments under ``"kwargs"``):
        :func:`load_compressed` and ``tenflex evaluate`` then rebuild it from the file alone.
        ``None`` for a network of your own: ``load_compressed(path, model=...)`` then takes
        an instance of its uncompressed class (the file keeps only tensors, no code).
    finetuned : bool
        Save ``compression.finetuned_model`` instead of ``compression.model``.

    Raises
    ------
    ValueError
        ``base`` names no network of :mod:`tenflex.zoo`, or ``finetuned=True`` without
        fine-tuning.
    """
    from tenflex.zoo import MODELS

    if base is not None and (not isinstance(base, dict) or base.get("model") not in MODELS):
        raise ValueError(
            f"base must be {{'model': name}} with a network of tenflex.zoo ({sorted(MODELS)}) "
            f"that load_compressed can rebuild, got {base!r}; for a network of your own, "
            "pass base=None and load it back with load_compressed(path, model=...)"
        )
    model = compression.finetuned_model if finetuned else compression.model
    if model is None:
        raise ValueError("finetuned=True but the compression was not fine-tuned")
    layer = compression.layer
    payload = {
        "format": _FORMAT,
        "version": _FORMAT_VERSION,
        "base": base,
        # Named in load_compressed's message when the file needs the network's class.
        "network": f"{type(model).__module__}.{type(model).__qualname__}",
        "span": compression.report.span,
        "layer": {
            "in_features": layer.in_features,
            "out_features": layer.out_features,
            "rank": layer.rank,
            "subspace": layer.subspace,
            "basis": layer.basis.config(),
            "output_shape": compression.report.output_shape,
        },
        "report": compression.report.to_dict(),
        # CPU tensors: the file loads where there is no GPU too.
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda handle: torch.save(payload, handle))


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by :func:`save_compressed`.

    Parameters
    ----------
    path : path-like
    model : torch.nn.Module, optional
        The uncompressed network the file was made from (its architecture; its weights are
        replaced by the file's). Required for a network of your own, saved with
        ``base=None``; for a network of :mod:`tenflex.zoo` the file rebuilds it by itself.
        It is not modified: the flexible layer goes into a copy.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU, in the saved floating dtype: an ``nn.Sequential`` for a
        network of the zoo, a copy of ``model``'s class otherwise.
    payload : dict
        The saved configuration and report (without the state dict).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    OSError
        The file cannot be read (permissions, I/O).
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ValueError
        A file that is not a tenflex model file (what was expected and how to make one), a
        damaged one (what is missing or does not fit), one of a later format version than
        this tenflex reads, a network of your own without
        ``model``, or a ``model`` whose layers or shapes are not those of the saved network.
    """
    import copy
    from pathlib import Path

    from tenflex import zoo
    from tenflex.basis import make_basis

    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be the uncompressed torch.nn.Module the file was made "
                        f"from, got {type(model).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compressed model file {path} does not exist; create it with "
                                "`tenflex compress ... --out FILE`")
    not_ours = (f"{path} is not a tenflex model file: expected a file written by `tenflex "
                "compress ... --out FILE` (or save_compressed)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # the unpickler raises whatever the bytes lead to
        # torch's own message advises weights_only=False and filing an issue: neither helps.
        raise ValueError(f"{not_ours}; torch cannot read it as one") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{not_ours}; it has no '{_FORMAT}' header")
    # A later format may store its entries with another meaning: loading it anyway could
    # give a network that computes something else.
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"{path} is a damaged tenflex model file: its format version is "
                         f"{version!r}, expected an integer from 1 to {_FORMAT_VERSION}")
    if version > _FORMAT_VERSION:
        from tenflex import __version__

        raise ValueError(f"{path} has model file format version {version}, which this "
                         f"tenflex {__version__} cannot read (it reads versions up to "
                         f"{_FORMAT_VERSION}): load it with the tenflex that wrote it, or "
                         "upgrade tenflex")
    if model is None and "base" in payload and payload["base"] is None:
        raise ValueError(f"{path} holds a compressed network of your own "
                         f"({payload.get('network', 'class not recorded')}); pass an instance "
                         "of the uncompressed network: load_compressed(path, model=YourNet(...))")
    given = model is not None
    try:
        base, state = payload["base"], payload["state_dict"]
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        if model is None:
            model = zoo.build_model(base["model"], **base.get("kwargs", {}))
        else:
            model = copy.deepcopy(model).cpu()
        if dtype is not None:
            model = model.to(dtype)
        span = resolve_span(model, tuple(payload["span"]))
        spec = payload["layer"]
        layer = FlexibleLayer(spec["in_features"], spec["out_features"], spec["rank"],
                              basis=make_basis(**spec["basis"]), subspace=spec.get("subspace"),
                              output_shape=tuple(spec["output_shape"]), dtype=dtype)
        compressed = splice(model, span, layer)
        compressed.load_state_dict(state)
    except KeyError as exc:
        raise ValueError(f"{path} is a damaged tenflex model file: missing entry "
                         f"{exc.args[0]!r}") from exc
    except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as exc:
        if given:
            raise ValueError(f"{path} does not fit the model given (it was made from "
                             f"{payload.get('network', 'another network')}, span "
                             f"{payload.get('span')}): {exc}") from exc
        raise ValueError(f"{path} is a damaged tenflex model file: {exc}") from exc
    compressed.eval()
    info = {k: v for k, v in payload.items() if k != "state_dict"}
    return compressed, info
