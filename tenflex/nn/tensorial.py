"""Tensorial neural network layers and the generalized tensor operations they are built from.

Su et al. (2018), *Tensorial Neural Networks: Generalization of Neural Networks and
Application to Model Compression*, write a layer as a sequence of three generalized
tensor operations between high-order tensors: **contraction** (a shared mode is summed),
**partial outer product** (a shared mode is kept, the operands are multiplied
elementwise along it) and **convolution** (a shared mode is convolved; the two sizes
may differ). :func:`tensor_op` evaluates all three in one einsum-like notation, the
notation of ``conv_einsum`` (Rabbani, Su et al. 2024)::

    tensor_op("bshw,tshw->bthw|hw", x, W, conv={"h": dict(padding=1), "w": dict(padding=1)})

is a 2-D convolution layer: ``b`` appears in one operand and the output (kept),
``s`` in both operands but not the output (contracted), ``t`` in one operand (kept),
``h`` and ``w`` are listed after ``|`` (convolved).

The layers :class:`TensorialConv2d` and :class:`TensorialLinear` reshape the input
channels ``S = s_1 ... s_M`` and output channels ``T = t_1 ... t_M`` into ``M`` modes
each and factorize the reshaped kernel in reshaped CP (``"rcp"``), reshaped Tucker
(``"rtk"``) or reshaped tensor-train (``"rtt"``) form. Their forward pass is the chain of
generalized operations on the factors, or, where that costs less (``evaluation="auto"``,
the default), one dense operation with the kernel formed from the factors.
"""

from __future__ import annotations

import contextlib
import math
import string
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from tenflex.checks import check_bool, check_seed, is_int
from tenflex.nn.flexible import _check_dtype, _check_input_dtype

__all__ = [
    "CHAIN_FLOP_ADVANTAGE",
    "EVALUATIONS",
    "FORMS",
    "TensorOpSpec",
    "TensorialConv2d",
    "TensorialLinear",
    "conv_output_length",
    "evaluation_route",
    "factorize",
    "parse_tensor_op",
    "tensor_op",
    "tensorial_max_ranks",
    "tensorial_n_parameters",
    "tensorial_ranks_for_rate",
    "tensorize",
]

#: Tensorial forms: reshaped CP, reshaped Tucker, reshaped tensor-train (Su et al. 2018).
FORMS = ("rcp", "rtk", "rtt")

#: Evaluation routes of the tensorial layers (their ``evaluation`` attribute).
EVALUATIONS = ("auto", "chain", "dense")

#: ``evaluation="auto"`` runs the chain only where it needs fewer than
#: ``CHAIN_FLOP_ADVANTAGE`` times the formed kernel's operations (a twentieth): the chain's
#: many small, permuting steps run far below the speed of one dense convolution or matrix
#: product.
#: Calibrated on a grid of layers, ranks and batch sizes (``benchmarks/bench_route.py``).
CHAIN_FLOP_ADVANTAGE = 0.05

_CONV_KEYS = ("padding", "stride", "dilation", "flip")
_PADDING_NAMES = ("valid", "same", "full")
_MAX_MODES = 12


# ---------------------------------------------------------------------------------------
# Generalized tensor operations
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorOpSpec:
    """A parsed :func:`tensor_op` notation.

    Attributes
    ----------
    inputs : tuple of str
        One term per operand, its mode letters in order; ``"."`` stands for ``...``.
    output : str
        Mode letters of the result (``"."`` for ``...``).
    conv : tuple of str
        Convolved mode letters, in the order listed after ``|``.
    """

    inputs: tuple[str, ...]
    output: str
    conv: tuple[str, ...]

    def roles(self) -> dict[str, str]:
        """Role of every mode letter.

        Returns
        -------
        dict
            letter -> one of ``"contraction"`` (in two or more operands, not in the
            output), ``"partial outer product"`` (in two or more operands and in the
            output), ``"convolution"``, ``"outer product"`` (in one operand and the
            output), ``"summation"`` (in one operand only).
        """
        roles: dict[str, str] = {}
        for letter in _letters_in_order(self.inputs):
            count = sum(letter in term for term in self.inputs)
            if letter in self.conv:
                roles[letter] = "convolution"
            elif letter in self.output:
                roles[letter] = "partial outer product" if count > 1 else "outer product"
            else:
                roles[letter] = "contraction" if count > 1 else "summation"
        return roles


def _letters_in_order(terms: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for term in terms:
        for c in term:
            if c != "." and c not in seen:
                seen.append(c)
    return seen


def _check_term(term: str, where: str) -> str:
    # '...' is held as one '.' from here on; a '.' of the user's that is not part of a
    # '...' is a typo, not an ellipsis
    if "." in term.replace("...", ""):
        raise ValueError(
            f"tensor_op notation: {where} {term!r} has a '.' outside '...'; ellipsis "
            "dimensions are written with exactly three dots"
        )
    original, term = term, term.replace("...", ".")
    bad = [c for c in term if not (c in string.ascii_letters or c == ".")]
    if bad:
        raise ValueError(
            f"tensor_op notation: {where} {original!r} has invalid character(s) {bad}; "
            "mode letters are a-z, A-Z and '...' for ellipsis dimensions"
        )
    if term.count(".") > 1:
        raise ValueError(f"tensor_op notation: {where} {original!r} has more than one '...'")
    letters = term.replace(".", "")
    repeated = sorted({c for c in letters if letters.count(c) > 1})
    if repeated:
        raise ValueError(
            f"tensor_op notation: {where} {original!r} repeats mode(s) {repeated}; "
            "every mode letter may appear at most once per operand (diagonals are not "
            "supported)"
        )
    return term


@lru_cache(maxsize=512)
def parse_tensor_op(spec: str) -> TensorOpSpec:
    """Parse and validate a :func:`tensor_op` notation string (without the operands).

    Parameters
    ----------
    spec : str
        ``"in_1,in_2,...->out"`` or ``"in_1,in_2,...->out|conv_letters"``; whitespace is
        ignored.

    Returns
    -------
    TensorOpSpec

    Raises
    ------
    ValueError
        Missing ``->``, invalid characters, a letter repeated within one term, an output
        letter that appears in no input, an ellipsis in the inputs but not in the output
        (or the reverse), or a convolved letter that is not shared by exactly two inputs
        or is absent from the output.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be a str, got {type(spec).__name__}")
    s = "".join(spec.split())
    if s.count("->") != 1:
        raise ValueError(
            f"tensor_op notation {spec!r} must contain exactly one '->' followed by the "
            "output modes (the output decides whether a shared mode is contracted or kept)"
        )
    lhs, rhs = s.split("->")
    if "|" in lhs or rhs.count("|") > 1:
        raise ValueError(
            f"tensor_op notation {spec!r}: '|' may appear once, after the output, followed "
            "by the convolved mode letters"
        )
    out, _, conv_part = rhs.partition("|")
    inputs = tuple(_check_term(t, f"input term {i}") for i, t in enumerate(lhs.split(",")))
    output = _check_term(out, "output")
    conv = _check_term(conv_part, "convolution list")
    if "." in conv:
        raise ValueError(f"tensor_op notation {spec!r}: '...' cannot be convolved")
    has_ellipsis = any("." in t for t in inputs)
    if has_ellipsis and "." not in output:
        raise ValueError(
            f"tensor_op notation {spec!r}: an input has '...' so the output must keep '...'"
        )
    if "." in output and not has_ellipsis:
        raise ValueError(f"tensor_op notation {spec!r}: output has '...' but no input has")
    for c in output.replace(".", ""):
        if not any(c in t for t in inputs):
            raise ValueError(
                f"tensor_op notation {spec!r}: output mode {c!r} appears in no input term"
            )
    for c in conv:
        count = sum(c in t for t in inputs)
        if count != 2:
            raise ValueError(
                f"tensor_op notation {spec!r}: convolved mode {c!r} must be shared by exactly "
                f"two operands (a signal and a kernel), it appears in {count}"
            )
        if c not in output:
            raise ValueError(
                f"tensor_op notation {spec!r}: convolved mode {c!r} must appear in the output"
            )
    return TensorOpSpec(inputs=inputs, output=output, conv=tuple(conv))


def conv_output_length(
    length: int,
    kernel_size: int,
    padding: tuple[int, int] = (0, 0),
    stride: int = 1,
    dilation: int = 1,
) -> int:
    """Output length of a 1-D convolution (PyTorch's formula).

    ``floor((length + pad_left + pad_right - dilation * (kernel_size - 1) - 1) / stride) + 1``.

    Parameters
    ----------
    length, kernel_size : int
        Sizes of the signal and kernel modes.
    padding : (int, int)
        Zeros added before and after the signal.
    stride, dilation : int

    Returns
    -------
    int
        May be ``<= 0`` when the kernel does not fit.

    Raises
    ------
    ValueError
        ``stride`` or ``dilation`` not an int ``>= 1``.
    """
    for name, v in (("stride", stride), ("dilation", dilation)):
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    pl, pr = padding
    return (length + pl + pr - dilation * (kernel_size - 1) - 1) // stride + 1


def _conv_options(opts: Any, letter: str) -> dict[str, Any]:
    if opts is None:
        opts = {}
    if not isinstance(opts, dict):
        raise TypeError(
            f"conv[{letter!r}] must be a dict of options {list(_CONV_KEYS)}, "
            f"got {type(opts).__name__}"
        )
    unknown = sorted(set(opts) - set(_CONV_KEYS))
    if unknown:
        raise ValueError(
            f"conv[{letter!r}] has unknown option(s) {unknown}; valid options: {list(_CONV_KEYS)}"
        )
    stride = opts.get("stride", 1)
    dilation = opts.get("dilation", 1)
    flip = opts.get("flip", False)
    for name, v in (("stride", stride), ("dilation", dilation)):
        if not is_int(v) or v < 1:
            raise ValueError(f"conv[{letter!r}][{name!r}] must be an int >= 1, got {v!r}")
    check_bool(flip, f"conv[{letter!r}]['flip']")
    return {
        "padding": opts.get("padding", 0),
        "stride": int(stride),
        "dilation": int(dilation),
        "flip": flip,
    }


def _resolve_padding(
    padding: Any, kernel_size: int, dilation: int, stride: int, flip: bool, letter: str
) -> tuple[int, int]:
    total = dilation * (kernel_size - 1)
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0
        if padding == "full":
            return total, total
        if padding == "same":
            if stride != 1:
                raise ValueError(
                    f"conv[{letter!r}]: padding='same' needs stride 1, got stride={stride}"
                )
            # PyTorch puts the odd zero after the signal; a flipped kernel mirrors the
            # alignment, which gives numpy.convolve(mode="same").
            left = total - total // 2 if flip else total // 2
            return left, total - left
        raise ValueError(
            f"conv[{letter!r}]['padding'] must be an int, a pair (left, right) or one of "
            f"{list(_PADDING_NAMES)}, got {padding!r}"
        )
    if is_int(padding):
        if padding < 0:
            raise ValueError(f"conv[{letter!r}]['padding'] must be >= 0, got {padding}")
        return int(padding), int(padding)
    if (
        isinstance(padding, (tuple, list))
        and len(padding) == 2
        and all(is_int(p) and p >= 0 for p in padding)
    ):
        return int(padding[0]), int(padding[1])
    raise ValueError(
        f"conv[{letter!r}]['padding'] must be an int >= 0, a pair (left, right) of ints "
        f">= 0 or one of {list(_PADDING_NAMES)}, got {padding!r}"
    )


def _as_operand(x: Any, i: int) -> torch.Tensor:
    if torch.is_tensor(x):
        return x
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise TypeError(f"operands[{i}] must be a tensor or array, got {type(x).__name__}") from err


def _ellipsis_shape(term: str, x: torch.Tensor, n_ell: int) -> tuple[int, ...]:
    """Sizes of the dimensions of ``x`` that the ``'...'`` of ``term`` stands for."""
    start = term.index(".")
    return tuple(x.shape[start : start + n_ell])


def tensor_op(
    spec: str, *operands: Any, conv: dict[str, dict] | None = None, impl: str = "auto"
) -> torch.Tensor:
    """Evaluate contractions, partial outer products and convolutions in one call.

    The generalized tensor operations of Su et al. (2018), written in the einsum-like
    notation of ``conv_einsum`` (Rabbani, Su et al. 2024). Every mode letter's role is
    read off the notation ``"in_1,...,in_k->out|c_1c_2..."``:

    * in two or more inputs, **not** in the output: **contraction** (summed);
    * in two or more inputs **and** in the output: **partial outer product** (kept,
      operands multiplied elementwise along it, e.g. a batch or rank mode);
    * listed after ``|``: **convolution**, shared by exactly two inputs and kept in the
      output; sizes may differ;
    * in one input and the output: outer product; in one input only: summation.

    ``...`` stands for leading dimensions kept in the output (right-aligned across
    operands, sizes must match).

    **Convolution convention.** For a convolved letter, the first operand that contains
    it is the *signal* (length ``L``), the second the *kernel* (length ``K``). With
    options ``padding = (p_l, p_r)``, ``stride = s``, ``dilation = d``, the output is the
    cross-correlation used by :class:`torch.nn.Conv2d`::

        out[i] = sum_k xpad[i * s + k * d] * w[k],     xpad = [0]*p_l + x + [0]*p_r,

    of length ``floor((L + p_l + p_r - d (K - 1) - 1) / s) + 1``. ``flip=True`` reverses
    the kernel, which gives the true convolution ``sum_k x[n - k] w[k]``. Padding names:
    ``"valid"`` (0, the default ``padding=0``), ``"full"`` (``d (K - 1)`` on both sides,
    output ``L + d (K - 1)`` for ``s = 1``; with ``flip=True`` it is
    ``numpy.convolve(x, w, "full")``) and ``"same"`` (output length ``L``, stride 1; the
    odd zero goes after the signal as in PyTorch, before it when ``flip=True``, which
    gives ``numpy.convolve(x, w, "same")`` for ``L >= K``; NumPy's ``"same"`` has length
    ``max(L, K)``).

    Parameters
    ----------
    spec : str
        Notation, e.g. ``"abc,cd->abd"`` (contraction), ``"bhc,hd->bhd"`` (partial outer
        product along ``h``, contraction along none), ``"bshw,tshw->bthw|hw"`` (conv layer).
    *operands : torch.Tensor or array_like
        One per input term, ``ndim`` equal to the number of letters in the term (plus
        the ellipsis dimensions). Same dtype and device.
    conv : dict, optional
        ``{letter: {"padding": ..., "stride": ..., "dilation": ..., "flip": ...}}`` for
        letters listed after ``|``; omitted letters and options take the defaults
        ``padding=0, stride=1, dilation=1, flip=False``.
    impl : {"auto", "torch", "unfold"}
        Evaluation route for convolutions (see Notes); results agree to rounding.

    Returns
    -------
    torch.Tensor
        Modes in the order of the output term; a convolved mode has the output length
        above. Differentiable in every operand.

    Raises
    ------
    ValueError
        Bad notation (see :func:`parse_tensor_op`), wrong number of operands, an operand
        whose ``ndim`` does not match its term, a shared non-convolved mode (or ``'...'``
        dimensions) whose sizes differ, options for a letter not marked as convolved, bad
        options, a zero-length kernel, a convolution whose output would be empty.
    TypeError
        Operands of different dtypes, options of the wrong type.

    Notes
    -----
    Two evaluation routes, both vectorised (no Python loop over the data):

    * ``"torch"``: two operands with one to three convolved modes become one grouped
      ``torch.nn.functional.conv{1,2,3}d``: modes kept in both operands (partial outer
      products) are the groups, contracted modes the input channels, signal-only modes
      the batch, kernel-only modes the output channels. No im2col copy is formed.
    * ``"unfold"``: any number of operands. The signal is padded and unfolded into
      sliding windows (a strided view, :meth:`torch.Tensor.unfold`), which turns each
      convolved mode into an output mode and a window mode contracted against the
      kernel; the whole operation is then one :func:`torch.einsum`. Memory grows with
      the window size.

    ``impl="auto"`` takes ``"torch"`` where it applies, ``"unfold"`` otherwise. An
    operand with no elements (some mode of size 0) always takes ``"unfold"``, also with
    ``impl="torch"`` (torch's convolutions refuse zero channels or groups): the result
    has the output shape above, empty where a kept mode has size 0, all zeros otherwise.
    A binary operation without convolution whose contracted modes are one contiguous
    block of the larger operand runs as a broadcast :func:`torch.matmul` on views of that
    operand (mode product), anything else as :func:`torch.einsum`.

    Examples
    --------
    >>> x, w = torch.randn(2, 3, 10), torch.randn(4, 3, 5)
    >>> tensor_op("bsh,tsh->bth|h", x, w, conv={"h": {"padding": 2}}).shape
    torch.Size([2, 4, 10])
    """
    p = parse_tensor_op(spec)
    if len(operands) != len(p.inputs):
        raise ValueError(
            f"tensor_op notation {spec!r} has {len(p.inputs)} input term(s) but "
            f"{len(operands)} operand(s) were given"
        )
    ops = [_as_operand(x, i) for i, x in enumerate(operands)]
    dtypes = {x.dtype for x in ops}
    if len(dtypes) > 1:
        raise TypeError(
            f"tensor_op operands must share one dtype, got {[str(x.dtype) for x in ops]}"
        )
    conv = {} if conv is None else conv
    if not isinstance(conv, dict):
        raise TypeError(f"conv must be a dict letter -> options, got {type(conv).__name__}")
    stray = sorted(set(conv) - set(p.conv))
    if stray:
        raise ValueError(
            f"conv options given for mode(s) {stray} that are not marked as convolved; "
            f"list them after '|' in {spec!r}"
        )

    # Expand '...' into fresh letters, right-aligned across operands.
    used = set(_letters_in_order(p.inputs))
    pool = [c for c in string.ascii_letters if c not in used]
    terms = list(p.inputs)
    n_ell = []
    for i, (term, x) in enumerate(zip(terms, ops)):
        n_named = len(term.replace(".", ""))
        if "." in term:
            if x.ndim < n_named:
                raise ValueError(
                    f"operands[{i}] has ndim {x.ndim} but term {term!r} names {n_named} modes"
                )
            n_ell.append(x.ndim - n_named)
        else:
            if x.ndim != n_named:
                raise ValueError(
                    f"operands[{i}] has shape {tuple(x.shape)} (ndim {x.ndim}) but term "
                    f"{term!r} names {n_named} mode(s)"
                )
            n_ell.append(0)
    max_ell = max(n_ell, default=0)
    if max_ell > len(pool) - len(p.conv):
        raise ValueError(f"tensor_op: too many ellipsis dimensions ({max_ell})")
    ell_letters, pool = "".join(pool[:max_ell]), pool[max_ell:]
    for i, term in enumerate(terms):
        if "." in term:
            terms[i] = term.replace(".", ell_letters[max_ell - n_ell[i] :])
    output = p.output.replace(".", ell_letters)

    # Sizes of shared modes (convolved ones may differ).
    sizes: dict[str, tuple[int, int]] = {}
    for i, (term, x) in enumerate(zip(terms, ops)):
        for dim, c in enumerate(term):
            if c in p.conv:
                continue
            n = int(x.shape[dim])
            if c in sizes and sizes[c][0] != n and c in ell_letters:
                j = sizes[c][1]
                raise ValueError(
                    f"the '...' dimensions must match (right-aligned), got "
                    f"{_ellipsis_shape(p.inputs[j], ops[j], n_ell[j])} in operands[{j}] but "
                    f"{_ellipsis_shape(p.inputs[i], x, n_ell[i])} in operands[{i}] ({spec!r})"
                )
            if c in sizes and sizes[c][0] != n:
                raise ValueError(
                    f"mode {c!r} has size {sizes[c][0]} in operands[{sizes[c][1]}] but {n} in "
                    f"operands[{i}] ({spec!r}); only convolved modes may differ in size"
                )
            sizes.setdefault(c, (n, i))

    plans = []
    for c in p.conv:
        opts = _conv_options(conv.get(c), c)
        i, j = [k for k, term in enumerate(terms) if c in term]
        di, dj = terms[i].index(c), terms[j].index(c)
        length, ksize = int(ops[i].shape[di]), int(ops[j].shape[dj])
        if ksize < 1:
            raise ValueError(
                f"convolution along mode {c!r}: the kernel (operands[{j}], shape "
                f"{tuple(ops[j].shape)}) has length 0 along it; it needs length >= 1"
            )
        s, d = opts["stride"], opts["dilation"]
        pl, pr = _resolve_padding(opts["padding"], ksize, d, s, opts["flip"], c)
        out_len = conv_output_length(length, ksize, (pl, pr), s, d)
        if out_len < 1:
            raise ValueError(
                f"convolution along mode {c!r}: signal length {length} (operands[{i}]) with "
                f"padding ({pl}, {pr}) is shorter than the dilated kernel "
                f"{d * (ksize - 1) + 1} (operands[{j}]); the output would be empty"
            )
        plans.append(_ConvPlan(c, i, j, ksize, pl, pr, s, d, opts["flip"]))
    if impl not in ("auto", "unfold", "torch"):
        raise ValueError(f"impl must be 'auto', 'unfold' or 'torch', got {impl!r}")
    native_ok = len(ops) == 2 and 1 <= len(plans) <= 3
    if impl == "torch" and not native_ok:
        raise ValueError(
            "impl='torch' needs two operands and one to three convolved modes, got "
            f"{len(ops)} operands and {len(plans)} convolved modes"
        )
    # torch's convolutions refuse zero channels, groups or spatial sizes: an operand
    # without elements takes the unfold route whatever impl says (empty or zero result).
    empty = any(x.numel() == 0 for x in ops)
    if plans and native_ok and impl != "unfold" and not empty:
        return _conv_native(terms, output, ops, plans)
    if not plans and len(ops) == 2 and impl != "unfold":
        y = _mode_product(terms, output, ops)
        if y is not None:
            return y
    return _conv_unfold(terms, output, ops, plans, pool)


def _mode_product(
    terms: list[str], output: str, ops: list[torch.Tensor]
) -> torch.Tensor | None:
    """Binary contraction as one broadcast ``torch.matmul`` on views of the big operand.

    Applies when the contracted modes form one contiguous block ``K`` of one operand
    ``A = P K Q``, the other operand ``B`` holds ``K``, modes of ``P`` (partial outer
    products) and its own new modes ``N``, and the output is ``P N Q`` (or ``P' Q N``
    when ``K`` ends ``A``). ``A`` is then only reshaped, never permuted, which is what
    makes the layer chains cheap (``torch.einsum`` would copy ``A`` twice per step).
    Returns None when the pattern does not apply.
    """
    for (ta, tb), (a, b) in (((terms[0], terms[1]), (ops[0], ops[1])),
                             ((terms[1], terms[0]), (ops[1], ops[0]))):
        if a.numel() < b.numel():
            continue  # A is the big operand
        k = [c for c in ta if c in tb and c not in output]
        if not k or any(c not in output for c in ta if c not in k):
            continue
        lo = ta.index(k[0])
        hi = lo + len(k)
        if ta[lo:hi] != "".join(k):
            continue
        n = [c for c in tb if c not in ta]
        if any(c not in output for c in n):
            continue
        pre, q = ta[:lo], ta[hi:]
        if any(c in tb for c in q):
            continue
        size = {c: int(a.shape[i]) for i, c in enumerate(ta)}
        size.update({c: int(b.shape[i]) for i, c in enumerate(tb)})
        ksz = math.prod(size[c] for c in k)
        if not q:
            # K ends A: out = P' Q1 N with Q1 the longest A-only tail of P.
            if output[: len(pre)] != pre or sorted(output[len(pre):]) != sorted(n):
                continue
            cut = len(pre)
            while cut > 0 and pre[cut - 1] not in tb:
                cut -= 1
            p1, q1, n_order = pre[:cut], pre[cut:], output[len(pre):]
            bb = b.permute([tb.index(c) for c in p1 if c in tb]
                           + [tb.index(c) for c in k] + [tb.index(c) for c in n_order])
            bb = bb.reshape(*[size[c] if c in tb else 1 for c in p1], ksz,
                            math.prod(size[c] for c in n_order))
            aa = a.reshape(*[size[c] for c in p1], math.prod(size[c] for c in q1), ksz)
            y = torch.matmul(aa, bb)
            return y.reshape([size[c] for c in output])
        if output == pre + output[len(pre):len(output) - len(q)] + q and sorted(
            output[len(pre):len(output) - len(q)]
        ) == sorted(n):
            # out = P N Q:  B (P|1, N, K) @ A (P, K, Q)
            n_order = output[len(pre):len(output) - len(q)]
            bb = b.permute([tb.index(c) for c in pre if c in tb]
                           + [tb.index(c) for c in n_order] + [tb.index(c) for c in k])
            bb = bb.reshape(*[size[c] if c in tb else 1 for c in pre],
                            math.prod(size[c] for c in n_order), ksz)
            aa = a.reshape(*[size[c] for c in pre], ksz, math.prod(size[c] for c in q))
            y = torch.matmul(bb, aa)
            return y.reshape([size[c] for c in output])
    return None


@dataclass(frozen=True)
class _ConvPlan:
    letter: str
    signal: int
    kernel: int
    ksize: int
    pad_left: int
    pad_right: int
    stride: int
    dilation: int
    flip: bool


def _conv_unfold(
    terms: list[str], output: str, ops: list[torch.Tensor], plans: list[_ConvPlan],
    pool: list[str],
) -> torch.Tensor:
    """Any number of operands: unfold each signal into sliding windows, then one einsum."""
    terms, ops = list(terms), list(ops)
    for pl in plans:
        i, j, c = pl.signal, pl.kernel, pl.letter
        di, dj = terms[i].index(c), terms[j].index(c)
        x = ops[i]
        if pl.pad_left or pl.pad_right:
            pad = [0, 0] * (x.ndim - 1 - di) + [pl.pad_left, pl.pad_right]
            x = torch.nn.functional.pad(x, pad)
        x = x.unfold(di, pl.dilation * (pl.ksize - 1) + 1, pl.stride)  # window appended
        if pl.dilation > 1:
            x = x[..., :: pl.dilation]
        window = pool.pop(0)
        ops[i] = x
        terms[i] = terms[i] + window
        ops[j] = ops[j].flip(dj) if pl.flip else ops[j]
        terms[j] = terms[j].replace(c, window)
    return torch.einsum(",".join(terms) + "->" + output, *ops)


def _conv_native(
    terms: list[str], output: str, ops: list[torch.Tensor], plans: list[_ConvPlan]
) -> torch.Tensor:
    """Two operands, 1-3 convolved modes: one grouped ``torch.nn.functional.conv{1,2,3}d``.

    Modes of the signal A and kernel B map onto a grouped convolution: kept in both
    (partial outer product) -> groups, contracted -> input channels, A-only -> batch,
    B-only -> output channels, convolved -> spatial. No im2col copy is formed.
    """
    (ta, tb), (a, b) = terms, ops
    if plans[0].signal == 1:  # the signal is the first operand that holds the mode
        ta, tb, a, b = tb, ta, b, a

    def presum(x: torch.Tensor, t: str, other: str) -> tuple[torch.Tensor, str]:
        lone = [k for k, c in enumerate(t) if c not in other and c not in output]
        if lone:  # summed modes of one operand only
            x = x.sum(dim=lone)
            t = "".join(c for q, c in enumerate(t) if q not in lone)
        return x, t

    a, ta = presum(a, ta, tb)
    b, tb = presum(b, tb, ta)
    sp = [pl.letter for pl in plans]
    g = [c for c in ta if c in tb and c in output and c not in sp]
    k = [c for c in ta if c in tb and c not in output]
    n = [c for c in ta if c not in tb]
    o = [c for c in tb if c not in ta]

    def size(x: torch.Tensor, t: str, letters: list[str]) -> list[int]:
        return [int(x.shape[t.index(c)]) for c in letters]

    n_sz, g_sz, k_sz, o_sz = size(a, ta, n), size(a, ta, g), size(a, ta, k), size(b, tb, o)
    # Without copying A: if A = n1 C n2 sp with C the modes shared with B (any order) and
    # n1, n2 A-only, every (C, n2) channel is its own group ("depthwise" convolution with
    # the kernel repeated over n2) and the contracted modes of C are summed afterwards.
    ns = ta[: len(ta) - len(sp)]
    shared = [q for q, c in enumerate(ns) if c in tb]
    depthwise = None
    if list(ta) != n + g + k + sp and ta.endswith("".join(sp)) and shared:
        i0, i1 = shared[0], shared[-1] + 1
        if all(c in tb for c in ns[i0:i1]):
            depthwise = (list(ns[:i0]), list(ns[i0:i1]), list(ns[i1:]))
    if depthwise is not None:
        n1, cb, n2 = depthwise
        n1_sz, cb_sz, n2_sz = size(a, ta, n1), size(a, ta, cb), size(a, ta, n2)
        groups = math.prod(cb_sz) * math.prod(n2_sz)
        x = a.reshape(math.prod(n1_sz), groups, *size(a, ta, sp))
        w = b.permute([tb.index(c) for c in cb + o + sp])
        w = w.reshape(*cb_sz, *[1] * len(n2), *o_sz, *size(b, tb, sp))
        w = w.expand(*cb_sz, *n2_sz, *o_sz, *size(b, tb, sp))
        w = w.reshape(groups * math.prod(o_sz), 1, *size(b, tb, sp))
    else:
        groups = math.prod(g_sz)
        x = a.permute([ta.index(c) for c in n + g + k + sp]).reshape(
            math.prod(n_sz), groups * math.prod(k_sz), *size(a, ta, sp)
        )
        w = b.permute([tb.index(c) for c in g + o + k + sp]).reshape(
            groups * math.prod(o_sz), math.prod(k_sz), *size(b, tb, sp)
        )
    flips = [2 + q for q, pl in enumerate(plans) if pl.flip]
    if flips:
        w = w.flip(flips)
    if any(pl.pad_left != pl.pad_right for pl in plans):
        pad: list[int] = []
        for pl in reversed(plans):
            pad += [pl.pad_left, pl.pad_right]
        x = torch.nn.functional.pad(x, pad)
        padding = tuple(0 for _ in plans)
    else:
        padding = tuple(pl.pad_left for pl in plans)
    fn = (
        torch.nn.functional.conv1d,
        torch.nn.functional.conv2d,
        torch.nn.functional.conv3d,
    )[len(plans) - 1]
    y = fn(
        x, w, stride=tuple(pl.stride for pl in plans), padding=padding,
        dilation=tuple(pl.dilation for pl in plans), groups=groups,
    )
    if depthwise is not None:
        y = y.reshape(*n1_sz, *cb_sz, *n2_sz, *o_sz, *y.shape[2:])
        summed = [len(n1) + q for q, c in enumerate(cb) if c in k]
        if summed:
            y = y.sum(dim=summed)
        current = n1 + [c for c in cb if c not in k] + n2 + o + sp
    else:
        y = y.reshape(*n_sz, *g_sz, *o_sz, *y.shape[2:])
        current = n + g + o + sp
    return y.permute([current.index(c) for c in output])


# ---------------------------------------------------------------------------------------
# Mode factorization, ranks and parameter counts
# ---------------------------------------------------------------------------------------


def _check_positive_int(v: Any, name: str) -> int:
    if not is_int(v) or v < 1:
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    return int(v)


def _check_n_iter_max(n_iter_max: Any) -> int:
    if not is_int(n_iter_max):
        raise TypeError(
            f"n_iter_max must be an int >= 1, got {type(n_iter_max).__name__} {n_iter_max!r}"
        )
    return _check_positive_int(n_iter_max, "n_iter_max")


def _check_finite_layer(layer: nn.Module, where: str) -> None:
    """Refuse a dense layer whose weight or bias holds NaN or Inf (no decomposition of it
    is meaningful, and the SVDs inside the decompositions fail on it)."""
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if p is None:
            continue
        bad = int((~torch.isfinite(p.detach())).sum())
        if bad:
            raise ValueError(
                f"{where}: layer.{name} (shape {tuple(p.shape)}) must be finite, it has {bad} "
                "NaN/Inf entries"
            )


def _prime_factors(n: int) -> list[int]:
    out, f = [], 2
    while f * f <= n:
        while n % f == 0:
            out.append(f)
            n //= f
        f += 1
    if n > 1:
        out.append(n)
    return out


def factorize(n: int, modes: int, *, allow_ones: bool = True) -> tuple[int, ...]:
    """Balanced factorization ``n = f_1 f_2 ... f_modes``.

    Among all factorizations into ``modes`` integers, the one with the smallest largest
    factor (ties: the largest smallest factor) is returned, sorted ascending.

    Parameters
    ----------
    n : int
        Number to factor (a channel count), ``>= 1``.
    modes : int
        Number of factors ``M >= 1``.
    allow_ones : bool
        Allow factors equal to 1 (always possible: with more modes than ``n`` has prime
        factors, the extra factors are 1). With ``False``, a ``ValueError`` is raised when
        ``n`` has fewer than ``modes`` prime factors.

    Returns
    -------
    tuple of int
        ``modes`` factors, ascending, with product ``n``.

    Examples
    --------
    >>> factorize(16, 2), factorize(120, 3), factorize(6, 3)
    ((4, 4), (4, 5, 6), (1, 2, 3))
    """
    n = _check_positive_int(n, "n")
    modes = _check_positive_int(modes, "modes")
    if not allow_ones and len(_prime_factors(n)) < modes:
        raise ValueError(
            f"cannot factor n={n} into {modes} factors >= 2 (it has only "
            f"{len(_prime_factors(n))} prime factors {_prime_factors(n)})"
        )
    lo = 1 if allow_ones else 2
    best: tuple[int, ...] | None = None

    def key(f: tuple[int, ...]) -> tuple[int, int]:
        return (max(f), -min(f))

    def rec(rest: int, k: int, start: int, acc: tuple[int, ...]) -> None:
        nonlocal best
        # With 2**k > rest only the factor 1 fits (f**k <= rest fails for every f >= 2):
        # take those forced ones at once, so the depth stays below log2(n) for any modes.
        if start == 1 and k > 1 and k >= rest.bit_length():
            ones = k - max(rest.bit_length() - 1, 1)
            acc, k = acc + (1,) * ones, k - ones
        if k == 1:
            if rest >= start:
                cand = acc + (rest,)
                if best is None or key(cand) < key(best):
                    best = cand
            return
        f = start
        while f**k <= rest:
            if rest % f == 0:
                rec(rest // f, k - 1, f, acc + (f,))
            f += 1

    rec(n, modes, lo, ())
    assert best is not None  # allow_ones, or enough prime factors
    return best


def _resolve_factors(
    n: int, factors: Sequence[int] | None, modes: int, name: str, channels: str
) -> tuple[int, ...]:
    if factors is None:
        return factorize(n, modes)
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise TypeError(f"{name} must be a sequence of ints, got {type(factors).__name__}")
    fs = tuple(factors)
    if len(fs) != modes or not all(is_int(f) and f >= 1 for f in fs):
        raise ValueError(f"{name} must be {modes} ints >= 1, got {factors!r}")
    if math.prod(fs) != n:
        raise ValueError(f"{name}={fs} has product {math.prod(fs)} but {channels} = {n}")
    return tuple(int(f) for f in fs)


def _check_form(form: Any) -> str:
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; valid forms: {list(FORMS)}")
    return form


def _reshaped_dims(
    in_factors: Sequence[int], out_factors: Sequence[int], kernel_size: Sequence[int] | None
) -> tuple[int, ...]:
    dims = [t * s for t, s in zip(out_factors, in_factors)]
    if kernel_size is not None:
        dims.append(int(kernel_size[0]) * int(kernel_size[1]))
    return tuple(dims)


def _caps(form: str, dims: Sequence[int]) -> tuple[int, ...]:
    total = math.prod(dims)
    if form == "rcp":
        return (total // max(dims),)
    if form == "rtk":
        return tuple(min(d, total // d) for d in dims)
    return tuple(min(math.prod(dims[:i]), math.prod(dims[i:])) for i in range(1, len(dims)))


def _count(form: str, dims: Sequence[int], ranks: Sequence[int]) -> int:
    if form == "rcp":
        return ranks[0] * sum(dims)
    if form == "rtk":
        return sum(d * r for d, r in zip(dims, ranks)) + math.prod(ranks)
    full = (1, *ranks, 1)
    return sum(full[i] * d * full[i + 1] for i, d in enumerate(dims))


def _normalize_ranks(rank: Any, caps: Sequence[int], what: str) -> tuple[int, ...]:
    if is_int(rank):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if rank > max(caps):
            raise ValueError(
                f"rank={rank} exceeds the full rank {max(caps)} of {what} (rank caps per "
                f"bond {tuple(caps)})"
            )
        return tuple(min(int(rank), c) for c in caps)
    if isinstance(rank, (tuple, list)):
        if len(rank) != len(caps):
            raise ValueError(
                f"rank for {what} must be an int or a tuple of {len(caps)} ints, got {rank!r}"
            )
        for i, (r, c) in enumerate(zip(rank, caps)):
            if not is_int(r) or r < 1 or r > c:
                raise ValueError(f"rank[{i}] for {what} must be an int in [1, {c}], got {r!r}")
        return tuple(int(r) for r in rank)
    raise TypeError(f"rank must be an int or a tuple of ints, got {type(rank).__name__}")


def _check_tt_ranks(dims: Sequence[int], ranks: Sequence[int], what: str) -> None:
    """Refuse tensor-train bond ranks that the TT-SVD cannot reach.

    The TT-SVD (Oseledets 2011) sweeps left to right: bond ``k`` is the rank of a matrix
    with ``r_{k-1} dims[k]`` rows (``r_{-1} = 1``), so ``r_k <= r_{k-1} dims[k]``.
    ``tensorly.decomposition.tensor_train`` silently lowers a larger rank, and the cores
    it returns then do not fit the layer built for the requested ranks.

    Parameters
    ----------
    dims : sequence of int
        Sizes of the tensor's modes, in train order.
    ranks : sequence of int
        Bond ranks, ``len(dims) - 1`` of them (each already within its full rank).
    what : str
        Names the layer in the error message.

    Raises
    ------
    ValueError
        Some ``r_k > r_{k-1} dims[k]``.
    """
    left = 1
    for k, r in enumerate(ranks):
        if r > left * dims[k]:
            raise ValueError(
                f"rank {tuple(ranks)} for {what}: rank[{k}] = {r} exceeds "
                f"{'rank[' + str(k - 1) + ']' if k else '1'} * {dims[k]} = {left * dims[k]}, "
                "the largest rank the TT-SVD reaches on that bond (r_k <= r_(k-1) * n_k with "
                f"mode sizes n = {tuple(dims)}); lower rank[{k}] or raise the rank before it"
            )
        left = r


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive finite number, got {rate!r}")
    return float(rate)


def largest_uniform_ranks(
    caps: Sequence[int], count: Any, budget: float, no_rank: Any
) -> tuple[int, ...]:
    """Largest uniform rank ``r`` (capped per entry) with ``count(ranks(r)) <= budget``.

    Parameters
    ----------
    caps : sequence of int
        Full ranks, one per rank entry; the ranks are ``min(r, cap)``.
    count : callable
        ``count(ranks) -> int``, the parameters at those ranks.
    budget : float
        Parameters allowed.
    no_rank : callable
        ``no_rank(n1) -> str``, the error message when rank 1 already needs ``n1 > budget``
        parameters.

    Returns
    -------
    tuple of int
    """
    caps = tuple(int(c) for c in caps)

    def ranks(r: int) -> tuple[int, ...]:
        return tuple(min(r, c) for c in caps)

    n1 = count(ranks(1))
    if n1 > budget:
        raise ValueError(no_rank(n1))
    lo, hi = 1, max(caps)
    while lo < hi:  # count grows with r: bisect for the last r that fits
        mid = (lo + hi + 1) // 2
        if count(ranks(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return ranks(lo)


def _checked_dims(
    in_factors: Any, out_factors: Any, kernel_size: Any
) -> tuple[int, ...]:
    """:func:`_reshaped_dims` after the checks the layers make on their factors."""
    fs = []
    for name, f in (("in_factors", in_factors), ("out_factors", out_factors)):
        if isinstance(f, (str, bytes)) or not isinstance(f, Sequence):
            raise TypeError(f"{name} must be a sequence of ints, got {type(f).__name__}")
        if len(f) < 1 or not all(is_int(v) and v >= 1 for v in f):
            raise ValueError(f"{name} must be one or more ints >= 1, got {f!r}")
        fs.append(tuple(int(v) for v in f))
    s, t = fs
    if len(s) != len(t):
        raise ValueError(
            f"in_factors {s} and out_factors {t} must have the same length (one input and one "
            f"output factor per mode), got {len(s)} and {len(t)}"
        )
    if len(s) > _MAX_MODES:
        raise ValueError(f"modes must be <= {_MAX_MODES}, got {len(s)}")
    if kernel_size is None:
        if len(s) < 2:
            # As TensorialLinear: one mode is the dense weight itself (rtt has no bond).
            raise ValueError(
                f"a fully connected tensorial layer (kernel_size=None) needs at least 2 modes, "
                f"got in_factors={s}, out_factors={t}"
            )
        return _reshaped_dims(s, t, None)
    ks = _pair(kernel_size, "kernel_size")
    if min(ks) < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
    return _reshaped_dims(s, t, ks)


def tensorial_max_ranks(
    form: str,
    in_factors: Sequence[int],
    out_factors: Sequence[int],
    kernel_size: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Full ranks of a tensorial layer (the ranks at which it is exact).

    The reshaped kernel has modes ``(t_1 s_1, ..., t_M s_M[, kh kw])``. ``"rcp"``: one
    rank, the trivial CP-rank bound ``prod(dims) / max(dims)``. ``"rtk"``: one rank per
    mode, ``min(d_i, prod(dims) / d_i)``. ``"rtt"``: one rank per bond between
    consecutive cores, ``min(prod(dims[:i]), prod(dims[i:]))``.

    Parameters
    ----------
    form : {"rcp", "rtk", "rtt"}
    in_factors, out_factors : sequence of int
        ``(s_1, ..., s_M)`` and ``(t_1, ..., t_M)``, the same length ``M`` (``M >= 1``
        for a convolution, ``M >= 2`` for a linear layer, as the layers require).
    kernel_size : (int, int), optional
        Spatial kernel size of a convolution; ``None`` for a linear layer.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        Unknown form, factor lists of different lengths or with entries ``< 1``, a single
        mode without ``kernel_size``.
    """
    _check_form(form)
    return _caps(form, _checked_dims(in_factors, out_factors, kernel_size))


def tensorial_n_parameters(
    form: str,
    in_factors: Sequence[int],
    out_factors: Sequence[int],
    kernel_size: Sequence[int] | None,
    ranks: int | Sequence[int],
    bias: bool = True,
) -> int:
    """Number of parameters of a tensorial layer.

    With ``d = (t_1 s_1, ..., t_M s_M[, kh kw])`` and ranks ``r``: ``"rcp"``:
    ``R sum(d)``; ``"rtk"``: ``sum(d_i r_i) + prod(r)``; ``"rtt"``:
    ``sum(r_{i-1} d_i r_i)`` with ``r_0 = r_N = 1``; plus ``T`` for the bias.

    Parameters
    ----------
    form, in_factors, out_factors, kernel_size
        See :func:`tensorial_max_ranks`.
    ranks : int or sequence of int
        An int is a uniform rank capped per bond at the full ranks.
    bias : bool

    Returns
    -------
    int

    Raises
    ------
    ValueError
        As :func:`tensorial_max_ranks`, and ranks out of range.
    """
    _check_form(form)
    dims = _checked_dims(in_factors, out_factors, kernel_size)
    caps = _caps(form, dims)
    r = _normalize_ranks(ranks, caps, f"form {form!r}")
    return _count(form, dims, r) + (math.prod(out_factors) if bias else 0)


# ---------------------------------------------------------------------------------------
# Tensor decompositions (tensorly, float64 NumPy)
# ---------------------------------------------------------------------------------------


def _exact_cp(tensor: np.ndarray) -> list[np.ndarray]:
    """Exact CP factors with rank prod(dims) / max(dims): one-hot columns on every mode
    but the largest, the matching fibre on the largest; norms balanced as for ALS factors
    (the fibre's norm alone would scale one layer's gradients)."""
    dims = tensor.shape
    k = int(np.argmax(dims))
    others = [i for i in range(len(dims)) if i != k]
    n_cols = math.prod(dims[i] for i in others)
    fibres = np.moveaxis(tensor, k, -1).reshape(n_cols, dims[k])
    index = np.unravel_index(np.arange(n_cols), [dims[i] for i in others])
    factors: list[np.ndarray] = [np.empty(0)] * len(dims)
    for pos, i in enumerate(others):
        f = np.zeros((dims[i], n_cols))
        f[index[pos], np.arange(n_cols)] = 1.0
        factors[i] = f
    factors[k] = fibres.T.copy()
    return _balance_cp(np.ones(n_cols), factors)


def _balance_cp(weights: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Give every factor column the same norm (the CP weights spread evenly)."""
    norms = [np.linalg.norm(f, axis=0) for f in factors]
    scale = np.asarray(weights, dtype=np.float64) * np.prod(norms, axis=0)
    per = np.abs(scale) ** (1.0 / len(factors))
    out = []
    for i, (f, n) in enumerate(zip(factors, norms)):
        g = f / np.where(n > 0, n, 1.0) * per
        if i == 0:
            g = g * np.where(scale < 0, -1.0, 1.0)
        out.append(g)
    return out


def cp_factors(
    tensor: np.ndarray, rank: int, *, seed: int = 0, n_iter_max: int = 300
) -> list[np.ndarray]:
    """CP factors ``A_i (dims[i], rank)`` of ``tensor``, norms balanced across factors.

    ``tensorly.decomposition.parafac`` (ALS, SVD initialisation, seeded); at the full rank
    ``prod(dims) / max(dims)`` an exact decomposition is built directly, and an all-zero
    tensor gets all-zero factors (ALS would solve with singular Gram matrices).
    """
    seed = check_seed(seed, allow_none=True)
    n_iter_max = _check_n_iter_max(n_iter_max)
    if not np.any(tensor):
        return [np.zeros((d, rank)) for d in tensor.shape]
    full = math.prod(tensor.shape) // max(tensor.shape)
    if rank >= full:
        return _exact_cp(tensor)
    from tensorly.decomposition import parafac

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cp = parafac(tensor, rank, init="svd", n_iter_max=n_iter_max, tol=1e-10, random_state=seed)
    return _balance_cp(np.asarray(cp.weights), [np.asarray(f) for f in cp.factors])


def _cp_to_tensor(factors: Sequence[np.ndarray]) -> np.ndarray:
    import tensorly as tl

    return np.asarray(tl.cp_to_tensor((np.ones(factors[0].shape[1]), list(factors))))


def _tucker(tensor: np.ndarray, ranks: Sequence[int], seed: int, n_iter_max: int):
    from tensorly.decomposition import tucker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        core, factors = tucker(
            tensor,
            rank=list(ranks),
            init="svd",
            n_iter_max=n_iter_max,
            tol=1e-10,
            random_state=seed,
        )
    return np.asarray(core), [np.asarray(f) for f in factors]


def _tt(tensor: np.ndarray, ranks: Sequence[int]) -> list[np.ndarray]:
    from tensorly.decomposition import tensor_train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tt = tensor_train(tensor, rank=[1, *ranks, 1])
    return [np.asarray(c) for c in tt.factors]


# ---------------------------------------------------------------------------------------
# Tensorial layers
# ---------------------------------------------------------------------------------------


class _Letters:
    """Mode letters for the notation strings of a layer with M modes."""

    def __init__(self, n_modes: int):
        pool = [c for c in string.ascii_letters if c not in "bxyar"]
        # "r" is the single CP rank mode; "a" the Tucker rank of the spatial factor.
        self.b, self.x, self.y, self.a = "b", "x", "y", "a"
        self.s = pool[:n_modes]
        self.t = pool[n_modes : 2 * n_modes]
        self.r = pool[2 * n_modes : 3 * n_modes]


def _conv_pair_options(
    padding: Any, stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[dict, dict]:
    if isinstance(padding, str):
        ph = pw = padding
    else:
        ph, pw = padding
    return (
        {"padding": ph, "stride": stride[0], "dilation": dilation[0]},
        {"padding": pw, "stride": stride[1], "dilation": dilation[1]},
    )


def _pair(v: Any, name: str) -> tuple[int, int]:
    if is_int(v):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(u) for u in v)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return int(v[0]), int(v[1])


def _autocast_on(device: torch.device) -> bool:
    """Whether ``torch.autocast`` is active for ``device``'s type (never for meta tensors,
    which autocast does not know)."""
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return False


class _TensorialBase(nn.Module):
    """Shared machinery of :class:`TensorialConv2d` and :class:`TensorialLinear`."""

    form: str
    in_factors: tuple[int, ...]
    out_factors: tuple[int, ...]
    ranks: tuple[int, ...]
    kernel_size: tuple[int, int] | None
    decomposition_error: float | None

    def _setup(
        self,
        form: str,
        in_factors: tuple[int, ...],
        out_factors: tuple[int, ...],
        kernel_size: tuple[int, int] | None,
        rank: Any,
        bias: bool,
        seed: int | None,
        dtype: torch.dtype | None,
        device: Any,
    ) -> None:
        self.form = _check_form(form)
        if dtype is not None:
            _check_dtype(dtype)
        self.in_factors, self.out_factors = in_factors, out_factors
        self.kernel_size = kernel_size
        self.n_modes = len(in_factors)
        if self.n_modes > _MAX_MODES:
            raise ValueError(f"modes must be <= {_MAX_MODES}, got {self.n_modes}")
        self.dims = _reshaped_dims(in_factors, out_factors, kernel_size)
        self.max_ranks = _caps(form, self.dims)
        self.ranks = _normalize_ranks(rank, self.max_ranks, f"this {form!r} layer")
        self.decomposition_error = None
        self._L = _Letters(self.n_modes)
        kw = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        shapes = self._core_shapes()
        self.factors = nn.ParameterList(
            [nn.Parameter(torch.empty(sh, **kw)) for sh in shapes["factors"]]
        )
        self.spatial = (
            nn.Parameter(torch.empty(shapes["spatial"], **kw)) if "spatial" in shapes else None
        )
        self.core = nn.Parameter(torch.empty(shapes["core"], **kw)) if "core" in shapes else None
        out_ch = math.prod(out_factors)
        self.bias = nn.Parameter(torch.empty(out_ch, **kw)) if bias else None
        self._random_init(seed)

    # -- shapes ----------------------------------------------------------------------
    def _core_shapes(self) -> dict[str, Any]:
        """Parameter shapes. Channel cores carry (rank modes..., t_m, s_m)."""
        M, r, conv = self.n_modes, self.ranks, self.kernel_size is not None
        ts = list(zip(self.out_factors, self.in_factors))
        shapes: dict[str, Any] = {}
        if self.form == "rcp":
            shapes["factors"] = [(r[0], t, s) for t, s in ts]
            if conv:
                shapes["spatial"] = (r[0], *self.kernel_size)
        elif self.form == "rtk":
            shapes["factors"] = [(r[m], t, s) for m, (t, s) in enumerate(ts)]
            shapes["core"] = tuple(r)
            if conv:
                shapes["spatial"] = (r[M], *self.kernel_size)
        else:
            # Core m carries its left bond (m > 0) and right bond (m < n_bonds).
            fs = []
            for m, (t, s) in enumerate(ts):
                modes = []
                if m > 0:
                    modes.append(r[m - 1])
                if m < len(r):
                    modes.append(r[m])
                fs.append((*modes, t, s))
            shapes["factors"] = fs
            if conv:
                shapes["spatial"] = (r[M - 1], *self.kernel_size)
        return shapes

    def _factor_letters(self, m: int) -> str:
        L = self._L
        if self.form == "rcp":
            return "r" + L.t[m] + L.s[m]
        if self.form == "rtk":
            return L.r[m] + L.t[m] + L.s[m]
        left = L.r[m - 1] if m > 0 else ""
        right = L.r[m] if m < len(self.ranks) else ""
        return left + right + L.t[m] + L.s[m]

    def _spatial_letters(self) -> str:
        L = self._L
        if self.form == "rcp":
            return "r" + L.x + L.y
        if self.form == "rtk":
            return L.a + L.x + L.y
        return L.r[self.n_modes - 1] + L.x + L.y

    def _core_letters(self) -> str:
        L = self._L
        return "".join(L.r[: self.n_modes]) + (L.a if self.kernel_size is not None else "")

    # -- initialisation --------------------------------------------------------------
    @torch.no_grad()
    def _random_init(self, seed: int | None) -> None:
        seed = check_seed(seed, allow_none=True)
        g = torch.Generator(device="cpu")
        g.manual_seed(0 if seed is None else seed)
        fan_in = math.prod(self.in_factors) * (
            math.prod(self.kernel_size) if self.kernel_size is not None else 1
        )
        # Match the variance 1 / (3 fan_in) of nn.Conv2d / nn.Linear's default init:
        # the effective weight is a sum of `terms` products of `n` independent factors.
        tensors = [p for p in (*self.factors, self.spatial, self.core) if p is not None]
        if self.form == "rcp":
            terms = self.ranks[0]
        else:
            terms = math.prod(self.ranks)
        target = 1.0 / (3.0 * fan_in)
        std = (target / terms) ** (1.0 / (2 * len(tensors)))
        for p in tensors:
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p) * std)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            u = torch.rand(self.bias.shape, generator=g, dtype=torch.float64)
            self.bias.copy_(((2 * u - 1) * bound).to(self.bias))

    # -- loading a decomposition -----------------------------------------------------
    @torch.no_grad()
    def _load_from_weight(self, weight: np.ndarray, seed: int, n_iter_max: int) -> None:
        """Decompose ``weight`` ((T, S, kh, kw) or (T, S), float64) into this layer's cores.

        An all-zero weight gets all-zero cores (exact, error 0) without a decomposition.
        """
        if not np.any(weight):
            for p in (*self.factors, self.spatial, self.core):
                if p is not None:
                    p.zero_()
            self.decomposition_error = 0.0
            return
        M = self.n_modes
        t, s = self.out_factors, self.in_factors
        spatial = () if self.kernel_size is None else tuple(self.kernel_size)
        w = weight.reshape(*t, *s, *spatial)
        perm = [i for m in range(M) for i in (m, M + m)] + list(range(2 * M, 2 * M + len(spatial)))
        w = np.transpose(w, perm).reshape(self.dims)
        conv = self.kernel_size is not None
        if self.form == "rcp":
            fs = cp_factors(w, self.ranks[0], seed=seed, n_iter_max=n_iter_max)
            approx = _cp_to_tensor(fs)
            cores = [f.T.reshape(self.ranks[0], t[m], s[m]) for m, f in enumerate(fs[:M])]
            if conv:
                self.spatial.copy_(torch.from_numpy(fs[M].T.reshape(self.spatial.shape)))
        elif self.form == "rtk":
            core, fs = _tucker(w, self.ranks, seed, n_iter_max)
            import tensorly as tl

            approx = np.asarray(tl.tucker_to_tensor((core, fs)))
            cores = [f.T.reshape(self.ranks[m], t[m], s[m]) for m, f in enumerate(fs[:M])]
            self.core.copy_(torch.from_numpy(core.reshape(self.core.shape)))
            if conv:
                self.spatial.copy_(torch.from_numpy(fs[M].T.reshape(self.spatial.shape)))
        else:
            import tensorly as tl

            tt = _tt(w, self.ranks)
            approx = np.asarray(tl.tt_to_tensor(tt))
            cores = []
            for m in range(M):
                g = tt[m]  # (r_left, t_m s_m, r_right)
                g = g.reshape(g.shape[0], t[m], s[m], g.shape[2]).transpose(0, 3, 1, 2)
                cores.append(g.reshape(self.factors[m].shape))
            if conv:
                self.spatial.copy_(torch.from_numpy(tt[M].reshape(self.spatial.shape)))
        for p, c in zip(self.factors, cores):
            p.copy_(torch.from_numpy(np.ascontiguousarray(c)))
        norm = np.linalg.norm(w)
        self.decomposition_error = float(np.linalg.norm(w - approx) / (norm if norm > 0 else 1))

    # -- forward machinery -----------------------------------------------------------
    # Every step is one generalized operation (tensor_op). The mode layouts are chosen so
    # that each step's contracted modes form one contiguous block of the activation
    # tensor, which tensor_op then evaluates as a matmul on views (no copies).

    def _T(self, modes: Any) -> str:
        return "".join(self._L.t[m] for m in sorted(modes))

    def _S(self, modes: Any) -> str:
        return "".join(self._L.s[m] for m in sorted(modes))

    def _step(self, u: torch.Tensor, cur: str, m: int, out: str) -> tuple[torch.Tensor, str]:
        return tensor_op(f"{cur},{self._factor_letters(m)}->{out}", u, self.factors[m]), out

    def _conv(self, u: torch.Tensor, cur: str, out: str) -> tuple[torch.Tensor, str]:
        spec = f"{cur},{self._spatial_letters()}->{out}|{self._L.x}{self._L.y}"
        return tensor_op(spec, u, self.spatial, conv=self._conv_opts), out

    def _rcp_order(self) -> list[int]:
        # Shrinking modes first keeps the rank-inflated intermediates small.
        return sorted(range(self.n_modes), key=lambda m: self.out_factors[m] / self.in_factors[m])

    def _merged_core(self, m: int) -> tuple[torch.Tensor, str]:
        """RTK factor m with the Tucker core contracted into it (parameters only).

        Letters: t_m s_m, the other ranks r_j (j != m) and the spatial rank a.
        """
        L = self._L
        others = "".join(L.r[j] for j in range(self.n_modes) if j != m)
        a = L.a if self.kernel_size is not None else ""
        letters = L.t[m] + L.s[m] + others + a
        spec = f"{self._factor_letters(m)},{self._core_letters()}->{letters}"
        return tensor_op(spec, self.factors[m], self.core), letters

    def _chain(self, u: torch.Tensor, conv_first: bool) -> torch.Tensor:
        """Apply the factors to u (B, s_1..s_M[, X, Y]); returns (B, t_1..t_M[, X', Y'])."""
        L, M, form = self._L, self.n_modes, self.form
        sp = self.kernel_size is not None
        xy = L.x + L.y if sp else ""
        b, T, S = L.b, self._T, self._S
        cur = b + S(range(M)) + xy
        final = b + T(range(M)) + xy
        if sp and conv_first:
            return self._chain_conv_first(u, cur, final)

        if form == "rcp":
            # layout b r ...: each factor replaces s_m by t_m in place; r is a partial
            # outer product until the spatial factor (or a final sum) contracts it.
            for m in self._rcp_order():
                body = cur[1:].replace("r", "").replace(L.s[m], L.t[m])
                out = b + "r" + body
                u, cur = self._step(u, cur, m, out)
            if sp:
                return self._conv(u, cur, final)[0]
            return tensor_op(f"{cur}->{final}", u)  # sum over the rank mode

        r = L.r
        if form == "rtt":
            # layout b T r S: each core contracts (r_{m-1}, s_m) and creates (t_m, r_m)
            for m in range(M):
                bond = r[m] if m < len(self.ranks) else ""
                out = b + T(range(m + 1)) + bond + S(range(m + 1, M)) + xy
                u, cur = self._step(u, cur, m, out)
            return self._conv(u, cur, final)[0] if sp else u

        # rtk: factors M-1..1 (each s_m -> r_m t_m), then factor 0 merged with the core
        # contracts s_0 and r_1..r_{M-1} and creates t_0 (and the spatial rank a).
        for m in range(M - 1, 0, -1):
            out = cur.replace(L.s[m], r[m] + L.t[m])
            u, cur = self._step(u, cur, m, out)
        g, g_letters = self._merged_core(0)
        tail = "".join(c for c in cur[2:] if c in L.t)  # t_1..t_{M-1}, in order
        out = b + L.t[0] + (L.a if sp else "") + tail + xy
        u = tensor_op(f"{cur},{g_letters}->{out}", u, g)
        return self._conv(u, out, final)[0] if sp else u

    def _chain_conv_first(self, u: torch.Tensor, cur: str, final: str) -> torch.Tensor:
        L, M, form = self._L, self.n_modes, self.form
        b, T, S, xy = L.b, self._T, self._S, L.x + L.y
        if form == "rcp":
            u, cur = self._conv(u, cur, b + "r" + S(range(M)) + xy)
            for m in self._rcp_order():
                u, cur = self._step(u, cur, m, cur.replace(L.s[m], L.t[m]))
            return tensor_op(f"{cur}->{final}", u)
        r = L.r
        if form == "rtt":
            # layout b S r T: core m contracts (s_m, r_m), creates (r_{m-1}, t_m)
            u, cur = self._conv(u, cur, b + S(range(M)) + r[M - 1] + xy)
            for m in range(M - 1, -1, -1):
                bond = r[m - 1] if m > 0 else ""
                out = b + S(range(m)) + bond + T(range(m, M)) + xy
                u, cur = self._step(u, cur, m, out)
            return u
        # rtk: spatial factor, then factor M-1 merged with the core contracts
        # (s_{M-1}, a) and creates t_{M-1}, r_0..r_{M-2}; then factors M-2..0.
        u, cur = self._conv(u, cur, b + S(range(M)) + L.a + xy)
        g, g_letters = self._merged_core(M - 1)
        out = b + S(range(M - 1)) + "".join(reversed(r[: M - 1])) + L.t[M - 1] + xy
        u = tensor_op(f"{cur},{g_letters}->{out}", u, g)
        cur = out
        for m in range(M - 2, -1, -1):
            out = b + S(range(m)) + "".join(reversed(r[:m])) + T(range(m, M)) + xy
            u, cur = self._step(u, cur, m, out)
        return u

    def _as_input(self, x: Any) -> torch.Tensor:
        """``x`` as a tensor (NumPy arrays accepted) in the parameters' dtype.

        Checked in ``forward`` before any route runs, so every route gives the same error.
        """
        if not torch.is_tensor(x):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as err:
                raise TypeError(f"x must be a tensor or array, got {type(x).__name__}") from err
        if not _autocast_on(x.device):  # autocast mixes dtypes on purpose
            _check_input_dtype(x, self.factors[0])
        return x

    def _dense_evaluation(self, x: torch.Tensor) -> bool:
        """Whether this call runs through the formed kernel (``evaluation``, see the class)."""
        if self.evaluation not in EVALUATIONS:
            raise ValueError(
                f"evaluation must be one of {EVALUATIONS}, got {self.evaluation!r}"
            )
        if self.evaluation != "auto":
            return self.evaluation == "dense"
        return self.route(x.shape) == "dense"

    def route(self, input_shape: Sequence[int]) -> str:
        """The route ``evaluation="auto"`` takes for inputs of this shape.

        ``"chain"`` where it needs fewer than :data:`CHAIN_FLOP_ADVANTAGE` times the
        operations of the formed kernel (:meth:`route_flops`), ``"dense"`` otherwise.
        Counted once per input shape (and chain ``order``): a training loop sees two.
        """
        key = (tuple(input_shape), getattr(self, "order", None))
        cache = self.__dict__.setdefault("_route_cache", {})
        if key not in cache:
            chain, dense = self.route_flops(key[0])
            cache[key] = "chain" if chain < CHAIN_FLOP_ADVANTAGE * dense else "dense"
        return cache[key]

    def route_flops(self, input_shape: Sequence[int]) -> tuple[int, int]:
        """Floating-point operations of one forward pass by each evaluation route.

        Counted by :class:`torch.utils.flop_counter.FlopCounterMode` while the layer runs
        on ``meta`` tensors of the right shapes (nothing is computed or allocated), so the
        count follows the code path itself: the chain's binary operations, or the
        contraction that forms the kernel plus the dense convolution / matrix product.

        Parameters
        ----------
        input_shape : sequence of int
            Shape of an input ``x`` the layer accepts.

        Returns
        -------
        chain, dense : int
            Operations of ``evaluation="chain"`` and of ``evaluation="dense"``.
        """
        from torch.func import functional_call
        from torch.utils._python_dispatch import _disable_current_modes
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.empty(tuple(input_shape), device="meta", dtype=next(self.parameters()).dtype)
        params = {n: torch.empty_like(p, device="meta") for n, p in self.named_parameters()}
        counts = []
        for route in ("chain", "dense"):
            # Modes already active (a caller's own FlopCounterMode, say) are set aside: they
            # must not see this count's meta pass.
            with evaluation_route(self, route), _disable_current_modes(), torch.no_grad(), \
                    FlopCounterMode(display=False) as counter:
                functional_call(self, params, (x,))
            counts.append(int(counter.get_total_flops()))
        return counts[0], counts[1]

    # -- public API --------------------------------------------------------------------
    @property
    def n_parameters(self) -> int:
        """Number of scalar parameters (cores and bias)."""
        return sum(p.numel() for p in self.parameters())

    def to_dense_weight(self) -> torch.Tensor:
        """The dense weight this layer represents: ``(T, S, kh, kw)`` or ``(T, S)``.

        One :func:`torch.einsum` of all cores (pairwise, left to right), ordered to keep
        the intermediates small: the Tucker core comes first (factor-first order would
        build the outer product of all channel factors with every rank mode: for the
        reshaped Tucker form of a 400 x 120 layer, 1.4e8 entries instead of at most
        4.8e4), and the reshaped CP's spatial factor comes before its last channel factor
        where that is smaller. Differentiable in the parameters.
        """
        M, L = self.n_modes, self._L
        terms = [self._factor_letters(m) for m in range(M)]
        ops = list(self.factors)
        if self.core is not None:
            terms.insert(0, self._core_letters())
            ops.insert(0, self.core)
        if self.spatial is not None:
            # Reshaped CP keeps the rank mode until the last operand: the spatial factor
            # goes before the last channel factor when that makes the smaller intermediate
            # (R kh kw instead of R t s per mode), e.g. for 256 x 256 channels.
            last = M - 1
            at = len(ops)
            if self.form == "rcp" and math.prod(self.kernel_size) < (
                self.out_factors[last] * self.in_factors[last]
            ):
                at -= 1
            terms.insert(at, self._spatial_letters())
            ops.insert(at, self.spatial)
        out = "".join(L.t[:M]) + "".join(L.s[:M])
        shape: tuple[int, ...] = (math.prod(self.out_factors), math.prod(self.in_factors))
        if self.spatial is not None:
            out += L.x + L.y
            shape = shape + tuple(self.kernel_size)
        return torch.einsum(",".join(terms) + "->" + out, *ops).reshape(shape)

    def extra_repr(self) -> str:
        return (
            f"form={self.form!r}, in_factors={self.in_factors}, out_factors={self.out_factors}, "
            f"ranks={self.ranks}"
        )


def _check_layer_args(layer: Any, cls: type, name: str) -> None:
    if not isinstance(layer, cls):
        raise TypeError(
            f"layer must be a torch.nn.{cls.__name__} for {name}, got {type(layer).__name__}"
        )


def _modes_and_factors(
    S: int, T: int, modes: int | None, in_factors: Any, out_factors: Any, min_modes: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    given = [len(f) for f in (in_factors, out_factors) if f is not None and hasattr(f, "__len__")]
    if modes is None:
        modes = given[0] if given else 2
    modes = _check_positive_int(modes, "modes")
    if modes < min_modes:
        raise ValueError(f"modes must be >= {min_modes} for this layer, got {modes}")
    if modes > _MAX_MODES:
        raise ValueError(f"modes must be <= {_MAX_MODES}, got {modes}")
    s = _resolve_factors(S, in_factors, modes, "in_factors", "in_channels/in_features")
    t = _resolve_factors(T, out_factors, modes, "out_factors", "out_channels/out_features")
    return s, t


def _dense_count(layer: nn.Module) -> int:
    return sum(p.numel() for p in (layer.weight, layer.bias) if p is not None)


class TensorialConv2d(_TensorialBase):
    """2-D convolution whose reshaped kernel is factorized (Su et al. 2018).

    The kernel ``W (T, S, kh, kw)`` is reshaped into ``(t_0..t_{M-1}, s_0..s_{M-1}, kh, kw)``
    (``S = prod s_m``, ``T = prod t_m``, row-major; modes indexed ``m = 0..M-1``) and
    represented by

    * ``"rcp"`` reshaped CP, rank ``R``: ``factors[m] (R, t_m, s_m)``, ``spatial (R, kh, kw)``;
      ``W = sum_r prod_m factors[m][r] * spatial[r]``;
    * ``"rtk"`` reshaped Tucker, ranks ``(R_0..R_{M-1}, R_sp)``: ``factors[m] (R_m, t_m, s_m)``,
      ``spatial (R_sp, kh, kw)``, ``core (R_0, ..., R_{M-1}, R_sp)``;
    * ``"rtt"`` reshaped tensor train, bond ranks ``(R_0..R_{M-1})``: ``factors[0]
      (R_0, t_0, s_0)``, ``factors[m] (R_{m-1}, R_m, t_m, s_m)``, ``spatial (R_{M-1}, kh, kw)``.

    These are the layer strings of ``conv_einsum`` (Rabbani, Su et al. 2024), e.g. for
    ``"rcp"`` with ``M = 2``: ``"b s0 s1 h w, r t0 s0, r t1 s1, r h w -> b t0 t1 h w | h w"``.

    The forward pass by the chain (``evaluation="chain"``, see below) is a sequence of
    binary generalized operations (:func:`tensor_op`): each channel factor contracts its
    ``s_m`` mode and creates ``t_m``; rank modes are kept as partial outer products until
    the factor that shares them contracts them;
    the spatial factor is convolved along both image axes (with this layer's stride,
    padding and dilation). For ``"rtk"`` the Tucker core is first contracted into one
    channel factor (parameters only), which avoids an intermediate carrying all ranks.
    The spatial convolution runs first when that makes the smaller intermediate, last
    otherwise (``order`` overrides). Mode layouts are chosen so that the steps run as
    matmuls on views and grouped convolutions without copies; the dense kernel is not
    formed on this route.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
    form : {"rcp", "rtk", "rtt"}
    rank : int or tuple of int
        An int is one rank for all bonds, capped at each bond's full rank (see
        :func:`tensorial_max_ranks`); a tuple gives every rank.
    modes : int, optional
        ``M``, the number of channel modes (default 2, or the length of the factors).
    in_factors, out_factors : sequence of int, optional
        ``(s_1..s_M)`` and ``(t_1..t_M)``; default :func:`factorize` (balanced).
    stride, padding, dilation
        As :class:`torch.nn.Conv2d` (zero padding; ``padding`` may be ``"same"`` or
        ``"valid"``).
    bias : bool
    seed : int or None
        Seeds the random initialisation (factors scaled so the effective kernel has the
        variance of PyTorch's default initialisation); a Python or NumPy int ``>= 0``,
        None means 0. Anything else raises ``TypeError`` (never truncated).
    dtype, device
        Of the parameters; ``dtype`` a floating point dtype (else ``TypeError``). Inputs
        must have the same dtype.

    Attributes
    ----------
    ranks : tuple of int
    max_ranks : tuple of int
        Ranks at which the form is exact.
    decomposition_error : float or None
        ``||W - W_approx|| / ||W||`` of the decomposition it was built from
        (:meth:`from_dense`).
    order : {"auto", "conv_first", "conv_last"}
        Where the spatial convolution runs in the chain.
    evaluation : {"auto", "chain", "dense"}
        Attribute, settable at any time. ``"chain"``: the sequence of generalized
        operations above. ``"dense"``: form the kernel from the factors
        (:meth:`to_dense_weight`) and call :func:`torch.nn.functional.conv2d`; the same
        function and gradients, usually much faster on a CPU, because the chain's
        intermediates carry the rank modes (``R`` times the activations for ``"rcp"``) and
        run as several small operations. ``"auto"`` (default): per input shape, the chain
        where it needs fewer than :data:`CHAIN_FLOP_ADVANTAGE` times the operations of the
        formed kernel (:meth:`route`, :meth:`route_flops`), the formed kernel otherwise.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        *,
        form: str = "rcp",
        rank: int | Sequence[int] = 1,
        modes: int | None = None,
        in_factors: Sequence[int] | None = None,
        out_factors: Sequence[int] | None = None,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        seed: int | None = 0,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ):
        super().__init__()
        S = _check_positive_int(in_channels, "in_channels")
        T = _check_positive_int(out_channels, "out_channels")
        ks = _pair(kernel_size, "kernel_size")
        if min(ks) < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 1)
        self.in_channels, self.out_channels = S, T
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise ValueError(f"stride and dilation must be >= 1, got {stride!r}, {dilation!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid' or ints, got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' needs stride 1")
            self.padding: Any = padding
        else:
            self.padding = _pair(padding, "padding")
            if min(self.padding) < 0:
                raise ValueError(f"padding must be >= 0, got {padding!r}")
        self._conv_opts = dict(
            zip("xy", _conv_pair_options(self.padding, self.stride, self.dilation))
        )
        self.order = "auto"
        self.evaluation = "auto"
        self._setup(form, s, t, ks, rank, bias, seed, dtype, device)

    @classmethod
    def from_dense(
        cls,
        layer: nn.Conv2d,
        *,
        rate: float | None = None,
        rank: int | Sequence[int] | None = None,
        form: str = "rcp",
        modes: int | None = None,
        in_factors: Sequence[int] | None = None,
        out_factors: Sequence[int] | None = None,
        seed: int = 0,
        n_iter_max: int = 300,
    ) -> TensorialConv2d:
        """Tensorial layer initialised from a decomposition of a pretrained kernel.

        The reshaped kernel, with modes ordered ``(t_1 s_1, ..., t_M s_M, kh kw)``, is
        decomposed by ``tensorly.decomposition.parafac`` (``"rcp"``; an exact CP is
        built at the full rank), ``tucker`` (``"rtk"``) or ``tensor_train`` (``"rtt"``).
        Stride, padding, dilation and bias are copied.

        Parameters
        ----------
        layer : torch.nn.Conv2d
            ``groups=1``, ``padding_mode="zeros"``.
        rate : float, optional
            Target fraction of the dense layer's parameters (weight and bias): the
            largest uniform rank whose layer has at most ``rate * dense`` parameters.
        rank : int or tuple of int, optional
            Explicit rank(s) instead of ``rate`` (exactly one of the two).
        form, modes, in_factors, out_factors
            See the class.
        seed : int or None
            ``random_state`` of the decomposition, an int ``>= 0`` (None: tensorly's
            global random state).
        n_iter_max : int
            ALS iterations of ``parafac`` / ``tucker``, ``>= 1``.

        Returns
        -------
        TensorialConv2d
            Same dtype and device as ``layer``. An all-zero kernel gives all-zero factors
            (``decomposition_error`` 0; the layer outputs its bias).

        Raises
        ------
        TypeError
            ``layer`` is not an ``nn.Conv2d``; ``seed`` or ``n_iter_max`` not an int.
        ValueError
            ``groups != 1``, non-zero padding mode, a weight or bias with NaN/Inf, both or
            neither of rate/rank, a rate that leaves no rank >= 1, a rank above the full
            rank, ``"rtt"`` ranks with some ``rank[k] > rank[k-1] * (t_k s_k)`` (more than
            the TT-SVD reaches; ``rank[-1] = 1``), factors whose product is not the channel
            count, ``n_iter_max < 1``, ``seed < 0``.
        """
        _check_layer_args(layer, nn.Conv2d, "TensorialConv2d.from_dense")
        if layer.groups != 1:
            raise ValueError(f"grouped convolutions are not supported (groups={layer.groups})")
        if layer.padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {layer.padding_mode!r}")
        _check_finite_layer(layer, "TensorialConv2d.from_dense")
        seed = check_seed(seed, allow_none=True)
        n_iter_max = _check_n_iter_max(n_iter_max)
        T, S, kh, kw = layer.weight.shape
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 1)
        ranks = _ranks_from(layer, rate, rank, form, s, t, (kh, kw), "TensorialConv2d.from_dense")
        out = cls(
            S,
            T,
            (kh, kw),
            form=form,
            rank=ranks,
            in_factors=s,
            out_factors=t,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=layer.bias is not None,
            dtype=layer.weight.dtype,
            device=layer.weight.device,
        )
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        with torch.no_grad():
            out._load_from_weight(w, seed, n_iter_max)
            if layer.bias is not None:
                out.bias.copy_(layer.bias.detach())
        return out

    def _check_spatial(self, height: int, width: int) -> None:
        """Refuse an image the dilated kernel does not fit in (after padding)."""
        extent = [d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size)]
        ok, need = min(height, width) >= 1, "H, W >= 1"
        if self.padding != "same":  # "same" output has the input's size: any H, W >= 1
            pad = (0, 0) if self.padding == "valid" else self.padding
            ok = ok and height + 2 * pad[0] >= extent[0] and width + 2 * pad[1] >= extent[1]
            need += f" and H + 2 * {pad[0]} >= {extent[0]}, W + 2 * {pad[1]} >= {extent[1]}"
        if not ok:
            raise ValueError(
                f"x must have {need} (padding {self.padding!r}, dilated kernel "
                f"{tuple(extent)}), got spatial size (H, W) = ({height}, {width})"
            )

    def _check_order(self) -> None:
        """``order`` is set as an attribute: checked on every call, whatever the route."""
        if self.order not in ("auto", "conv_first", "conv_last"):
            raise ValueError(
                f"order must be 'auto', 'conv_first' or 'conv_last', got {self.order!r}"
            )

    def _conv_first(self, height: int, width: int) -> bool:
        if self.order != "auto":
            return self.order == "conv_first"
        kh, kw = self.kernel_size
        if isinstance(self.padding, str):
            out_hw = (
                height * width
                if self.padding == "same"
                else (
                    conv_output_length(height, kh, (0, 0), self.stride[0], self.dilation[0])
                    * conv_output_length(width, kw, (0, 0), self.stride[1], self.dilation[1])
                )
            )
        else:
            ph, pw = self.padding
            out_hw = conv_output_length(height, kh, (ph, ph), self.stride[0], self.dilation[0]) * (
                conv_output_length(width, kw, (pw, pw), self.stride[1], self.dilation[1])
            )
        # Intermediates: conv first ~ R * S * out_hw, conv last ~ R * T * in_hw.
        return self.in_channels * out_hw <= self.out_channels * height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor or ndarray, shape (B, S, H, W) or (S, H, W)
            In the dtype of the parameters; the padded image must hold the dilated kernel.

        Returns
        -------
        torch.Tensor, shape (B, T, H', W') or (T, H', W')

        Raises
        ------
        TypeError
            ``x`` not a tensor or array, or of another dtype than the parameters.
        ValueError
            Wrong ``ndim`` or channel count; ``H`` or ``W`` zero or smaller than the
            dilated kernel after padding; an unknown ``order``. The same errors on every
            ``evaluation`` route.
        """
        self._check_order()
        x = self._as_input(x)
        shape = tuple(x.shape)
        unbatched = x.ndim == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            S = self.in_channels
            raise ValueError(f"x must have shape (B, {S}, H, W) or ({S}, H, W), got {shape}")
        self._check_spatial(x.shape[2], x.shape[3])
        if self._dense_evaluation(x):
            y = torch.nn.functional.conv2d(
                x, self.to_dense_weight(), self.bias, self.stride, self.padding, self.dilation
            )
            return y[0] if unbatched else y
        B, _, H, W = x.shape
        u = x.reshape(B, *self.in_factors, H, W)
        u = self._chain(u, self._conv_first(H, W))
        y = u.reshape(B, self.out_channels, u.shape[-2], u.shape[-1])
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y[0] if unbatched else y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            + super().extra_repr()
        )


class TensorialLinear(_TensorialBase):
    """Fully connected layer whose reshaped weight matrix is factorized (Su et al. 2018).

    ``W (T, S)`` is reshaped into ``(t_0..t_{M-1}, s_0..s_{M-1})`` and represented in the
    form ``"rcp"`` (``factors[m] (R, t_m, s_m)``), ``"rtk"`` (``factors[m] (R_m, t_m, s_m)``,
    ``core (R_0..R_{M-1})``) or ``"rtt"`` (bond ranks ``(R_0..R_{M-2})``, the TT-matrix of
    Novikov et al. 2015). ``M >= 2``. The chain route contracts the input with one
    factor after the other (:func:`tensor_op`), never forming ``W``; the dense route forms
    ``W`` and calls :func:`torch.nn.functional.linear` (``evaluation``, as
    :class:`TensorialConv2d`).

    Parameters
    ----------
    in_features, out_features : int
    form, rank, modes, in_factors, out_factors, bias, seed, dtype, device
        As :class:`TensorialConv2d`.

    Attributes
    ----------
    ranks, max_ranks, decomposition_error, evaluation
        As :class:`TensorialConv2d`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        form: str = "rcp",
        rank: int | Sequence[int] = 1,
        modes: int | None = None,
        in_factors: Sequence[int] | None = None,
        out_factors: Sequence[int] | None = None,
        bias: bool = True,
        seed: int | None = 0,
        dtype: torch.dtype | None = None,
        device: Any = None,
    ):
        super().__init__()
        S = _check_positive_int(in_features, "in_features")
        T = _check_positive_int(out_features, "out_features")
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 2)
        self.in_features, self.out_features = S, T
        self.evaluation = "auto"
        self._setup(form, s, t, None, rank, bias, seed, dtype, device)

    @classmethod
    def from_dense(
        cls,
        layer: nn.Linear,
        *,
        rate: float | None = None,
        rank: int | Sequence[int] | None = None,
        form: str = "rcp",
        modes: int | None = None,
        in_factors: Sequence[int] | None = None,
        out_factors: Sequence[int] | None = None,
        seed: int = 0,
        n_iter_max: int = 300,
    ) -> TensorialLinear:
        """Tensorial layer initialised from a decomposition of a pretrained weight.

        The reshaped weight, modes ``(t_1 s_1, ..., t_M s_M)``, is decomposed as in
        :meth:`TensorialConv2d.from_dense`; the bias is copied.

        Parameters
        ----------
        layer : torch.nn.Linear
        rate, rank, form, modes, in_factors, out_factors, seed, n_iter_max
            As :meth:`TensorialConv2d.from_dense` (``modes >= 2``).

        Returns
        -------
        TensorialLinear
            An all-zero weight gives all-zero factors (``decomposition_error`` 0).

        Raises
        ------
        TypeError, ValueError
            As :meth:`TensorialConv2d.from_dense`.
        """
        _check_layer_args(layer, nn.Linear, "TensorialLinear.from_dense")
        _check_finite_layer(layer, "TensorialLinear.from_dense")
        seed = check_seed(seed, allow_none=True)
        n_iter_max = _check_n_iter_max(n_iter_max)
        T, S = layer.weight.shape
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 2)
        ranks = _ranks_from(layer, rate, rank, form, s, t, None, "TensorialLinear.from_dense")
        out = cls(
            S,
            T,
            form=form,
            rank=ranks,
            in_factors=s,
            out_factors=t,
            bias=layer.bias is not None,
            dtype=layer.weight.dtype,
            device=layer.weight.device,
        )
        w = layer.weight.detach().to("cpu", torch.float64).numpy()
        with torch.no_grad():
            out._load_from_weight(w, seed, n_iter_max)
            if layer.bias is not None:
                out.bias.copy_(layer.bias.detach())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer.

        Parameters
        ----------
        x : torch.Tensor or ndarray, shape (..., S)
            In the dtype of the parameters.

        Returns
        -------
        torch.Tensor, shape (..., T)

        Raises
        ------
        TypeError
            ``x`` not a tensor or array, or of another dtype than the parameters.
        ValueError
            ``x`` without a last dimension of size ``S``. The same errors on every
            ``evaluation`` route.
        """
        x = self._as_input(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"x must have shape (..., {self.in_features}), got {tuple(x.shape)}"
            )
        if self._dense_evaluation(x):
            return torch.nn.functional.linear(x, self.to_dense_weight(), self.bias)
        lead = x.shape[:-1]
        u = x.reshape(-1, *self.in_factors)
        u = self._chain(u, False)
        y = u.reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + super().extra_repr()


def _ranks_from(
    layer: nn.Module,
    rate: Any,
    rank: Any,
    form: str,
    s: tuple[int, ...],
    t: tuple[int, ...],
    kernel_size: tuple[int, int] | None,
    where: str,
) -> tuple[int, ...]:
    _check_form(form)
    if (rate is None) == (rank is None):
        raise ValueError(f"{where}: give exactly one of rate= and rank=")
    dims = _reshaped_dims(s, t, kernel_size)
    caps = _caps(form, dims)
    what = f"form {form!r} with in_factors={s}, out_factors={t}"
    if rank is not None:
        ranks = _normalize_ranks(rank, caps, what)
        if form == "rtt":
            _check_tt_ranks(dims, ranks, what)
        return ranks
    rate = _check_rate(rate)
    dense = _dense_count(layer)
    bias = 0 if layer.bias is None else layer.bias.numel()
    budget = rate * dense
    return largest_uniform_ranks(
        caps, lambda r: _count(form, dims, r) + bias, budget,
        lambda n1: f"rate={rate} leaves no rank >= 1 for {what}: rank 1 needs {n1} "
        f"parameters but rate * {dense} dense parameters = {budget:.1f}",
    )


def tensorial_ranks_for_rate(
    layer: nn.Module,
    rate: float,
    *,
    form: str = "rcp",
    modes: int | None = None,
    in_factors: Sequence[int] | None = None,
    out_factors: Sequence[int] | None = None,
) -> tuple[int, ...]:
    """Ranks of the tensorial version of ``layer`` for a target compression rate.

    The largest uniform rank ``r`` (capped per bond at the full ranks) such that the
    tensorial layer's parameter count, bias included, is at most ``rate`` times the
    dense layer's (weight and bias).

    Parameters
    ----------
    layer : torch.nn.Conv2d or torch.nn.Linear
    rate : float
        Fraction of the dense parameter count, ``> 0``.
    form, modes, in_factors, out_factors
        As :meth:`TensorialConv2d.from_dense`.

    Returns
    -------
    tuple of int

    Raises
    ------
    ValueError
        When even rank 1 exceeds the budget.
    """
    if isinstance(layer, nn.Conv2d):
        T, S, kh, kw = layer.weight.shape
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 1)
        return _ranks_from(layer, rate, None, form, s, t, (kh, kw), "tensorial_ranks_for_rate")
    if isinstance(layer, nn.Linear):
        T, S = layer.weight.shape
        s, t = _modes_and_factors(S, T, modes, in_factors, out_factors, 2)
        return _ranks_from(layer, rate, None, form, s, t, None, "tensorial_ranks_for_rate")
    raise TypeError(f"layer must be nn.Conv2d or nn.Linear, got {type(layer).__name__}")


def tensorize(layer: nn.Module, **kwargs: Any) -> TensorialConv2d | TensorialLinear:
    """Tensorial replacement of a pretrained ``nn.Conv2d`` or ``nn.Linear``.

    Dispatches to :meth:`TensorialConv2d.from_dense` or :meth:`TensorialLinear.from_dense`
    with the same keyword arguments (``rate`` or ``rank``, ``form``, ``modes``, ...).

    Raises
    ------
    TypeError
        For any other module type.
    """
    if isinstance(layer, nn.Conv2d):
        return TensorialConv2d.from_dense(layer, **kwargs)
    if isinstance(layer, nn.Linear):
        return TensorialLinear.from_dense(layer, **kwargs)
    raise TypeError(
        f"tensorize supports nn.Conv2d and nn.Linear layers, got {type(layer).__name__}"
    )


@contextlib.contextmanager
def evaluation_route(
    model: nn.Module, route: str
) -> Iterator[list[TensorialConv2d | TensorialLinear]]:
    """Run every tensorial layer of ``model`` on ``route`` inside the ``with`` block.

    Their own ``evaluation`` is restored on leaving the block, also after an error.

    Parameters
    ----------
    model : torch.nn.Module
        Searched with ``model.modules()`` (``model`` itself included).
    route : {"auto", "chain", "dense"}

    Yields
    ------
    list of TensorialConv2d / TensorialLinear
        The layers found, in ``modules()`` order.

    Raises
    ------
    ValueError
        ``route`` not one of :data:`EVALUATIONS`.
    """
    if route not in EVALUATIONS:
        raise ValueError(f"route must be one of {EVALUATIONS}, got {route!r}")
    layers = [m for m in model.modules() if isinstance(m, (TensorialConv2d, TensorialLinear))]
    own = [m.evaluation for m in layers]
    for m in layers:
        m.evaluation = route
    try:
        yield layers
    finally:
        for m, r in zip(layers, own, strict=True):
            m.evaluation = r
