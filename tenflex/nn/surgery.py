"""Subnetwork surgery: find a span of layers, cut it out, splice in another.

A *span* is a contiguous chain of children of one :class:`torch.nn.Sequential` (the model
itself, or a submodule named by its dotted path, e.g. ``"classifier.0"``), or a single
submodule of any model (e.g. ``"classifier"`` of a module whose ``forward`` calls
``self.classifier``). It is the subnetwork that a flexible layer (or any other module)
replaces. In a sequential model the model becomes ``prefix → replacement → suffix``; in
any other model the span's inputs are captured where its ``forward`` calls the span (a chain
of several layers must then run through its ``nn.Sequential``'s ``forward``, which the model
calls once).
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

__all__ = ["Span", "check_materialized", "flat_layers", "module_positions", "resolve_span",
           "span_inputs", "span_shapes", "splice"]


@dataclass(frozen=True)
class Span:
    """A contiguous chain ``parent[start:stop]`` of the children of one module of a model.

    Its methods (and :func:`span_inputs`, :func:`span_shapes`, :func:`splice`) raise a
    ValueError when the model they are given does not have ``names`` at positions
    ``start..stop - 1`` of ``parent``: a span resolved on another model.

    Attributes
    ----------
    start, stop : int
        Positions of the layers among ``parent``'s children, in the order a sequential
        parent runs them; ``stop`` is exclusive.
    names : tuple of str
        Names of the children in the span (without the parent's path).
    parent : str
        Dotted path of the module whose children the layers are (``model.get_submodule``);
        ``""`` for the model itself.
    sequential : bool
        Whether ``parent`` is a plain ``nn.Sequential`` (its ``forward`` runs its children in
        order; :func:`span_inputs` checks that the model calls it, for a span of several
        layers). Otherwise the span is a single child, which the parent calls in its own way.
    """

    start: int
    stop: int
    names: tuple[str, ...]
    parent: str = ""
    sequential: bool = True

    @property
    def paths(self) -> tuple[str, ...]:
        """Dotted paths of the layers in the model, e.g. ``("classifier.0", "classifier.1")``;
        ``names`` for a span of the model's own children. :func:`resolve_span` accepts them."""
        return tuple(f"{self.parent}.{name}" if self.parent else name for name in self.names)

    @property
    def label(self) -> str:
        """A short description, e.g. ``"fc1..fc2"``."""
        paths = self.paths
        return paths[0] if len(paths) == 1 else f"{paths[0]}..{self.names[-1]}"

    @property
    def has_prefix(self) -> bool:
        """Whether the span is a chain of the model's own children in a sequential model, so
        that :meth:`prefix` and :meth:`suffix` exist."""
        return self.sequential and not self.parent

    def _no_prefix(self, what: str) -> ValueError:
        return ValueError(
            f"the span {self.label} is not a chain of the children of a sequential model, so it "
            f"has no {what} module: use span_inputs(model, span, x) for its inputs and "
            "splice(model, span, replacement) for the model without it"
        )

    def prefix(self, model: nn.Sequential) -> nn.Sequential:
        """The layers before the span (shared with ``model``, not copied); only for a span
        of a sequential model's own children (:attr:`has_prefix`)."""
        layers = _check_span(model, self)
        if not self.has_prefix:
            raise self._no_prefix("prefix")
        return _subsequence(layers, 0, self.start)

    def module(self, model: nn.Module) -> nn.Sequential:
        """The span itself (shared with ``model``, not copied)."""
        return _subsequence(_check_span(model, self), self.start, self.stop)

    def suffix(self, model: nn.Sequential) -> nn.Sequential:
        """The layers after the span (shared with ``model``, not copied); only for a span
        of a sequential model's own children (:attr:`has_prefix`)."""
        layers = _check_span(model, self)
        if not self.has_prefix:
            raise self._no_prefix("suffix")
        return _subsequence(layers, self.stop, len(layers))


def flat_layers(module: nn.Sequential) -> list[tuple[str, nn.Module]]:
    """The ``(dotted name, layer)`` pairs a plain ``nn.Sequential`` runs, in order, with
    nested plain ``nn.Sequential`` layers expanded (a module used twice is listed twice).

    Examples
    --------
    >>> block = nn.Sequential(nn.Linear(4, 3), nn.Sequential(nn.ReLU(), nn.Linear(3, 2)))
    >>> [name for name, _ in flat_layers(block)]
    ['0', '1.0', '1.1']
    """
    layers = []
    for name, layer in module._modules.items():  # a module used twice runs twice
        if type(layer) is nn.Sequential:
            layers += [(f"{name}.{inner}", m) for inner, m in flat_layers(layer)]
        else:
            layers.append((name, layer))
    return layers


def module_positions(model: nn.Module, names: Sequence[str], what: str = "model"
                     ) -> dict[str, list[str]]:
    """For each dotted name of ``names``, every name its module object is registered under
    in ``model``, itself included: several for a module reused at several positions (one
    activation along an ``nn.Sequential``, the layers of a reused block), which
    ``named_modules()`` would list once, under its first name only.

    Raises
    ------
    ValueError
        Names that are no submodule of ``model`` (the message lists the valid names).
    """
    found = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if n]
    valid = [n for n, _ in found]
    unknown = [n for n in names if n not in valid]
    if unknown:
        shown = valid if len(valid) <= 40 else valid[:40] + ["..."]
        raise ValueError(f"{what} has no submodule(s) {unknown}; valid names: {shown}")
    aliases: dict[int, list[str]] = {}
    for n, m in found:
        aliases.setdefault(id(m), []).append(n)
    return {n: aliases[id(model.get_submodule(n))] for n in names}


def check_materialized(model: nn.Module) -> None:
    """Refuse a model whose parameters or buffers are on the ``'meta'`` device.

    Such tensors have shapes but no values: sampling, decomposing or evaluating them fails
    deep inside torch (``Tensor.item() cannot be called on meta tensors``).

    Raises
    ------
    ValueError
        Naming the first such tensors and how to materialise the model.
    """
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise ValueError(
            f"the model's parameters or buffers {meta[:5]}{' ...' if len(meta) > 5 else ''} "
            "are on the 'meta' device: they have shapes but no values; materialise the model "
            "first, e.g. model.to_empty(device='cpu') and model.load_state_dict(weights)"
        )


#: Linear children whose owner's ``forward`` reads their ``weight`` and ``bias`` itself
#: (``None``: all of them) instead of calling them.
_READ_BY_OWNER: dict[type, tuple[str, ...] | None] = {
    nn.MultiheadAttention: None,
    # Its inference fast path (eval mode, nn.TransformerEncoder's too) reads them.
    nn.TransformerEncoderLayer: ("linear1", "linear2"),
}


def _read_by_owner(model: nn.Module) -> dict[str, str]:
    """Dotted name -> ``"owner (OwnerClass)"`` for the Linear layers whose owner reads
    their weights itself.

    ``nn.MultiheadAttention.forward`` does not call its ``out_proj`` (a
    ``NonDynamicallyQuantizableLinear``): it reads ``out_proj.weight`` and ``out_proj.bias``;
    the inference fast path of ``nn.TransformerEncoderLayer`` reads ``linear1.weight`` and
    ``linear2.weight``. A factorized layer in their place, which has no ``weight``, breaks
    the model at its first forward pass (in eval mode for the encoder layer):
    :func:`resolve_span` refuses them as spans, ``compress_tnn`` does not compress them,
    ``lowrank.replace_layer`` puts there only a module with a ``weight`` of the same shape.
    """
    owned = {}
    for name, module in model.named_modules(remove_duplicate=False):
        children = next((c for cls, c in _READ_BY_OWNER.items() if isinstance(module, cls)),
                        ())
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and (children is None or child_name in children):
                owned[f"{name}.{child_name}" if name else child_name] = (
                    f"{name or 'the model'} ({type(module).__name__})")
    return owned


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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if span.sequential and not span.parent and not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    try:
        parent = model.get_submodule(span.parent)  # "" is the model itself
    except AttributeError:
        raise ValueError(f"span {span.label} was resolved on another model: this "
                         f"{type(model).__name__} has no submodule {span.parent!r}") from None
    layers = _layers(parent)
    names = tuple(name for name, _ in layers[span.start:span.stop])
    where = f"{span.parent!r}" if span.parent else "the model"
    if names != tuple(span.names) or span.stop - span.start != len(span.names):
        raise ValueError(
            f"span covers layers {list(span.names)} at positions {span.start}..{span.stop - 1}, "
            f"but {where} has {list(names)} there (its layers are "
            f"{[name for name, _ in layers]}); resolve the span on this model"
        )
    return layers


def _kept_modules(model: nn.Module, span: Span) -> list[nn.Module]:
    """The modules of ``model`` that :func:`splice` keeps: every module reachable from the
    model but through the span's entries in its parent (wherever that parent occurs), each
    once. A layer of the span that is registered elsewhere too is among them."""
    parent = model.get_submodule(span.parent)
    kept: list[nn.Module] = []
    seen: set[int] = set()
    stack = [model]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        kept.append(module)
        stack.extend(child for name, child in module._modules.items()
                     if child is not None and not (module is parent and name in span.names))
    return kept


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


def _split_path(key: Any) -> tuple[str, Any]:
    """``("classifier", "0")`` for ``"classifier.0"``; ``("", key)`` for a child name or index."""
    if isinstance(key, str) and "." in key:
        parent, _, child = key.rpartition(".")
        return parent, child
    return "", key


def _plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def resolve_span(model: nn.Module, span: Any) -> Span:
    """Turn a span description into child indices of one module of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        The network. A span of several layers is a chain of children of a plain
        ``nn.Sequential``: the model itself or one of its submodules, which the model's
        ``forward`` must call (checked by :func:`span_inputs`). A span of one layer
        may be any submodule, e.g. ``"classifier"`` of a module whose ``forward`` flattens
        its features and calls ``self.classifier``.
    span : int, str, slice, sequence of int/str, or Span
        One layer (index or name); a ``slice`` of indices; a tuple ``(first, last)`` of
        layers, both included; or a list naming every layer of the span, in order. A
        :class:`Span` (resolved before) is returned as it is, after checking that it is a
        span of ``model``.
        Names are child names of the model (``"fc1"``) or dotted paths of submodules
        (``"classifier.0"``, as ``named_modules`` gives them; every layer of the span in the
        same parent). Indices and slices count the model's own children, in the order
        ``model.forward`` runs them (a module that occurs twice counts twice); Python and
        NumPy integers are accepted.

    Returns
    -------
    Span

    Raises
    ------
    TypeError
        Indices or several layers of a module that is not a plain ``nn.Sequential`` (a
        subclass with its own ``forward`` included: its layers need not run in the listed
        order), ``span`` of the wrong type (``bytes`` included), or a slice whose start, stop
        or step is neither an integer nor None (a bool included: it is no layer index).
    ValueError
        Unknown names or paths, indices out of range, an empty span, layers of different
        parents, layers that are not a contiguous chain in the parent's order, or a layer
        whose weights its owner reads instead of calling it (the ``out_proj`` of an
        ``nn.MultiheadAttention``, the ``linear1`` / ``linear2`` of an
        ``nn.TransformerEncoderLayer``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(span, Span):  # compress(model, resolve_span(model, ...), ...)
        _check_span(model, span)
        return span
    if isinstance(span, slice):
        for part in ("start", "stop", "step"):
            bound = getattr(span, part)
            # A bool would pass as 0 or 1 (slice(True, 3) is layers 1..2), a name fails in
            # Python's own slicing with a message that does not say what a span takes.
            if bound is not None and not is_int(bound):
                raise TypeError(
                    f"a span slice's {part} must be an integer index or None, got "
                    f"{type(bound).__name__} {bound!r} in {span!r}; for a span named by its "
                    "layers use a pair (first, last), e.g. ('fc1', 'fc2')"
                )
        keys: list[Any] = []
    elif is_int(span) or isinstance(span, str):
        keys = [span]
    elif isinstance(span, Sequence) and not isinstance(span, (bytes, bytearray)) and len(span):
        keys = list(span)
        for key in keys:
            if not (is_int(key) or isinstance(key, str)):
                raise TypeError(f"span layer must be a layer index (int) or name (str), got "
                                f"{key!r}")
    else:
        raise TypeError(
            "span must be a layer index or name, a slice, a pair (first, last) or a list of "
            f"consecutive layers, got {span!r}"
        )
    parents = {_split_path(key)[0] for key in keys} or {""}
    if len(parents) > 1:
        raise ValueError(
            f"span {span!r} names layers of different modules {sorted(parents)}: the layers of "
            "a span must be consecutive children of one nn.Sequential, e.g. "
            "('classifier.0', 'classifier.2')"
        )
    path = parents.pop()
    keys = [_split_path(key)[1] for key in keys]
    try:
        parent = model.get_submodule(path)  # "" is the model itself
    except AttributeError:
        paths = [name for name, module in model.named_modules() if name and module._modules]
        raise ValueError(f"{path!r} is not a submodule of the model; its submodules with "
                         f"layers are {paths}") from None
    where = f"{path!r}" if path else type(parent).__name__
    sequential = _plain_sequential(parent)
    single = len(keys) == 1 and isinstance(keys[0], str)
    if not sequential and not single:
        if not isinstance(parent, nn.Sequential):
            raise TypeError(
                f"{where} is a {type(parent).__name__}, not a torch.nn.Sequential: a span "
                "of it is one submodule named by its path, e.g. 'classifier', or a chain of "
                "layers of an nn.Sequential inside it, e.g. ('classifier.0', 'classifier.2'); "
                "indices and chains need an nn.Sequential whose children are its layers in "
                "order"
            )
        # Spans of several layers and the prefix assume that forward runs the children in
        # order; a subclass's forward (a skip connection, a reused layer) would be lost.
        raise TypeError(
            f"{type(parent).__name__} is an nn.Sequential with its own forward: its layers "
            "need not run in the listed order, so a chain of them cannot be cut out and "
            "replaced; name one layer, or put the chain of layers to compress in a plain "
            "nn.Sequential"
        )
    names = [name for name, _ in _layers(parent)]
    if isinstance(span, slice):
        if span.step not in (None, 1):
            raise ValueError(f"a span slice must have step 1, got {span.step}")
        indices = list(range(len(names)))[span]
    else:
        what = "span" if is_int(span) or isinstance(span, str) else "span layer"
        indices = [_index(parent, key, names, what) for key in keys]
        if isinstance(span, tuple) and len(span) == 2 and indices[1] >= indices[0]:
            indices = list(range(indices[0], indices[1] + 1))
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
    resolved = Span(indices[0], indices[-1] + 1, tuple(names[i] for i in indices), path,
                    sequential)
    owned = _read_by_owner(model)
    read = [p for p in resolved.paths if p in owned]
    if read:
        raise ValueError(
            f"the span {resolved.label} holds {read}, whose weights {owned[read[0]]} reads "
            "itself instead of calling the layer: a replacement without them would break the "
            "model; choose a span the owner calls as a whole (e.g. the owner itself)"
        )
    return resolved


@torch.no_grad()
def span_inputs(model: nn.Module, span: Span, x: torch.Tensor) -> torch.Tensor:
    """The inputs of the span when ``model`` runs on the batch ``x``.

    For a span of a sequential model's own children this runs the layers before it
    (:meth:`Span.prefix`); otherwise it runs the whole model once and captures what its
    ``forward`` hands the span's first layer (a forward pre-hook), flattening included
    (``torch.flatten(x, 1)`` in a ``forward`` before ``self.classifier``), and checks that
    a span of several layers runs as a chain: its ``nn.Sequential`` is called, once, and its
    layers run nowhere else. The inputs are copied as the call begins (a span that starts
    with an in-place layer, ``nn.ReLU(inplace=True)``, overwrites them). The model runs in
    whatever train/eval mode it is in; no gradients are recorded.

    Parameters
    ----------
    model : torch.nn.Module
    span : Span
    x : torch.Tensor, shape (B, *model_input_shape)

    Returns
    -------
    torch.Tensor, shape (B, *span_input_shape)

    Raises
    ------
    ValueError
        ``span`` was resolved on another model; the model's ``forward`` did not call the
        span's first layer exactly once (a layer that does not run has no inputs, a module
        used twice has no single input), or called
        it with anything but one tensor; for a span of several layers inside the model, the
        ``forward`` did not call their ``nn.Sequential`` exactly once (a ``forward`` that
        loops over its layers, ``for layer in self.blocks: x = x + layer(x)``, does not run
        them as the chain that the span's module computes), or also calls one of them
        outside it (``self.blocks[2](y)``: the replacement would not be there).
    """
    layers = _check_span(model, span)
    if span.has_prefix:
        return span.prefix(model)(x)
    first = layers[span.start][1]
    calls: list[tuple[tuple, dict]] = []
    parent_calls: list[None] = []

    def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
        # Copied as the call begins: a span that starts with an in-place layer
        # (ReLU(inplace=True)) overwrites its input, which would then pass for the inputs.
        calls.append((tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                      kwargs))

    handles = [first.register_forward_pre_hook(capture, with_kwargs=True)]
    # A chain of several layers runs as one only inside nn.Sequential.forward: a forward
    # that loops over the layers itself (x = x + layer(x)) combines them in its own way,
    # which the span's module, and a replacement fitted to it, would not reproduce.
    chain = span.sequential and len(span.names) > 1
    outside: list[str] = []  # layers of the chain called outside the parent's forward
    if chain:
        parent = model.get_submodule(span.parent)
        depth = [0]

        def enter(module: nn.Module, args: tuple) -> None:
            parent_calls.append(None)
            depth[0] += 1

        def leave(module: nn.Module, args: tuple, output: Any) -> None:
            depth[0] -= 1

        def called(path: str):
            def hook(module: nn.Module, args: tuple) -> None:
                if not depth[0] and path not in outside:
                    outside.append(path)
            return hook

        handles += [parent.register_forward_pre_hook(enter), parent.register_forward_hook(leave)]
        # A layer registered elsewhere in the model too (one activation object in two
        # places) may run there: the splice keeps it there. A layer of the span alone that
        # runs outside the parent's forward is reached by index or name (self.blocks[2]).
        kept = {id(module) for module in _kept_modules(model, span)}
        handles += [layer.register_forward_pre_hook(called(path))
                    for path, (_, layer) in zip(span.paths, layers[span.start:span.stop])
                    if id(layer) not in kept]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise ValueError(
            f"the model's forward did not call the span's first layer {span.paths[0]} on the "
            f"batch (in {'training' if model.training else 'eval'} mode), so the span has no "
            "inputs; choose a span that the forward runs (a branch used only in training mode "
            "does not run in eval mode, where compress runs the model)"
        )
    if chain and len(parent_calls) != 1:
        if not parent_calls:
            raise ValueError(
                f"the model's forward never calls {span.parent!r}, the nn.Sequential that holds "
                f"the span {span.label}, so nn.Sequential.forward does not run the span's "
                "layers as a chain (a forward that loops over them, e.g. x = x + layer(x), "
                "combines them in its own way, which a replacement of the chain would not "
                "reproduce); choose a span the model calls as one module (a single layer, e.g. "
                f"{span.paths[0]!r}, or a submodule its forward calls), or restructure the "
                "model so that its forward calls an nn.Sequential holding the chain"
            )
        raise ValueError(
            f"the model's forward calls {span.parent!r}, the nn.Sequential that holds the span "
            f"{span.label}, {len(parent_calls)} times on one batch, so the span has no single "
            "input; a chain of layers must be in an nn.Sequential that runs once (give a "
            "module used twice its own instances)"
        )
    if outside:
        raise ValueError(
            f"the model's forward calls {', '.join(outside)} of the span {span.label} outside "
            f"{span.parent!r}'s own forward too (by index or name, e.g. self.blocks[2](x)): "
            "after the splice the replacement would not be there; choose a span whose layers "
            f"the model uses only through {span.parent!r}, or give the layer used elsewhere its "
            "own instance"
        )
    if len(calls) != 1:
        raise ValueError(
            f"the model's forward called the span's first layer {span.paths[0]} "
            f"{len(calls)} times on one batch, so the span has no single input; a span must "
            "start at a module that runs once (give a module used twice its own instances)"
        )
    args, kwargs = calls[0]
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise ValueError(
            f"the model's forward calls {span.paths[0]} with {len(args)} positional and "
            f"{len(kwargs)} keyword arguments; a span maps one tensor to one tensor"
        )
    return args[0]


@torch.no_grad()
def span_shapes(model: nn.Module, span: Span, example: torch.Tensor) -> tuple[tuple, tuple]:
    """Shapes of one input and one output of the span, found by running ``example`` through.

    Parameters
    ----------
    model : torch.nn.Module
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
        ``span`` was resolved on another model (its names differ from the layers at its
        positions), or its inputs cannot be captured or its layers do not run as a chain
        (see :func:`span_inputs`).
    """
    _check_span(model, span)
    with evaluation_mode(model):
        inputs = span_inputs(model, span, example)
        outputs = span.module(model)(inputs)
    return tuple(inputs.shape[1:]), tuple(outputs.shape[1:])


def splice(model: nn.Module, span: Span, replacement: nn.Module, name: str | None = None
           ) -> nn.Module:
    """A copy of ``model`` with ``span`` replaced by ``replacement``.

    The other layers are deep-copied, so the original model is left untouched; the
    replacement is inserted as it is.

    Parameters
    ----------
    model : torch.nn.Module
    span : Span
    replacement : torch.nn.Module
        Maps the span's inputs to its outputs (same shapes).
    name : str, optional
        Child name of the replacement in a sequential parent; default
        ``"flex_<first>_<last>"``. The single layer of another parent keeps its name (the
        parent's ``forward`` calls it by that name).

    Returns
    -------
    torch.nn.Module
        An ``nn.Sequential`` for a span of a sequential model's own children; otherwise a
        copy of ``model``'s class.

    Raises
    ------
    TypeError
        ``span`` is not a :class:`Span`, or ``name`` is not a non-empty str.
    ValueError
        ``span`` was resolved on another model, ``name`` contains a ``"."`` or is the name
        of a layer kept outside the span (two children cannot share a name), or another name than the
        layer's own for a span in a parent that is not a sequential model.
    """
    import copy

    layers = _check_span(model, span)
    if name is None:
        name = f"flex_{span.names[0]}_{span.names[-1]}" if span.sequential else span.names[0]
    elif not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str or None, got {type(name).__name__} {name!r}")
    elif "." in name:
        # A child named "a.b" would be unreachable by its path (get_submodule,
        # load_state_dict); torch refuses it in add_module, with a KeyError.
        raise ValueError(f"name {name!r} contains '.': the replacement's child name must be "
                         "one name, not a dotted path (e.g. 'flex_fc1_fc2')")
    if not span.sequential and name != span.names[0]:
        raise ValueError(
            f"the span {span.label} is called by its parent's forward as {span.names[0]!r}: "
            f"the replacement keeps that name, not {name!r}"
        )
    kept = layers[: span.start] + layers[span.stop:]
    if name in {n for n, _ in kept}:
        raise ValueError(
            f"name {name!r} is already the name of a layer kept outside the span "
            f"{[n for n, _ in kept]}; choose another name for the replacement"
        )
    if span.has_prefix:
        # One memo for all copies: a module used twice stays one (shared) module in the copy.
        memo: dict[int, Any] = {}
        items = [(n, copy.deepcopy(m, memo)) for n, m in layers[: span.start]]
        items.append((name, replacement))
        items += [(n, copy.deepcopy(m, memo)) for n, m in layers[span.stop:]]
        return nn.Sequential(OrderedDict(items))
    # The span's layers are copied too (a layer used again outside the span must stay),
    # then dropped from the copy.
    result = copy.deepcopy(model)
    parent = result.get_submodule(span.parent)
    copied = list(parent._modules.items())
    parent._modules.clear()
    for n, m in copied[: span.start] + [(name, replacement)] + copied[span.stop:]:
        parent._modules[n] = m
    return result
