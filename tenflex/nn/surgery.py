"""Subnetwork surgery on sequential networks: find a span of layers, cut it out, splice in another.

A *span* is a contiguous chain of children of an :class:`torch.nn.Sequential` model, named
by index or by child name. It is the subnetwork that a flexible layer (or any other module)
replaces: the model becomes ``prefix → replacement → suffix``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tenflex.checks import is_int
from tenflex.sampling import evaluation_mode

__all__ = ["Span", "resolve_span", "span_shapes", "splice"]


@dataclass(frozen=True)
class Span:
    """A contiguous chain ``model[start:stop]`` of a sequential model.

    Its methods (and :func:`span_shapes`, :func:`splice`) raise a ValueError when the model
    they are given does not have ``names`` at positions ``start..stop - 1``: a span
    resolved on another model.

    Attributes
    ----------
    start, stop : int
        Positions of the layers in the order the model runs them; ``stop`` is exclusive.
    names : tuple of str
        Names of the children in the span.
    """

    start: int
    stop: int
    names: tuple[str, ...]

    @property
    def label(self) -> str:
        """A short description, e.g. ``"fc1..fc2"``."""
        return self.names[0] if len(self.names) == 1 else f"{self.names[0]}..{self.names[-1]}"

    def prefix(self, model: nn.Sequential) -> nn.Sequential:
        """The layers before the span (shared with ``model``, not copied)."""
        return _subsequence(_check_span(model, self), 0, self.start)

    def module(self, model: nn.Sequential) -> nn.Sequential:
        """The span itself (shared with ``model``, not copied)."""
        return _subsequence(_check_span(model, self), self.start, self.stop)

    def suffix(self, model: nn.Sequential) -> nn.Sequential:
        """The layers after the span (shared with ``model``, not copied)."""
        return _subsequence(_check_span(model, self), self.stop, len(model))


def _layers(model: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The ``(name, layer)`` pairs that ``nn.Sequential.forward`` runs, in order.

    ``named_children()`` would skip a module object that occurs twice (one activation
    used after two layers), shifting every later position.
    """
    return list(model._modules.items())


def _subsequence(layers: list[tuple[str, nn.Module]], start: int, stop: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(layers[start:stop]))


def _check_span(model: Any, span: Any) -> list[tuple[str, nn.Module]]:
    """The layers of ``model`` after checking that ``span`` was resolved on a model like it."""
    if not isinstance(span, Span):
        raise TypeError(
            f"span must be a Span (from tenflex.nn.surgery.resolve_span(model, ...)), "
            f"got {type(span).__name__} {span!r}"
        )
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    layers = _layers(model)
    names = tuple(name for name, _ in layers[span.start:span.stop])
    if names != tuple(span.names) or span.stop - span.start != len(span.names):
        raise ValueError(
            f"span covers layers {list(span.names)} at positions {span.start}..{span.stop - 1}, "
            f"but the model has {list(names)} there (its layers are "
            f"{[name for name, _ in layers]}); resolve the span on this model"
        )
    return layers


def _index(model: nn.Sequential, key: Any, names: list[str], what: str) -> int:
    if not (is_int(key) or isinstance(key, str)):
        raise TypeError(f"{what} must be a layer index (int) or name (str), got {key!r}")
    if isinstance(key, str):
        if key not in names:
            raise ValueError(f"{what} {key!r} is not a layer of the model; its layers are {names}")
        return names.index(key)
    key = int(key)
    index = key + len(names) if key < 0 else key
    if not 0 <= index < len(names):
        raise ValueError(
            f"{what} index {key} is out of range for a model with {len(names)} layers {names}"
        )
    return index


def resolve_span(model: nn.Module, span: Any) -> Span:
    """Turn a span description into child indices of a sequential model.

    Parameters
    ----------
    model : torch.nn.Sequential
        The network; its children are the layers a span may cover.
    span : int, str, slice, or sequence of int/str
        One layer (index or name); a ``slice`` of indices; a tuple ``(first, last)`` of
        layers, both included; or a list naming every layer of the span, in order.
        Indices are positions in the order ``model.forward`` runs the layers (a module
        that occurs twice counts twice); Python and NumPy integers are accepted.

    Returns
    -------
    Span

    Raises
    ------
    TypeError
        ``model`` is not an ``nn.Sequential`` (or is a subclass with its own ``forward``)
        or ``span`` has the wrong type (``bytes`` included).
    ValueError
        Unknown names, indices out of range, an empty span, or layers that are not a
        contiguous chain in the model's order.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            "model must be a torch.nn.Sequential whose children are its layers in order, "
            f"got {type(model).__name__}; for another module, cut the chain of layers to "
            "compress into an nn.Sequential and call its forward from yours"
        )
    if type(model).forward is not nn.Sequential.forward:
        # Spans, splicing and the prefix all assume that forward runs the children in
        # order; a subclass's forward (a skip connection, a reused layer) would be lost.
        raise TypeError(
            f"{type(model).__name__} is an nn.Sequential with its own forward: its layers "
            "need not run in the listed order, so a span of them cannot be cut out and "
            "replaced; put the chain of layers to compress in a plain nn.Sequential"
        )
    names = [name for name, _ in _layers(model)]
    if isinstance(span, slice):
        if span.step not in (None, 1):
            raise ValueError(f"a span slice must have step 1, got {span.step}")
        indices = list(range(len(names)))[span]
    elif is_int(span) or isinstance(span, str):
        indices = [_index(model, span, names, "span")]
    elif isinstance(span, Sequence) and not isinstance(span, (bytes, bytearray)) and len(span):
        indices = [_index(model, key, names, "span layer") for key in span]
        if isinstance(span, tuple) and len(span) == 2 and indices[1] >= indices[0]:
            indices = list(range(indices[0], indices[1] + 1))
    else:
        raise TypeError(
            "span must be a layer index or name, a slice, a pair (first, last) or a list of "
            f"consecutive layers, got {span!r}"
        )
    if not indices:
        raise ValueError(f"span {span!r} selects no layer of the model {names}")
    if indices != list(range(indices[0], indices[0] + len(indices))):
        hint = "consecutive layers in order, e.g. ('conv2', 'fc2')"
        if isinstance(span, list) and indices[-1] > indices[0]:
            # A list names every layer; a user who meant "from ... to ..." wants the pair.
            first, last = names[indices[0]], names[indices[-1]]
            hint = (f"consecutive layers in order; a list names every layer of the span "
                    f"({names[indices[0]:indices[-1] + 1]}), a tuple ({first!r}, {last!r}) "
                    "names the first and the last")
        raise ValueError(
            f"span {span!r} is not a contiguous chain of layers: it selects "
            f"{[names[i] for i in indices]} from the model's layers {names}; a span must be "
            + hint
        )
    return Span(indices[0], indices[-1] + 1, tuple(names[i] for i in indices))


@torch.no_grad()
def span_shapes(model: nn.Sequential, span: Span, example: torch.Tensor) -> tuple[tuple, tuple]:
    """Shapes of one input and one output of the span, found by running ``example`` through.

    Parameters
    ----------
    model : torch.nn.Sequential
    span : Span
    example : torch.Tensor, shape (B, *model_input_shape)
        A small batch of model inputs.

    Returns
    -------
    input_shape, output_shape : tuple of int
        Without the batch dimension.

    Raises
    ------
    TypeError
        ``span`` is not a :class:`Span`.
    ValueError
        ``span`` was resolved on another model (its names differ from ``model``'s layers
        at its positions).
    """
    _check_span(model, span)
    with evaluation_mode(model):
        inputs = span.prefix(model)(example)
        outputs = span.module(model)(inputs)
    return tuple(inputs.shape[1:]), tuple(outputs.shape[1:])


def splice(model: nn.Sequential, span: Span, replacement: nn.Module, name: str | None = None
           ) -> nn.Sequential:
    """A new sequential model with ``span`` replaced by ``replacement``.

    The other layers are deep-copied, so the original model is left untouched.

    Parameters
    ----------
    model : torch.nn.Sequential
    span : Span
    replacement : torch.nn.Module
        Maps the span's inputs to its outputs (same shapes).
    name : str, optional
        Child name of the replacement; default ``"flex_<first>_<last>"``.

    Returns
    -------
    torch.nn.Sequential

    Raises
    ------
    TypeError
        ``span`` is not a :class:`Span`, or ``name`` is not a non-empty str.
    ValueError
        ``span`` was resolved on another model, or ``name`` is the name of a layer kept
        outside the span (two children cannot share a name).
    """
    import copy

    layers = _check_span(model, span)
    if name is None:
        name = f"flex_{span.names[0]}_{span.names[-1]}"
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str or None, got {type(name).__name__} {name!r}")
    kept = layers[: span.start] + layers[span.stop:]
    if name in {n for n, _ in kept}:
        raise ValueError(
            f"name {name!r} is already the name of a layer kept outside the span "
            f"{[n for n, _ in kept]}; choose another name for the replacement"
        )
    # One memo for all copies: a module used twice stays one (shared) module in the copy.
    memo: dict[int, Any] = {}
    items = [(n, copy.deepcopy(m, memo)) for n, m in layers[: span.start]]
    items.append((name, replacement))
    items += [(n, copy.deepcopy(m, memo)) for n, m in layers[span.stop:]]
    return nn.Sequential(OrderedDict(items))
