"""Tests of tenflex.nn.surgery: spans of sequential networks, cutting and splicing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tenflex.nn.surgery import resolve_span, span_shapes, splice
from tenflex.zoo import build_model


@pytest.fixture(scope="module")
def cnn():
    return build_model("reference_cnn", seed=0).eval()


NAMES = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]


def test_reference_cnn_layer_names(cnn):
    assert [name for name, _ in cnn.named_children()] == NAMES


@pytest.mark.parametrize(
    ("span", "names"),
    [
        ("fc1", ("fc1",)),
        (7, ("fc1",)),
        (-1, ("fc2",)),
        (("fc1", "fc2"), ("fc1", "relu3", "fc2")),
        ((7, 9), ("fc1", "relu3", "fc2")),
        (slice(3, 10), tuple(NAMES[3:])),
        (["conv2", "relu2", "pool2"], ("conv2", "relu2", "pool2")),
        (("conv2", "fc2"), tuple(NAMES[3:])),
    ],
)
def test_resolve_span(cnn, span, names):
    resolved = resolve_span(cnn, span)
    assert resolved.names == names
    assert resolved.stop - resolved.start == len(names)


@pytest.mark.parametrize(
    ("span", "message"),
    [
        (["conv2", "fc1"], "not a contiguous chain"),
        (["fc1", "relu3", "conv1"], "not a contiguous chain"),
        ("fc9", "not a layer of the model"),
        (12, "out of range"),
        (slice(5, 5), "selects no layer"),
        (slice(0, 10, 2), "step 1"),
    ],
)
def test_bad_spans(cnn, span, message):
    with pytest.raises(ValueError, match=message):
        resolve_span(cnn, span)


def test_span_needs_a_sequential_model():
    with pytest.raises(TypeError, match="Sequential"):
        resolve_span(nn.Linear(3, 2), 0)
    with pytest.raises(TypeError, match="span must be"):
        resolve_span(nn.Sequential(nn.Linear(3, 2)), 1.5)


def test_prefix_span_suffix_compose_to_the_model(cnn):
    x = torch.randn(4, 1, 28, 28)
    span = resolve_span(cnn, ("conv2", "fc1"))
    with torch.no_grad():
        composed = span.suffix(cnn)(span.module(cnn)(span.prefix(cnn)(x)))
        torch.testing.assert_close(composed, cnn(x), rtol=0, atol=0)
    assert span_shapes(cnn, span, x) == ((32, 14, 14), (128,))
    assert span_shapes(cnn, resolve_span(cnn, ("fc1", "fc2")), x) == ((3136,), (10,))


def test_splice_replaces_only_the_span(cnn):
    span = resolve_span(cnn, ("fc1", "fc2"))
    replacement = nn.Sequential(nn.Linear(3136, 10))
    new = splice(cnn, span, replacement, name="head")
    assert [name for name, _ in new.named_children()] == NAMES[:7] + ["head"]
    assert new.head is replacement
    # The kept layers are copies: training the new model leaves the original intact.
    assert new.conv1 is not cnn.conv1
    torch.testing.assert_close(new.conv1.weight, cnn.conv1.weight)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = replacement(span.prefix(cnn)(x))
        torch.testing.assert_close(new(x), expected)
