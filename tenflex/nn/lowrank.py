"""Low-rank compression baselines built from a pretrained layer.

* :class:`SVDLinear`: truncated SVD of a fully connected layer, two ``nn.Linear``.
* :class:`CPConv2d`: CP-decomposed convolution of Lebedev et al. (ICLR 2015): 1x1
  (S -> R), k_h x 1 depthwise, 1 x k_w depthwise, 1x1 (R -> T).
* :class:`TuckerConv2d`: Tucker-2 convolution of Kim et al. (ICLR 2016): 1x1 (S -> R_1),
  k_h x k_w (R_1 -> R_2), 1x1 (R_2 -> T).
* :class:`TTConv2d`: tensor-train convolution, the kernel's modes ordered
  ``(S, k_h, k_w, T)`` and split by TT-SVD (Oseledets 2011) into a chain of small
  convolutions 1x1 (S -> R_1), k_h x 1 (R_1 -> R_2), 1 x k_w (R_2 -> R_3), 1x1 (R_3 -> T);
  the "TT convolutional layer" of the conv_einsum paper (Rabbani, Su et al. 2024).

Each keeps the stride, padding, dilation and bias of the dense layer, is an
``nn.Sequential`` of ordinary PyTorch layers, and records the decomposition's relative
error. :func:`replace_layer` splices any module into a network by dotted name.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tenflex.checks import check_seed, is_int
from tenflex.nn.surgery import _read_by_owner, module_positions
from tenflex.nn.tensorial import (
    _balance_cp,
    _check_finite_layer,
    _check_n_iter_max,
    _check_tt_ranks,
    _exact_cp,
    _pair,
    largest_uniform_ranks,
)

__all__ = [
    "METHODS",
    "CPConv2d",
    "LowRankLayer",
    "SVDLinear",
    "TTConv2d",
    "TuckerConv2d",
    "decompose_layer",
    "lowrank_max_ranks",
    "lowrank_n_parameters",
    "rank_for_rate",
    "replace_layer",
]

#: Decomposition methods: layer type they apply to.
METHODS = {"svd": "Linear", "cp": "Conv2d", "tucker2": "Conv2d", "tt": "Conv2d"}


def _check_method(method: Any) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {list(METHODS)}")
    return method


def _check_layer(layer: Any, method: str) -> None:
    kind = METHODS[method]
    if not isinstance(layer, (nn.Conv2d, nn.Linear)) or type(layer) in (
        nn.LazyConv2d, nn.LazyLinear
    ):
        raise TypeError(
            f"layer must be a torch.nn.Conv2d or torch.nn.Linear, got {type(layer).__name__}"
        )
    if kind == "Linear" and not isinstance(layer, nn.Linear):
        raise TypeError(f"method {method!r} needs an nn.Linear layer, got {type(layer).__name__}")
    if kind == "Conv2d":
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(
                f"method {method!r} needs an nn.Conv2d layer, got {type(layer).__name__}; "
                "use method='svd' for nn.Linear"
            )
        if layer.groups != 1:
            raise ValueError(
                f"grouped convolutions are not supported (groups={layer.groups}); "
                "decompose each group separately"
            )
        if layer.padding_mode != "zeros":
            raise ValueError(
                f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}"
            )


def _shape(layer: nn.Module) -> tuple[int, ...]:
    return tuple(layer.weight.shape)


def lowrank_max_ranks(layer: nn.Module, method: str) -> tuple[int, ...]:
    """Full ranks: the ranks at which the decomposition is exact.

    ``"svd"``: ``min(S, T)``. ``"cp"``: the trivial CP-rank bound of the kernel
    ``(T, S, k_h, k_w)``, the product of its dimensions over the largest. ``"tucker2"``:
    ``(min(S, T k_h k_w), min(T, S k_h k_w))``. ``"tt"`` on modes ``(S, k_h, k_w, T)``:
    ``(min(S, k_h k_w T), min(S k_h, k_w T), min(S k_h k_w, T))``.

    Parameters
    ----------
    layer : torch.nn.Linear or torch.nn.Conv2d
    method : {"svd", "cp", "tucker2", "tt"}

    Returns
    -------
    tuple of int
        Ranks in the order the chain of layers uses them (input side first).
    """
    _check_method(method)
    _check_layer(layer, method)
    if method == "svd":
        T, S = _shape(layer)
        return (min(S, T),)
    T, S, kh, kw = _shape(layer)
    if method == "cp":
        dims = (T, S, kh, kw)
        return (math.prod(dims) // max(dims),)
    if method == "tucker2":
        return (min(S, T * kh * kw), min(T, S * kh * kw))
    dims = (S, kh, kw, T)
    return tuple(min(math.prod(dims[:i]), math.prod(dims[i:])) for i in (1, 2, 3))


def _count(shape: tuple[int, ...], method: str, ranks: Sequence[int], bias: bool) -> int:
    if method == "svd":
        T, S = shape
        n = ranks[0] * (S + T)
    else:
        T, S, kh, kw = shape
        if method == "cp":
            n = ranks[0] * (S + kh + kw + T)
        elif method == "tucker2":
            r1, r2 = ranks
            n = S * r1 + r1 * r2 * kh * kw + r2 * T
        else:
            r1, r2, r3 = ranks
            n = S * r1 + r1 * kh * r2 + r2 * kw * r3 + r3 * T
    return n + (shape[0] if bias else 0)


def _normalize_ranks(rank: Any, caps: tuple[int, ...], method: str) -> tuple[int, ...]:
    if is_int(rank):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if rank > max(caps):
            raise ValueError(
                f"rank={rank} exceeds the full rank {max(caps)} of this layer for method "
                f"{method!r} (full ranks {caps})"
            )
        return tuple(min(int(rank), c) for c in caps)
    if isinstance(rank, (tuple, list)):
        if len(rank) != len(caps):
            raise ValueError(
                f"rank for method {method!r} must be an int or {len(caps)} ints, got {rank!r}"
            )
        for i, (r, c) in enumerate(zip(rank, caps)):
            if not is_int(r) or r < 1 or r > c:
                raise ValueError(
                    f"rank[{i}] for method {method!r} must be an int in [1, {c}], got {r!r}"
                )
        return tuple(int(r) for r in rank)
    raise TypeError(f"rank must be an int or a tuple of ints, got {type(rank).__name__}")


def lowrank_n_parameters(layer: nn.Module, method: str, rank: int | Sequence[int]) -> int:
    """Parameter count of the decomposed layer (bias included when the layer has one).

    ``"svd"``: ``R (S + T)``; ``"cp"``: ``R (S + k_h + k_w + T)``; ``"tucker2"``:
    ``S R_1 + R_1 R_2 k_h k_w + R_2 T``; ``"tt"``:
    ``S R_1 + R_1 k_h R_2 + R_2 k_w R_3 + R_3 T``; plus ``T`` for the bias.

    Parameters
    ----------
    layer : torch.nn.Linear or torch.nn.Conv2d
    method : {"svd", "cp", "tucker2", "tt"}
    rank : int or tuple of int
        An int is a uniform rank capped at each full rank.

    Returns
    -------
    int
    """
    caps = lowrank_max_ranks(layer, method)
    ranks = _normalize_ranks(rank, caps, method)
    return _count(_shape(layer), method, ranks, layer.bias is not None)


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}")
    return float(rate)


def rank_for_rate(layer: nn.Module, method: str, rate: float) -> tuple[int, ...]:
    """Largest rank whose decomposed layer keeps at most ``rate`` of the parameters.

    The budget is ``rate`` times the dense layer's parameter count (weight and bias);
    the decomposed layer's count includes its bias. Multi-rank methods use one uniform
    rank capped at each full rank (:func:`lowrank_max_ranks`).

    Parameters
    ----------
    layer : torch.nn.Linear or torch.nn.Conv2d
    method : {"svd", "cp", "tucker2", "tt"}
    rate : float
        Target fraction of the dense parameter count, ``> 0``.

    Returns
    -------
    tuple of int
        The ranks (one entry for ``"svd"`` / ``"cp"``).

    Raises
    ------
    ValueError
        When even rank 1 does not fit in the budget.
    """
    caps = lowrank_max_ranks(layer, method)
    rate = _check_rate(rate)
    shape, bias = _shape(layer), layer.bias is not None
    dense = sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)
    budget = rate * dense

    return largest_uniform_ranks(
        caps, lambda r: _count(shape, method, r, bias), budget,
        lambda n1: f"rate={rate} leaves no rank >= 1 for method {method!r}: rank 1 needs "
        f"{n1} parameters but rate * {dense} dense parameters = {budget:.1f}",
    )


def _ranks_from(layer: nn.Module, method: str, rank: Any, rate: Any) -> tuple[int, ...]:
    if (rank is None) == (rate is None):
        raise ValueError(f"give exactly one of rank= and rate= (method {method!r})")
    if rank is not None:
        ranks = _normalize_ranks(rank, lowrank_max_ranks(layer, method), method)
        if method == "tt":
            T, S, kh, kw = _shape(layer)
            _check_tt_ranks((S, kh, kw, T), ranks, "method 'tt' (kernel modes (S, k_h, k_w, T))")
        return ranks
    return rank_for_rate(layer, method, rate)


def _check_ignored(seed: Any, n_iter_max: Any) -> None:
    """Options of the iterative methods that a direct decomposition ignores: still typed."""
    check_seed(seed, allow_none=True)
    if n_iter_max is not None:
        _check_n_iter_max(n_iter_max)


def _conv_geometry(layer: nn.Conv2d) -> dict[str, Any]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}


def _axis(value: Any, axis: int, other: int) -> Any:
    """Pick one axis of a conv hyperparameter; the other axis gets `other`."""
    if isinstance(value, str):
        return value
    return (value[0], other) if axis == 0 else (other, value[1])


def _rel_error(w: np.ndarray, approx: np.ndarray) -> float:
    norm = np.linalg.norm(w)
    return float(np.linalg.norm(w - approx) / (norm if norm > 0 else 1.0))


def _param(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a)).to(dtype=like.dtype, device=like.device)


class LowRankLayer(nn.Sequential):
    """Base of the low-rank layers: an ``nn.Sequential`` of ordinary layers.

    Attributes
    ----------
    method : str
    ranks : tuple of int
    decomposition_error : float or None
        ``||W - W_approx|| / ||W||`` of the decomposition it was built from.
    """

    method: str = ""

    def __init__(self, *layers: nn.Module, ranks: tuple[int, ...]):
        super().__init__(*layers)
        self.ranks = tuple(ranks)
        self.decomposition_error: float | None = None

    @property
    def rank(self) -> int:
        """The largest rank of the chain (the rank for one-rank methods)."""
        return max(self.ranks)

    @property
    def n_parameters(self) -> int:
        """Number of scalar parameters."""
        return sum(p.numel() for p in self.parameters())

    def to_dense_weight(self) -> torch.Tensor:  # pragma: no cover - overridden
        """Dense weight of the equivalent single layer, from the module weights."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"method={self.method!r}, ranks={self.ranks}"


class SVDLinear(LowRankLayer):
    """Truncated SVD of a fully connected layer: ``Linear(S, R) -> Linear(R, T)``.

    ``W ~ U_R diag(sigma_R) V_R^T`` (Eckart-Young: the best rank-R approximation); the
    first layer holds ``diag(sqrt(sigma)) V^T`` (no bias), the second ``U diag(sqrt(sigma))``
    and the dense bias (Denton et al. 2014; Xue et al. 2013).
    """

    method = "svd"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__(
            nn.Linear(in_features, rank, bias=False),
            nn.Linear(rank, out_features, bias=bias),
            ranks=(rank,),
        )

    @classmethod
    def from_dense(
        cls, layer: nn.Linear, *, rank: int | None = None, rate: float | None = None,
        seed: int | None = None, n_iter_max: int | None = None,
    ) -> SVDLinear:
        """Truncated SVD of ``layer``.

        Parameters
        ----------
        layer : torch.nn.Linear
        rank : int, optional
            ``1 <= rank <= min(S, T)``.
        rate : float, optional
            Target parameter fraction instead of ``rank`` (:func:`rank_for_rate`).
        seed, n_iter_max : int, optional
            Accepted (and checked) for a uniform interface with the other methods, and
            ignored: the SVD is deterministic and not iterative.

        Returns
        -------
        SVDLinear
            An all-zero weight gives all-zero factors (``decomposition_error`` 0).

        Raises
        ------
        ValueError
            A weight or bias with NaN/Inf, a rank or rate out of range.
        """
        _check_layer(layer, "svd")
        _check_finite_layer(layer, "SVDLinear.from_dense")
        _check_ignored(seed, n_iter_max)
        (r,) = _ranks_from(layer, "svd", rank, rate)
        T, S = _shape(layer)
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        if np.any(w):
            u, sig, vt = np.linalg.svd(w, full_matrices=False)
        else:
            u, sig, vt = np.zeros((T, r)), np.zeros(r), np.zeros((r, S))
        root = np.sqrt(sig[:r])
        out = cls(S, T, r, bias=layer.bias is not None).to(layer.weight)
        with torch.no_grad():
            out[0].weight.copy_(_param(root[:, None] * vt[:r], layer.weight))
            out[1].weight.copy_(_param(u[:, :r] * root, layer.weight))
            if layer.bias is not None:
                out[1].bias.copy_(layer.bias.detach())
        out.decomposition_error = _rel_error(w, (u[:, :r] * sig[:r]) @ vt[:r])
        return out

    def to_dense_weight(self) -> torch.Tensor:
        """``W2 W1``, shape ``(T, S)``."""
        return self[1].weight @ self[0].weight


class CPConv2d(LowRankLayer):
    """CP-decomposed convolution (Lebedev et al., ICLR 2015).

    ``W[t, s, i, j] ~ sum_r A_t[t, r] A_s[s, r] A_h[i, r] A_w[j, r]`` evaluated as
    1x1 conv ``S -> R`` (``A_s``), ``k_h x 1`` depthwise conv (``A_h``, stride, padding
    and dilation along the height), ``1 x k_w`` depthwise conv (``A_w``, along the width),
    1x1 conv ``R -> T`` (``A_t``, with the bias).
    """

    method = "cp"

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
        rank: int, *, stride: Any = 1, padding: Any = 0, dilation: Any = 1, bias: bool = True,
    ):
        kh, kw = _pair(kernel_size, "kernel_size")
        stride, padding, dilation = _pairs(stride, padding, dilation)
        super().__init__(
            nn.Conv2d(in_channels, rank, 1, bias=False),
            nn.Conv2d(
                rank, rank, (kh, 1), groups=rank, bias=False, stride=_axis(stride, 0, 1),
                padding=_axis(padding, 0, 0), dilation=_axis(dilation, 0, 1),
            ),
            nn.Conv2d(
                rank, rank, (1, kw), groups=rank, bias=False, stride=_axis(stride, 1, 1),
                padding=_axis(padding, 1, 0), dilation=_axis(dilation, 1, 1),
            ),
            nn.Conv2d(rank, out_channels, 1, bias=bias),
            ranks=(rank,),
        )

    @classmethod
    def from_dense(
        cls, layer: nn.Conv2d, *, rank: int | None = None, rate: float | None = None,
        seed: int = 0, n_iter_max: int = 300,
    ) -> CPConv2d:
        """CP decomposition of the kernel by ``tensorly.decomposition.parafac``.

        ALS from an SVD initialisation (seeded); at the full rank an exact CP is built
        directly. Factor norms are balanced across the four layers.

        Parameters
        ----------
        layer : torch.nn.Conv2d
            ``groups=1``, zero padding.
        rank : int, optional
            ``1 <= rank <=`` the full rank of :func:`lowrank_max_ranks`.
        rate : float, optional
            Target parameter fraction instead of ``rank``.
        seed : int or None
            ``random_state`` of parafac, an int ``>= 0``.
        n_iter_max : int
            ALS iterations, ``>= 1``.

        Returns
        -------
        CPConv2d
            An all-zero kernel gives all-zero factors (``decomposition_error`` 0; ALS
            would solve with singular Gram matrices).

        Raises
        ------
        TypeError
            ``seed`` or ``n_iter_max`` not an int.
        ValueError
            A weight or bias with NaN/Inf, a rank or rate out of range, ``n_iter_max < 1``.
        """
        _check_layer(layer, "cp")
        _check_finite_layer(layer, "CPConv2d.from_dense")
        seed = check_seed(seed, allow_none=True)
        n_iter_max = _check_n_iter_max(n_iter_max)
        (r,) = _ranks_from(layer, "cp", rank, rate)
        T, S, kh, kw = _shape(layer)
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        if not np.any(w):
            fs = [np.zeros((d, r)) for d in (T, S, kh, kw)]
        elif r >= lowrank_max_ranks(layer, "cp")[0]:
            fs = _exact_cp(w)
        else:
            from tensorly.decomposition import parafac

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                cp = parafac(
                    w, r, init="svd", n_iter_max=n_iter_max, tol=1e-10, random_state=seed
                )
            fs = _balance_cp(np.asarray(cp.weights), [np.asarray(f) for f in cp.factors])
        a_t, a_s, a_h, a_w = fs
        out = cls(
            S, T, (kh, kw), r, bias=layer.bias is not None, **_conv_geometry(layer)
        ).to(layer.weight)
        with torch.no_grad():
            out[0].weight.copy_(_param(a_s.T[:, :, None, None], layer.weight))
            out[1].weight.copy_(_param(a_h.T[:, None, :, None], layer.weight))
            out[2].weight.copy_(_param(a_w.T[:, None, None, :], layer.weight))
            out[3].weight.copy_(_param(a_t[:, :, None, None], layer.weight))
            if layer.bias is not None:
                out[3].bias.copy_(layer.bias.detach())
        out.decomposition_error = _rel_error(w, np.einsum("tr,sr,hr,wr->tshw", *fs))
        return out

    def to_dense_weight(self) -> torch.Tensor:
        """``(T, S, k_h, k_w)`` kernel of the equivalent convolution."""
        a_s = self[0].weight[:, :, 0, 0]
        a_h = self[1].weight[:, 0, :, 0]
        a_w = self[2].weight[:, 0, 0, :]
        a_t = self[3].weight[:, :, 0, 0]
        return torch.einsum("rs,rh,rw,tr->tshw", a_s, a_h, a_w, a_t)


class TuckerConv2d(LowRankLayer):
    """Tucker-2 convolution (Kim et al., ICLR 2016).

    ``W ~ G x_1 U_T x_2 U_S`` with core ``G (R_2, R_1, k_h, k_w)``: 1x1 conv ``S -> R_1``
    (``U_S^T``), ``k_h x k_w`` conv ``R_1 -> R_2`` (``G``, with stride, padding and
    dilation), 1x1 conv ``R_2 -> T`` (``U_T``, with the bias). Ranks ``(R_1, R_2)``.
    """

    method = "tucker2"

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
        ranks: tuple[int, int], *, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
        bias: bool = True,
    ):
        r1, r2 = ranks
        super().__init__(
            nn.Conv2d(in_channels, r1, 1, bias=False),
            nn.Conv2d(
                r1, r2, _pair(kernel_size, "kernel_size"), bias=False, stride=stride, padding=padding,
                dilation=dilation,
            ),
            nn.Conv2d(r2, out_channels, 1, bias=bias),
            ranks=(r1, r2),
        )

    @classmethod
    def from_dense(
        cls, layer: nn.Conv2d, *, rank: int | Sequence[int] | None = None,
        rate: float | None = None, seed: int = 0, n_iter_max: int = 300,
    ) -> TuckerConv2d:
        """Tucker-2 decomposition by ``tensorly.decomposition.partial_tucker`` (HOOI).

        Parameters
        ----------
        layer : torch.nn.Conv2d
        rank : int or (int, int), optional
            ``(R_1, R_2)`` (input side, output side); an int is capped at each full rank.
        rate : float, optional
            Target parameter fraction instead of ``rank``.
        seed, n_iter_max
            Passed to ``partial_tucker`` (an int ``>= 0`` or None, an int ``>= 1``).

        Returns
        -------
        TuckerConv2d
            An all-zero kernel gives all-zero factors and core (``decomposition_error`` 0).

        Raises
        ------
        TypeError, ValueError
            As :meth:`CPConv2d.from_dense`.
        """
        _check_layer(layer, "tucker2")
        _check_finite_layer(layer, "TuckerConv2d.from_dense")
        seed = check_seed(seed, allow_none=True)
        n_iter_max = _check_n_iter_max(n_iter_max)
        r1, r2 = _ranks_from(layer, "tucker2", rank, rate)
        T, S, kh, kw = _shape(layer)
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        if np.any(w):
            from tensorly.decomposition import partial_tucker

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                res = partial_tucker(
                    w, rank=[r2, r1], modes=[0, 1], init="svd", n_iter_max=n_iter_max,
                    tol=1e-10, random_state=seed,
                )
            # tensorly >= 0.8 returns ((core, factors), errors); older (core, factors)
            core, (u_t, u_s) = res[0] if isinstance(res[0], (tuple, list)) else res
            core, u_t, u_s = np.asarray(core), np.asarray(u_t), np.asarray(u_s)
        else:
            core, u_t, u_s = np.zeros((r2, r1, kh, kw)), np.zeros((T, r2)), np.zeros((S, r1))
        out = cls(
            S, T, (kh, kw), (r1, r2), bias=layer.bias is not None, **_conv_geometry(layer)
        ).to(layer.weight)
        with torch.no_grad():
            out[0].weight.copy_(_param(u_s.T[:, :, None, None], layer.weight))
            out[1].weight.copy_(_param(core, layer.weight))
            out[2].weight.copy_(_param(u_t[:, :, None, None], layer.weight))
            if layer.bias is not None:
                out[2].bias.copy_(layer.bias.detach())
        out.decomposition_error = _rel_error(w, np.einsum("baij,tb,sa->tsij", core, u_t, u_s))
        return out

    def to_dense_weight(self) -> torch.Tensor:
        """``(T, S, k_h, k_w)`` kernel of the equivalent convolution."""
        u_s = self[0].weight[:, :, 0, 0]
        u_t = self[2].weight[:, :, 0, 0]
        return torch.einsum("baij,tb,as->tsij", self[1].weight, u_t, u_s)


class TTConv2d(LowRankLayer):
    """Tensor-train convolution: a chain of four small convolutions.

    The kernel, modes ordered ``(S, k_h, k_w, T)``, is a tensor train with cores
    ``G_1 (S, R_1)``, ``G_2 (R_1, k_h, R_2)``, ``G_3 (R_2, k_w, R_3)``, ``G_4 (R_3, T)``
    (TT-SVD, Oseledets 2011), evaluated as 1x1 conv ``S -> R_1``, ``k_h x 1`` conv
    ``R_1 -> R_2`` (stride, padding, dilation along the height), ``1 x k_w`` conv
    ``R_2 -> R_3`` (along the width), 1x1 conv ``R_3 -> T`` with the bias.
    """

    method = "tt"

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
        ranks: tuple[int, int, int], *, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
        bias: bool = True,
    ):
        kh, kw = _pair(kernel_size, "kernel_size")
        r1, r2, r3 = ranks
        stride, padding, dilation = _pairs(stride, padding, dilation)
        super().__init__(
            nn.Conv2d(in_channels, r1, 1, bias=False),
            nn.Conv2d(
                r1, r2, (kh, 1), bias=False, stride=_axis(stride, 0, 1),
                padding=_axis(padding, 0, 0), dilation=_axis(dilation, 0, 1),
            ),
            nn.Conv2d(
                r2, r3, (1, kw), bias=False, stride=_axis(stride, 1, 1),
                padding=_axis(padding, 1, 0), dilation=_axis(dilation, 1, 1),
            ),
            nn.Conv2d(r3, out_channels, 1, bias=bias),
            ranks=(r1, r2, r3),
        )

    @classmethod
    def from_dense(
        cls, layer: nn.Conv2d, *, rank: int | Sequence[int] | None = None,
        rate: float | None = None, seed: int | None = None, n_iter_max: int | None = None,
    ) -> TTConv2d:
        """TT-SVD of the kernel by ``tensorly.decomposition.tensor_train``.

        Parameters
        ----------
        layer : torch.nn.Conv2d
        rank : int or (int, int, int), optional
            Bond ranks ``(R_1, R_2, R_3)``; an int is capped at each full rank.
        rate : float, optional
            Target parameter fraction instead of ``rank``.
        seed, n_iter_max : int, optional
            Accepted (and checked) for a uniform interface with the other methods, and
            ignored: TT-SVD is deterministic and not iterative.

        Returns
        -------
        TTConv2d
            An all-zero kernel gives all-zero cores (``decomposition_error`` 0).

        Raises
        ------
        ValueError
            A weight or bias with NaN/Inf, a rank or rate out of range, ranks with
            ``R_2 > R_1 k_h`` or ``R_3 > R_2 k_w`` (more than the TT-SVD reaches).
        """
        _check_layer(layer, "tt")
        _check_finite_layer(layer, "TTConv2d.from_dense")
        _check_ignored(seed, n_iter_max)
        ranks = _ranks_from(layer, "tt", rank, rate)
        T, S, kh, kw = _shape(layer)
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        r1, r2, r3 = ranks
        if np.any(w):
            from tensorly.decomposition import tensor_train

            w_perm = w.transpose(1, 2, 3, 0)  # (S, kh, kw, T)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                tt = tensor_train(w_perm, rank=[1, *ranks, 1])
            g1, g2, g3, g4 = (np.asarray(c) for c in tt.factors)
        else:
            g1, g2, g3, g4 = (
                np.zeros(sh) for sh in ((1, S, r1), (r1, kh, r2), (r2, kw, r3), (r3, T, 1))
            )
        out = cls(
            S, T, (kh, kw), ranks, bias=layer.bias is not None, **_conv_geometry(layer)
        ).to(layer.weight)
        with torch.no_grad():
            out[0].weight.copy_(_param(g1[0].T[:, :, None, None], layer.weight))  # (R1, S)
            out[1].weight.copy_(_param(g2.transpose(2, 0, 1)[..., None], layer.weight))
            out[2].weight.copy_(_param(g3.transpose(2, 0, 1)[:, :, None, :], layer.weight))
            out[3].weight.copy_(_param(g4[:, :, 0].T[:, :, None, None], layer.weight))
            if layer.bias is not None:
                out[3].bias.copy_(layer.bias.detach())
        approx = np.einsum("sa,ahb,bwc,ct->tshw", g1[0], g2, g3, g4[:, :, 0])
        out.decomposition_error = _rel_error(w, approx)
        return out

    def to_dense_weight(self) -> torch.Tensor:
        """``(T, S, k_h, k_w)`` kernel of the equivalent convolution."""
        g1 = self[0].weight[:, :, 0, 0]  # (R1, S)
        g2 = self[1].weight[:, :, :, 0]  # (R2, R1, kh)
        g3 = self[2].weight[:, :, 0, :]  # (R3, R2, kw)
        g4 = self[3].weight[:, :, 0, 0]  # (T, R3)
        return torch.einsum("as,bah,cbw,tc->tshw", g1, g2, g3, g4)


def _pairs(stride: Any, padding: Any, dilation: Any) -> tuple[Any, Any, Any]:
    def pair(v: Any) -> Any:
        if isinstance(v, str):
            return v
        return (v, v) if is_int(v) else tuple(v)

    return pair(stride), pair(padding), pair(dilation)


_CLASSES = {"svd": SVDLinear, "cp": CPConv2d, "tucker2": TuckerConv2d, "tt": TTConv2d}


def decompose_layer(
    layer: nn.Module, method: str, *, rank: Any = None, rate: float | None = None, **kwargs: Any
) -> LowRankLayer:
    """Low-rank replacement of a pretrained layer.

    Parameters
    ----------
    layer : torch.nn.Linear or torch.nn.Conv2d
    method : {"svd", "cp", "tucker2", "tt"}
    rank, rate
        Exactly one: explicit rank(s), or a target fraction of the parameters.
    **kwargs
        Passed to the class' ``from_dense``: ``seed`` (int ``>= 0``) and ``n_iter_max``
        (int ``>= 1``) seed and bound the ALS of ``"cp"`` and ``"tucker2"``; ``"svd"`` and
        ``"tt"`` are deterministic direct decompositions, which check and ignore them.

    Returns
    -------
    LowRankLayer

    Raises
    ------
    TypeError
        A layer other than Conv2d/Linear, or one that does not fit the method.
    ValueError
        Unknown method, ``groups != 1``, a weight or bias with NaN/Inf, a rank above the
        full rank, a rate that leaves no rank, ``n_iter_max < 1``, ``seed < 0``.
    """
    _check_method(method)
    return _CLASSES[method].from_dense(layer, rank=rank, rate=rate, **kwargs)


def replace_layer(model: nn.Module, name: str, new_module: nn.Module) -> nn.Module:
    """Replace the submodule at a dotted name, in place.

    Works for ``nn.Sequential`` (``"3"``, ``"features.3"``), named children
    (``"fc1"``), nested modules and ``nn.ModuleList`` / ``nn.ModuleDict`` entries. Only
    the named position changes: a module object registered at several positions (one
    activation reused along an ``nn.Sequential``) stays at the others.

    Parameters
    ----------
    model : torch.nn.Module
    name : str
        Dotted name as in ``model.named_modules(remove_duplicate=False)``: every position
        of a reused module has its name.
    new_module : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        The module that was replaced.

    Raises
    ------
    TypeError
        ``new_module`` is not an ``nn.Module``.
    ValueError
        ``name`` is empty or names no submodule (the message lists valid names), or its
        parent is one module object registered under several names: replacing the layer
        in it would replace it at all of them, or ``name`` is a Linear layer whose owner
        reads its ``weight`` and ``bias`` itself (an attention's ``out_proj``, a transformer
        layer's ``linear1``/``linear2``) and ``new_module`` has no ``weight`` of its shape.
    """
    if not isinstance(new_module, nn.Module):
        raise TypeError(f"new_module must be a torch.nn.Module, got {type(new_module).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty dotted module name, got {name!r}")
    module_positions(model, [name])  # every position of a reused module has a name
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if parent_name:
        shared = module_positions(model, [parent_name])[parent_name]
        if len(shared) > 1:
            raise ValueError(
                f"the parent of {name!r} is one module registered under the names {shared}: "
                f"replacing its child {child!r} would replace it at every one of them; give "
                "each position its own module (copy.deepcopy) to replace one"
            )
    owner = _read_by_owner(model).get(name)
    weight = getattr(new_module, "weight", None)
    if owner is not None and not (
        isinstance(weight, torch.Tensor) and weight.shape == parent._modules[child].weight.shape
    ):
        # The owner's forward would fail (or, for a transformer layer, only in eval mode).
        raise ValueError(
            f"{name!r} belongs to {owner}, whose forward reads its weight and bias itself "
            f"instead of calling it: a {type(new_module).__name__} without a weight of shape "
            f"{tuple(parent._modules[child].weight.shape)} would break the model at its "
            "forward pass; replace the owner as a whole instead"
        )
    old = parent._modules[child]
    # By key, not by index: the children of an nn.Sequential built from an OrderedDict
    # need not be named after their positions ("0" may be the second child).
    setattr(parent, child, new_module)
    return old
