"""Sampling a function: inputs ``X``, outputs ``Y`` and Jacobians ``J`` at sampling points.

The decoupling solvers (Dreesen, Ishteva and Schoukens, SIMAX 2015; Zniyed, Usevich, Miron and
Brie, 2021) work on zeroth-order information ``Y[k] = f(x_k)`` and first-order information
``J[:, :, k] = df/dx (x_k)``. :func:`sample_function` computes both for any torch callable or
``nn.Module`` with :mod:`torch.func` (``vmap`` over ``jacrev`` or ``jacfwd``), chunk by chunk
so that memory stays bounded.

Notation: ``N`` sampling points, input dimension ``m = prod(input_shape)``, output dimension
``n = prod(output_shape)``; ``X`` has shape ``(N, m)``, ``Y`` ``(N, n)`` and ``J`` ``(n, m, N)``.

Examples
--------
>>> import torch
>>> from tenflex.sampling import sample_function
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
>>> s = sample_function(net, torch.randn(100, 4))
>>> s.X.shape, s.Y.shape, s.J.shape
(torch.Size([100, 4]), torch.Size([100, 3]), torch.Size([3, 4, 100]))
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tenflex.checks import all_finite, cast_without_overflow, check_bool
from tenflex.cpd import _SOLVER_DTYPES, _as_float_tensor

__all__ = ["Samples", "deterministic_algorithms", "evaluation_mode", "kept_modes",
           "sample_function", "seeded_rng"]

#: Default memory budget (bytes) for the Jacobians of one chunk of sampling points.
CHUNK_BYTES = 256 * 2**20

_MODES = ("auto", "rev", "fwd")


@dataclass
class Samples:
    """Samples of a function ``f``: inputs, outputs and (optionally) Jacobians.

    Attributes
    ----------
    X : torch.Tensor, shape (N, m)
        Sampling points, flattened (``m = prod(input_shape)``).
    Y : torch.Tensor, shape (N, n)
        Outputs ``f(x_k)``, flattened (``n = prod(output_shape)``).
    J : torch.Tensor or None, shape (n, m, N)
        Jacobians, ``J[:, :, k] = df/dx (x_k)``; None if not requested. It is a view of a
        contiguous ``(n, N, m)`` tensor (``J.permute(0, 2, 1)`` is contiguous), the layout in
        which :class:`tenflex.cpd.DenseJacobian` uses it without a copy.
    input_shape : tuple of int
        Shape of one input of ``f`` (without the batch dimension).
    output_shape : tuple of int
        Shape of one output of ``f`` (without the batch dimension).
    """

    X: Tensor
    Y: Tensor
    J: Tensor | None
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] = field(default=())

    @property
    def N(self) -> int:
        """Number of sampling points."""
        return int(self.X.shape[0])

    @property
    def m(self) -> int:
        """Input dimension."""
        return int(self.X.shape[1])

    @property
    def n(self) -> int:
        """Output dimension."""
        return int(self.Y.shape[1])


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device | str = "cpu"):
    """Inside the ``with`` block, torch's global RNG of the CPU (and of ``device`` if it is a
    GPU) is seeded with ``seed``; the caller's RNG state is restored after it, so that
    dropout and other draws inside are reproducible without touching the caller's stream."""
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if (
        device.type == "cuda"
    ) else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def kept_modes(module: nn.Module):
    """Give every submodule of ``module`` its own training flag back on exit, whatever the
    block does to them (``module.train(was)`` afterwards would give all of them one flag).

    Yields
    ------
    callable
        Restores the flags now, e.g. between the phases of a loop.
    """
    flags = {mod: mod.training for mod in module.modules()}

    def restore() -> None:
        for mod, training in flags.items():
            mod.training = training

    try:
        yield restore
    finally:
        restore()


@contextlib.contextmanager
def evaluation_mode(module: Any):
    """Run ``module`` in eval mode, then give every submodule its own training flag back.

    Probing or sampling a network in training mode would update its BatchNorm running
    statistics (and fail on a batch of one) and draw dropout masks; ``module.train(was)``
    afterwards would give all submodules one flag. Anything but an ``nn.Module`` passes
    through untouched.

    Parameters
    ----------
    module : torch.nn.Module or callable

    Yields
    ------
    module
    """
    if not isinstance(module, nn.Module):
        yield module
        return
    with kept_modes(module):
        module.eval()
        yield module


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """Ask torch for deterministic kernels inside the block; the previous setting comes back.

    ``torch.use_deterministic_algorithms(True, warn_only=True)``: an operation that has no
    deterministic kernel warns instead of failing. CPU kernels are deterministic anyway;
    on a GPU this makes training with the same seed give the same weights (atomic-add
    kernels, e.g. the backward of convolutions and of indexing, otherwise sum in a
    varying order).

    Parameters
    ----------
    enabled : bool
        False leaves the setting alone (the block runs as it would without the context).
        Callers pass their ``deterministic`` argument, hence the name in the error.

    Raises
    ------
    TypeError
        ``enabled`` is not a bool.
    """
    check_bool(enabled, "deterministic")
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def _as_points(X: Any, dtype: torch.dtype, device: torch.device | None) -> Tensor:
    """Validate the sampling points and return them as a detached tensor."""
    X = cast_without_overflow(_as_float_tensor(X, "X"), dtype, "X",
                              "rescale X or sample in float64 (dtype=torch.float64)")
    if X.ndim < 2:
        raise ValueError(
            f"X must have shape (N, *input_shape) with a leading batch dimension, got shape "
            f"{tuple(X.shape)}"
        )
    if X.shape[0] < 1 or X[0].numel() < 1:
        raise ValueError(f"X must hold at least one non-empty sampling point, got {tuple(X.shape)}")
    X = X.to(device=device if device is not None else X.device)
    if not all_finite(X):
        bad = int((~torch.isfinite(X)).reshape(X.shape[0], -1).any(dim=1).sum())
        raise ValueError(f"X contains NaN or Inf values ({bad} of {X.shape[0]} points)")
    return X


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def _functional(f: Callable, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """Batched callable evaluating ``f`` in ``dtype`` without touching autograd state.

    For an ``nn.Module``, the parameters and floating buffers are detached and cast to
    ``dtype`` and passed to :func:`torch.func.functional_call`, so the module is not modified
    and no graph reaches its parameters.
    """
    if isinstance(f, nn.Module):
        params = {
            k: (v.detach().to(dtype) if v.is_floating_point() else v.detach())
            for k, v in f.named_parameters()
        }
        buffers = {
            k: (v.detach().to(dtype) if v.is_floating_point() else v) for k, v in f.named_buffers()
        }
        state = {**buffers, **params}

        def call(x: Tensor) -> Tensor:
            return torch.func.functional_call(f, state, (x,))

        return call
    return f


@contextlib.contextmanager
def _quiet_torch_internals():
    """Silence the DeprecationWarning that torch's own forward-mode AD set-up emits (it
    scripts its decompositions with ``torch.jit.script`` on first use); nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning
        )
        yield


def _default_chunk(n: int, m: int, itemsize: int, jacobian: bool) -> int:
    per_point = (n * m if jacobian else n + m) * itemsize
    return max(1, int(CHUNK_BYTES // max(per_point, 1)))


def sample_function(
    f: Callable[[Tensor], Tensor],
    X: Tensor | np.ndarray,
    *,
    jacobian: bool = True,
    chunk_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
    mode: str = "auto",
) -> Samples:
    """Evaluate ``f`` and its Jacobian at the sampling points ``X``.

    Parameters
    ----------
    f : callable or torch.nn.Module
        Maps a batch of shape ``(B, *input_shape)`` to ``(B, *output_shape)``. A module is put
        in eval mode for the duration of the call (its training flags are restored after) and
        evaluated with its parameters cast to ``dtype``; the module itself is not modified.
        A plain callable must accept tensors of ``dtype``. ``f`` must treat the points of a
        batch independently (true for any network in eval mode).
    X : tensor or ndarray, shape (N, *input_shape)
        Sampling points; finite values, ``N >= 1``.
    jacobian : bool, optional
        Compute the Jacobians (default True). If False, ``Samples.J`` is None.
    chunk_size : int, optional
        Points per chunk. Default: as many as keep one chunk's Jacobians near 256 MiB (or
        its outputs, when ``jacobian`` is False).
    dtype : torch.dtype, optional
        ``torch.float64`` (default) or ``torch.float32``; ``X``, ``Y`` and ``J`` are returned
        in it.
    progress : bool, optional
        Show a tqdm progress bar over the chunks.
    mode : {"auto", "rev", "fwd"}, optional
        ``"rev"``: ``vmap(jacrev)`` (one vector-Jacobian product per output), ``"fwd"``:
        ``vmap(jacfwd)`` (one Jacobian-vector product per input), ``"auto"`` (default):
        ``"rev"`` when ``n <= m`` else ``"fwd"``.

    Returns
    -------
    Samples
        ``X`` (N, m), ``Y`` (N, n), ``J`` (n, m, N) or None, ``input_shape``,
        ``output_shape``; all detached, on the device where ``f`` was evaluated (the device of
        the module's parameters, else of ``X``).

    Raises
    ------
    ValueError
        ``X`` without a batch dimension, empty, or with NaN/Inf; unknown ``mode``; bad
        ``chunk_size``; ``f`` returning a batch of the wrong length.
    TypeError
        ``dtype`` not float32/float64, ``X`` not numeric, ``f`` not callable, ``jacobian``
        or ``progress`` not a bool.

    Notes
    -----
    The Jacobian of each point is computed with :func:`torch.func.jacrev` or
    :func:`torch.func.jacfwd` applied to ``x -> f(x[None])[0]``, vectorised over the points
    of a chunk with :func:`torch.func.vmap`; outputs come from the same pass (``has_aux``).
    Nothing is printed and no autograd graph is left behind.
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    if dtype not in _SOLVER_DTYPES:
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    check_bool(jacobian, "jacobian")  # "no" would ask for Jacobians of n m N entries
    check_bool(progress, "progress")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")

    device = _module_device(f) if isinstance(f, nn.Module) else None
    X = _as_points(X, dtype, device)
    N = int(X.shape[0])
    input_shape = tuple(int(s) for s in X.shape[1:])
    m = math.prod(input_shape)

    with evaluation_mode(f):
        call = _functional(f, dtype)
        with torch.no_grad():
            # f gets copies: a layer that works in place (ReLU(inplace=True)) first in f
            # would overwrite the sampling points, and break the Jacobians of a view.
            probe = call(X[:1].clone())
        if not isinstance(probe, Tensor):
            raise TypeError(f"f must return a tensor, got {type(probe).__name__}")
        if probe.ndim < 1 or probe.shape[0] != 1:
            raise ValueError(
                "f must map a batch (B, *input_shape) to (B, *output_shape); for a batch of 1 "
                f"it returned shape {tuple(probe.shape)}"
            )
        output_shape = tuple(int(s) for s in probe.shape[1:])
        n = math.prod(output_shape)
        out_device = probe.device

        if chunk_size is None:
            chunk_size = _default_chunk(n, m, X.element_size(), jacobian)
        chunk_size = int(min(chunk_size, N))
        if mode == "auto":
            mode = "rev" if n <= m else "fwd"

        def single(x: Tensor) -> tuple[Tensor, Tensor]:
            y = call(x.unsqueeze(0).clone()).reshape(-1)
            return y, y

        if jacobian:
            transform = torch.func.jacrev if mode == "rev" else torch.func.jacfwd
            batched = torch.func.vmap(transform(single, has_aux=True))

        Y = torch.empty(N, n, dtype=dtype, device=out_device)
        # Stored as (n, N, m): the solver's layout; J is returned as a (n, m, N) view of it.
        Jbuf = torch.empty(n, N, m, dtype=dtype, device=out_device) if jacobian else None

        starts = range(0, N, chunk_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, total=len(starts), desc="sampling", unit="chunk")
        with torch.no_grad(), _quiet_torch_internals():
            for start in starts:
                stop = min(start + chunk_size, N)
                xb = X[start:stop]
                if jacobian:
                    try:
                        jac, yb = batched(xb)  # jac (B, n, *input_shape), yb (B, n)
                    except RuntimeError as exc:
                        if "randomness" not in str(exc):
                            raise
                        # A module is put in eval mode here; a plain function is called as is.
                        raise ValueError(
                            "f draws random numbers (dropout in training mode?): its "
                            "Jacobians are not those of one function; pass the module itself, "
                            "or put the modules f calls in eval mode (module.eval())"
                        ) from exc
                    Jbuf[:, start:stop, :] = jac.reshape(stop - start, n, m).transpose(0, 1)
                else:
                    yb = call(xb.clone())
                    if yb.shape[0] != stop - start:
                        raise ValueError(
                            f"f returned a batch of {yb.shape[0]} outputs for {stop - start} inputs"
                        )
                Y[start:stop] = yb.reshape(stop - start, n)

    J = Jbuf.permute(0, 2, 1) if jacobian else None
    return Samples(
        X=X.reshape(N, m).to(out_device),
        Y=Y,
        J=J,
        input_shape=input_shape,
        output_shape=output_shape,
    )
