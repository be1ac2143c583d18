"""Tests of tenflex.nn.surgery: spans of sequential networks, cutting and splicing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from problems import Headed, Looped
from torch import nn

from tenflex.nn.surgery import (
    Span,
    flat_layers,
    resolve_span,
    span_inputs,
    span_shapes,
    splice,
)
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
        (["conv2", "fc1"], (r"not a contiguous chain.* a list names every layer of the span "
                            r"\(\['conv2', 'relu2', 'pool2', 'flatten', 'fc1'\]\), a tuple "
                            r"\('conv2', 'fc1'\) names the first and the last")),
        (["fc1", "relu3", "conv1"], r"not a contiguous chain.* in order, e\.g\."),
        ("fc9", "not a layer of the model"),
        (12, "out of range"),
        (10, "out of range"),  # one past the last layer
        (-11, "out of range"),
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

    class Residual(nn.Sequential):  # its forward does not run the layers in order
        def forward(self, x):
            h = self[0](x)
            return self[2](h + self[1](h))

    with pytest.raises(TypeError, match="Residual is an nn.Sequential with its own forward"):
        resolve_span(Residual(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)), (1, 2))
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


def test_span_shapes_leave_the_model_in_its_mode_and_its_statistics_alone():
    # In training mode a BatchNorm would update its running statistics with the example;
    # span_shapes runs the model in eval mode and gives it its training flags back.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert span_shapes(model, resolve_span(model, (1, 3)), torch.randn(8, 4) + 5) == ((6,), (3,))
    assert all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_flat_layers_are_the_layers_a_nested_sequential_runs_in_order():
    torch.manual_seed(0)
    act = nn.Tanh()
    block = nn.Sequential(nn.Linear(4, 5), nn.Sequential(act, nn.Linear(5, 5),
                                                        nn.Sequential(act)), nn.Linear(5, 2))
    layers = flat_layers(block)
    assert [name for name, _ in layers] == ["0", "1.0", "1.1", "1.2.0", "2"]
    assert layers[1][1] is act and layers[3][1] is act  # a module used twice is listed twice
    assert not any(isinstance(m, nn.Sequential) for _, m in layers)
    x = torch.randn(3, 4)
    with torch.no_grad():
        y = x
        for _, layer in layers:
            y = layer(y)
        torch.testing.assert_close(y, block(x), rtol=0, atol=0)


# A module object used twice: nn.Sequential runs it twice, named_children() lists it once.
def repeated_model():
    torch.manual_seed(0)
    act = nn.ReLU()
    return nn.Sequential(nn.Linear(4, 6), act, nn.Linear(6, 6), act, nn.Linear(6, 3))


def test_spans_of_a_model_with_a_repeated_module():
    model = repeated_model()
    x = torch.randn(5, 4)
    # Positions are those that forward runs: 0 Linear, 1 ReLU, 2 Linear, 3 ReLU, 4 Linear.
    span = resolve_span(model, 3)
    assert (span.start, span.names) == (3, ("3",))
    assert resolve_span(model, "4").start == 4 and resolve_span(model, -1).names == ("4",)
    with torch.no_grad():
        torch.testing.assert_close(span.prefix(model)(x), model[2](torch.relu(model[0](x))),
                                   rtol=0, atol=0)
        last = resolve_span(model, "4")
        torch.testing.assert_close(last.suffix(model)(last.module(model)(last.prefix(model)(x))),
                                   model(x), rtol=0, atol=0)
    assert span_shapes(model, last, x) == ((6,), (3,))


def test_splice_keeps_every_run_of_a_repeated_module():
    model = repeated_model()
    x = torch.randn(5, 4)
    # Splicing the middle Linear back in leaves the function unchanged.
    same = splice(model, resolve_span(model, 2), model[2])
    assert len(same) == 5
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x), rtol=0, atol=0)
    # Replacing the middle Linear: the result is the hand-built model.
    replacement = nn.Linear(6, 6)
    new = splice(model, resolve_span(model, 2), replacement, name="mid")
    assert list(new._modules) == ["0", "1", "mid", "3", "4"]
    expected = nn.Sequential(model[0], nn.ReLU(), replacement, nn.ReLU(), model[4])
    with torch.no_grad():
        torch.testing.assert_close(new(x), expected(x), rtol=0, atol=0)
    # The copy keeps the sharing: one activation object, run twice.
    assert new[1] is new[3] and new[1] is not model[1]


def test_span_keys_accept_numpy_ints_and_refuse_bytes(cnn):
    assert resolve_span(cnn, np.int64(7)).names == ("fc1",)
    assert resolve_span(cnn, (np.int32(7), np.int64(9))).names == ("fc1", "relu3", "fc2")
    with pytest.raises(TypeError, match=r"span must be .* got b'fc1'"):
        resolve_span(cnn, b"fc1")
    with pytest.raises(TypeError, match="span layer must be a layer index"):
        resolve_span(cnn, ["fc1", True])


@pytest.mark.parametrize("span", [slice(True, 3), slice(0, True), slice(1, 3, True),
                                  slice(1, 3.0), slice("conv2", "fc1")])
def test_span_slices_take_integer_bounds_only(cnn, span):
    # slice(True, 3) used to select layers 1..2: a bool is no layer index.
    with pytest.raises(TypeError, match=r"a span slice's (start|stop|step) must be an integer "
                                        r"index or None, got .* use a pair \(first, last\)"):
        resolve_span(cnn, span)
    assert resolve_span(cnn, slice(np.int64(1), 3)).names == ("relu1", "pool1")


def test_a_resolved_span_resolves_to_itself_on_its_model(cnn):
    # It was refused ("span must be a layer index or name, ..., got Span(...)"), though the
    # baselines take a Span and compress's users resolve one to inspect it first.
    span = resolve_span(cnn, ("fc1", "fc2"))
    assert resolve_span(cnn, span) is span
    net = Net()
    inner = resolve_span(net, ("classifier.0", "classifier.2"))
    assert resolve_span(net, inner) is inner
    with pytest.raises(ValueError, match="resolve the span on this model"):
        resolve_span(nn.Sequential(*[nn.Identity() for _ in range(10)]), span)
    with pytest.raises(TypeError, match="model must be a torch.nn.Sequential"):
        resolve_span(net, span)


def test_splice_refuses_a_name_clash(cnn):
    span = resolve_span(cnn, "fc1")
    with pytest.raises(ValueError, match="name 'fc2' is already the name of a layer"):
        splice(cnn, span, nn.Identity(), name="fc2")
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        splice(cnn, span, nn.Identity(), name=3)
    # the span's own names are free again
    assert splice(cnn, span, nn.Identity(), name="fc1").fc1.__class__ is nn.Identity


def test_splice_refuses_a_dotted_name():
    # Inside a network of one's own the child used to be inserted as "a.b", unreachable by
    # its path; in a sequential model torch's add_module raised a KeyError.
    net = Headed(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    span = resolve_span(net, ("head.0", "head.2"))
    with pytest.raises(ValueError, match="name 'a.b' contains '.'"):
        splice(net, span, nn.Linear(6, 3), name="a.b")
    sequential = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match="contains '.'"):
        splice(sequential, resolve_span(sequential, (0, 1)), nn.Linear(4, 6), name="a.b")
    spliced = splice(net, span, nn.Linear(6, 3), name="flex")
    assert isinstance(spliced.get_submodule("head.flex"), nn.Linear)


def test_span_functions_need_a_span_of_this_model(cnn):
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(TypeError, match="span must be a Span .*resolve_span.* got str 'fc1'"):
        splice(cnn, "fc1", nn.Identity())
    with pytest.raises(TypeError, match="span must be a Span"):
        span_shapes(cnn, "fc1", x)
    other = resolve_span(nn.Sequential(*[nn.Identity() for _ in range(12)]), slice(10, 12))
    with pytest.raises(ValueError, match=r"span covers layers \['10', '11'\] .* resolve the span"):
        splice(cnn, other, nn.Identity())
    with pytest.raises(ValueError, match="resolve the span on this model"):
        span_shapes(cnn, resolve_span(repeated_model(), 1), x)
    with pytest.raises(ValueError, match="resolve the span on this model"):
        Span(7, 8, ("fc2",)).prefix(cnn)


def test_a_hand_built_span_may_list_its_names():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    span = Span(0, 2, ["0", "1"])  # a list, as a user might write it
    x = torch.randn(5, 4)
    torch.testing.assert_close(span.module(model)(x), model[1](model[0](x)), rtol=0, atol=0)


class Net(nn.Module):
    """A network that is not an nn.Sequential: its forward flattens between two containers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(4 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.mark.parametrize(
    ("span", "names", "parent", "sequential"),
    [
        (("classifier.0", "classifier.2"), ("0", "1", "2"), "classifier", True),
        (["classifier.1", "classifier.2"], ("1", "2"), "classifier", True),
        ("classifier.2", ("2",), "classifier", True),
        ("classifier", ("classifier",), "", False),
        ("features.0", ("0",), "features", True),
    ],
)
def test_spans_inside_a_network_of_your_own(span, names, parent, sequential):
    net = Net()
    resolved = resolve_span(net, span)
    assert (resolved.names, resolved.parent, resolved.sequential) == (names, parent, sequential)
    assert resolved.paths == tuple(f"{parent}.{n}" if parent else n for n in names)
    assert resolve_span(net, list(resolved.paths)) == resolved  # the paths resolve back
    assert not resolved.has_prefix
    with pytest.raises(ValueError, match="has no prefix module: use span_inputs"):
        resolved.prefix(net)


def test_span_inputs_are_what_the_forward_hands_the_span():
    net, x = Net().eval(), torch.randn(7, 1, 8, 8)
    flat = torch.flatten(net.features(x), 1)
    for span, expected in [(("classifier.0", "classifier.2"), flat), ("classifier", flat),
                           ("classifier.2", net.classifier[1](net.classifier[0](flat))),
                           ("features", x)]:
        resolved = resolve_span(net, span)
        inputs = span_inputs(net, resolved, x)
        torch.testing.assert_close(inputs, expected, rtol=0, atol=0)
        assert not inputs.requires_grad
        # The span's own module maps them to what the model computes after them.
        torch.testing.assert_close(resolved.module(net)(inputs), net.classifier(flat)
                                   if span != "features" else net.features(x))
    assert span_shapes(net, resolve_span(net, ("classifier.0", "classifier.2")), x) == (
        (36,), (5,))
    # A span of a sequential model's own children uses the prefix: the same inputs.
    seq = nn.Sequential(net.features, nn.Flatten(), net.classifier)
    torch.testing.assert_close(span_inputs(seq, resolve_span(seq, 2), x), flat)


def test_span_inputs_of_a_span_that_starts_in_place_are_its_inputs():
    # The captured input was the tensor the in-place ReLU then overwrote: the span's inputs
    # came out rectified, and a layer fitted on them saw no negative input.
    torch.manual_seed(0)
    net = Headed(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)).eval()
    x = torch.randn(9, 6)
    with torch.no_grad():
        expected = net.head[0](x)
    assert (expected < 0).any()
    for span in [("head.1", "head.2"), "head.1"]:
        inputs = span_inputs(net, resolve_span(net, span), x)
        torch.testing.assert_close(inputs, expected, rtol=0, atol=0)


def test_a_span_the_forward_does_not_run_is_refused_as_such():
    # A layer that never ran got "called 0 times ... give a module used twice its own
    # instances", the hint for a layer that runs twice.
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU())
            self.cls = nn.Linear(12, 3)
            self.aux = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))

        def forward(self, x):
            h = self.body(x)
            return (self.cls(h), self.aux(h)) if self.training else self.cls(h)

    net, x = WithAux().eval(), torch.randn(4, 6)
    for span, first in [("aux", "aux"), (("aux.0", "aux.2"), "aux.0"), ("aux.2", "aux.2")]:
        with pytest.raises(ValueError, match=rf"did not call the span's first layer {first} on "
                                             r"the batch \(in eval mode\), so the span has no "
                                             r"inputs; choose a span that the forward runs"):
            span_inputs(net, resolve_span(net, span), x)
    assert span_inputs(net.train(), resolve_span(net, "aux"), x).shape == (4, 12)


def test_a_layer_whose_owner_reads_its_weights_is_no_span():
    # compress fitted a flexible layer for linear1 of a TransformerEncoderLayer, whose eval
    # fast path reads linear1.weight: the compressed model failed at its first forward pass.
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 16),
                            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
                            nn.Flatten(), nn.Linear(80, 2)).eval()
    for span, owner in [("1.linear1", r"1 \(TransformerEncoderLayer\)"),
                        ("1.linear2", r"1 \(TransformerEncoderLayer\)"),
                        ("1.self_attn.out_proj", r"1.self_attn \(MultiheadAttention\)")]:
        with pytest.raises(ValueError, match=rf"the span {span} holds \['{span}'\], whose "
                                             rf"weights {owner} reads itself"):
            resolve_span(encoder, span)
    assert resolve_span(encoder, 1).names == ("1",)  # the owner as a whole is a span


def test_splice_inside_a_network_of_your_own():
    net, x = Net().eval(), torch.randn(5, 1, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    chain = resolve_span(net, ("classifier.0", "classifier.2"))
    replacement = nn.Linear(36, 5)
    new = splice(net, chain, replacement)
    assert type(new) is Net and new.classifier.flex_0_2 is replacement
    assert list(new.classifier._modules) == ["flex_0_2"]
    torch.testing.assert_close(new(x), replacement(torch.flatten(net.features(x), 1)))
    # The original is untouched, the kept layers are copies.
    assert new.features[0] is not net.features[0]
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # Part of a chain: the layers around it stay, in order.
    tail = splice(net, resolve_span(net, "classifier.2"), nn.Linear(12, 5), name="head")
    assert list(tail.classifier._modules) == ["0", "1", "head"]
    # A chain in the middle: the layers after it stay, in order, and run after it.
    head = Headed(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    middle = nn.Linear(6, 6)
    new = splice(head, resolve_span(head, ("head.0", "head.2")), middle)
    assert list(new.head._modules) == ["flex_0_2", "3", "4"]
    y = torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(new(y), head.head[4](torch.tanh(middle(y))), rtol=0, atol=0)
    # One submodule of a module with its own forward keeps its name: forward calls it.
    whole = resolve_span(net, "classifier")
    new = splice(net, whole, replacement)
    assert new.classifier is replacement
    torch.testing.assert_close(new(x), replacement(torch.flatten(net.features(x), 1)))
    with pytest.raises(ValueError, match="keeps that name, not 'flex'"):
        splice(net, whole, replacement, name="flex")


def test_bad_spans_inside_a_network_of_your_own():
    net = Net()
    with pytest.raises(ValueError, match="names layers of different modules"):
        resolve_span(net, ("features.0", "classifier.2"))
    with pytest.raises(ValueError, match="'head' is not a submodule of the model; its "
                                         "submodules with layers are \\['features', 'classifier'"):
        resolve_span(net, "head.0")
    with pytest.raises(ValueError, match="not a layer of the model"):
        resolve_span(net, "classifier.7")
    # Indices and chains need an nn.Sequential; one named submodule does not.
    with pytest.raises(TypeError, match="Net, not a torch.nn.Sequential: a span of it is one "
                                        "submodule named by its path"):
        resolve_span(net, 1)
    with pytest.raises(TypeError, match="not a torch.nn.Sequential"):
        resolve_span(net, ("features", "classifier"))
    # A span resolved on another network.
    with pytest.raises(ValueError, match="resolved on another model"):
        span_inputs(nn.Sequential(nn.Linear(2, 2)), resolve_span(net, "classifier.0"),
                    torch.zeros(1, 2))

    class Shared(nn.Module):  # one ReLU object used twice: no single input
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(self.act(x))))

    with pytest.raises(ValueError, match="called the span's first layer act 2 times"):
        span_inputs(Shared(), resolve_span(Shared(), "act"), torch.zeros(1, 3))

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.bilinear = nn.Bilinear(3, 3, 2)

        def forward(self, x):
            return self.bilinear(x, x)

    with pytest.raises(ValueError, match="with 2 positional and 0 keyword arguments"):
        span_inputs(TwoInputs(), resolve_span(TwoInputs(), "bilinear"), torch.zeros(1, 3))


def test_a_chain_the_forward_does_not_run_through_its_sequential_is_refused():
    net, x = Looped().eval(), torch.randn(9, 6)
    chain = resolve_span(net, ("blocks.0", "blocks.2"))
    with torch.no_grad():
        # What the model computes after the chain's input x is not what the chain computes:
        # a replacement fitted to the chain would be wrong in the model.
        after = x
        for layer in net.blocks:
            after = after + layer(after)
        assert not torch.allclose(chain.module(net)(x), after, atol=0.1)
    message = (r"forward never calls 'blocks', the nn.Sequential that holds the span "
               r"blocks.0..2, so nn.Sequential.forward does not run the span's layers as a "
               r"chain .* choose a span the model calls as one module")
    for function in (span_inputs, span_shapes):
        with pytest.raises(ValueError, match=message):
            function(net, chain, x)
    # One layer of the loop is called by the forward as it is: its inputs are captured.
    with torch.no_grad():
        step = x + net.blocks[0](x)
        step = step + net.blocks[1](step)
    torch.testing.assert_close(span_inputs(net, resolve_span(net, "blocks.0"), x), x,
                               rtol=0, atol=0)
    torch.testing.assert_close(span_inputs(net, resolve_span(net, "blocks.2"), x), step,
                               rtol=0, atol=0)
    # The same chain in a forward that calls the nn.Sequential (once) is a chain.
    called = Looped(call=True).eval()
    torch.testing.assert_close(span_inputs(called, chain, x), x, rtol=0, atol=0)
    assert span_shapes(called, chain, x) == ((6,), (6,))

    class Twice(Looped):
        def forward(self, x):
            return self.head(self.blocks(self.blocks(x)))

    with pytest.raises(ValueError, match=r"calls 'blocks', the nn.Sequential that holds the "
                                         r"span blocks.0..2, 2 times on one batch"):
        span_inputs(Twice(), chain, x)


    class Reused(Looped):  # calls blocks, and its last layer again on its own
        def forward(self, x):
            return self.head(self.blocks(x) + self.blocks[2](x))

    with pytest.raises(ValueError, match=r"calls blocks.2 of the span blocks.0..2 outside "
                                         r"'blocks''s own forward too .* would not be there"):
        span_inputs(Reused(), chain, x)
    torch.testing.assert_close(span_inputs(Reused(), resolve_span(Reused(), ("blocks.0",
                                                                             "blocks.1")), x),
                               x, rtol=0, atol=0)

    class SharedActivation(Looped):  # one Tanh object in blocks and in front of it
        def __init__(self):
            super().__init__(call=True)
            self.act = self.blocks[1]

        def forward(self, x):
            return self.head(self.blocks(self.act(x)))

    shared = SharedActivation()  # the splice keeps self.act: the chain may use it too
    torch.testing.assert_close(span_inputs(shared, chain, x), torch.tanh(x), rtol=0, atol=0)
    # A chain of an nn.Sequential nested in a sequential model: the outer forward calls it.
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)),
                           nn.Linear(4, 2))
    torch.testing.assert_close(span_inputs(nested, resolve_span(nested, ("0.1", "0.2")), x),
                               nested[0][0](x).detach(), rtol=0, atol=0)
