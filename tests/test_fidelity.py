"""Tests of tenflex.nn.fidelity and tenflex.zoo.predict / accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tenflex import zoo
from tenflex.nn.fidelity import agreement, fidelity, mcnemar_exact


def _binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair trials (the distribution is symmetric)."""
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def test_mcnemar_counts_the_discordant_images_and_gives_the_exact_binomial_p():
    # 2 images only a gets right, 8 only b, 90 both right or both wrong.
    a = np.array([True] * 2 + [False] * 8 + [True] * 60 + [False] * 30)
    b = np.array([False] * 2 + [True] * 8 + [True] * 60 + [False] * 30)
    result = mcnemar_exact(a, b)
    assert (result.only_a, result.only_b) == (2, 8)
    assert result.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024, rel=1e-12)
    swapped = mcnemar_exact(b, a)
    assert (swapped.only_a, swapped.only_b) == (8, 2)
    assert swapped.p_value == pytest.approx(result.p_value, rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_mcnemar_matches_a_direct_binomial_sum(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(500) < 0.9, rng.random(500) < 0.85
    result = mcnemar_exact(torch.as_tensor(a), torch.as_tensor(b.astype(np.int64)))
    n = result.only_a + result.only_b
    assert result.only_a == int((a & ~b).sum()) and result.only_b == int((b & ~a).sum())
    assert result.p_value == pytest.approx(_binomial_two_sided(result.only_a, n), rel=1e-9)


def test_mcnemar_of_identical_classifiers_is_one():
    a = np.array([True, False, True])
    assert mcnemar_exact(a, a).p_value == 1.0
    assert mcnemar_exact(a, a).only_a == mcnemar_exact(a, a).only_b == 0


def test_mcnemar_refuses_bad_input():
    with pytest.raises(ValueError, match="same images, got 3 and 2"):
        mcnemar_exact([True, False, True], [True, False])
    with pytest.raises(TypeError, match="booleans"):
        mcnemar_exact([0.5, 1.0], [1, 0])
    with pytest.raises(TypeError, match="booleans"):
        mcnemar_exact([2, 1], [1, 0])
    with pytest.raises(ValueError, match=r"vector \(N,\)"):
        mcnemar_exact(np.ones((2, 2), bool), np.ones((2, 2), bool))


def test_mcnemar_names_the_value_that_is_not_a_flag():
    # An integer vector with a 2 in it (e.g. predicted classes passed by mistake) was refused
    # for its "dtype torch.int64", which is an accepted dtype: the message now names the value.
    with pytest.raises(TypeError, match=r"got the value 2 \(dtype torch.int64\) at index 2"):
        mcnemar_exact([1, 0, 2], [1, 0, 1])
    with pytest.raises(TypeError, match=r"correct_b .* got the value -1 .* at index 0"):
        mcnemar_exact([1, 0], np.array([-1, 1], dtype=np.int8))


def test_mcnemar_of_no_images_is_one_whatever_the_empty_input():
    # [] is read as float32 and np.array([]) as float64: both are empty boolean vectors
    for a, b in [([], []), (np.array([]), np.array([])), (torch.zeros(0, dtype=torch.bool), []),
                 (torch.zeros(0, dtype=torch.int64), torch.zeros(0))]:
        result = mcnemar_exact(a, b)
        assert (result.only_a, result.only_b, result.p_value) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same images, got 0 and 1"):
        mcnemar_exact([], [True])
    with pytest.raises(TypeError, match="booleans"):  # non-empty floats are still refused
        mcnemar_exact([1.0], [True])
    with pytest.raises(ValueError, match=r"vector \(N,\)"):
        mcnemar_exact(np.zeros((0, 2), bool), np.zeros((0, 2), bool))


def test_fidelity_separates_agreement_from_accuracy():
    # 6 images, 3 classes. The original is right on 0-3 and wrong on 4-5.
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    reference = torch.eye(3)[[0, 1, 2, 0, 0, 0]] * 5.0
    # The compressed network breaks image 3, fixes images 4 and 5.
    logits = torch.eye(3)[[0, 1, 2, 1, 1, 2]] * 5.0
    fid = fidelity(logits, reference, labels)
    assert fid.n_images == 6
    assert fid.reference_accuracy == pytest.approx(4 / 6) and fid.accuracy == pytest.approx(5 / 6)
    assert fid.agreement == pytest.approx(3 / 6)
    assert (fid.fixed, fid.broken) == (2, 1)
    assert fid.p_value == pytest.approx(1.0)
    assert fid.output_error == pytest.approx(
        float((logits - reference).norm() / reference.norm()), rel=1e-12)
    same = fidelity(reference, reference, labels)
    assert (same.agreement, same.output_error, same.fixed, same.broken, same.p_value) == (
        1.0, 0.0, 0, 0, 1.0)


def test_fidelity_and_agreement_refuse_bad_input():
    labels = torch.tensor([0, 1])
    good = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        agreement(good, torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"logits \(N, n_classes\)"):
        agreement(torch.zeros(2), good)
    with pytest.raises(ValueError, match="NaN or Inf"):
        agreement(torch.full((2, 3), float("nan")), good)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        fidelity(good, good, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integers"):
        fidelity(good, good, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        fidelity(good, good, labels[:1])


def test_fidelity_reports_all_zero_reference_logits_with_an_infinite_output_error():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.eye(3)[[0, 1, 2, 1, 1, 2]] * 5.0
    zero = torch.zeros(6, 3)
    fid = fidelity(logits, zero, labels)  # the reference predicts class 0 everywhere
    assert fid.output_error == math.inf
    assert fid.reference_accuracy == pytest.approx(2 / 6) and fid.accuracy == pytest.approx(5 / 6)
    assert fid.agreement == pytest.approx(agreement(logits, zero)) == pytest.approx(1 / 6)
    assert (fid.fixed, fid.broken) == (4, 1)  # fixes 1, 2, 4, 5; breaks 3
    assert fid.p_value == pytest.approx(mcnemar_exact(
        logits.argmax(1) == labels, zero.argmax(1) == labels).p_value)
    both = fidelity(zero, zero, labels)  # identical outputs: no error at all
    assert (both.output_error, both.agreement, both.fixed, both.broken, both.p_value) == (
        0.0, 1.0, 0, 0, 1.0)
    assert fidelity(-0.0 * logits, zero, labels).output_error == 0.0  # -0.0 is zero too


def test_logits_need_at_least_one_class():
    empty = torch.zeros(3, 0)
    with pytest.raises(ValueError, match=r"logits \(N, n_classes\) with N >= 1 and "
                       r"n_classes >= 1, got \(3, 0\)"):
        agreement(empty, empty)
    with pytest.raises(ValueError, match="n_classes >= 1"):
        fidelity(empty, empty, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError, match="N >= 1"):
        agreement(torch.zeros(0, 3), torch.zeros(0, 3))


def test_predict_gives_the_model_logits_in_batches_and_restores_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Dropout(0.5), nn.Linear(7, 4))
    model.train()
    x = torch.randn(10, 1, 3, 4)
    logits = zoo.predict(model, x, batch_size=3)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x))
    assert not logits.requires_grad
    y = logits.argmax(1)
    assert zoo.accuracy(logits, y) == 1.0
    assert zoo.accuracy(logits, (y + 1) % 4) == 0.0


def test_predict_and_accuracy_refuse_bad_input():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        zoo.predict(model, torch.full((2, 1, 3, 4), float("nan")))
    with pytest.raises(ValueError, match="no samples"):
        zoo.predict(model, torch.zeros(0, 1, 3, 4))
    with pytest.raises(ValueError, match=r"logits \(B, n_classes\)"):
        zoo.predict(nn.Flatten(0), torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="batch_size"):
        zoo.predict(model, torch.zeros(2, 1, 3, 4), batch_size=0)
    with pytest.raises(ValueError, match=r"accuracy: labels must be class indices in \[0, 4\)"):
        zoo.accuracy(torch.zeros(2, 4), torch.tensor([0, 4]))
