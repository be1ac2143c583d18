"""Baseline replacements of a span at a given parameter budget, to compare flexible layers with.

* :func:`svd_span`: the span with its largest fully connected layer replaced by a truncated
  SVD (Denton et al. 2014), the rank chosen so that the span fits the budget.
* :func:`linear_span`: the whole span replaced by a purely linear map of rank ``R``,
  ``y = b + B x`` with ``rank(B) <= R``, fitted to the span's sampled outputs by
  reduced-rank regression (the optimal rank-constrained least-squares fit).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from tenflex.checks import check_int
from tenflex.nn.lowrank import SVDLinear
from tenflex.nn.surgery import Span, _check_span, flat_layers, span_inputs, splice
from tenflex.sampling import evaluation_mode

__all__ = ["LinearReplacement", "linear_span", "reduced_rank_regression", "svd_span"]


def _plain_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` whose ``forward`` is ``nn.Linear``'s: ``x W^T + b``, which the SVD
    of ``W`` reproduces (a subclass may compute something else)."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def svd_span(model: nn.Module, span: Span, budget: int) -> tuple[nn.Module, int]:
    """Replace the largest ``nn.Linear`` of ``span`` by its best truncated SVD within ``budget``.

    The span's layers are those it runs: plain ``nn.Sequential`` layers in it (a whole
    ``classifier`` as the span) are looked into, as :func:`tenflex.nn.compress.compress`
    does. A layer used at several positions is replaced at all of them by one SVD (its
    weights stay shared) and counts once.

    Parameters
    ----------
    model : torch.nn.Module
    span : Span
        Must contain at least one ``nn.Linear`` (one whose ``forward`` is ``nn.Linear``'s).
    budget : int
        Maximum number of parameters of the span after compression.

    Returns
    -------
    model : torch.nn.Module
        A copy with the span replaced (the span's other layers are copied too). The
        replacement is the copy of the span with the SVD in it: a child
        ``svd_<first>_<last>`` of a sequential parent, or, for a single layer that another
        parent's ``forward`` calls, that layer under its own name.
    rank : int
        The SVD rank used.

    Raises
    ------
    TypeError
        ``span`` is not a :class:`~tenflex.nn.surgery.Span`, ``budget`` not an int.
    ValueError
        ``span`` resolved on another model, no ``nn.Linear`` in the span, a budget that
        leaves no rank.
    """
    _check_span(model, span)
    budget = check_int(budget, "budget", 1)
    span_module = span.module(model)
    layers = flat_layers(span_module)  # a module used twice counts twice
    linears = [(path, m) for path, m in layers if _plain_linear(m)]
    if not linears:
        raise ValueError(f"span {span.label} has no nn.Linear layer to compress by SVD (the "
                         "layers of plain nn.Sequential modules in it included)")
    path, layer = max(linears, key=lambda item: item[1].weight.numel())
    name = f"{span.parent}.{path}" if span.parent else path
    # The span afterwards: its other layers (with any parameter they share with the layer)
    # and the SVD, once for all the positions of the layer.
    kept = {id(p): p for _, m in layers if m is not layer for p in m.parameters()}
    others = sum(p.numel() for p in kept.values())
    per_rank = layer.in_features + layer.out_features
    bias = layer.out_features if layer.bias is not None else 0
    rank = (budget - others - bias) // per_rank
    if rank < 1:
        raise ValueError(
            f"a budget of {budget} parameters leaves no SVD rank for {name} "
            f"({others + bias + per_rank} parameters at rank 1)"
        )
    rank = min(rank, min(layer.in_features, layer.out_features))
    svd = SVDLinear.from_dense(layer, rank=rank)
    # A copy of the span (a module it uses twice stays one module), with the SVD at every
    # position of the layer.
    replacement = copy.deepcopy(span_module)
    for where, m in layers:
        if m is layer:
            parent, _, key = where.rpartition(".")
            replacement.get_submodule(parent)._modules[key] = svd
    if not span.sequential:
        # A single layer of a non-sequential parent keeps its name (its forward calls it).
        return splice(model, span, replacement._modules[span.names[0]]), rank
    return splice(model, span, replacement, name=f"svd_{span.names[0]}_{span.names[-1]}"), rank


class LinearReplacement(nn.Module):
    """``y = b + U (Pᵀ x)``: a rank-``R`` linear map, input flattened, output reshaped.

    Parameters
    ----------
    in_features, out_features, rank : int
    output_shape : tuple of int, optional
        Shape of one output (default ``(out_features,)``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int,
                 output_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.project = nn.Linear(in_features, rank, bias=False)
        self.expand = nn.Linear(rank, out_features)
        self.output_shape = tuple(output_shape or (out_features,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.project(x.flatten(1)))
        return y.reshape(x.shape[0], *self.output_shape)


def reduced_rank_regression(X: torch.Tensor, Y: torch.Tensor, rank: int
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``R`` linear fit ``Y ≈ 1 bᵀ + X P Uᵀ`` in least squares.

    The ordinary least-squares fit is projected onto the leading ``R`` right singular
    vectors of its fitted values (Izenman 1975), which is optimal for the Frobenius norm.

    Parameters
    ----------
    X : torch.Tensor or array, shape (N, m)
    Y : torch.Tensor or array, shape (N, n)
    rank : int
        ``1 <= R <= min(m, n)``.

    Returns
    -------
    P : torch.Tensor, shape (m, R)
    U : torch.Tensor, shape (n, R)
    b : torch.Tensor, shape (n,)
        All float64, on the device of ``X``.

    Raises
    ------
    TypeError
        ``X`` or ``Y`` not real numbers, ``rank`` not an int.
    ValueError
        ``X``, ``Y`` not matrices with the same number of rows, with NaN or Inf, or
        ``rank`` outside ``[1, min(m, n)]``.
    """
    from tenflex.fit import _as_matrix

    device = X.device if torch.is_tensor(X) else "cpu"
    X, Y = _as_matrix(X, "X", torch.float64, device), _as_matrix(Y, "Y", torch.float64, device)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X must be (N, m) and Y (N, n), got {tuple(X.shape)}, {tuple(Y.shape)}")
    check_int(rank, "rank", 1, min(X.shape[1], Y.shape[1]))
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    # Minimum-norm least squares: well defined when N < m or X is rank-deficient.
    B = torch.linalg.lstsq(Xc, Yc, driver="gelsd").solution       # (m, n)
    fitted = Xc @ B                                               # (N, n)
    if fitted.shape[0] < rank:
        # Fewer samples than R: the fitted values give fewer than R right singular vectors.
        # Zero rows complete them to an orthonormal basis of all n outputs (the extra
        # directions get P = B U = 0, since B's columns lie in the row space of Xc), so
        # P and U still have R columns.
        fitted = torch.cat([fitted, fitted.new_zeros(Y.shape[1] - fitted.shape[0], Y.shape[1])])
    _, _, Vh = torch.linalg.svd(fitted, full_matrices=False)
    U = Vh[:rank].T                                               # (n, R)
    P = B @ U                                                     # (m, R)
    b = y_mean - x_mean @ P @ U.T
    return P, U, b


def linear_span(model: nn.Module, span: Span, X: torch.Tensor, Y: torch.Tensor, rank: int
                ) -> nn.Module:
    """Replace ``span`` by a rank-``R`` linear map fitted to its samples ``(X, Y)``.

    Parameters
    ----------
    model : torch.nn.Module
    span : Span
    X : torch.Tensor, shape (N, m)
        The span's inputs, flattened.
    Y : torch.Tensor, shape (N, n)
        The span's outputs, flattened.
    rank : int

    Returns
    -------
    torch.nn.Sequential
        A copy of ``model`` with ``span`` replaced by a :class:`LinearReplacement`
        (``R (m + n) + n`` parameters).

    Raises
    ------
    TypeError, ValueError
        As :func:`reduced_rank_regression`; also a ``span`` that is not a
        :class:`~tenflex.nn.surgery.Span` of ``model``, a model without ``input_shape``
        or parameters, and ``X`` / ``Y`` widths other than the span's input / output sizes.
    """
    _check_span(model, span)
    example = next(model.parameters(), None)
    if example is None:
        raise ValueError("model has no parameters: linear_span needs its dtype and device")
    in_shape = _input_shape(model, span)
    with torch.no_grad(), evaluation_mode(model):
        out = span.module(model)(example.new_zeros(1, *in_shape))
    m, n = math.prod(in_shape), math.prod(out.shape[1:])
    for arg, A, size in (("X", X, m), ("Y", Y, n)):
        if len(np.shape(A)) != 2 or np.shape(A)[1] != size:
            raise ValueError(
                f"{arg} must have shape (N, {size}): the span {span.label} maps inputs of shape "
                f"{tuple(in_shape)} to outputs of shape {tuple(out.shape[1:])}, flattened; "
                f"got {tuple(np.shape(A))}"
            )
    P, U, b = reduced_rank_regression(X, Y, rank)
    layer = LinearReplacement(m, n, rank, output_shape=tuple(out.shape[1:]))
    with torch.no_grad():
        layer.project.weight.copy_(P.T.to(example))
        layer.expand.weight.copy_(U.to(example))
        layer.expand.bias.copy_(b.to(example))
    child = f"linear_{span.names[0]}_{span.names[-1]}"
    return splice(model, span, layer.to(example.device),
                  name=child if span.sequential else None)


def _input_shape(model: nn.Module, span: Span) -> tuple[int, ...]:
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"linear_span needs the shape of one input of the model, without the batch "
            f"dimension, to probe the span: {type(model).__name__} has no `input_shape` "
            "attribute; set one, e.g. model.input_shape = (1, 28, 28) (the networks of "
            "tenflex.zoo have it)")
    # Probe with the parameters' dtype and device (a CUDA model refuses a CPU input), in eval
    # mode (a training-mode BatchNorm would update its statistics, or fail on one sample).
    with torch.no_grad(), evaluation_mode(model):
        example = next(model.parameters()).new_zeros(1, *shape)
        return tuple(span_inputs(model, span, example).shape[1:])
