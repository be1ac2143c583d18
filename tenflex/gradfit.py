"""Gradient-based training of a layer on sampled data ``X, Y, J``: the baseline of CMTF-ALS.

:func:`fit_by_gradient` trains a layer in place by Adam (Kingma and Ba, ICLR 2015) on the
same data and, for a :class:`~tenflex.nn.FlexibleLayer` with Jacobians, the same cost as
:func:`tenflex.fit.cmtf_als`,

.. math::

    L(W, V, C, b) = \\frac{\\|J - [[W, V, H(V, C)]]\\|^2}{\\|J\\|^2}
    + \\lambda \\frac{\\|Y - 1 b^T - G(V, C) W^T\\|^2}{\\|Y - \\bar Y\\|^2}
    + \\rho (\\|W\\|^2 + \\|C\\|^2),

so that the two can be compared by time to accuracy from the same initialisation. The
Jacobian term is evaluated from the structure, ``||J||^2 - 2 <J, [[W, V, H]]> +
||[[W, V, H]]||^2``, through the products of :class:`~tenflex.cpd.JacobianTensor`: the
model's Jacobian tensor is never formed.

Notation: ``X`` (N, m), ``Y`` (N, n), ``J`` (n, m, N), ``W`` (n, R), ``V`` (m, R),
``C`` (D, R), ``b`` (n,), ``Z = X V``, ``G[k, r] = g_r(Z[k, r])``, ``H[k, r] = g_r'(Z[k, r])``.
For a layer with a subspace (``FlexibleLayer(..., subspace=k)``) the input directions are
``V = P Q`` with the projection ``P`` (m, k) and the layer's attribute ``V`` = ``Q`` (k, R),
and ``Z = (X P) Q``, as in the layer's forward pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tenflex.checks import asks_to_stop, check_int, check_seed
from tenflex.cpd import (
    _SOLVER_DTYPES,
    DenseJacobian,
    JacobianTensor,
    _as_float_tensor,
    as_jacobian_tensor,
    cp_norm_sq,
)
from tenflex.fit import _check_magnitudes, _Problem
from tenflex.model import _to_finite
from tenflex.nn.flexible import FlexibleLayer
from tenflex.sampling import kept_modes, seeded_rng

__all__ = ["GradientFitResult", "fit_by_gradient"]



@dataclass
class GradientFitResult:
    """Result of :func:`fit_by_gradient`; one record at the start and after each epoch.

    Attributes
    ----------
    time_s : numpy.ndarray, shape (n_records,)
        Training wall time (seconds) since the start at each record; the time spent in the
        callback and in the full-data cost evaluations of the records is excluded.
        ``time_s[0] = 0``.
    epoch : numpy.ndarray, shape (n_records,)
        Epochs done at each record (float; ``epoch[0] = 0``).
    cost : numpy.ndarray, shape (n_records,)
        Full-data cost at each record: with ``J`` the total cost of
        :func:`tenflex.fit.cmtf_als` (``cost_jacobian + lam * cost_output`` plus the ridge
        term); without ``J`` the relative output error ``cost_output``.
    cost_jacobian : numpy.ndarray, shape (n_records,)
        ``||J - [[W, V, H]]||^2 / ||J||^2``; NaN when ``J`` is None.
    cost_output : numpy.ndarray, shape (n_records,)
        ``||Y - layer(X)||^2 / ||Y - Ybar||^2``.
    n_epochs : int
        Epochs done.
    stop_reason : str
        Why training stopped.
    """

    time_s: np.ndarray
    epoch: np.ndarray
    cost: np.ndarray
    cost_jacobian: np.ndarray
    cost_output: np.ndarray
    n_epochs: int
    stop_reason: str


# ---------------------------------------------------------------------------- validation
def _check_number(value: Any, name: str, low: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    ok = math.isfinite(value) and (value > low if strict else value >= low)
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value!r}")
    return value


def _as_data(A: Any, name: str, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``A`` in the layer's dtype; finite values that overflow it get their own message."""
    A = _to_finite(_as_float_tensor(A, name), name, dtype, device, "layer")
    if A.ndim < 2:
        raise ValueError(f"{name} must have shape (N, ...) with N samples, got {tuple(A.shape)}")
    return A


def _jacobian_like(J: Any, dtype: torch.dtype, device: torch.device) -> JacobianTensor:
    """``J`` as a JacobianTensor of the layer's dtype and device."""
    if isinstance(J, DenseJacobian) and (J.dtype != dtype or J.device != device):
        return DenseJacobian(J.to_dense().to(device=device), dtype=dtype)
    if isinstance(J, JacobianTensor):
        if J.dtype != dtype or J.device != device:
            raise TypeError(
                f"J is a JacobianTensor of dtype {J.dtype} on {J.device}; the layer has dtype "
                f"{dtype} on {device}"
            )
        return J
    if isinstance(J, Tensor):
        J = J.detach().to(device=device)
    return as_jacobian_tensor(J, dtype=dtype)


# ---------------------------------------------------------------------------- the costs
class _Inner(torch.autograd.Function):
    """``<J, [[W, V, H]]>`` for any JacobianTensor, its gradient from the MTTKRPs.

    ``d/dV = mttkrp_input(W, H)``, ``d/dW = mttkrp_output(T, H)``, ``d/dH =
    mttkrp_samples(T, W)`` with ``T = contract_input(V)``.
    """

    @staticmethod
    def forward(ctx: Any, V: Tensor, W: Tensor, H: Tensor, Jt: JacobianTensor) -> Tensor:
        T = Jt.contract_input(V)
        ctx.Jt = Jt
        ctx.save_for_backward(T, W, H)
        return (Jt.mttkrp_output(T, H) * W).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        T, W, H = ctx.saved_tensors
        Jt = ctx.Jt
        dV = grad * Jt.mttkrp_input(W, H) if ctx.needs_input_grad[0] else None
        dW = grad * Jt.mttkrp_output(T, H) if ctx.needs_input_grad[1] else None
        dH = grad * Jt.mttkrp_samples(T, W) if ctx.needs_input_grad[2] else None
        return dV, dW, dH, None


class _FlexibleCost:
    """Cost of :func:`tenflex.fit.cmtf_als` for a FlexibleLayer, on all samples or a batch.

    With a subspace the directions are ``V = P Q`` (:meth:`directions`), and the branch
    inputs and ``J_B V`` are computed factored, ``(X P) Q`` and ``(J_B P) Q``.

    For a dense ``J`` the samples of a batch are gathered from the ``(n, N, m)`` storage
    of :class:`~tenflex.cpd.DenseJacobian` (rows of ``m`` contiguous entries), and the
    Jacobian term's gradient flows by autograd through the product ``J_B V``; for any other
    JacobianTensor only full batches are possible, with the gradient from its MTTKRPs.
    """

    def __init__(
        self, layer: FlexibleLayer, X: Tensor, Y: Tensor, Jt: JacobianTensor, lam: float,
        ridge: float,
    ) -> None:
        self.layer, self.X, self.Y, self.Jt = layer, X, Y, Jt
        self.lam, self.ridge = lam, ridge  # J was checked by fit.py's _check_magnitudes
        # The solver's own problem: same normalisations, and its cost for the records.
        self.problem = _Problem(X, Y, Jt, layer.basis, lam, ridge)
        self.norm_j, self.norm_y = self.problem.norm_j, self.problem.norm_y
        self.dense = Jt.data if isinstance(Jt, DenseJacobian) else None  # (n, N, m)
        # ||J_k||^2 per sample, so that ||J_B||^2 of a batch is a sum.
        self.sample_norm_sq = None if self.dense is None else (self.dense**2).sum(dim=(0, 2))

    def directions(self) -> Tensor:
        """The layer's input directions ``V`` (m, R): ``P Q`` with a subspace, as in its
        forward pass (autograd then carries the gradient to both ``P`` and ``Q``)."""
        layer = self.layer
        return layer.V if layer.P is None else layer.P @ layer.V

    def branch_inputs(self, X: Tensor) -> Tensor:
        """``Z = X V``, or ``(X P) Q`` with a subspace, as in the layer's forward pass."""
        layer = self.layer
        return X @ layer.V if layer.P is None else (X @ layer.P) @ layer.V

    def branches(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        Phi, dPhi = self.layer.basis.values_and_derivatives(Z)
        C = self.layer.C
        return torch.einsum("krd,dr->kr", Phi, C), torch.einsum("krd,dr->kr", dPhi, C)

    def bias(self) -> Tensor | float:
        return 0.0 if self.layer.b is None else self.layer.b

    def ridge_term(self) -> Tensor | float:
        if self.ridge == 0:
            return 0.0
        W, C = self.layer.W, self.layer.C
        return self.ridge * ((W * W).sum() + (C * C).sum())

    def batch_terms(self, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Unnormalised-by-batch contributions ``(cj_B, co_B)`` of the samples ``idx``.

        ``cj_B = (||J_B||^2 - 2 <J_B, [[W, V, H_B]]> + ||[[W, V, H_B]]||^2) / ||J||^2`` and
        ``co_B = ||Y_B - 1 b^T - G_B W^T||^2 / ||Y - Ybar||^2``; summed over a partition
        of the samples they give the full-data terms. ``idx`` None: all samples.
        """
        W, V = self.layer.W, self.directions()
        X = self.X if idx is None else self.X.index_select(0, idx)
        Y = self.Y if idx is None else self.Y.index_select(0, idx)
        G, H = self.branches(self.branch_inputs(X))
        if idx is None and self.dense is None:
            inner, norm_jb = _Inner.apply(V, W, H, self.Jt), self.norm_j
        else:
            A = self.dense if idx is None else self.dense.index_select(1, idx)  # (n, B, m)
            n, B, m = A.shape
            # T[:, k, r] = J_k v_r, factored as (J_k P) Q with a subspace.
            T = self.branch_inputs(A.reshape(n * B, m)).reshape(n, B, -1)
            inner = (torch.einsum("ikr,kr->ir", T, H) * W).sum()
            norm_jb = self.norm_j if idx is None else self.sample_norm_sq[idx].sum()
        cj = (norm_jb - 2 * inner + cp_norm_sq(W, V, H)) / self.norm_j
        if self.lam > 0:
            E = Y - self.bias() - G @ W.T
            co = (E * E).sum() / self.norm_y
        else:  # the output term does not enter the loss
            co = torch.zeros((), dtype=X.dtype, device=X.device)
        return cj, co

    def batch_loss(self, idx: Tensor | None) -> Tensor:
        N = self.X.shape[0]
        cj, co = self.batch_terms(idx)
        scale = 1.0 if idx is None else N / idx.numel()
        return scale * (cj + self.lam * co) + self.ridge_term()

    @torch.no_grad()
    def full_costs(self) -> tuple[float, float, float]:
        """``(cost_jacobian, cost_output, total)`` exactly as ``cmtf_als`` computes them."""
        W, V, C = self.layer.W, self.directions(), self.layer.C
        G, H = self.branches(self.branch_inputs(self.X))
        b = torch.zeros_like(self.Y[0]) + self.bias()
        return self.problem.costs(W, V, C, b, G, H, self.Jt.contract_input(V))


class _OutputCost:
    """``||Y - layer(X)||^2 / ||Y - Ybar||^2`` for any layer, on all samples or a batch."""

    def __init__(self, layer: nn.Module, X: Tensor, Y: Tensor, chunk: int) -> None:
        self.layer, self.X, self.Y, self.chunk = layer, X, Y, chunk
        Yc = Y - Y.mean(dim=0)
        self.norm_y = float((Yc * Yc).sum())
        if self.norm_y == 0:
            raise ValueError("Y is constant: the relative output error has no scale")

    def _sq_error(self, X: Tensor, Y: Tensor) -> Tensor:
        out = self.layer(X)
        n_out = Y[0].numel()
        if not isinstance(out, Tensor) or out.ndim < 1 or out.numel() != X.shape[0] * n_out:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"Y must match the layer's output: layer(X) of {X.shape[0]} samples has shape "
                f"{shape}, Y has shape (N, ...) = {(X.shape[0], *Y.shape[1:])}"
            )
        E = Y.reshape(Y.shape[0], -1) - out.reshape(out.shape[0], -1)
        return (E * E).sum()

    def batch_loss(self, idx: Tensor | None) -> Tensor:
        if idx is None:
            return self._sq_error(self.X, self.Y) / self.norm_y
        N = self.X.shape[0]
        err = self._sq_error(self.X.index_select(0, idx), self.Y.index_select(0, idx))
        return err / (self.norm_y * idx.numel() / N)

    @torch.no_grad()
    def full_costs(self) -> tuple[float, float, float]:
        N = self.X.shape[0]
        err = sum(
            float(self._sq_error(self.X[s : s + self.chunk], self.Y[s : s + self.chunk]))
            for s in range(0, N, self.chunk)
        )
        co = err / self.norm_y
        return math.nan, co, co


# ---------------------------------------------------------------------------- training
def fit_by_gradient(
    layer: nn.Module,
    X: Tensor | np.ndarray,
    Y: Tensor | np.ndarray,
    J: Tensor | np.ndarray | JacobianTensor | None = None,
    *,
    lam: float = 1.0,
    epochs: int = 100,
    lr: float = 1e-3,
    batch_size: int | None = None,
    seed: int = 0,
    time_limit: float | None = None,
    ridge: float = 0.0,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    progress: bool = False,
) -> GradientFitResult:
    """Train ``layer`` in place by Adam on outputs (and Jacobians) of sampled data.

    The gradient-based baseline of :func:`tenflex.fit.cmtf_als`: Adam (Kingma and Ba,
    "Adam: A method for stochastic optimization", ICLR 2015) on minibatches of samples.

    * ``J`` None: any layer; the loss is the relative output error
      ``||Y - layer(X)||^2 / ||Y - Ybar||^2`` (``lam`` plays no role).
    * ``J`` given: ``layer`` must be a :class:`~tenflex.nn.FlexibleLayer` and the loss is
      exactly the cost of :func:`~tenflex.fit.cmtf_als`,
      ``||J - [[W, V, H]]||^2 / ||J||^2 + lam ||Y - 1 b^T - G W^T||^2 / ||Y - Ybar||^2
      + ridge (||W||^2 + ||C||^2)``, whose Jacobian term is evaluated from the structure,
      ``||J_B||^2 - 2 sum_k sum_r H[k, r] w_r^T J_k v_r + ||[[W, V, H_B]]||^2`` on a batch
      ``B``, without forming the model's Jacobians. The basis' affine maps stay fixed, as
      in ``cmtf_als``. For a layer with a subspace (``FlexibleLayer(..., subspace=k)``,
      e.g. the ``layer`` of :func:`tenflex.nn.compress` with ``subspace=k``) the
      directions are ``V = P Q`` and the branch inputs ``Z = (X P) Q``, as in the layer's
      forward pass; ``P`` trains with the other parameters unless it is frozen (e.g.
      ``layer.P.requires_grad_(False)`` keeps the active subspace fixed). The ridge term
      does not include ``P``.

    A minibatch's loss uses the full-data normalisation scaled by ``|B| / N`` (the ridge
    term once), so the minibatch losses of a pass average to the full-data cost (exactly
    when ``batch_size`` divides ``N``). The records (at the start and after every epoch)
    hold the full-data costs, computed without gradients; their time and the callback's
    are excluded from ``time_s``.

    Parameters
    ----------
    layer : torch.nn.Module
        Maps a batch ``(B, m)`` (or ``(B, *in_shape)``, as ``X``) to ``(B, n)`` (or
        ``(B, *out_shape)``; compared flattened). Trained in place: its parameters with
        ``requires_grad`` (the others stay fixed); its dtype and device (of its first
        trainable parameter) are those of the computation. It is in eval mode for the
        records and the callback. During the steps a layer given in train mode keeps its
        modules' own modes (a BatchNorm put in eval mode inside it keeps its statistics);
        a layer given in eval mode is put in train mode. Every module's mode is restored
        at the end.
    X : tensor or ndarray, shape (N, m)
        Inputs; ``(N, *in_shape)`` is accepted when ``J`` is None.
    Y : tensor or ndarray, shape (N, n)
        Outputs; ``(N, *out_shape)`` is accepted when ``J`` is None.
    J : tensor or ndarray (n, m, N), or JacobianTensor, optional
        Jacobians ``J[:, :, k] = df/dx(x_k)``. Minibatches need a dense ``J`` (array or
        :class:`~tenflex.cpd.DenseJacobian`); another JacobianTensor needs full batches.
    lam : float, optional
        Weight ``λ >= 0`` of the output term when ``J`` is given (default 1).
    epochs : int, optional
        Maximum number of passes over the data (default 100; 0 only records the start).
    lr : float, optional
        Adam's learning rate (default 1e-3).
    batch_size : int, optional
        Samples per minibatch; None (default) or ``>= N``: full batch. The samples are
        visited in a seeded random order, a new permutation every epoch; the last batch of
        an epoch may be smaller.
    seed : int, optional
        Seed of the batch orders (a ``torch.Generator``) and of any randomness inside the
        layer, e.g. dropout (the global RNG is forked, seeded and restored afterwards);
        same seed, bitwise identical parameters and costs (same machine and number of
        threads).
    time_limit : float, optional
        Stop after the first epoch at which the training time ``time_s`` exceeds this many
        seconds.
    ridge : float, optional
        Tikhonov weight ``ρ >= 0`` on ``||W||^2 + ||C||^2`` as in ``cmtf_als`` (default 0);
        FlexibleLayer with ``J`` only.
    callback : callable, optional
        ``callback(info)`` after every record (epoch 0 included) with ``info`` a dict of
        ``epoch``, ``time_s``, ``cost``, ``cost_jacobian``, ``cost_output`` and ``layer``;
        returning True stops training. Its time is not counted.
    progress : bool, optional
        Show a tqdm progress bar over the epochs.

    Returns
    -------
    GradientFitResult
        Histories of time, epoch and costs (index 0: the start), epochs done, stop reason.

    Raises
    ------
    ValueError, TypeError
        Mismatched shapes, NaN/Inf in the data, data whose values overflow the layer's
        dtype (e.g. float64 ``X`` beyond ``3.4e38`` for a float32 layer), ``J`` with a layer
        that is not a float32 or float64 FlexibleLayer, negative ``lam``/``ridge``, ``epochs < 0``,
        ``lr <= 0``, ``batch_size < 1``, constant ``Y`` (where the output term has a
        weight), ``J`` identically zero, data too large or too small in magnitude for the
        dtype (the same checks and messages as :func:`~tenflex.fit.cmtf_als`: rescale),
        minibatches with a JacobianTensor that is not dense.

    Notes
    -----
    Memory: a dense ``J`` given as an ``(n, m, N)`` array is copied once into the
    sample-contiguous ``(n, N, m)`` layout of :class:`~tenflex.cpd.DenseJacobian` (no copy
    for a DenseJacobian of the layer's dtype, or for the permuted view returned by
    :func:`tenflex.sampling.sample_function`); each minibatch gathers its ``(n, B, m)``
    slice (a fraction ``B / N`` of ``J``), kept for the backward pass. Per epoch the work
    is dominated by two products of the size of ``J`` (``n N m R`` multiply-adds each):
    ``J_B V`` and, in the backward pass, ``J_B^T`` times the ``(n B, R)`` gradient.
    The expanded Jacobian term has a rounding floor near ``1e-16`` relative to
    ``||J||^2`` (``1e-7`` in float32) in the loss; the records recompute costs below
    ``1e-10`` from the residual, as ``cmtf_als`` does.
    """
    if not isinstance(layer, nn.Module):
        raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
    params = [p for p in layer.parameters() if p.requires_grad]
    if not params:
        raise ValueError("layer has no trainable parameters")
    dtype, device = params[0].dtype, params[0].device
    if not dtype.is_floating_point:
        raise TypeError(f"layer parameters must be floating point, got dtype {dtype}")
    lam = _check_number(lam, "lam", 0.0, strict=False)
    ridge = _check_number(ridge, "ridge", 0.0, strict=False)
    epochs = check_int(epochs, "epochs", 0)
    lr = _check_number(lr, "lr", 0.0, strict=True)
    seed = check_seed(seed)
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", 1)
    if time_limit is not None:
        time_limit = _check_number(time_limit, "time_limit", 0.0, strict=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")

    X = _as_data(X, "X", dtype, device)
    Y = _as_data(Y, "Y", dtype, device)
    N = X.shape[0]
    if N < 1:
        raise ValueError(f"X must hold at least one sample, got shape {tuple(X.shape)}")
    if Y.shape[0] != N:
        raise ValueError(
            f"Y must have shape (N, n) with N = {N} samples (from X), got {tuple(Y.shape)}"
        )
    full = batch_size is None or batch_size >= N
    if J is None:
        if ridge > 0:
            raise ValueError(f"ridge applies to the Jacobian fit only (J given), got {ridge}")
        _check_magnitudes(X, Y, None, dtype)
        problem: _FlexibleCost | _OutputCost = _OutputCost(layer, X, Y, N if full else batch_size)
    else:
        if not isinstance(layer, FlexibleLayer):
            raise TypeError(
                "with J given, layer must be a tenflex.nn.FlexibleLayer (the Jacobian term is "
                f"computed from its structure W, V, C), got {type(layer).__name__}; pass J=None "
                "to fit outputs only"
            )
        if dtype not in _SOLVER_DTYPES:
            raise TypeError(
                f"with J given, the layer must be float32 or float64 (as in cmtf_als), got "
                f"{dtype}; convert it (e.g. layer.to(torch.float32))"
            )
        Jt = _jacobian_like(J, dtype, device)
        n, m, NJ = Jt.shape
        if X.ndim != 2 or X.shape != (NJ, m):
            raise ValueError(
                f"X must have shape (N, m) = ({NJ}, {m}) to match J of shape (n, m, N) = "
                f"{(n, m, NJ)}, got {tuple(X.shape)}"
            )
        if Y.ndim != 2 or Y.shape != (NJ, n):
            raise ValueError(
                f"Y must have shape (N, n) = ({NJ}, {n}) to match J of shape (n, m, N) = "
                f"{(n, m, NJ)}, got {tuple(Y.shape)}"
            )
        if (layer.in_features, layer.out_features) != (m, n):
            raise ValueError(
                f"layer must map m = {m} inputs to n = {n} outputs (from J), got "
                f"in_features={layer.in_features}, out_features={layer.out_features}"
            )
        if not full and not isinstance(Jt, DenseJacobian):
            raise ValueError(
                f"batch_size={batch_size} < N={N} needs a dense J (array or DenseJacobian), "
                f"got {type(Jt).__name__}; use batch_size=None"
            )
        _check_magnitudes(X, Y, Jt, dtype)
        problem = _FlexibleCost(layer, X, Y, Jt, lam, ridge)

    given_in_training = layer.training

    optimizer = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    records: list[tuple[float, float, float, float, float]] = []
    train_time = 0.0

    def record(epoch: int) -> bool:
        """Append the full-data costs; True if the callback asks to stop."""
        layer.eval()
        cj, co, total = problem.full_costs()
        records.append((train_time, float(epoch), total, cj, co))
        stop = False
        if callback is not None:
            info = {
                "epoch": epoch,
                "time_s": train_time,
                "cost": total,
                "cost_jacobian": cj,
                "cost_output": co,
                "layer": layer,
            }
            # a truthy bool-like (numpy or 0-d torch bool, as a comparison returns) stops
            stop = asks_to_stop(callback(info))
        return stop

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc="gradient fit", unit="epoch")
    reason = f"reached epochs={epochs}"
    done = 0
    try:
        # every module gets its own mode back at the end; randomness inside the layer
        # (dropout) draws from the global RNG, forked, seeded and restored
        with seeded_rng(seed, device), kept_modes(layer) as callers_modes:
            if record(0):
                reason = "stopped by callback"
            else:
                for epoch in range(1, epochs + 1):
                    t0 = time.perf_counter()
                    if given_in_training:  # the caller's modes (a frozen BatchNorm stays)
                        callers_modes()
                    else:
                        layer.train()
                    if full:
                        batches: list[Tensor | None] = [None]
                    else:
                        order = torch.randperm(N, generator=gen).to(device)
                        batches = list(order.split(batch_size))
                    finite = True
                    for idx in batches:
                        optimizer.zero_grad(set_to_none=True)
                        loss = problem.batch_loss(idx)
                        if not torch.isfinite(loss):
                            finite = False
                            break
                        loss.backward()
                        optimizer.step()
                    train_time += time.perf_counter() - t0
                    done = epoch
                    if bar is not None:
                        bar.update(1)
                    if not finite:
                        reason = f"loss became non-finite in epoch {epoch} (lower lr)"
                        record(epoch)
                        break
                    if record(epoch):
                        reason = "stopped by callback"
                        break
                    if bar is not None:
                        bar.set_postfix(cost=f"{records[-1][2]:.3e}")
                    if time_limit is not None and train_time > time_limit:
                        reason = f"time_limit={time_limit:g} s exceeded"
                        break
    finally:
        if bar is not None:
            bar.close()
    hist = np.asarray(records, dtype=np.float64)
    return GradientFitResult(
        time_s=hist[:, 0],
        epoch=hist[:, 1],
        cost=hist[:, 2],
        cost_jacobian=hist[:, 3],
        cost_output=hist[:, 4],
        n_epochs=done,
        stop_reason=reason,
    )
