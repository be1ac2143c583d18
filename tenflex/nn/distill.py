"""Training helpers for compressed networks: block-by-block distillation, then fine-tuning.

After some layers of a pretrained network are replaced by compressed versions
(tensorial layers, low-rank layers, flexible layers), each compressed block is first
trained on its own to reproduce the pretrained block on the pretrained network's own
activations (the data-driven reconstruction step of Su et al. 2018, also Zhang et al.
2016 "Accelerating very deep convolutional networks"), then the whole network is
fine-tuned end to end with cross-entropy.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tenflex.checks import all_finite, check_float, check_positive_int, check_seed
from tenflex.nn.surgery import _read_by_owner, module_positions
from tenflex.sampling import deterministic_algorithms, evaluation_mode, kept_modes, seeded_rng

__all__ = ["DistillResult", "distill_blocks", "fine_tune"]


@dataclass
class DistillResult:
    """What :func:`distill_blocks` did.

    Attributes
    ----------
    names : list of str
        The blocks, in the order they were trained.
    losses : dict
        name -> ``numpy.ndarray (epochs,)``, mean squared error per epoch: the
        mini-batch losses ``mean((compressed(x) - pretrained(x))**2)`` averaged with
        weights the batch sizes (the mean over the epoch's samples; a smaller last batch
        counts for less).
    initial_error, final_error : dict
        name -> relative error ``||compressed(X) - pretrained(X)||^2 / ||pretrained(X)||^2``
        over all inputs, before and after training.
    time_s : float
    """

    names: list[str]
    losses: dict[str, np.ndarray] = field(default_factory=dict)
    initial_error: dict[str, float] = field(default_factory=dict)
    final_error: dict[str, float] = field(default_factory=dict)
    time_s: float = 0.0


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _get(model: nn.Module, name: str, argname: str) -> nn.Module:
    names = module_positions(model, [name], argname)[name]
    if len(names) > 1:
        # A hook on it fires at every position: the block's inputs would be those of another.
        raise ValueError(f"{argname}'s block {name!r} is one module registered under the names "
                         f"{names}: its inputs at one position cannot be told apart; give each "
                         "position its own module (copy.deepcopy)")
    return model.get_submodule(name)


@contextlib.contextmanager
def _capture(module: nn.Module):
    """Record the input and output of the first call of ``module`` in a forward pass."""
    store: dict[str, Any] = {}

    def hook(_mod: nn.Module, args: tuple, output: Any) -> None:
        if "input" not in store:
            if len(args) != 1 or not torch.is_tensor(args[0]):
                raise ValueError("distillation needs blocks that take a single tensor input")
            if not torch.is_tensor(output):
                raise ValueError(f"distillation needs blocks that return a single tensor, got "
                                 f"{type(output).__name__} from {type(_mod).__name__}")
            store["input"], store["output"] = args[0].detach(), output.detach()

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def _activations(pretrained: nn.Module, block: nn.Module, xb: torch.Tensor, name: str):
    with torch.no_grad(), _capture(block) as store:
        pretrained(xb)
    if "input" not in store:
        owner = _read_by_owner(pretrained).get(name)
        hint = (f": {owner} reads its weight and bias itself instead of calling it; distil "
                "the owner as a whole" if owner else
                "; name a block the network's forward calls (a training-only branch is not "
                "run in evaluation mode)")
        raise ValueError(
            f"the pretrained block {name!r} was not called in the network's forward pass{hint}")
    return store["input"], store["output"]


def _as_inputs(inputs: Any, dtype: torch.dtype) -> torch.Tensor:
    x = inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs))
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"inputs must have shape (N, ...) with N >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"inputs must be floating point, got dtype {x.dtype}")
    if not all_finite(x):
        raise ValueError("inputs contain NaN or Inf")
    return x.to(dtype)


def _block_error(
    pretrained: nn.Module, teacher: nn.Module, student: nn.Module, x: torch.Tensor,
    batch_size: int, device: torch.device, name: str,
) -> float:
    """Relative squared error of the compressed block against the pretrained one, over
    ``x``; a block whose output has another shape than the pretrained block's is refused
    (the squared difference would broadcast)."""
    num = den = 0.0
    with torch.no_grad(), evaluation_mode(student):
        for start in range(0, x.shape[0], batch_size):
            xin, target = _activations(
                pretrained, teacher, x[start : start + batch_size].to(device), name)
            out = student(xin)
            if not torch.is_tensor(out) or out.shape != target.shape:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(
                    f"compressed block {name!r} returns {got} where the pretrained block "
                    f"returns {tuple(target.shape)}: a block must replace its pretrained "
                    "block with outputs of the same shape"
                )
            num += float((out - target).square().sum())
            den += float(target.square().sum())
    return num / den if den > 0 else num


def distill_blocks(
    compressed: nn.Module,
    pretrained: nn.Module,
    names: list[str] | str,
    inputs: Any,
    *,
    epochs: int = 3,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    deterministic: bool = True,
    progress: bool = False,
) -> DistillResult:
    """Train each compressed block to reproduce the pretrained block, one at a time.

    For every ``name``, the block ``compressed.<name>`` is trained with Adam to minimise
    ``mean ||compressed.<name>(a) - pretrained.<name>(a)||^2`` where ``a`` are the inputs
    that ``pretrained.<name>`` receives inside the pretrained network on ``inputs``
    (captured by a forward hook, batch by batch, so nothing is stored). Only that
    block's parameters move; the pretrained network is left untouched (evaluation mode).
    Each block trains in training mode, and its modules get their own modes back after it.

    Parameters
    ----------
    compressed : torch.nn.Module
        The network with compressed blocks (modified in place).
    pretrained : torch.nn.Module
        The original network, same submodule names.
    names : str or list of str
        Dotted names of the blocks to distil (e.g. ``"conv2"``, ``"features.3"``).
    inputs : torch.Tensor or array_like, shape (N, *input_shape)
        Network inputs (e.g. training images, normalised).
    epochs : int
        Passes over ``inputs`` per block.
    lr : float
        Adam learning rate (a Python or NumPy number).
    batch_size : int
    seed : int
        Seeds the shuffling (a :class:`torch.Generator`) and any randomness inside the
        blocks (global RNG forked and restored); same seed, same result.
    deterministic : bool
        Train under :func:`tenflex.sampling.deterministic_algorithms` (as
        :func:`tenflex.zoo.train` does): on a GPU, the same seed then gives the same weights.
    progress : bool
        tqdm progress bar over blocks and epochs.

    Returns
    -------
    DistillResult
        Per-block loss history and relative errors before / after.

    Raises
    ------
    TypeError
        ``lr`` or ``seed`` of the wrong type, non-float inputs.
    ValueError
        Unknown or repeated block name (valid names listed), bad hyperparameters, empty or non-finite
        inputs, a block that the pretrained forward pass never calls, a block that does
        not take and return one tensor, a compressed block whose output shape differs from
        its pretrained block's or that has no trainable parameters (every block is checked
        on the first batch before any block trains, so that no block is left modified).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("names must name at least one block")
    # A repeated name would train its block twice and overwrite its first history.
    repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if repeated:
        raise ValueError(f"names must be distinct; repeated: {repeated}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_float(lr, "lr", positive=True)
    seed = check_seed(seed)
    pairs = [(n, _get(compressed, n, "compressed"), _get(pretrained, n, "pretrained"))
             for n in names]
    device, _ = _device_dtype(compressed)
    _, dtype = _device_dtype(pretrained)
    x = _as_inputs(inputs, dtype)
    n = x.shape[0]

    result = DistillResult(names=names)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names) * epochs, desc="distilling", unit="epoch")
    generator = torch.Generator().manual_seed(int(seed))
    try:
        with seeded_rng(seed, device), evaluation_mode(pretrained), \
                deterministic_algorithms(deterministic):
            # Every block is checked on a first batch before any block trains: an error on a
            # later block must not come after the earlier ones were modified in place.
            for name, student, teacher in pairs:
                _block_error(pretrained, teacher, student, x[:batch_size], batch_size, device,
                             name)
                if not any(p.requires_grad for p in student.parameters()):
                    raise ValueError(f"compressed block {name!r} has no trainable parameters")
            for name, student, teacher in pairs:
                result.initial_error[name] = _block_error(
                    pretrained, teacher, student, x, batch_size, device, name
                )
                params = [p for p in student.parameters() if p.requires_grad]
                opt = torch.optim.Adam(params, lr=lr)
                history = np.empty(epochs)
                # trains in training mode; each module's own mode comes back afterwards
                with kept_modes(student):
                    student.train()
                    for epoch in range(epochs):
                        perm = torch.randperm(n, generator=generator)
                        total = 0.0
                        for start in range(0, n, batch_size):
                            idx = perm[start : start + batch_size]
                            xin, target = _activations(pretrained, teacher, x[idx].to(device),
                                                         name)
                            opt.zero_grad(set_to_none=True)
                            loss = (student(xin) - target).square().mean()
                            loss.backward()
                            opt.step()
                            total += float(loss.detach()) * len(idx)
                        history[epoch] = total / n
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(block=name, loss=f"{history[epoch]:.3g}", refresh=False)
                result.losses[name] = history
                result.final_error[name] = _block_error(
                    pretrained, teacher, student, x, batch_size, device, name
                )
    finally:
        if bar is not None:
            bar.close()
    result.time_s = time.perf_counter() - t0
    return result


def fine_tune(
    model: nn.Module,
    train_data: tuple[Any, Any],
    *,
    epochs: int = 1,
    batch_size: int = 128,
    lr: float = 1e-4,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: bool = False,
):
    """End-to-end fine-tuning of a compressed classifier with cross-entropy.

    Adam at a constant, small learning rate (the compressed network starts close to a
    good solution), through :func:`tenflex.zoo.train`, with the global RNG forked and
    reseeded so that dropout-like randomness is reproducible too.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, *input_shape)`` to logits; trained in place.
    train_data : (images, labels)
        As :func:`tenflex.zoo.train`.
    epochs, batch_size, lr, seed, weight_decay, progress
        As :func:`tenflex.zoo.train`.

    Returns
    -------
    tenflex.zoo.TrainResult
        Losses per step and per epoch.

    Raises
    ------
    TypeError, ValueError
        As :func:`tenflex.zoo.train`, before any step: among them labels outside
        ``[0, n_classes)``.
    """
    from tenflex.zoo import train

    seed = check_seed(seed)
    with seeded_rng(seed, _device_dtype(model)[0]):
        return train(
            model, train_data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
            optimizer="adam", schedule="constant", weight_decay=weight_decay,
            progress=progress,
        )
