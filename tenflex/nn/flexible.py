"""The flexible layer ``y = b + W g(V^T x)`` as a trainable ``torch.nn.Module``.

Flexible activation functions as weighted sums of basis functions follow Zniyed, Usevich,
Miron and Brie (2021); the layer replaces a subnetwork whose decoupled approximation was
learned by CMTF-ALS (:mod:`tenflex.fit`), and can be fine-tuned by backpropagation afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from tenflex.basis import Basis, _real_tensor, make_basis
from tenflex.checks import all_finite, as_int_tuple, check_positive_int, check_seed, is_int
from tenflex.model import DecoupledFunction

__all__ = ["FlexibleLayer"]


def _generator(seed: int | torch.Generator | None) -> torch.Generator | None:
    """The generator a layer draws its initial parameters from (None: torch's global one)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(check_seed(seed))


def _flat_input(x: Any, m: int, name: str = "x") -> Tensor:
    """``x`` (B, m) or (B, *in_shape) with ``prod(in_shape) = m``, as a (B, m) tensor."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim < 2 or math.prod(x.shape[1:]) != m:
        raise ValueError(
            f"{name} must have shape (B, m) or (B, *in_shape) with m = {m} features, "
            f"got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], m)


def _check_input_dtype(x: Tensor, parameter: Tensor) -> None:
    """Inputs in the layer's dtype: matmul would fail with a less helpful message."""
    if x.dtype != parameter.dtype:
        fix = f"convert it (e.g. x.to({parameter.dtype}))"
        if x.is_floating_point():
            fix = f"convert one of them (e.g. x.to({parameter.dtype}) or layer.to({x.dtype}))"
        raise TypeError(f"x has dtype {x.dtype} but the layer's parameters are "
                        f"{parameter.dtype}; {fix}")


def _basis_values(basis: Basis, z: Tensor, x: Tensor) -> Tensor:
    """``basis(z)`` for a layer whose input is ``x`` (``z`` computed from it, or ``x`` itself).

    ``z`` is checked for NaN/Inf (the small one, for a flexible layer); only when that fails
    is ``x`` looked at, so that the error names the cause: the layer's input, or else its
    parameters (e.g. after a diverged training step), rather than the basis's argument ``Z``.
    """
    try:
        return basis(z)  # checks z itself: the finite case costs one check, not two
    except ValueError:
        if not (basis.check_finite and not all_finite(z)):
            raise
    if not all_finite(x):
        raise ValueError("x contains NaN or Inf values") from None
    raise ValueError(
        "the layer's branch inputs contain NaN or Inf values although x is finite: its "
        "parameters are not finite (e.g. after a diverged training step), or x overflows "
        f"in its dtype {z.dtype} (convert the layer, e.g. layer.to(torch.float64))"
    ) from None


def _check_dtype(dtype: Any) -> torch.dtype:
    """A floating ``dtype`` for the parameters (None: torch's default)."""
    if dtype is None:
        return torch.get_default_dtype()
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating point torch.dtype, got {dtype!r}")
    return dtype


def _fresh_basis(basis: str | Basis, n_functions: int, basis_options: dict[str, Any] | None
                 ) -> Basis:
    """A new basis from a name (errors of :func:`make_basis` pass through) or a copy."""
    if isinstance(basis, Basis):
        if basis_options:
            raise ValueError("basis_options only apply when basis is given by name")
        return basis.clone()
    return make_basis(basis, n_functions, **(basis_options or {}))


def _branch_basis(basis: str | Basis, n_functions: int, basis_options: dict[str, Any] | None,
                  n_branches: int, what: str) -> Basis:
    """A fresh basis with ``n_branches`` branches: identity affine maps for a new one, and a
    given fitted one must already have them (``what`` names the size in the error)."""
    basis = _fresh_basis(basis, n_functions, basis_options)
    if not basis.is_fitted:
        basis.set_identity(n_branches)
    elif basis.n_branches != n_branches:
        raise ValueError(f"basis has {basis.n_branches} branches, expected {what} = {n_branches}")
    return basis


def _check_output_shape(output_shape: Any, n: int) -> tuple[int, ...] | None:
    """``output_shape`` (an int or a sequence of ints) as a tuple of positive sizes whose
    product is ``n`` (None stays None)."""
    if output_shape is None:
        return None
    shape = (int(output_shape),) if is_int(output_shape) else as_int_tuple(output_shape)
    if shape is None:
        raise TypeError(f"output_shape must be an int or a tuple of ints, got {output_shape!r}")
    if math.prod(shape) != n or any(s < 1 for s in shape):
        raise ValueError(
            f"output_shape must be positive sizes with product n = {n}, got {shape}"
        )
    return shape


class FlexibleLayer(nn.Module):
    """Flexible layer ``y = b + g(x V) W^T`` with ``g_r = sum_d C[d, r] phi_d``.

    With ``subspace=k`` the input directions are stored factored, ``V = P Q`` with ``P``
    of shape ``(m, k)`` and ``Q`` of shape ``(k, R)`` (the attribute ``V``): the layer is
    ``y = b + g(x P Q) W^T``, and ``R`` branches cost ``m k + k R`` coefficients for their
    directions instead of ``m R``. That pays when the function varies along few input
    directions (its active subspace, :mod:`tenflex.subspace`) but needs many branches.

    Parameters
    ----------
    in_features : int
        ``m``; inputs of shape ``(B, *in_shape)`` are flattened to ``(B, m)``.
    out_features : int
        ``n``.
    rank : int
        Number of branches ``R``.
    basis : str or Basis, optional
        Basis name for :func:`tenflex.basis.make_basis` (default ``"bspline"``) or a Basis
        instance (copied). An unfitted basis gets the identity affine map for ``R`` branches;
        a fitted one must have ``R`` branches.
    n_functions : int, optional
        ``D`` when ``basis`` is a name (default 8).
    basis_options : dict, optional
        Extra options for :func:`~tenflex.basis.make_basis`, e.g. ``{"degree": 3}``.
    bias : bool, optional
        Whether to learn ``b`` (default True). Without it ``b`` is None and counts nothing.
    subspace : int, optional
        ``k``: factor the input directions through an ``(m, k)`` projection ``P`` (see
        above). Default None: ``V`` is ``(m, R)``, no projection.
    output_shape : int or tuple of int, optional
        If given, outputs are reshaped to ``(B, *output_shape)`` (product must be ``n``; an
        int ``k`` means ``(k,)``).
    seed : int or torch.Generator, optional
        Random initialisation: ``V ~ N(0, 1/m)``, ``W ~ N(0, 1/R)``, ``C ~ N(0, 1/D)``,
        ``b = 0``, and with a subspace ``P ~ N(0, 1/m)``, ``V ~ N(0, 1/k)``. None uses
        torch's global generator.
    dtype, device : optional
        Of the parameters and basis buffers; ``dtype`` a floating point dtype.

    Raises
    ------
    ValueError
        Sizes not positive ints, a fitted ``basis`` without ``R`` branches,
        ``output_shape`` whose product is not ``n``.
    TypeError
        ``output_shape`` not an int or a sequence of ints, a non-floating ``dtype``, a
        ``seed`` that is not an int.

    Attributes
    ----------
    W : nn.Parameter, shape (n, R)
    V : nn.Parameter, shape (m, R), or (k, R) with a subspace
    C : nn.Parameter, shape (D, R)
    b : nn.Parameter, shape (n,), or None
    P : nn.Parameter, shape (m, k), or None without a subspace
    basis : Basis
        Submodule; its buffers ``scale``, ``shift`` follow ``.to()`` and the state dict.

    Examples
    --------
    >>> import torch
    >>> layer = FlexibleLayer(12, 3, rank=4, basis="chebyshev", n_functions=5, seed=0)
    >>> layer(torch.randn(8, 3, 2, 2)).shape
    torch.Size([8, 3])
    >>> layer.n_parameters  # 3*4 + 12*4 + 5*4 + 3
    83
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        basis: str | Basis = "bspline",
        n_functions: int = 8,
        *,
        basis_options: dict[str, Any] | None = None,
        bias: bool = True,
        subspace: int | None = None,
        output_shape: tuple[int, ...] | None = None,
        seed: int | torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        m = check_positive_int(in_features, "in_features")
        n = check_positive_int(out_features, "out_features")
        R = check_positive_int(rank, "rank")
        basis = _branch_basis(basis, n_functions, basis_options, R, "rank")
        D = basis.n_functions
        dtype = _check_dtype(dtype)
        kw = {"dtype": dtype, "generator": _generator(seed)}
        self.W = nn.Parameter(torch.randn(n, R, **kw).to(device) / math.sqrt(R))
        k = m if subspace is None else check_positive_int(subspace, "subspace")
        self.V = nn.Parameter(torch.randn(k, R, **kw).to(device) / math.sqrt(k))
        self.C = nn.Parameter(torch.randn(D, R, **kw).to(device) / math.sqrt(D))
        if bias:
            self.b = nn.Parameter(torch.zeros(n, dtype=dtype, device=device))
        else:
            self.register_parameter("b", None)
        if subspace is None:
            self.register_parameter("P", None)
        else:
            self.P = nn.Parameter(torch.randn(m, k, **kw).to(device) / math.sqrt(m))
        self.basis = basis.to(device=device, dtype=dtype)
        self.output_shape = _check_output_shape(output_shape, n)

    # ------------------------------------------------------------------ sizes
    @property
    def in_features(self) -> int:
        return int((self.V if self.P is None else self.P).shape[0])

    @property
    def subspace(self) -> int | None:
        """``k`` when the input directions are factored through ``P``, else None."""
        return None if self.P is None else int(self.P.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.W.shape[0])

    @property
    def rank(self) -> int:
        return int(self.W.shape[1])

    @property
    def n_functions(self) -> int:
        return int(self.C.shape[0])

    @property
    def n_parameters(self) -> int:
        """Number of trainable coefficients (W, V, C, and b and P if present)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, n_functions={self.n_functions}, bias={self.b is not None}"
            + (f", subspace={self.subspace}" if self.P is not None else "")
            + (f", output_shape={self.output_shape}" if self.output_shape else "")
        )

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor, shape (B, m) or (B, *in_shape) with prod(in_shape) = m

        Returns
        -------
        y : torch.Tensor, shape (B, n), or (B, *output_shape) if set

        Raises
        ------
        ValueError
            ``x`` of the wrong shape or with NaN/Inf.
        TypeError
            ``x`` of another dtype than the parameters.
        """
        x = _flat_input(x, self.in_features)
        _check_input_dtype(x, self.V)
        z = x @ self.V if self.P is None else (x @ self.P) @ self.V
        g = torch.einsum("brd,dr->br", _basis_values(self.basis, z, x), self.C)
        y = g @ self.W.T
        if self.b is not None:
            y = y + self.b
        if self.output_shape is not None:
            y = y.reshape(x.shape[0], *self.output_shape)
        return y

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_decoupled(
        cls, df: DecoupledFunction, *, output_shape: tuple[int, ...] | None = None,
        projection: Tensor | None = None,
    ) -> FlexibleLayer:
        """Layer with copies of the parameters and basis of ``df`` (same dtype and device).

        Parameters
        ----------
        df : DecoupledFunction
            With ``projection``, a function of the projected inputs ``z = x P``.
        output_shape : tuple of int, optional
            See the class parameters.
        projection : torch.Tensor, shape (m, k), optional
            ``P``: the layer computes ``df(x P)`` (``df.m`` must be ``k``), e.g. with the
            ``P`` of :func:`tenflex.subspace.active_subspace`.

        Raises
        ------
        TypeError
            ``df`` not a DecoupledFunction, a complex ``projection``.
        ValueError
            ``projection`` not a finite ``(m, df.m)`` matrix.
        """
        if not isinstance(df, DecoupledFunction):
            raise TypeError(f"df must be a DecoupledFunction, got {type(df).__name__}")
        m = df.m
        if projection is not None:
            projection = _real_tensor(projection, "projection")
            if projection.ndim != 2 or projection.shape[1] != df.m:
                raise ValueError(
                    f"projection must have shape (m, {df.m}) (df takes {df.m} projected "
                    f"inputs), got {tuple(projection.shape)}"
                )
            if not all_finite(projection):
                raise ValueError("projection contains NaN or Inf values")
            m = int(projection.shape[0])
        layer = cls(
            m,
            df.n,
            df.rank,
            df.basis,
            seed=0,
            subspace=None if projection is None else df.m,
            dtype=df.dtype,
            device=df.device,
            output_shape=output_shape,
        )
        with torch.no_grad():
            layer.W.copy_(df.W)
            layer.V.copy_(df.V)
            layer.C.copy_(df.C)
            layer.b.copy_(df.b)
            if projection is not None:
                layer.P.copy_(projection)
        return layer

    def to_decoupled(self) -> DecoupledFunction:
        """Detached copy as a :class:`~tenflex.model.DecoupledFunction` (zero bias if none).

        With a subspace its input directions are ``V = P Q``, shape ``(m, R)``.
        """
        b = None if self.b is None else self.b.detach().clone()
        V = self.V if self.P is None else self.P @ self.V
        return DecoupledFunction(
            self.W.detach().clone(),
            V.detach().clone(),
            self.C.detach().clone(),
            b,
            self.basis.clone(),
        )
