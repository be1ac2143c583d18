"""How closely a compressed classifier follows the network it replaces, and whether two
classifiers' accuracies on the same test images differ beyond chance.

A compression is asked to reproduce the original network, not to correct it. Test accuracy
mixes two things: on how many images the compressed network changes the original's
prediction, and whether those changes happen to fix or break it. When the compressed network
is as accurate as the original to a few images, the second part decides, so the accuracy of
two compressions can differ by several images while they follow the original equally well.
This module separates the two: the **agreement** with the original's predictions and the
relative **output error** (how far the logits moved), next to the accuracy and the images
**fixed** (original wrong, compressed right) and **broken** (the reverse).

Whether two classifiers' accuracies on the same images differ beyond chance is McNemar's
exact test (McNemar 1947; recommended by Dietterich 1998 for one test set): only the images
that exactly one of them gets right carry information, and under equal accuracy each such
image is equally likely to favour either, so their split is Binomial(n, 1/2).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from scipy.stats import binomtest

from tenflex.metrics import relative_error
from tenflex.zoo import accuracy

__all__ = ["ClassifierFidelity", "McNemarResult", "agreement", "fidelity", "mcnemar_exact"]


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test of equal accuracy of classifiers ``a`` and ``b`` on one test set.

    Attributes
    ----------
    only_a, only_b : int
        Images that ``a`` classifies correctly and ``b`` does not, and the reverse.
    p_value : float
        Two-sided exact binomial p-value of ``only_a`` in ``only_a + only_b`` trials with
        probability 1/2; 1.0 when no image separates them.
    """

    only_a: int
    only_b: int
    p_value: float


def _as_bool_vector(values: Any, name: str) -> torch.Tensor:
    t = values if torch.is_tensor(values) else torch.as_tensor(values)
    if t.ndim != 1:
        raise ValueError(f"{name} must be a vector (N,) of per-image correctness, "
                         f"got shape {tuple(t.shape)}")
    if t.numel() == 0:  # no images: whatever dtype it was read as (a [] is float32)
        return torch.zeros(0, dtype=torch.bool)
    if t.dtype != torch.bool:
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"{name} must hold booleans (or 0/1 integers), got dtype {t.dtype}")
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):  # an integer dtype, but not a 0/1 flag (a class index?)
            raise TypeError(f"{name} must hold booleans (or 0/1 integers), got the value "
                            f"{int(t[bad][0])} (dtype {t.dtype}) at index "
                            f"{int(bad.nonzero()[0, 0])}")
        t = t.bool()
    return t.cpu()


def mcnemar_exact(correct_a: Any, correct_b: Any) -> McNemarResult:
    """McNemar's exact test on the per-image correctness of two classifiers.

    Parameters
    ----------
    correct_a, correct_b : bool array-like, shape (N,)
        Whether each test image is classified correctly by ``a`` and by ``b`` (the same
        images in the same order). ``N = 0`` is allowed: an empty vector (``[]`` included,
        whatever dtype it is read as) is an empty boolean vector, and the result is
        ``only_a = only_b = 0``, ``p_value = 1.0``.

    Returns
    -------
    McNemarResult

    Raises
    ------
    ValueError
        Vectors of different lengths or not one-dimensional.
    TypeError
        Non-empty input with values other than booleans or 0/1 integers.
    """
    a = _as_bool_vector(correct_a, "correct_a")
    b = _as_bool_vector(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a and correct_b must describe the same images, got "
                         f"{a.shape[0]} and {b.shape[0]} values")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    n = only_a + only_b
    p_value = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return McNemarResult(only_a=only_a, only_b=only_b, p_value=p_value)


def _check_logits(logits: Any, name: str) -> torch.Tensor:
    t = logits if torch.is_tensor(logits) else torch.as_tensor(logits)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0 or not t.is_floating_point():
        raise ValueError(f"{name} must be float logits (N, n_classes) with N >= 1 and "
                         f"n_classes >= 1, got {tuple(t.shape)} of dtype {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or Inf")
    return t.detach().cpu()


def _check_pair(logits: Any, reference_logits: Any) -> tuple[torch.Tensor, torch.Tensor]:
    out = _check_logits(logits, "logits")
    ref = _check_logits(reference_logits, "reference_logits")
    if out.shape != ref.shape:
        raise ValueError(f"logits and reference_logits must have the same shape, got "
                         f"{tuple(out.shape)} and {tuple(ref.shape)}")
    return out, ref


def agreement(logits: Any, reference_logits: Any) -> float:
    """Fraction of rows on which two sets of logits ``(N, n_classes)`` pick the same class.

    Raises
    ------
    ValueError
        Logits of different shapes, not float ``(N, n_classes)`` with ``N >= 1`` and
        ``n_classes >= 1``, or with NaN/Inf.
    """
    out, ref = _check_pair(logits, reference_logits)
    return float((out.argmax(1) == ref.argmax(1)).double().mean())


@dataclass(frozen=True)
class ClassifierFidelity:
    """A compressed classifier against the original on the same labelled test images.

    Attributes
    ----------
    accuracy, reference_accuracy : float
        Test accuracies, in [0, 1].
    agreement : float
        Fraction of images on which both predict the same class.
    output_error : float
        ``||logits - reference_logits||_F / ||reference_logits||_F``. When the reference
        logits are all zero this ratio is undefined; it is then ``0.0`` if the logits are
        all zero too (identical outputs) and ``inf`` otherwise (``json.dumps`` writes it
        as ``Infinity``). The other fields do not depend on it.
    fixed, broken : int
        Images the original gets wrong and the compressed network right, and the reverse;
        ``accuracy - reference_accuracy = (fixed - broken) / N``.
    p_value : float
        McNemar's exact test of equal accuracy (:func:`mcnemar_exact`).
    n_images : int
    """

    accuracy: float
    reference_accuracy: float
    agreement: float
    output_error: float
    fixed: int
    broken: int
    p_value: float
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dictionary."""
        return asdict(self)


def fidelity(logits: Any, reference_logits: Any, labels: Any) -> ClassifierFidelity:
    """Compare a compressed classifier's logits with the original's on labelled images.

    Parameters
    ----------
    logits, reference_logits : float tensor, shape (N, n_classes)
        The compressed and the original network's outputs on the same images
        (e.g. :func:`tenflex.zoo.predict`).
    labels : int array-like, shape (N,)

    Returns
    -------
    ClassifierFidelity

    Raises
    ------
    ValueError
        Logits of different shapes, not float ``(N, n_classes)`` with ``N >= 1`` and
        ``n_classes >= 1``, with NaN/Inf; labels not ``N`` class indices in
        ``[0, n_classes)``. All-zero reference logits are not an error: the report is
        complete, with ``output_error`` ``inf`` (or ``0.0`` when the logits are all zero
        too), see :class:`ClassifierFidelity`.
    TypeError
        Non-integer labels.
    """
    out, ref = _check_pair(logits, reference_logits)
    reference_accuracy = accuracy(ref, labels, argname="labels")  # checks the labels
    y = torch.as_tensor(labels).cpu()
    predicted, reference_predicted = out.argmax(1), ref.argmax(1)
    correct = predicted == y
    test = mcnemar_exact(correct, reference_predicted == y)
    n = int(out.shape[0])
    if bool(ref.any()):
        output_error = relative_error(out, ref)
    else:  # relative error undefined: 0 for identical (zero) outputs, inf otherwise
        output_error = math.inf if bool(out.any()) else 0.0
    return ClassifierFidelity(
        accuracy=int(correct.sum()) / n, reference_accuracy=reference_accuracy,
        agreement=float((predicted == reference_predicted).double().mean()),
        output_error=output_error, fixed=test.only_a, broken=test.only_b,
        p_value=test.p_value, n_images=n,
    )
