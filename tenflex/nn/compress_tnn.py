"""Compress every convolution and fully connected layer of a network at one rate.

The experiment of Su et al. (2018), *Tensorial Neural Networks*: each compressed layer of a
pretrained network is replaced by a factorized layer with (at most) a given fraction of its
parameters, the factorized layers are trained block by block to reproduce the pretrained
layers on the pretrained network's activations, then the whole network is fine-tuned end
to end, and its test accuracy is compared across forms at the same rate.

Forms and families
------------------
==========  ==============================  ==================================
form        convolution                     fully connected
==========  ==============================  ==================================
``rcp``     reshaped CP                     reshaped CP
``rtk``     reshaped Tucker                 reshaped Tucker
``rtt``     reshaped tensor train           reshaped tensor train (TT-matrix)
``cp``      CP (Lebedev et al. 2015)        truncated SVD
``tucker``  Tucker-2 (Kim et al. 2016)      truncated SVD
``tt``      tensor train, 4 convolutions    truncated SVD
==========  ==============================  ==================================

The reshaped forms are :class:`~tenflex.nn.tensorial.TensorialConv2d` and
:class:`~tenflex.nn.tensorial.TensorialLinear`; the plain ones the layers of
:mod:`tenflex.nn.lowrank`.

The plain forms of a fully connected layer are all the truncated SVD: a weight matrix is a
tensor of order two, whose CP, Tucker and tensor-train decompositions are all low-rank
matrix factorizations, and the SVD is the best of them (Eckart-Young); a Tucker-2 core
``(R, R)`` would only add parameters.

Policies
--------
* **Layers**: by default every ``nn.Conv2d`` and ``nn.Linear`` except the first and the last
  in module order (:func:`default_layers`). The first layer of an image network sees one
  (or three) input channels, so there is nothing to reshape on its input side; the last is
  the small classifier. In LeNet-5 they hold 1.6 % of the parameters. The ``out_proj`` of
  an ``nn.MultiheadAttention`` and the ``linear1`` / ``linear2`` of an
  ``nn.TransformerEncoderLayer`` are never compressed (their owner reads their weights
  itself), nor by default a grouped convolution or one padded otherwise than with zeros.
* **Rate**: every compressed layer gets the same budget, ``rate`` times its dense
  parameter count (weight and bias). The ranks are the largest uniform rank within the
  budget, then (``fill_budget=True``) single ranks are raised one at a time, smallest first,
  while the layer still fits and can be built (a tensor train's bond ranks bound one
  another) (:func:`ranks_within_budget`). The bias stays dense and counts
  against the budget.
* **Modes**: a convolution's channels are reshaped into 2 modes, a fully connected layer's
  features into 3 modes, by :func:`~tenflex.nn.tensorial.factorize` (balanced factors, no
  factor 1); ``modes=`` and ``factors=`` override that per layer. Features that are a
  flattened feature map can instead follow its layout (channels, positions):
  :func:`feature_shapes` finds it, ``plan_layer(input_shape=)``,
  ``compress_network(example_input=)`` and ``compress_and_train(reshape_by_layout=True)``
  use it.
* **Training**: :func:`compress_and_train` trains tensorial layers with
  ``evaluation="dense"`` (kernel formed from the factors, one dense operation): the same
  function and gradients as their chain of generalized operations, and much faster on a CPU
  at these sizes. The returned layers are back on their own ``evaluation`` (``"auto"``).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tenflex.checks import (
    as_int_tuple,
    check_bool,
    check_float,
    check_int,
    check_positive_int,
    check_seed,
    is_int,
)
from tenflex.nn.distill import distill_blocks
from tenflex.nn.lowrank import (
    CPConv2d,
    SVDLinear,
    TTConv2d,
    TuckerConv2d,
    lowrank_max_ranks,
    lowrank_n_parameters,
    replace_layer,
)
from tenflex.nn.surgery import _read_by_owner, check_materialized, module_positions
from tenflex.nn.tensorial import (
    EVALUATIONS,
    TensorialConv2d,
    TensorialLinear,
    _check_n_iter_max,
    _reshaped_dims,
    evaluation_route,
    factorize,
    largest_uniform_ranks,
    tensorial_max_ranks,
    tensorial_n_parameters,
)
from tenflex.sampling import evaluation_mode, seeded_rng

__all__ = [
    "FAMILY",
    "FORMS",
    "PLAIN",
    "RESHAPED",
    "LayerPlan",
    "TNNResult",
    "compress_and_train",
    "compress_layer",
    "compress_network",
    "default_layers",
    "feature_shapes",
    "layer_inputs",
    "plan_layer",
    "ranks_within_budget",
    "time_forward",
]

#: The reshaped (tensorial) forms and the plain low-rank forms.
RESHAPED = ("rcp", "rtk", "rtt")
PLAIN = ("cp", "tucker", "tt")
FORMS = RESHAPED + PLAIN
#: Family of every form: a reshaped form is compared with the plain form of its family.
FAMILY = {"rcp": "cp", "rtk": "tucker", "rtt": "tt", "cp": "cp", "tucker": "tucker", "tt": "tt"}
#: Default number of reshaping modes per layer type.
DEFAULT_MODES = {"Conv2d": 2, "Linear": 3}

_LOWRANK_CONV = {"cp": "cp", "tucker": "tucker2", "tt": "tt"}
_LOWRANK_CLASSES = {"cp": CPConv2d, "tucker2": TuckerConv2d, "tt": TTConv2d, "svd": SVDLinear}


def _check_form(form: Any) -> str:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {list(FORMS)}")
    return form


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and 0 < rate <= 1):
        raise ValueError(f"rate must be in (0, 1], got {rate!r}")
    return float(rate)


def _own_forward(layer: nn.Module) -> bool:
    """A Conv2d / Linear subclass whose forward (or ``_conv_forward``) is its own: it may
    compute something else than the convolution / ``x W^T + b`` that a decomposition of its
    weight reproduces."""
    if isinstance(layer, nn.Conv2d):
        return (type(layer).forward is not nn.Conv2d.forward
                or type(layer)._conv_forward is not nn.Conv2d._conv_forward)
    return isinstance(layer, nn.Linear) and type(layer).forward is not nn.Linear.forward


def _compressible(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Conv2d, nn.Linear)) and not _own_forward(layer)


def _supported_conv(layer: nn.Module) -> bool:
    """False for a convolution the forms cannot represent (grouped, a padding mode other
    than zeros; :func:`plan_layer` refuses them), True for any other layer."""
    return not isinstance(layer, nn.Conv2d) or (layer.groups == 1
                                                and layer.padding_mode == "zeros")


def _kind(layer: nn.Module) -> str:
    if _own_forward(layer):
        base = "Conv2d" if isinstance(layer, nn.Conv2d) else "Linear"
        raise TypeError(
            f"layer is a {type(layer).__name__}, a subclass of nn.{base} with its own forward: "
            f"its compressed form would compute a plain nn.{base}; only plain nn.Conv2d and "
            "nn.Linear layers are compressed"
        )
    if isinstance(layer, nn.Conv2d):
        return "Conv2d"
    if isinstance(layer, nn.Linear):
        return "Linear"
    raise TypeError(f"layer must be an nn.Conv2d or nn.Linear, got {type(layer).__name__}")


def _dense_count(layer: nn.Module) -> int:
    return sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)


def default_layers(model: nn.Module) -> list[str]:
    """Names of the layers compressed by default: every Conv2d / Linear but the first and last.

    Positions count, not module objects: a layer registered under several names (one
    module reused) is listed under each of them, and a module that is the first or the
    last layer is left out under all its names. A subclass of Conv2d / Linear with its own
    ``forward`` counts for the first and the last but is not compressed (its compressed
    form would compute the plain layer); so do the ``out_proj`` of an
    ``nn.MultiheadAttention`` and the ``linear1`` / ``linear2`` of an
    ``nn.TransformerEncoderLayer``, whose weights their owner reads itself instead of
    calling the layer (a factorized layer in their place would break the model), and the
    convolutions that the forms cannot represent: the grouped ones (``groups > 1``,
    depthwise included) and those with another ``padding_mode`` than ``"zeros"``
    (:func:`plan_layer` refuses them).

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    list of str
        Dotted names in ``model.named_modules(remove_duplicate=False)`` order.

    Raises
    ------
    ValueError
        When the model has fewer than three Conv2d / Linear positions, or no layer other
        than its first and last modules.
    """
    # named_modules() lists a reused module once, under its first name: the last position
    # of the network could then pass for a middle one, or the other way round.
    found = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    names = [n for n, _ in found]
    if len(names) < 3:
        raise ValueError(
            f"default_layers needs a model with at least 3 Conv2d/Linear layers (the first and "
            f"last stay dense), found {len(names)}: {names}; pass layers= explicitly"
        )
    first, last = found[0][1], found[-1][1]
    # A subclass with its own forward computes something its compressed form would not; an
    # attention's out_proj is read, not called, by the attention.
    owned = _read_by_owner(model)
    middle = [n for n, m in found[1:-1]
              if m is not first and m is not last and _compressible(m) and n not in owned
              and _supported_conv(m)]
    if not middle:
        raise ValueError(
            f"default_layers found no layer but the first and the last modules among the "
            f"Conv2d/Linear layers {names} (reused modules, subclasses with their own "
            "forward, layers whose weights an attention or a transformer layer reads, "
            "grouped convolutions or padding modes other than 'zeros'); pass layers= "
            "explicitly"
        )
    return middle


def ranks_within_budget(
    caps: Sequence[int], count: Callable[[tuple[int, ...]], int], budget: float,
    *, fill: bool = True, what: str = "layer",
    valid: Callable[[tuple[int, ...]], bool] | None = None,
) -> tuple[int, ...]:
    """Ranks whose parameter count fits a budget.

    First the largest uniform rank ``r`` (each entry capped at ``caps``) with
    ``count <= budget``; then, with ``fill``, repeatedly the smallest rank (ties: the one
    whose increase costs least, then the first) is raised by one while the count still fits,
    which uses the budget of multi-rank forms (Tucker, tensor trains) more fully.

    Parameters
    ----------
    caps : sequence of int
        Full ranks, one per rank entry.
    count : callable
        ``count(ranks) -> int``, parameters at those ranks (bias included).
    budget : float
        Parameters allowed.
    fill : bool
        Raise single ranks after the uniform one.
    what : str
        Names the layer in the error message.
    valid : callable, optional
        ``valid(ranks) -> bool``: whether the layer can be built at those ranks, for forms
        whose ranks constrain one another (a tensor train's bond ``k`` is at most bond
        ``k - 1`` times mode ``k``); the fill raises no rank to ranks it refuses. The
        uniform ranks must be valid (they are for the caps of a tensor train).

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        When rank 1 everywhere already exceeds the budget.
    """
    caps = tuple(int(c) for c in caps)
    ranks = list(largest_uniform_ranks(
        caps, count, budget,
        lambda n1: f"the rate leaves no rank >= 1 for {what}: rank 1 needs {n1} parameters "
        f"but the budget is {budget:.1f}",
    ))
    while fill:
        options = []
        for i, (r, c) in enumerate(zip(ranks, caps)):
            if r < c:
                trial = ranks.copy()
                trial[i] += 1
                if valid is not None and not valid(tuple(trial)):
                    continue
                n = count(tuple(trial))
                if n <= budget:
                    options.append((r, n, i))
        if not options:
            break
        ranks[min(options)[2]] += 1
    return tuple(ranks)


@dataclass
class LayerPlan:
    """How one layer is compressed.

    Attributes
    ----------
    name : str
        Dotted module name.
    kind : {"Conv2d", "Linear"}
    form : str
        One of :data:`FORMS`.
    method : str
        What is built: ``"rcp"``, ``"rtk"``, ``"rtt"`` (tensorial), ``"cp"``,
        ``"tucker2"``, ``"tt"`` (low-rank convolutions) or ``"svd"``.
    in_factors, out_factors : tuple of int or None
        Reshaping of the channels (tensorial forms only).
    ranks : tuple of int
    max_ranks : tuple of int
        Ranks at which the form is exact.
    n_dense : int
        Parameters of the dense layer (weight and bias).
    n_compressed : int
        Parameters of the compressed layer (factors and bias).
    budget : float
        ``rate * n_dense``.
    decomposition_error : float or None
        ``||W - W_approx|| / ||W||`` of the initial decomposition (filled by
        :func:`compress_layer`).
    """

    name: str
    kind: str
    form: str
    method: str
    in_factors: tuple[int, ...] | None
    out_factors: tuple[int, ...] | None
    ranks: tuple[int, ...]
    max_ranks: tuple[int, ...]
    n_dense: int
    n_compressed: int
    budget: float
    decomposition_error: float | None = None

    @property
    def rate(self) -> float:
        """Achieved fraction ``n_compressed / n_dense``."""
        return self.n_compressed / self.n_dense


def feature_shapes(
    model: nn.Module, names: Sequence[str], x: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """Shape the features of each named fully connected layer had before they were flattened.

    LeNet-5's fc1 reads 400 features that are the ``16 x 5 x 5`` output of its last pooling
    layer, flattened row-major (``nn.Flatten``, ``view``, ``reshape``): channel ``c``, row
    ``i``, column ``j`` is feature ``25 c + 5 i + j``. A reshaping of those features into
    modes that follow this layout (channels, positions) keeps related weights together;
    :func:`plan_layer` uses it (``input_shape=``).

    ``model`` runs once on ``x`` with forward hooks on its leaf modules. From each call of
    each named ``nn.Linear``, the walk goes back through the modules that ran before it
    while their output holds ``in_features`` values per sample; the nearest
    multi-dimensional output on the way is the layer's feature shape. A layer that its
    parent calls several times gets a shape when all its calls found the same one. Layers whose input was never
    multi-dimensional (fc2 of LeNet-5) and convolutions are left out. A permutation done
    outside modules between the two would go unseen: the shape only chooses a reshaping,
    the compressed layer is the same function class either way.

    Parameters
    ----------
    model : torch.nn.Module
    names : sequence of str
        Dotted names of layers (others than ``nn.Linear`` are ignored).
    x : torch.Tensor, shape (B, *input_shape)
        Any input the model accepts (one sample is enough).

    Returns
    -------
    dict
        name -> per-sample shape, e.g. ``{"fc1": (16, 5, 5)}``.

    Raises
    ------
    ValueError
        Unknown names (the valid ones listed), reused modules or layers the forward pass
        does not call (as :func:`layer_inputs`).
    """
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    # Output shapes (per sample) of the leaf modules, in the order they ran.
    ran: list[tuple[nn.Module, tuple[int, ...] | None]] = []
    # Per named layer, how many leaves had run when it was called (one entry per call).
    called: dict[str, list[int]] = {}

    def record(module: nn.Module, _args: tuple, out: Any) -> None:
        shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) and out.ndim else None
        ran.append((module, shape))

    # Eval mode: a batch-norm layer in training mode would update its statistics (and
    # refuse a batch of one); each module's own mode is restored afterwards.
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with evaluation_mode(model):
            _record_calls(model, names, x,
                          lambda n, _args, _kwargs: called.setdefault(n, []).append(len(ran)))
    finally:
        for h in handles:
            h.remove()
    shapes: dict[str, tuple[int, ...]] = {}
    for name, positions in called.items():
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            continue
        found = {_shape_before(ran[:position], layer.in_features) for position in positions}
        if len(found) == 1 and None not in found:  # a layer called twice: the same layout
            shapes[name] = found.pop()
    return shapes


def _shape_before(ran: list[tuple[nn.Module, tuple[int, ...] | None]], n_features: int
                  ) -> tuple[int, ...] | None:
    """The nearest multi-dimensional output, back from the end of ``ran``, of those that
    hold ``n_features`` values (see :func:`feature_shapes`)."""
    for _, shape in reversed(ran):
        if shape is None or math.prod(shape) != n_features:
            return None
        if len([d for d in shape if d > 1]) >= 2:
            return shape
    return None


def _structured_factors(shape: Sequence[int], modes: int) -> tuple[int, ...] | None:
    """Input factors that follow a feature shape: its first ``modes - 1`` axes, the rest merged.

    ``(16, 5, 5)`` gives ``(16, 5, 5)`` for 3 modes and ``(16, 25)`` for 2 (channels,
    positions). None when the shape has fewer than ``modes`` axes longer than 1.
    """
    dims = [int(d) for d in shape if d > 1]
    if len(dims) < modes:
        return None
    return (*dims[: modes - 1], math.prod(dims[modes - 1:]))


def _channel_factors(n: int, modes: int, what: str, unit: str = "channels") -> tuple[int, ...]:
    try:
        return factorize(n, modes, allow_ones=False)
    except ValueError as err:
        raise ValueError(
            f"{what}: cannot reshape {n} {unit} into {modes} modes of size >= 2 ({err}); "
            "pass fewer modes, explicit factors, or use a plain form (cp, tucker, tt)"
        ) from None


def _check_modes(modes: Any, name: str) -> int:
    if not is_int(modes) or modes < 1:
        raise ValueError(f"{name}: modes must be an int >= 1, got {modes!r}")
    return int(modes)


def _check_factors(factors: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(in_factors, out_factors)`` as tuples of ints >= 1; floats are not truncated."""
    pair = (None,) if isinstance(factors, (str, bytes)) else factors
    try:
        s, t = (as_int_tuple(f) for f in pair)
    except (TypeError, ValueError):  # not a pair
        s = t = None
    if s is None or t is None:
        raise TypeError(
            f"{name}: factors must be a pair (in_factors, out_factors) of sequences of ints, "
            f"got {factors!r}"
        )
    if min(s + t, default=1) < 1:
        raise ValueError(f"{name}: factors must be >= 1, got {s} x {t}")
    return s, t


def plan_layer(
    layer: nn.Module, form: str, rate: float, *, name: str = "layer", modes: int | None = None,
    factors: tuple[Sequence[int], Sequence[int]] | None = None, fill_budget: bool = True,
    input_shape: Sequence[int] | None = None,
) -> LayerPlan:
    """Ranks and reshaping of the compressed version of one layer, without decomposing.

    Parameters
    ----------
    layer : torch.nn.Conv2d or torch.nn.Linear
        Not a subclass with its own ``forward`` (TypeError).
    form : str
        One of :data:`FORMS`.
    rate : float
        Budget as a fraction of the layer's parameters, in ``(0, 1]``.
    name : str
        For messages and the plan.
    modes : int, optional
        Reshaping modes of a tensorial form (default :data:`DEFAULT_MODES`). Only for the
        reshaped forms (:data:`RESHAPED`): the plain forms do not reshape.
    factors : (in_factors, out_factors), optional
        Explicit reshaping instead of ``modes``: two sequences of ints ``>= 1`` of the same
        length, whose products are the input and output channels. Only for the reshaped
        forms.
    fill_budget : bool
        See :func:`ranks_within_budget`.
    input_shape : sequence of int, optional
        For an ``nn.Linear``: the shape its features had before they were flattened
        (:func:`feature_shapes`), e.g. ``(16, 5, 5)``. The input factors of a tensorial
        form then follow that layout (channels, then positions) instead of a balanced
        factorization: its first ``modes - 1`` axes, the rest merged.

    Returns
    -------
    LayerPlan

    Raises
    ------
    ValueError
        Unknown form, a rate outside ``(0, 1]``, a rate that leaves no rank, channel counts
        that cannot be reshaped into ``modes`` factors ``>= 2``, factors whose product is not
        the channel count, ``modes`` or ``factors`` given for a plain form.
    TypeError
        A layer that is not Conv2d / Linear, ``factors`` that are not two sequences of ints,
        ``fill_budget`` not a bool.
    """
    form = _check_form(form)
    rate = _check_rate(rate)
    kind = _kind(layer)
    check_bool(fill_budget, "fill_budget")
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"{name}: grouped convolutions are not supported (groups={layer.groups});"
                         " leave the layer out of layers= (default_layers does)")
    # Checked here too (the layers check it when built): compress_network plans every
    # layer before it decomposes any.
    if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
        raise ValueError(f"{name}: only padding_mode='zeros' is supported, got "
                         f"{layer.padding_mode!r}; leave the layer out of layers= "
                         "(default_layers does)")
    n_dense = _dense_count(layer)
    budget = rate * n_dense
    bias = layer.bias is not None
    what = f"layer {name!r} ({kind}, form {form!r}, rate {rate})"
    if form in RESHAPED:
        T, S = layer.weight.shape[:2]
        kernel = tuple(layer.weight.shape[2:]) if kind == "Conv2d" else None
        if factors is not None:
            if modes is not None:
                raise ValueError(f"{name}: give modes= or factors=, not both")
            s, t = _check_factors(factors, name)
            if len(s) != len(t) or len(s) < 1:
                raise ValueError(
                    f"{name}: in_factors {s} and out_factors {t} must have the same length >= 1"
                )
            if math.prod(s) != S or math.prod(t) != T:
                raise ValueError(
                    f"{name}: factors {s} x {t} have products ({math.prod(s)}, {math.prod(t)}) "
                    f"but the layer has {S} input and {T} output channels"
                )
        else:
            m = DEFAULT_MODES[kind] if modes is None else _check_modes(modes, name)
            if kind == "Linear" and m < 2:
                raise ValueError(f"{name}: a fully connected layer needs modes >= 2, got {m}")
            s = None
            if input_shape is not None and kind == "Linear":
                input_shape = tuple(input_shape)
                if not input_shape or not all(is_int(d) and d >= 1 for d in input_shape):
                    raise ValueError(
                        f"{name}: input_shape must be a sequence of positive ints, "
                        f"got {input_shape!r}"
                    )
                if math.prod(input_shape) != S:
                    raise ValueError(
                        f"{name}: input_shape {tuple(input_shape)} holds {math.prod(input_shape)} "
                        f"features but the layer has {S} inputs"
                    )
                s = _structured_factors(input_shape, int(m))
            unit = "features" if kind == "Linear" else "channels"
            if s is None:
                s = _channel_factors(S, int(m), f"{name} input", unit)
            t = _channel_factors(T, int(m), f"{name} output", unit)
        caps = tensorial_max_ranks(form, s, t, kernel)

        def count(r: tuple[int, ...]) -> int:
            return tensorial_n_parameters(form, s, t, kernel, r, bias=bias)

        method, in_f, out_f = form, s, t
        chain = _reshaped_dims(s, t, kernel) if form == "rtt" else None
    else:
        for arg, value in (("modes", modes), ("factors", factors)):
            if value is not None:
                raise ValueError(
                    f"{name}: {arg}= reshapes the channels of the reshaped forms {RESHAPED}; "
                    f"the plain form {form!r} does not reshape, got {arg}={value!r}"
                )
        method = _LOWRANK_CONV[form] if kind == "Conv2d" else "svd"
        caps = lowrank_max_ranks(layer, method)

        def count(r: tuple[int, ...]) -> int:
            return lowrank_n_parameters(layer, method, r)

        in_f = out_f = None
        T, S = layer.weight.shape[:2]
        chain = (S, *layer.weight.shape[2:], T) if method == "tt" else None
    # The fill raises one rank at a time: a tensor train's bonds bound one another (1 x 1
    # kernels: r_2 <= r_1), and a layer refuses ranks its TT-SVD cannot reach.
    ranks = ranks_within_budget(caps, count, budget, fill=fill_budget, what=what,
                                valid=None if chain is None else _tt_reachable(chain))
    return LayerPlan(
        name=name, kind=kind, form=form, method=method, in_factors=in_f, out_factors=out_f,
        ranks=ranks, max_ranks=tuple(caps), n_dense=n_dense, n_compressed=count(ranks),
        budget=budget,
    )


def compress_layer(
    layer: nn.Module, plan: LayerPlan, *, seed: int = 0, n_iter_max: int = 100
) -> nn.Module:
    """Build the compressed layer of ``plan`` from a decomposition of the pretrained ``layer``.

    Parameters
    ----------
    layer : torch.nn.Conv2d or torch.nn.Linear
    plan : LayerPlan
        From :func:`plan_layer`; its ``decomposition_error`` is filled in.
    seed : int
        Seed of the decomposition (ALS initialisation).
    n_iter_max : int
        ALS iterations of the CP and Tucker decompositions (the result is only a starting
        point for training, so a moderate number suffices).

    Returns
    -------
    torch.nn.Module
        A :class:`TensorialConv2d` / :class:`TensorialLinear` or a low-rank layer, same dtype
        and device as ``layer``.
    """
    if plan.method in RESHAPED:
        cls = TensorialConv2d if plan.kind == "Conv2d" else TensorialLinear
        new = cls.from_dense(
            layer, rank=plan.ranks, form=plan.method, in_factors=plan.in_factors,
            out_factors=plan.out_factors, seed=seed, n_iter_max=n_iter_max,
        )
    else:
        # "tt" and "svd" are direct decompositions: they check seed/n_iter_max and ignore them
        new = _LOWRANK_CLASSES[plan.method].from_dense(
            layer, rank=plan.ranks, seed=seed, n_iter_max=n_iter_max
        )
    n = sum(p.numel() for p in new.parameters())
    if n != plan.n_compressed:  # pragma: no cover - counts and layers disagree: a bug
        raise RuntimeError(f"{plan.name}: built {n} parameters, planned {plan.n_compressed}")
    plan.decomposition_error = new.decomposition_error
    return new


def _tt_reachable(dims: Sequence[int]) -> Callable[[tuple[int, ...]], bool]:
    """``valid(ranks)`` for a tensor train on modes ``dims``: every bond ``r_k <= r_(k-1)
    dims[k]`` (``r_(-1) = 1``), the ranks the TT-SVD reaches and the layers accept."""
    def valid(ranks: tuple[int, ...]) -> bool:
        left = 1
        for d, r in zip(dims, ranks):
            if r > left * d:
                return False
            left = r
        return True
    return valid


def _per_layer(option: Any, name: str) -> Any:
    if isinstance(option, Mapping):
        return option.get(name)
    return option


def compress_network(
    model: nn.Module, form: str, rate: float, *, layers: Sequence[str] | None = None,
    modes: int | Mapping[str, int] | None = None,
    factors: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    fill_budget: bool = True, seed: int = 0, n_iter_max: int = 100,
    example_input: torch.Tensor | None = None,
) -> tuple[nn.Module, list[LayerPlan]]:
    """Copy of ``model`` whose layers are replaced by compressed ones at ``rate``.

    Parameters
    ----------
    model : torch.nn.Module
        Pretrained network (left untouched).
    form : str
        One of :data:`FORMS`.
    rate : float
        Every compressed layer keeps at most ``rate`` of its parameters.
    layers : sequence of str, optional
        Dotted names; default :func:`default_layers`.
    modes : int or dict name -> int, optional
        Reshaping modes of the tensorial forms (default :data:`DEFAULT_MODES`: 2 for
        Conv2d, 3 for Linear).
    factors : dict name -> (in_factors, out_factors), optional
        Explicit reshaping for some layers.

        ``modes`` and ``factors`` only concern the reshaped forms; with a plain form they
        are ignored (after checking their layer names, and that ``modes`` are ints
        ``>= 1``), so that one setting serves a comparison across all :data:`FORMS`.
        :func:`plan_layer`, which plans one layer, refuses them for a plain form.
    fill_budget : bool
        See :func:`ranks_within_budget`.
    seed : int
        Seed of the decompositions.
    n_iter_max : int
        ALS iterations of the decompositions (:func:`compress_layer`).
    example_input : torch.Tensor, optional
        An input batch of ``model`` (one sample is enough): the tensorial forms of fully
        connected layers then reshape their features along the layout they had before
        flattening (:func:`feature_shapes`). Without it, balanced factors.

    Returns
    -------
    compressed : torch.nn.Module
        Each compressed layer in the train/eval mode of the layer it replaces.
    plans : list of LayerPlan
        One per compressed layer, with the decomposition errors.

    Raises
    ------
    ValueError
        Unknown layer names and names of layers other than Conv2d / Linear (valid ones
        listed), the ``out_proj`` of an ``nn.MultiheadAttention`` or the ``linear1`` /
        ``linear2`` of an ``nn.TransformerEncoderLayer`` (see :func:`default_layers`), a
        model on the ``'meta'`` device, duplicated names, a layer whose module is registered
        under several names (shared weights), ``modes`` or ``factors`` entries
        for layers that are not compressed, ``n_iter_max < 1``, and everything
        :func:`plan_layer` raises.
    TypeError
        ``seed`` or ``n_iter_max`` not an int, and everything :func:`plan_layer` raises.
    """
    _check_form(form)
    check_materialized(model)  # a meta model would fail inside the first decomposition
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of layer names, not a str")
    names = default_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError("layers must name at least one layer")
    if len(set(names)) != len(names):
        raise ValueError(f"layers has duplicated names: {names}")
    # Every position of a reused module has its name (named_modules() lists it once), so
    # that naming any of them gets the message about shared weights below.
    positions = list(model.named_modules(remove_duplicate=False))
    owned = _read_by_owner(model)
    read = {n: owned[n] for n in names if n in owned}
    valid = [n for n, m in positions if _compressible(m) and n not in owned]
    if read:
        raise ValueError(
            f"layers {list(read)} belong to {sorted(set(read.values()))}, whose "
            "forward reads their weight and bias itself instead of calling them: a factorized "
            "layer in their place would break the model; leave them out. Conv2d/Linear "
            f"layers that can be compressed: {valid}"
        )
    kinds = {n: type(m).__name__ for n, m in positions}
    other = {n: kinds[n] for n in names if n in kinds and n not in valid}
    if other:
        raise ValueError(
            f"layers {other} (name: type) are not plain nn.Conv2d or nn.Linear layers, the "
            "only ones compressed (a subclass with its own forward computes something else); "
            f"Conv2d/Linear layers: {valid}"
        )
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown}; Conv2d/Linear layers: {valid}")
    # Replacing a module registered under several names under one of them would leave the
    # other occurrences dense and end the weight sharing.
    for n, shared in module_positions(model, names).items():
        if len(shared) > 1:
            raise ValueError(
                f"layer {n!r} is one module registered under the names {shared} (shared "
                "weights): compressing it under one name would leave the others dense; give "
                "each position its own module (copy.deepcopy) to compress them apart"
            )
    check_seed(seed, allow_none=True)
    _check_n_iter_max(n_iter_max)
    factors = {} if factors is None else dict(factors)
    per_layer = {"factors": factors}
    if isinstance(modes, Mapping):
        per_layer["modes"] = modes
    for option, given in per_layer.items():
        stray = sorted(set(given) - set(names), key=str)
        if stray:
            raise ValueError(
                f"{option} given for layers {stray} that are not compressed ({names})"
            )
    if form not in RESHAPED:
        for n in names:
            if _per_layer(modes, n) is not None:
                _check_modes(_per_layer(modes, n), n)
        modes, factors = None, {}
    shapes = {} if example_input is None else feature_shapes(model, names, example_input)
    # Plan every layer first so that a bad rate or reshaping fails before any decomposition.
    plans = [
        plan_layer(
            model.get_submodule(n), form, rate, name=n, modes=_per_layer(modes, n),
            factors=factors.get(n), fill_budget=fill_budget, input_shape=shapes.get(n),
        )
        for n in names
    ]
    out = copy.deepcopy(model)
    for plan in plans:
        layer = model.get_submodule(plan.name)
        new = compress_layer(layer, plan, seed=seed, n_iter_max=n_iter_max)
        replace_layer(out, plan.name, new.train(layer.training))  # the layer's own mode
    return out, plans


def _record_calls(model: nn.Module, names: Sequence[str], x: torch.Tensor,
                  on_call: Callable[[str, tuple, dict], None]) -> dict[str, int]:
    """Run ``model(x)`` once (no gradients); ``on_call(name, args, kwargs)`` at each call of
    each named layer, before the call (forward pre-hooks). Returns the number of calls per
    name.

    A module object registered under several names (an activation reused along an
    ``nn.Sequential``, any layer of a reused block) is refused: a hook on it fires at every
    position, and the calls at the named one cannot be told apart from the others.
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of layer names, not a str")
    names = list(dict.fromkeys(names))
    reused = {n: found for n, found in module_positions(model, names).items() if len(found) > 1}
    if reused:
        raise ValueError(
            f"layers {list(reused)} are module objects registered under several names "
            f"({reused}): a hook cannot tell the calls at one of these positions from those at "
            "the others; give each position its own module (copy.deepcopy), or name a layer "
            "that is not reused"
        )
    counts = dict.fromkeys(names, 0)

    def hook_for(n: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            counts[n] += 1
            on_call(n, args, kwargs)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n), with_kwargs=True)
               for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if not counts[n]]
    if missing:
        raise ValueError(f"layers {missing} were not called in the forward pass")
    return counts


def layer_inputs(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs that the named layers receive when ``model`` runs on ``x``.

    Parameters
    ----------
    model : torch.nn.Module
    names : sequence of str
        Dotted names, as ``model.named_modules(remove_duplicate=False)`` gives them.
    x : torch.Tensor, shape (B, *input_shape)

    Returns
    -------
    dict
        name -> tensor ``(B, ...)``: a detached copy of the first positional argument of
        the call, made as the call begins.

    Raises
    ------
    TypeError
        ``names`` is a str.
    ValueError
        A name that is no submodule of ``model`` (the valid names are listed), a module
        object registered under several names (a reused module: its calls at one position
        cannot be told apart), a layer the forward pass does not call, one it calls more
        than once (no single input), or one called without a positional tensor.
    """
    calls: dict[str, list[Any]] = {}

    def keep(n: str, args: tuple, _kwargs: dict) -> None:
        # Copied when the call begins: an in-place layer (ReLU(inplace=True)) overwrites it.
        tensor = args[0] if args and isinstance(args[0], torch.Tensor) else None
        calls.setdefault(n, []).append(None if tensor is None else tensor.detach().clone())

    _record_calls(model, names, x, keep)
    repeated = {n: len(c) for n, c in calls.items() if len(c) > 1}
    if repeated:
        raise ValueError(
            f"layers ran more than once in one forward pass (name: calls "
            f"{repeated}; their parent's forward calls them more than once), so they have no "
            "single input; give each call its own module (copy.deepcopy)"
        )
    store: dict[str, torch.Tensor] = {}
    for n in dict.fromkeys(names):  # in the order of names
        [store[n]] = calls[n]
        if store[n] is None:
            raise ValueError(f"layer {n!r} was called without a positional tensor input")
    return store


@torch.no_grad()
def time_forward(module: nn.Module, x: torch.Tensor, *, repeat: int = 20, warmup: int = 3) -> float:
    """Median wall-clock seconds of ``module(x)`` (no gradients, after warm-up runs).

    Parameters
    ----------
    module : torch.nn.Module
    x : torch.Tensor
    repeat : int
        Timed runs, ``>= 1``; the median is robust to the odd interruption on a shared
        machine.
    warmup : int
        Untimed runs first, ``>= 0``.

    Returns
    -------
    float

    Raises
    ------
    TypeError
        ``repeat`` or ``warmup`` not an int (a bool included).
    ValueError
        ``repeat < 1`` or ``warmup < 0``.
    """
    repeat = check_int(repeat, "repeat", 1)
    warmup = check_int(warmup, "warmup", 0)
    with evaluation_mode(module):
        for _ in range(warmup):
            module(x)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class TNNResult:
    """One compressed network: its layers and accuracies after each stage.

    Attributes
    ----------
    form : str
    rate : float
        Requested rate.
    layers : list of dict
        :class:`LayerPlan` fields per compressed layer, plus ``achieved_rate``.
    n_dense_layers, n_compressed_layers : int
        Parameters of the compressed layers before and after (weights and biases).
    achieved_rate : float
        ``n_compressed_layers / n_dense_layers``.
    n_parameters, n_parameters_dense : int
        Whole network after and before.
    accuracy : dict
        ``"decomposed"`` (right after the decompositions), ``"distilled"`` (after block
        distillation), ``"fine_tuned"`` (after end-to-end fine-tuning), on the test data.
    block_error : dict
        name -> ``{"initial": ..., "final": ...}`` relative squared error of the block
        output on the distillation inputs (:class:`~tenflex.nn.distill.DistillResult`).
    time_s : dict
        Seconds of ``"decompose"``, ``"distill"``, ``"fine_tune"``.
    settings : dict
        The training settings used.
    """

    form: str
    rate: float
    layers: list[dict]
    n_dense_layers: int
    n_compressed_layers: int
    achieved_rate: float
    n_parameters: int
    n_parameters_dense: int
    accuracy: dict[str, float] = field(default_factory=dict)
    block_error: dict[str, dict[str, float]] = field(default_factory=dict)
    time_s: dict[str, float] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dictionary."""
        return asdict(self)


def _plan_dict(plan: LayerPlan) -> dict[str, Any]:
    d = asdict(plan)
    for k in ("in_factors", "out_factors", "ranks", "max_ranks"):
        if d[k] is not None:
            d[k] = list(d[k])
    d["achieved_rate"] = plan.rate
    return d


def compress_and_train(
    pretrained: nn.Module,
    form: str,
    rate: float,
    train_data: tuple[Any, Any],
    test_data: tuple[Any, Any],
    *,
    layers: Sequence[str] | None = None,
    modes: int | Mapping[str, int] | None = None,
    factors: Mapping[str, tuple[Sequence[int], Sequence[int]]] | None = None,
    fill_budget: bool = True,
    reshape_by_layout: bool = False,
    distill_samples: int | None = 10000,
    distill_epochs: int = 3,
    distill_lr: float = 3e-3,
    finetune_samples: int | None = None,
    finetune_epochs: int = 1,
    finetune_lr: float = 1e-3,
    batch_size: int = 128,
    train_evaluation: str = "dense",
    n_iter_max: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> tuple[nn.Module, TNNResult]:
    """Compress at ``rate`` with ``form``, distil block by block, fine-tune, evaluate.

    1. :func:`compress_network` (decompositions of the pretrained weights).
    2. :func:`~tenflex.nn.distill.distill_blocks`: each compressed layer learns, with Adam,
       to reproduce its pretrained layer on the inputs the pretrained network feeds it
       (the first ``distill_samples`` training images, ``distill_epochs`` passes).
    3. End-to-end fine-tuning with cross-entropy (:func:`tenflex.zoo.train`: Adam under the
       one-cycle schedule, peak ``finetune_lr``) on the first ``finetune_samples``
       training images.
    4. Test accuracy after each stage.

    Parameters
    ----------
    pretrained : torch.nn.Module
        Left untouched.
    form, rate, layers, modes, factors, fill_budget
        See :func:`compress_network`.
    reshape_by_layout : bool
        Reshape the features of fully connected layers that read a flattened feature map
        along its layout (:func:`feature_shapes`, found from the first training image)
        instead of into balanced factors.
    train_data, test_data : (images, labels)
        Normalised images ``(N, *input_shape)`` and integer labels ``(N,)``.
    distill_samples : int or None
        Distil on the first ``distill_samples`` training images, an int ``>= 1`` (all ``N``
        of them when there are fewer; None: all).
    distill_epochs : int
        0 skips distillation.
    distill_lr : float
    finetune_samples : int or None
        Fine-tune on the first ``finetune_samples`` training images, an int ``>= 1`` (all
        ``N`` when there are fewer; None: all).
    finetune_epochs : int
        0 skips fine-tuning.
    finetune_lr : float
    batch_size : int
    train_evaluation : {"dense", "chain", "auto"}
        The ``evaluation`` route of the tensorial layers while they are trained and
        evaluated here (see :class:`~tenflex.nn.tensorial.TensorialConv2d`). ``"dense"``
        forms the small kernel from the factors, then runs one convolution / matrix
        product: the same function and gradients as the chain of generalized operations,
        and much faster to train on a CPU at LeNet-5's sizes. The returned layers are set
        back to the route they had (``"auto"`` for new layers).
    n_iter_max : int
        ALS iterations of the initial decompositions.
    seed : int
        Seeds the decompositions, the shuffling and the training.
    progress : bool
        tqdm bars for the training stages.

    Returns
    -------
    model : torch.nn.Module
        The compressed, trained network (eval mode).
    result : TNNResult

    Raises
    ------
    TypeError
        ``train_data`` or ``test_data`` not a pair, images that are not float or of
        another dtype than the model's parameters, labels that are not integers,
        ``distill_samples`` or ``finetune_samples`` neither None nor an int, and as
        :func:`compress_network`.
    ValueError
        Before any decomposition: ``distill_samples`` or ``finetune_samples`` below 1,
        negative epochs, an unknown ``train_evaluation``, ``batch_size`` below 1, a
        learning rate that is not a positive finite number (of a stage that runs), empty
        data or NaN/Inf images, labels whose count differs from the images', fine-tuning
        labels outside the model's classes, and as :func:`compress_network`.
    """
    from tenflex import zoo
    from tenflex.zoo import evaluate, train

    check_materialized(pretrained)  # before the model runs on the data to check the labels
    for value, arg in ((distill_epochs, "distill_epochs"), (finetune_epochs, "finetune_epochs")):
        if not is_int(value) or value < 0:
            raise ValueError(f"{arg} must be an int >= 0, got {value!r}")
    seed = check_seed(seed)  # it also seeds the global RNG below: None is not a seed here
    check_bool(reshape_by_layout, "reshape_by_layout")
    if train_evaluation not in EVALUATIONS:
        raise ValueError(
            f"train_evaluation must be one of {EVALUATIONS}, got {train_evaluation!r}"
        )
    for arg, data in (("train_data", train_data), ("test_data", test_data)):
        if not isinstance(data, (tuple, list)) or len(data) != 2:
            raise TypeError(f"{arg} must be a pair (images, labels), got {type(data).__name__}")
    x_train, y_train = train_data
    x_test, y_test = test_data
    for arg, images in (("train_data", x_train), ("test_data", x_test)):
        # Distillation feeds the images to the layers as they are: raw pixels would fail
        # there, after the decomposition and the first evaluation.
        dtype = images.dtype if torch.is_tensor(images) else np.asarray(images).dtype
        if not (dtype.is_floating_point if torch.is_tensor(images)
                else np.issubdtype(dtype, np.floating)):
            raise TypeError(f"{arg}[0] must hold float (normalised) images, got dtype {dtype}; "
                            "normalise raw pixels first (tenflex.zoo.normalize_images for MNIST)")
    for value, arg in ((distill_samples, "distill_samples"),
                       (finetune_samples, "finetune_samples")):
        if value is None:
            continue
        if not is_int(value):
            raise TypeError(f"{arg} must be None or an int, got {type(value).__name__} "
                            f"({value!r})")
        if value < 1:
            raise ValueError(f"{arg} must be None (all images) or an int >= 1, got {value}")
    # Python ints: the settings of the result are written to JSON.
    distill_samples, finetune_samples = (
        None if v is None else int(v) for v in (distill_samples, finetune_samples))
    # The data and the training options are checked as distillation, fine-tuning and the
    # evaluations check them, but before the decompositions and the first evaluation.
    check_positive_int(batch_size, "batch_size")
    if distill_epochs > 0:
        check_float(distill_lr, "distill_lr", positive=True)
    if finetune_epochs > 0:
        check_float(finetune_lr, "finetune_lr", positive=True)
    dtypes = zoo._model_dtypes(pretrained)
    x_train, y_train = zoo._check_images_labels(x_train, y_train, "train_data", dtypes)
    x_test, y_test = zoo._check_images_labels(x_test, y_test, "test_data", dtypes)
    if finetune_epochs > 0:
        n_classes = zoo._n_outputs(pretrained, x_train[:1])
        if n_classes is not None:
            n = x_train.shape[0] if finetune_samples is None else finetune_samples
            zoo._check_label_range(y_train[:n], n_classes, "train_data")

    t0 = time.perf_counter()
    model, plans = compress_network(
        pretrained, form, rate, layers=layers, modes=modes, factors=factors,
        fill_budget=fill_budget, seed=seed, n_iter_max=n_iter_max,
        example_input=x_train[:1] if reshape_by_layout else None,
    )
    times = {"decompose": time.perf_counter() - t0}
    with evaluation_route(model, train_evaluation):  # the layers' own route after it
        accuracy = {"decomposed": evaluate(model, x_test, y_test)}

        block_error: dict[str, dict[str, float]] = {}
        t0 = time.perf_counter()
        if distill_epochs > 0:
            xd = x_train if distill_samples is None else x_train[:distill_samples]
            res = distill_blocks(
                model, pretrained, [p.name for p in plans], xd, epochs=distill_epochs,
                lr=distill_lr, batch_size=batch_size, seed=seed, progress=progress,
            )
            block_error = {n: {"initial": res.initial_error[n], "final": res.final_error[n]}
                           for n in res.names}
            accuracy["distilled"] = evaluate(model, x_test, y_test)
        times["distill"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if finetune_epochs > 0:
            n = x_train.shape[0] if finetune_samples is None else finetune_samples
            with seeded_rng(seed):  # the CPU's global RNG only, as before
                train(
                    model, (x_train[:n], y_train[:n]), epochs=finetune_epochs,
                    batch_size=batch_size, lr=finetune_lr, seed=seed, optimizer="adam",
                    schedule="onecycle", progress=progress,
                )
            accuracy["fine_tuned"] = evaluate(model, x_test, y_test)
        times["fine_tune"] = time.perf_counter() - t0
    model.eval()

    n_dense = sum(p.n_dense for p in plans)
    n_comp = sum(p.n_compressed for p in plans)
    result = TNNResult(
        form=form,
        rate=float(rate),
        layers=[_plan_dict(p) for p in plans],
        n_dense_layers=n_dense,
        n_compressed_layers=n_comp,
        achieved_rate=n_comp / n_dense,
        n_parameters=sum(p.numel() for p in model.parameters()),
        n_parameters_dense=sum(p.numel() for p in pretrained.parameters()),
        accuracy=accuracy,
        block_error=block_error,
        time_s=times,
        settings={
            "distill_samples": distill_samples, "distill_epochs": distill_epochs,
            "distill_lr": distill_lr, "finetune_samples": finetune_samples,
            "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr,
            "batch_size": batch_size, "seed": seed, "fill_budget": fill_budget,
            "reshape_by_layout": reshape_by_layout,
            "train_evaluation": train_evaluation, "n_iter_max": n_iter_max,
        },
    )
    return model, result
