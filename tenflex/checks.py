"""Argument checks shared by the package's modules."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "all_finite", "as_int_tuple", "asks_to_stop", "check_bool", "check_float", "check_int",
    "check_positive_int", "check_seed", "is_int", "is_real",
]

#: Largest seed: torch.Generator.manual_seed takes a signed 64-bit integer.
_MAX_SEED = 2**63 - 1


def is_int(value: Any) -> bool:
    """A Python or NumPy integer (``bool`` is not one here)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A Python or NumPy real number, integer or float (``bool`` is not one here)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_float(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as ``float`` after checking it is a finite number ``>= 0`` (``> 0`` if positive).

    Python and NumPy ints and floats are accepted (``np.float32(1e-3)`` too).

    Raises
    ------
    TypeError
        Not a Python or NumPy real number (``bool`` included).
    ValueError
        NaN, infinite, negative, or zero where ``positive``.
    """
    expected = "a positive finite number" if positive else "a finite number >= 0"
    if not is_real(value):
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} ({value!r})")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return number


def check_int(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as ``int`` after checking it is an integer in ``[low, high]`` (or ``>= low``).

    Raises
    ------
    TypeError
        Not a Python or NumPy integer.
    ValueError
        Out of range.
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as ``int`` after checking it is an integer ``>= 1`` (a ValueError if not)."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_seed(seed: Any, *, allow_none: bool = False, name: str = "seed") -> int | None:
    """A seed as ``int``: a Python or NumPy integer ``>= 0`` (None too where allowed).

    Floats are refused rather than truncated (``1.5`` is not seed 1), and a negative seed
    gets an error that names the argument (NumPy's own does not).

    Raises
    ------
    TypeError
        ``seed`` is not an integer (nor None where allowed).
    ValueError
        ``seed`` is negative or does not fit in 63 bits (torch's generators take int64).
    """
    if seed is None and allow_none:
        return None
    if not is_int(seed):
        expected = "an int >= 0 or None" if allow_none else "an int >= 0"
        raise TypeError(f"{name} must be {expected}, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"{name} must be an int >= 0 (and < 2**63), got {seed!r}")
    return int(seed)


def as_int_tuple(value: Any) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints if it is a sequence of integers: a list, tuple, range,
    ``torch.Size`` or 1-D integer array or tensor; None for anything else (a str, floats,
    which are refused rather than truncated, nested or 0-d values)."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        if value.ndim != 1 or value.dtype == torch.bool or value.dtype == np.bool_:
            return None
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            return None
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range)):
        return None
    if not all(is_int(v) for v in value):
        return None
    return tuple(int(v) for v in value)


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or Inf, without a mask of ``t``'s size.

    ``torch.isfinite(t).all()`` allocates a boolean tensor as large as ``t`` (1.4 times a
    Jacobian tensor at peak, and most of the time of a check on a large batch). A finite sum
    proves every entry finite, since a NaN or an infinity makes the sum NaN or infinite; only
    when the sum is not finite (a NaN/Inf, or finite entries that overflow when added) are
    the entries checked, block by block. Tensors that are neither floating point nor complex
    are finite. Inside ``torch.func`` transforms a tensor cannot become a Python bool, so the
    check answers True there (NaN/Inf then propagate as in any torch layer), which keeps
    ``vmap(jacrev(...))`` working.
    """
    functorch = getattr(torch._C, "_functorch", None)
    is_wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    if is_wrapped is not None and is_wrapped(t):
        return True
    if not (t.is_floating_point() or t.is_complex()):
        return True
    with torch.no_grad():
        if bool(torch.isfinite(t.sum())):
            return True
        return all(bool(torch.isfinite(block).all()) for block in t.reshape(-1).split(1 << 22))


def cast_without_overflow(t: torch.Tensor, dtype: torch.dtype, name: str, remedy: str
                          ) -> torch.Tensor:
    """``t`` cast to ``dtype``; finite values that only overflow on the cast are refused.

    Parameters
    ----------
    t : torch.Tensor
        Floating point; NaN or Inf in ``t`` itself are the caller's to report.
    dtype : torch.dtype
        Floating point.
    name : str
        What ``t`` is, for the message.
    remedy : str
        How to avoid the overflow, for the message (e.g. "rescale X or sample in float64").

    Returns
    -------
    torch.Tensor
        ``t.to(dtype)``.

    Raises
    ------
    ValueError
        ``t`` is finite but its cast is not: the message names the magnitude and the largest
        value of ``dtype``, not "NaN or Inf", which ``t`` does not hold.
    """
    cast = t.to(dtype)
    if t.dtype != dtype and not all_finite(cast) and all_finite(t):
        raise ValueError(
            f"{name} has values up to {float(t.abs().max()):.3g} in magnitude, which overflow "
            f"{dtype} (largest {torch.finfo(dtype).max:.3g}); {remedy}"
        )
    return cast


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool, after checking it is one (a Python or NumPy bool).

    Raises
    ------
    TypeError
        Anything else: ``"no"`` would count as True, ``None`` or ``0`` as False.
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} "
                        f"{value!r}")
    return bool(value)


def asks_to_stop(value: Any) -> bool:
    """Whether a callback's return value asks the loop that called it to stop.

    ``True`` stops: a Python or NumPy bool, or a one-element torch bool tensor (what a
    comparison such as ``info["W"].norm() > 10`` returns). ``None`` and ``False`` go on.

    Raises
    ------
    TypeError
        Any other value: a callback that returns, say, a cost by mistake would otherwise be
        ignored, or stop the loop, without a word.
    """
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return bool(value)
    raise TypeError(f"a callback must return None, False or True (stop), got "
                    f"{type(value).__name__} {value!r}")
