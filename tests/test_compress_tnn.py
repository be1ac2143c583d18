"""Tests of tenflex.nn.compress_tnn: whole-network compression with tensorial / low-rank forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from tenflex import zoo
from tenflex.nn.compress_tnn import (
    FAMILY,
    FORMS,
    PLAIN,
    RESHAPED,
    compress_and_train,
    compress_layer,
    compress_network,
    default_layers,
    feature_shapes,
    layer_inputs,
    plan_layer,
    ranks_within_budget,
    time_forward,
)
from tenflex.nn.lowrank import LowRankLayer, SVDLinear
from tenflex.nn.tensorial import TensorialConv2d, TensorialLinear

# Tiny tensors: one thread avoids oversubscription on shared CPUs.
pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(scope="module")
def lenet():
    """LeNet-5 with random weights (seeded): decompositions need no training."""
    return zoo.build_model("lenet5", seed=0).eval()


@pytest.fixture(scope="module")
def digits():
    return zoo.digits_tensors("train"), zoo.digits_tensors("test")


@pytest.fixture(scope="module")
def trained_lenet(digits):
    """LeNet-5 trained briefly on the 8x8-digits stand-in for MNIST (a few seconds)."""
    model = zoo.build_model("lenet5", seed=0)
    zoo.train(model, digits[0], epochs=4, batch_size=64, lr=5e-3, seed=0)
    return model.eval()


# ---------------------------------------------------------------------------------------
# Rank selection
# ---------------------------------------------------------------------------------------


def _brute_force_uniform(caps, count, budget):
    best = None
    for r in range(1, max(caps) + 1):
        ranks = tuple(min(r, c) for c in caps)
        if count(ranks) <= budget:
            best = ranks
    return best


@pytest.mark.parametrize("budget", [60, 137, 400, 1000])
def test_ranks_within_budget_uniform_then_fill(budget):
    caps = (4, 9, 6)

    def count(r):  # a Tucker-like count: factors plus core
        return 5 * r[0] + 7 * r[1] + 3 * r[2] + math.prod(r)

    uniform = _brute_force_uniform(caps, count, budget)
    assert ranks_within_budget(caps, count, budget, fill=False) == uniform
    filled = ranks_within_budget(caps, count, budget)
    assert count(filled) <= budget
    assert all(f >= u for f, u in zip(filled, uniform))
    assert all(1 <= f <= c for f, c in zip(filled, caps))
    # Maximal: no single rank can be raised any more within the budget.
    for i in range(len(caps)):
        if filled[i] < caps[i]:
            trial = list(filled)
            trial[i] += 1
            assert count(tuple(trial)) > budget



def test_ranks_within_budget_fill_raises_the_smallest_then_cheapest_then_first_rank():
    # The documented order of the fill, worked by hand; maximality alone (above) passed
    # when the fill raised the largest rank or the last one first.
    # count r0 + r1 + 10 r2, budget 26: uniform (2, 2, 2) = 24; raising r0 or r1 costs 1, r2
    # 10 (34 > 26): the first of the tie -> (3, 2, 2) = 25; then r1 (rank 2) before r0 (rank
    # 3) -> (3, 3, 2) = 26, full.
    assert ranks_within_budget((9, 9, 9), lambda r: r[0] + r[1] + 10 * r[2], 26.0) == (3, 3, 2)
    # count 5 r0 + 3 r1 + r0 r1, budget 41: uniform (3, 3) = 33; raising r0 gives 41, r1 39:
    # the cheaper r1 -> (3, 4) = 39; then 48 or 45, neither fits.
    assert ranks_within_budget((9, 9), lambda r: 5 * r[0] + 3 * r[1] + r[0] * r[1],
                               41.0) == (3, 4)


def test_ranks_within_budget_rejects_a_budget_below_rank_one():
    with pytest.raises(ValueError, match="no rank >= 1.*rank 1 needs 15 parameters"):
        ranks_within_budget((3, 3), lambda r: 5 * r[0] + 10 * r[1], 14.0, what="toy")


# ---------------------------------------------------------------------------------------
# Plans and layers
# ---------------------------------------------------------------------------------------


def test_default_layers_of_lenet_skip_first_and_last(lenet):
    assert default_layers(lenet) == ["conv2", "fc1", "fc2"]
    with pytest.raises(ValueError, match="at least 3"):
        default_layers(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)))


@pytest.mark.parametrize(("name", "form", "rate"),
                         list(itertools.product(["conv2", "fc2"], FORMS, [0.1, 0.3])))
def test_plan_fits_budget_and_matches_built_layer(lenet, name, form, rate):
    layer = lenet.get_submodule(name)
    plan = plan_layer(layer, form, rate, name=name)
    dense = sum(p.numel() for p in layer.parameters())
    assert plan.n_dense == dense
    assert plan.n_compressed <= rate * dense
    assert plan.rate == pytest.approx(plan.n_compressed / dense)
    new = compress_layer(layer, plan, n_iter_max=10)
    assert sum(p.numel() for p in new.parameters()) == plan.n_compressed
    assert 0.0 <= plan.decomposition_error <= 1.0 + 1e-9
    if form in RESHAPED:
        assert isinstance(new, TensorialConv2d if name == "conv2" else TensorialLinear)
        assert new.ranks == plan.ranks
        # Reshaping: 2 modes for a convolution, 3 for a fully connected layer, no factor 1.
        assert len(plan.in_factors) == (2 if name == "conv2" else 3)
        assert min(plan.in_factors + plan.out_factors) >= 2
    else:
        assert isinstance(new, LowRankLayer)
        expected = {"cp": "cp", "tucker": "tucker2", "tt": "tt"}[form] if name == "conv2" else "svd"
        assert plan.method == new.method == expected
    x = torch.randn(3, *((6, 14, 14) if name == "conv2" else (120,)))
    with torch.no_grad():
        y, y_dense = new(x), layer(x)
    assert y.shape == y_dense.shape


def test_plain_forms_of_a_linear_layer_are_the_truncated_svd(lenet):
    layer = lenet.fc2
    plans = [plan_layer(layer, f, 0.2) for f in PLAIN]
    assert {p.method for p in plans} == {"svd"}
    new = compress_layer(layer, plans[0])
    assert isinstance(new, SVDLinear)
    (r,) = plans[0].ranks
    w = layer.weight.detach().double()
    s = torch.linalg.svdvals(w)
    # Eckart-Young: the relative error of the best rank-r approximation.
    expected = float(s[r:].square().sum().sqrt() / s.square().sum().sqrt())
    assert plans[0].decomposition_error == pytest.approx(expected, rel=1e-6)


def test_fill_budget_uses_more_of_the_budget_for_multi_rank_forms(lenet):
    layer = lenet.conv2
    for form in ("rtk", "tucker", "tt"):
        uniform = plan_layer(layer, form, 0.1, fill_budget=False)
        filled = plan_layer(layer, form, 0.1)
        assert uniform.n_compressed <= filled.n_compressed <= 0.1 * uniform.n_dense
        assert all(f >= u for f, u in zip(filled.ranks, uniform.ranks))
    assert plan_layer(layer, "rtk", 0.1).n_compressed > plan_layer(
        layer, "rtk", 0.1, fill_budget=False).n_compressed


def test_explicit_factors(lenet):
    plan = plan_layer(lenet.fc1, "rtt", 0.1, factors=((20, 20), (10, 12)))
    assert plan.in_factors == (20, 20) and plan.out_factors == (10, 12)
    new = compress_layer(lenet.fc1, plan, n_iter_max=5)
    assert new.in_factors == (20, 20) and new.out_factors == (10, 12)


# ---------------------------------------------------------------------------------------
# Reshaping along the layout of flattened features
# ---------------------------------------------------------------------------------------


class _ViewLeNet(nn.Module):
    """LeNet-like net that flattens in forward() (no nn.Flatten) and has a batch norm."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 5)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(4)
        self.fc1 = nn.Linear(16 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(h.view(h.shape[0], -1))))


def test_feature_shapes_finds_the_layout_before_flattening(lenet):
    x = torch.randn(1, 1, 28, 28)
    assert feature_shapes(lenet, ["conv2", "fc1", "fc2"], x) == {"fc1": (16, 5, 5)}
    net = _ViewLeNet().train()
    stats = net.bn.running_mean.clone()
    assert feature_shapes(net, ["fc1", "fc2"], x) == {"fc1": (16, 6, 6)}
    # a batch of one in eval mode: the statistics are untouched and the modes restored
    assert torch.equal(net.bn.running_mean, stats) and net.training and net.bn.training
    with pytest.raises(ValueError, match=r"no submodule\(s\) \['fc9'\]"):
        feature_shapes(lenet, ["fc9"], x)


def test_plan_follows_the_feature_layout(lenet):
    layout = (16, 5, 5)
    # the output factors stay balanced (120 = 10 x 12 = 4 x 5 x 6)
    for modes, s, t in ((2, (16, 25), (10, 12)), (3, (16, 5, 5), (4, 5, 6))):
        plan = plan_layer(lenet.fc1, "rcp", 0.1, modes=modes, input_shape=layout)
        assert (plan.in_factors, plan.out_factors) == (s, t)
    balanced = plan_layer(lenet.fc1, "rcp", 0.1)
    assert (balanced.in_factors, balanced.out_factors) == ((5, 8, 10), (4, 5, 6))
    # more modes than the layout has axes: balanced factors, as without a layout
    assert plan_layer(lenet.fc1, "rtt", 0.1, modes=4, input_shape=layout).in_factors == (
        plan_layer(lenet.fc1, "rtt", 0.1, modes=4).in_factors)
    # plain forms and convolutions ignore it
    assert plan_layer(lenet.fc1, "cp", 0.1, input_shape=layout) == plan_layer(lenet.fc1, "cp", 0.1)
    with pytest.raises(ValueError, match=r"input_shape \(16, 5, 4\) holds 320 features but "
                       r"the layer has 400 inputs"):
        plan_layer(lenet.fc1, "rcp", 0.1, name="fc1", input_shape=(16, 5, 4))
    with pytest.raises(ValueError, match="input_shape must be a sequence of positive ints"):
        plan_layer(lenet.fc1, "rcp", 0.1, input_shape=(16, 25.0))


def test_layout_reshaping_is_exact_for_a_channel_position_kronecker_weight():
    # W = A (x) B: output mode 1 mixes channels (A), output mode 2 mixes positions (B).
    # Reshaped along (channels, positions) it is a rank-1 paired CP; balanced, it is not.
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(10, 16, generator=g), torch.randn(12, 25, generator=g)
    layer = nn.Linear(400, 120)
    with torch.no_grad():
        layer.weight.copy_(torch.kron(A, B))
    rate = (10 * 16 + 12 * 25 + 120) / 48120  # exactly rank 1 with the layout's factors
    plan = plan_layer(layer, "rcp", rate, modes=2, input_shape=(16, 5, 5))
    assert (plan.in_factors, plan.out_factors, plan.ranks) == ((16, 25), (10, 12), (1,))
    new = compress_layer(layer, plan, n_iter_max=50)
    assert new.in_factors == (16, 25)
    x = torch.randn(8, 400, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(new(x), layer(x), rtol=1e-4, atol=1e-4)
    assert plan.decomposition_error < 1e-4
    balanced = plan_layer(layer, "rcp", rate, modes=2)
    assert balanced.in_factors == (20, 20) and balanced.ranks == (1,)
    compress_layer(layer, balanced, n_iter_max=50)
    assert balanced.decomposition_error > 0.3
    # compress_network finds the layout from an example input
    net = nn.Sequential(nn.Unflatten(1, (16, 5, 5)), nn.Flatten(), layer)
    _, plans = compress_network(net, "rcp", rate, layers=["2"], modes=2,
                                example_input=torch.randn(1, 400), n_iter_max=50)
    assert plans[0].in_factors == (16, 25) and plans[0].decomposition_error < 1e-4
    _, plans = compress_network(net, "rcp", rate, layers=["2"], modes=2, n_iter_max=50)
    assert plans[0].in_factors == (20, 20)


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------


def test_bad_input_gets_clear_errors(lenet):
    with pytest.raises(ValueError, match=r"unknown form 'rcpx'.*valid forms"):
        plan_layer(lenet.fc1, "rcpx", 0.1)
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\]"):
        plan_layer(lenet.fc1, "rcp", 0.0)
    with pytest.raises(ValueError, match=r"rate must be in \(0, 1\]"):
        plan_layer(lenet.fc1, "rcp", 1.5)
    with pytest.raises(TypeError, match="rate must be a number"):
        plan_layer(lenet.fc1, "rcp", "0.1")
    # a rate that leaves no rank: conv1 (156 parameters, 6 of them bias) at 5 %
    with pytest.raises(ValueError, match="leaves no rank >= 1 for layer 'conv1'"):
        plan_layer(lenet.conv1, "cp", 0.05, name="conv1")
    # 6 input channels cannot be reshaped into 3 modes of size >= 2
    with pytest.raises(ValueError, match="cannot reshape 6 channels into 3 modes"):
        plan_layer(lenet.conv2, "rcp", 0.1, name="conv2", modes=3)
    # a linear layer's are features; a prime count cannot be reshaped at all
    with pytest.raises(ValueError, match=r"x input: cannot reshape 13 features into 2 modes .*"
                                         r"or use a plain form \(cp, tucker, tt\)"):
        plan_layer(nn.Linear(13, 24), "rtt", 0.5, name="x", modes=2)
    with pytest.raises(ValueError, match=r"products \(400, 121\).*400 input and 120 output"):
        plan_layer(lenet.fc1, "rcp", 0.1, factors=((20, 20), (11, 11)))
    with pytest.raises(ValueError, match="modes= or factors="):
        plan_layer(lenet.fc1, "rcp", 0.1, modes=2, factors=((20, 20), (10, 12)))
    with pytest.raises(ValueError, match="needs modes >= 2"):
        plan_layer(lenet.fc1, "rcp", 0.1, modes=1)
    with pytest.raises(TypeError, match="nn.Conv2d or nn.Linear"):
        plan_layer(nn.ReLU(), "rcp", 0.1)
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['fc9'\]"):
        compress_network(lenet, "rcp", 0.1, layers=["fc1", "fc9"])
    with pytest.raises(ValueError, match="duplicated"):
        compress_network(lenet, "rcp", 0.1, layers=["fc1", "fc1"])
    with pytest.raises(TypeError, match="not a str"):
        compress_network(lenet, "rcp", 0.1, layers="fc1")
    with pytest.raises(ValueError, match="not compressed"):
        compress_network(lenet, "rcp", 0.1, layers=["fc1"], factors={"fc2": ((4, 5, 6), (3, 4, 7))})


def test_per_layer_modes_for_unknown_layers_are_refused_like_factors(lenet):
    # used to be ignored silently while the same mistake in factors= raised
    with pytest.raises(ValueError, match=r"modes given for layers \['unknown'\] that are not "
                       r"compressed \(\['fc1'\]\)"):
        compress_network(lenet, "rcp", 0.1, layers=["fc1"], modes={"unknown": 1})
    with pytest.raises(ValueError, match=r"modes given for layers \['fc2'\]"):
        compress_network(lenet, "rcp", 0.1, layers=["fc1"], modes={"fc1": 2, "fc2": 2})
    # known names still apply per layer
    _, plans = compress_network(lenet, "rtt", 0.2, layers=["conv2", "fc1"], modes={"fc1": 2},
                                n_iter_max=5)
    assert [len(p.in_factors) for p in plans] == [2, 2]


def test_compress_network_checks_seed_and_n_iter_max(lenet):
    for form in ("rcp", "tt"):
        with pytest.raises(ValueError, match="n_iter_max must be an int >= 1, got 0"):
            compress_network(lenet, form, 0.2, layers=["fc1"], n_iter_max=0)
        with pytest.raises(TypeError, match="seed must be an int"):
            compress_network(lenet, form, 0.2, layers=["fc1"], seed=0.5)
    plan = plan_layer(lenet.conv2, "tt", 0.3, name="conv2")
    with pytest.raises(ValueError, match="n_iter_max must be an int >= 1, got -1"):
        compress_layer(lenet.conv2, plan, n_iter_max=-1)


# ---------------------------------------------------------------------------------------
# Whole networks
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_compress_network_replaces_layers_and_leaves_the_original(lenet, form):
    before = {k: v.clone() for k, v in lenet.state_dict().items()}
    net, plans = compress_network(lenet, form, 0.2, n_iter_max=5)
    assert [p.name for p in plans] == ["conv2", "fc1", "fc2"]
    for k, v in lenet.state_dict().items():
        assert torch.equal(v, before[k])
    assert isinstance(lenet.fc1, nn.Linear) and not isinstance(net.fc1, nn.Linear)
    n_net = sum(p.numel() for p in net.parameters())
    n_dense = sum(p.numel() for p in lenet.parameters())
    assert n_net == n_dense - sum(p.n_dense for p in plans) + sum(p.n_compressed for p in plans)
    assert sum(p.n_compressed for p in plans) <= 0.2 * sum(p.n_dense for p in plans)
    assert FAMILY[form] in ("cp", "tucker", "tt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert net(x).shape == (2, 10)


def test_layer_inputs_and_time_forward(lenet):
    x = torch.randn(5, 1, 28, 28)
    acts = layer_inputs(lenet, ["conv2", "fc1", "fc2"], x)
    assert acts["conv2"].shape == (5, 6, 14, 14)
    assert acts["fc1"].shape == (5, 400)
    assert acts["fc2"].shape == (5, 120)
    with torch.no_grad():
        np.testing.assert_allclose(lenet.fc1(acts["fc1"]), lenet[:8](x), rtol=1e-6)
    seconds = time_forward(lenet.fc1, acts["fc1"], repeat=3, warmup=1)
    assert 0.0 < seconds < 1.0
    assert lenet.training is False
    with pytest.raises(ValueError, match="repeat"):
        time_forward(lenet.fc1, acts["fc1"], repeat=0)


def test_layer_inputs_unknown_name_lists_valid_names(lenet):
    x = torch.randn(2, 1, 28, 28)
    # used to raise AttributeError from get_submodule
    with pytest.raises(ValueError, match=r"no submodule\(s\) \['99'\]; valid names: .*'conv2'"):
        layer_inputs(lenet, ["conv2", "99"], x)
    with pytest.raises(TypeError, match="not a str"):
        layer_inputs(lenet, "conv2", x)


def test_compress_and_train_on_digits(trained_lenet, digits):
    train, test = digits
    kwargs = {"distill_samples": 400, "distill_epochs": 2, "finetune_samples": 600,
              "finetune_epochs": 1, "batch_size": 64, "seed": 3, "n_iter_max": 20}
    net, result = compress_and_train(trained_lenet, "rcp", 0.1, train, test, **kwargs)
    dense_acc = zoo.evaluate(trained_lenet, *test)
    assert dense_acc > 0.8  # the reference learned something
    assert set(result.accuracy) == {"decomposed", "distilled", "fine_tuned"}
    assert all(0.0 <= a <= 1.0 for a in result.accuracy.values())
    assert result.accuracy["fine_tuned"] == pytest.approx(zoo.evaluate(net, *test))
    # distillation lowers every block's error
    for name, err in result.block_error.items():
        assert err["final"] < err["initial"], name
    assert result.achieved_rate <= 0.1
    assert result.n_compressed_layers == sum(layer["n_compressed"] for layer in result.layers)
    assert result.n_parameters == sum(p.numel() for p in net.parameters())
    # the returned tensorial layers are back on their own route; every route, same function
    tensorial = [m for m in net.modules() if isinstance(m, (TensorialConv2d, TensorialLinear))]
    assert len(tensorial) == 3 and all(m.evaluation == "auto" for m in tensorial)
    x = test[0][:16]
    with torch.no_grad():
        y_auto = net(x)
        for route in ("chain", "dense"):
            for m in tensorial:
                m.evaluation = route
            torch.testing.assert_close(net(x), y_auto, rtol=1e-4, atol=1e-4)
        for m in tensorial:
            m.evaluation = "auto"
    # same seed, same network
    net2, result2 = compress_and_train(trained_lenet, "rcp", 0.1, train, test, **kwargs)
    assert result2.accuracy == result.accuracy
    for (k, v), (k2, v2) in zip(net.state_dict().items(), net2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    json_ready = result.to_dict()
    assert json_ready["layers"][0]["name"] == "conv2"


def test_compress_and_train_rejects_bad_settings(trained_lenet, digits):
    with pytest.raises(ValueError, match="train_evaluation must be one of"):
        compress_and_train(trained_lenet, "cp", 0.1, *digits, train_evaluation="fast")
    with pytest.raises(ValueError, match="finetune_epochs"):
        compress_and_train(trained_lenet, "cp", 0.1, *digits, finetune_epochs=-1)
    # the seed also seeds the global RNG of training: None is refused here
    with pytest.raises(TypeError, match="seed must be an int >= 0, got"):
        compress_and_train(trained_lenet, "cp", 0.1, *digits, seed=None)
    with pytest.raises(TypeError, match="reshape_by_layout must be a bool"):
        compress_and_train(trained_lenet, "rcp", 0.1, *digits, reshape_by_layout="yes")
    # raw pixels fail at once, not after the decomposition and the first evaluation
    (x_train, y_train), test = digits
    raw = (x_train * 255).to(torch.uint8), y_train
    with pytest.raises(TypeError, match=r"train_data\[0\] must hold float \(normalised\) "
                                        r"images, got dtype torch.uint8"):
        compress_and_train(trained_lenet, "cp", 0.1, raw, test)
    with pytest.raises(TypeError, match=r"test_data\[0\] must hold float .* uint8"):
        compress_and_train(trained_lenet, "cp", 0.1, test, (raw[0].numpy(), raw[1]))


def test_compress_and_train_reshapes_by_layout_on_request(trained_lenet, digits):
    kwargs = {"distill_epochs": 0, "finetune_epochs": 0, "n_iter_max": 5}
    _, by_layout = compress_and_train(trained_lenet, "rtt", 0.2, *digits, modes=2,
                                      reshape_by_layout=True, **kwargs)
    _, balanced = compress_and_train(trained_lenet, "rtt", 0.2, *digits, modes=2, **kwargs)
    fc1 = [next(x for x in r.layers if x["name"] == "fc1") for r in (by_layout, balanced)]
    assert [list(x["in_factors"]) for x in fc1] == [[16, 25], [20, 20]]
    assert by_layout.settings["reshape_by_layout"] is True
    assert balanced.settings["reshape_by_layout"] is False


@pytest.mark.parametrize(("form", "name"), list(itertools.product(RESHAPED, ["conv2", "fc2"])))
def test_evaluation_routes_agree_on_compressed_lenet_layers(lenet, form, name):
    layer = lenet.get_submodule(name)
    plan = plan_layer(layer, form, 0.05, name=name)
    new = compress_layer(layer, plan, n_iter_max=5)
    assert new.evaluation == "auto"
    x = torch.randn(4, *((6, 14, 14) if name == "conv2" else (120,)))
    out, grads = {}, {}
    for route in ("chain", "dense", "auto"):
        new.evaluation = route
        out[route] = new(x)
        grads[route] = torch.autograd.grad(out[route].square().sum(), list(new.parameters()))
    for route in ("dense", "auto"):
        torch.testing.assert_close(out[route], out["chain"], rtol=1e-4, atol=1e-5)
        for a, b in zip(grads[route], grads["chain"]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_plan_layer_factors_must_be_ints(lenet):
    expected = plan_layer(lenet.fc1, "rtt", 0.1, factors=((20, 20), (10, 12)))
    for factors in ((np.array([20, 20]), [np.int64(10), 12]),
                    (torch.tensor([20, 20]), range(10, 13, 2))):
        same = plan_layer(lenet.fc1, "rtt", 0.1, factors=factors)
        assert (same.in_factors, same.out_factors, same.ranks) == (
            expected.in_factors, expected.out_factors, expected.ranks)
    # (2.9, 2) used to become (2, 2), and the strings "22", "24" the factors (2, 2), (2, 4)
    for bad in (((20.0, 20), (10, 12)), ((20.9, 20), (10, 12)), ("2020", "1012"),
                ((20, 20), (10, True)), ((20, 20),), 400):
        with pytest.raises(TypeError, match="factors must be a pair .* of sequences of ints"):
            plan_layer(lenet.fc1, "rtt", 0.1, name="fc1", factors=bad)
    with pytest.raises(ValueError, match=r"factors must be >= 1, got \(-20, -20\)"):
        plan_layer(lenet.fc1, "rtt", 0.1, factors=((-20, -20), (10, 12)))


@pytest.mark.parametrize("form", PLAIN)
def test_plain_forms_refuse_reshaping_options(lenet, form):
    for kwargs in ({"modes": 2}, {"modes": -5}, {"factors": ((20, 20), (10, 12))}):
        with pytest.raises(ValueError, match=rf"fc1: {next(iter(kwargs))}= reshapes the channels "
                                             rf"of the reshaped forms .* plain form '{form}'"):
            plan_layer(lenet.fc1, form, 0.1, name="fc1", **kwargs)


def test_compress_network_ignores_valid_modes_for_plain_forms(lenet):
    # one setting serves every form of a comparison (as in benchmarks/bench_tnn.py)
    _, plain = compress_network(lenet, "cp", 0.1, layers=["fc1"])
    _, with_modes = compress_network(lenet, "cp", 0.1, layers=["fc1"], modes=2,
                                     factors={"fc1": ((20, 20), (10, 12))})
    assert with_modes == plain
    with pytest.raises(ValueError, match="fc1: modes must be an int >= 1, got -5"):
        compress_network(lenet, "cp", 0.1, layers=["fc1"], modes=-5)
    with pytest.raises(ValueError, match="not compressed"):
        compress_network(lenet, "tt", 0.1, layers=["fc1"], modes={"fc2": 2})


class _Decomposed(Exception):
    """The checks of compress_and_train are over."""


def test_compress_and_train_checks_pairs_and_sample_counts_first(lenet, digits, monkeypatch):
    def no_decomposition(*args, **kwargs):
        raise _Decomposed

    monkeypatch.setattr("tenflex.nn.compress_tnn.compress_network", no_decomposition)
    train, test = digits
    n = len(train[0])
    bad = [
        ({"finetune_samples": -4}, ValueError, "finetune_samples"),
        ({"finetune_samples": 0}, ValueError, "finetune_samples"),
        ({"distill_samples": -100}, ValueError, "distill_samples"),
        ({"distill_samples": 2.5}, TypeError, "distill_samples must be None or an int"),
        ({"finetune_samples": True}, TypeError, "finetune_samples must be None or an int"),
    ]
    for kwargs, error, message in bad:
        if error is ValueError:
            message += r" must be None \(all images\) or an int >= 1"
        with pytest.raises(error, match=message):
            compress_and_train(lenet, "cp", 0.1, train, test, **kwargs)
    with pytest.raises(TypeError, match="train_data must be a pair"):
        compress_and_train(lenet, "cp", 0.1, train[0], test)
    with pytest.raises(TypeError, match="test_data must be a pair"):
        compress_and_train(lenet, "cp", 0.1, train, (*test, test[1]))
    # valid counts get to the decomposition (more than N images means all of them)
    assert n < 10000
    for kwargs in ({"distill_samples": np.int64(100), "finetune_samples": n}, {},
                   {"distill_samples": None, "finetune_samples": None},
                   {"distill_samples": n + 1, "finetune_samples": n + 1}):
        with pytest.raises(_Decomposed):
            compress_and_train(lenet, "cp", 0.1, train, test, **kwargs)


def test_a_padding_mode_the_layers_cannot_run_fails_at_planning():
    conv = nn.Conv2d(12, 24, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="conv: only padding_mode='zeros' is supported, "
                                         "got 'reflect'"):
        plan_layer(conv, "rcp", 0.3, name="conv")
    # compress_network plans every layer first: the bad one stops it before any decomposition
    model = nn.Sequential(nn.Conv2d(3, 12, 3), conv)
    with pytest.raises(ValueError, match="1: only padding_mode"):
        compress_network(model, "cp", 0.3, layers=["0", "1"])


def test_a_layer_shared_by_two_positions_is_refused():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), shared, nn.ReLU(), shared, nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"layer '2' is one module registered under the names "
                                         r"\['2', '4'\] \(shared weights\)"):
        compress_network(model, "cp", 0.5)
    out, _ = compress_network(model, "cp", 0.5, layers=["0", "5"])  # the others are fine
    assert isinstance(out[0], LowRankLayer | SVDLinear) and out[2] is out[4]


# ---------------------------------------------------------------------------------------
# Reused modules
# ---------------------------------------------------------------------------------------


def test_layer_inputs_refuses_a_reused_module():
    # A hook on a module object fires at every position it is registered at: the inputs at
    # one of them cannot be told apart (they used to be those of the first call, silently).
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    x = torch.randn(5, 4)
    for names in (["3"], ["1"], ["0", "1"]):
        with pytest.raises(ValueError, match=r"registered under several names .*'1', '3'"):
            layer_inputs(model, names, x)
    with torch.no_grad():
        expected = model[0](x)
    torch.testing.assert_close(layer_inputs(model, ["2"], x)["2"], relu(expected))
    # a layer of a block used at two positions has two names too
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(block, nn.Linear(4, 4), block)
    with pytest.raises(ValueError, match=r"'0.0': \['0.0', '2.0'\]"):
        layer_inputs(model, ["0.0"], x)
    with pytest.raises(ValueError, match="registered under several names"):
        feature_shapes(model, ["2.0"], x)
    for m in model.modules():  # no hook left behind
        assert not m._forward_pre_hooks and not m._forward_hooks


class _Twice(nn.Module):
    """Calls its layer twice."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.fc(self.act(self.fc(x)))


def test_layer_inputs_refuses_a_layer_called_twice():
    model = _Twice()
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"more than once.*\{'fc': 2\}.*no single input"):
        layer_inputs(model, ["fc"], x)
    torch.testing.assert_close(layer_inputs(model, ["act"], x)["act"], model.fc(x))


class _TwiceFlattened(nn.Module):
    """Calls fc twice: first on a flattened 4 x 2 x 2 map, then on another such map
    (``second="map"``) or on the output of a Linear(8, 16) (``second="vector"``)."""

    def __init__(self, second: str):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(16, 16)
        self.down, self.up = nn.Linear(16, 8), nn.Linear(8, 16)
        self.second = second

    def forward(self, x):
        h = self.fc(self.flat(self.conv(x)))
        if self.second == "map":
            return self.fc(self.flat(self.conv2(h.view(-1, 1, 4, 4))))
        return self.fc(self.up(self.down(h)))


def test_feature_shapes_of_a_layer_called_twice():
    x = torch.randn(1, 1, 4, 4)
    net = _TwiceFlattened("map")
    assert feature_shapes(net, ["fc"], x) == {"fc": (4, 2, 2)}  # both calls agree
    net.second = "vector"
    assert feature_shapes(net, ["fc"], x) == {}  # the second call has no layout: no shape


def test_default_layers_counts_positions_of_reused_layers():
    # The first layer reused as the last: named_modules() lists it once, as '0', and '4'
    # used to pass for the last layer.
    first = nn.Linear(8, 8)
    model = nn.Sequential(first, nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8),
                          nn.ReLU(), first)
    assert default_layers(model) == ["2", "4"]
    with pytest.raises(ValueError, match="no layer but the first and the last"):
        default_layers(nn.Sequential(first, nn.ReLU(), first, nn.ReLU(), first))


def test_compress_network_names_every_position_of_a_shared_layer():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), shared, nn.ReLU(), shared, nn.Linear(32, 4))
    # '4', the second name of the shared layer, used to be an "unknown layer name"
    with pytest.raises(ValueError, match=r"layer '4' is one module registered under the names "
                                         r"\['2', '4'\] \(shared weights\)"):
        compress_network(model, "cp", 0.5, layers=["4"])


def test_layer_inputs_of_an_in_place_layer_are_its_inputs():
    # ReLU(inplace=True) overwrites its input: a reference to it would hold the output.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    x = torch.randn(6, 4)
    with torch.no_grad():
        expected = model[0](x)
    assert (expected < 0).any()
    torch.testing.assert_close(layer_inputs(model, ["1"], x)["1"], expected, rtol=0, atol=0)


def test_compress_network_names_a_layer_of_another_type_as_such(lenet):
    # It was an 'unknown layer name', though the model has it.
    name = next(n for n, m in lenet.named_modules()
                if n and not isinstance(m, (nn.Conv2d, nn.Linear)) and not any(m.children()))
    kind = type(lenet.get_submodule(name)).__name__
    with pytest.raises(ValueError, match=rf"\{{'{name}': '{kind}'\}}.*not plain nn.Conv2d or "
                                         r"nn.Linear layers.*Conv2d/Linear layers: \['conv1'"):
        compress_network(lenet, "cp", 0.5, layers=["fc1", name])


def test_compressed_layers_keep_the_mode_of_the_layers_they_replace(lenet):
    # New layers were in training mode inside an evaluation-mode copy.
    assert not lenet.training
    net, _ = compress_network(lenet, "rcp", 0.2, n_iter_max=5)
    assert not any(m.training for m in net.modules())
    lenet.train()
    try:
        net, _ = compress_network(lenet, "cp", 0.2, n_iter_max=5)
        assert all(m.training for m in net.modules())
    finally:
        lenet.eval()


def test_fill_budget_must_be_a_bool(lenet):
    # "no" was taken as True.
    with pytest.raises(TypeError, match="fill_budget must be a bool \\(True or False\\), got str"):
        plan_layer(lenet.fc1, "rtk", 0.2, fill_budget="no")
    with pytest.raises(TypeError, match="fill_budget must be a bool"):
        compress_network(lenet, "rtk", 0.2, fill_budget=0)


def test_compress_and_train_checks_data_and_training_options_first(lenet, digits, monkeypatch):
    # These failed in distillation, fine-tuning or an evaluation, after the decompositions.
    def no_decomposition(*args, **kwargs):
        raise _Decomposed

    monkeypatch.setattr("tenflex.nn.compress_tnn.compress_network", no_decomposition)
    (x, y), test = digits
    bad = [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive int"),
        ({"distill_lr": -1.0}, ValueError, "distill_lr must be a positive finite number"),
        ({"finetune_lr": float("nan")}, ValueError, "finetune_lr must be a positive finite"),
    ]
    for kwargs, error, message in bad:
        with pytest.raises(error, match=message):
            compress_and_train(lenet, "cp", 0.1, (x, y), test, **kwargs)
    # a learning rate of a stage that does not run is not used
    with pytest.raises(_Decomposed):
        compress_and_train(lenet, "cp", 0.1, (x, y), test, distill_epochs=0, distill_lr=-1.0)
    with pytest.raises(TypeError, match="train_data: images have dtype torch.float64"):
        compress_and_train(lenet, "cp", 0.1, (x.double().numpy(), y), test)
    with pytest.raises(ValueError, match=r"test_data: labels must have shape"):
        compress_and_train(lenet, "cp", 0.1, (x, y), (test[0], test[1][:5]))
    with pytest.raises(TypeError, match="train_data: labels must be integers"):
        compress_and_train(lenet, "cp", 0.1, (x, y.float()), test)
    with pytest.raises(ValueError, match=r"train_data: labels must be class indices in \[0, 10\)"):
        compress_and_train(lenet, "cp", 0.1, (x, y + 10), test)
    with pytest.raises(ValueError, match="train_data: images contain NaN"):
        compress_and_train(lenet, "cp", 0.1, (torch.full_like(x, float("nan")), y), test)


def test_compress_and_train_reshapes_numpy_images_by_layout(lenet, digits):
    # The example input for the layout was an array: AttributeError 'numpy.ndarray' ... 'to'.
    (x, y), (xt, yt) = digits
    _, result = compress_and_train(
        lenet, "rtt", 0.2, (x[:64].numpy(), y[:64].numpy()), (xt[:32].numpy(), yt[:32].numpy()),
        modes=2, reshape_by_layout=True, distill_epochs=0, finetune_epochs=0, n_iter_max=5)
    fc1 = next(r for r in result.layers if r["name"] == "fc1")
    assert fc1["in_factors"] == [16, 25]


class _DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class _ShiftedConv(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight, bias) + 1


def test_a_layer_subclass_with_its_own_forward_is_not_compressed():
    # It was compressed as the plain layer, whose function it is not.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), _DoubledLinear(16, 16), nn.Linear(16, 12),
                        nn.Linear(12, 4)).eval()
    assert default_layers(net) == ["2"]
    with pytest.raises(ValueError, match=r"\{'1': '_DoubledLinear'\}.*not plain nn.Conv2d"):
        compress_network(net, "cp", 1.0, layers=["1", "2"])
    with pytest.raises(TypeError, match="_DoubledLinear, a subclass of nn.Linear with its own"):
        plan_layer(net[1], "rcp", 0.5)
    with pytest.raises(TypeError, match="_ShiftedConv, a subclass of nn.Conv2d with its own"):
        plan_layer(_ShiftedConv(4, 4, 3), "cp", 0.5)
    with pytest.raises(ValueError, match="found no layer but the first and the last"):
        default_layers(nn.Sequential(nn.Linear(8, 16), _DoubledLinear(16, 16), nn.Linear(16, 4)))
    out, _ = compress_network(net, "cp", 0.5)
    assert type(out[1]) is _DoubledLinear and isinstance(out[2], SVDLinear)


def test_time_forward_checks_repeat_and_warmup():
    # repeat=2.5 raised range()'s TypeError, repeat=True ran once.
    layer, x = nn.Linear(3, 2), torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"repeat must be an int, got float \(2.5\)"):
        time_forward(layer, x, repeat=2.5)
    with pytest.raises(TypeError, match="repeat must be an int, got bool"):
        time_forward(layer, x, repeat=True)
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        time_forward(layer, x, repeat=0)
    with pytest.raises(ValueError, match="warmup must be >= 0, got -1"):
        time_forward(layer, x, warmup=-1)
    assert time_forward(layer, x, repeat=1, warmup=0) >= 0


class _Attention(nn.Module):
    """Embedding, self-attention with a residual, a feed-forward block, classifier."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out((h + self.ff(h)).mean(1))


def test_the_out_proj_of_an_attention_is_not_compressed():
    # nn.MultiheadAttention reads out_proj.weight itself: a factorized out_proj (no weight)
    # broke the compressed model at its first forward pass.
    model, x = _Attention().eval(), torch.randn(2, 5, 6)
    assert default_layers(model) == ["ff.0", "ff.2"]
    out, plans = compress_network(model, "cp", 0.5)
    assert [p.name for p in plans] == ["ff.0", "ff.2"]
    assert out(x).shape == (2, 3)
    with pytest.raises(ValueError, match=r"layers \['attn.out_proj'\] belong to \['attn "
                                         r"\(MultiheadAttention\)'\].*leave them out.*can be "
                                         r"compressed: \['embed', 'ff.0', 'ff.2', 'out'\]"):
        compress_network(model, "cp", 0.5, layers=["attn.out_proj", "ff.0"])



def test_the_linear_layers_of_a_transformer_encoder_layer_are_not_compressed():
    # Its inference fast path (eval mode) reads linear1.weight and linear2.weight: the
    # default layers were exactly these two, and the compressed model failed in eval mode.
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 16),
                            nn.TransformerEncoderLayer(16, 2, 32, batch_first=True),
                            nn.Linear(16, 2)).eval()
    assert default_layers(encoder) == ["1"]
    out, _ = compress_network(encoder, "rcp", 0.5)
    assert out(torch.randn(3, 5, 4)).shape == (3, 5, 2)
    with pytest.raises(ValueError, match=r"layers \['2.linear1'\] belong to \['2 "
                                         r"\(TransformerEncoderLayer\)'\]"):
        compress_network(encoder, "cp", 0.5, layers=["2.linear1"])


@pytest.mark.parametrize("kernel", [(1, 1), (5, 1), (1, 3)])
@pytest.mark.parametrize("rate", [0.3, 0.5, 0.7, 0.9])
def test_tensor_train_plans_of_thin_kernels_can_be_built(kernel, rate):
    # The fill raised single bond ranks past what the TT-SVD reaches (1 x 1 kernel at rate
    # 0.7: ranks (3, 4, 3), r_2 = 4 > r_1 * k_h = 3), and the layer refused the plan after
    # compress_network had planned every layer.
    torch.manual_seed(0)
    layer = nn.Conv2d(12, 8, kernel)
    for form in ("tt", "rtt"):
        plan = plan_layer(layer, form, rate)
        assert plan.n_compressed <= plan.budget
        built = compress_layer(layer, plan, n_iter_max=5)
        assert sum(p.numel() for p in built.parameters()) == plan.n_compressed
    plan = plan_layer(layer, "tt", rate)
    left = 1
    for d, r in zip((12, *kernel, 8), plan.ranks):
        assert r <= left * d
        left = r


def test_ranks_within_budget_fills_valid_ranks_only():
    def count(r):
        return 11 * r[0] + 10 * r[1]

    assert ranks_within_budget((4, 4), count, 73.0) == (3, 4)
    # With r_1 <= r_0 required, the second rank cannot pass the first.
    assert ranks_within_budget((4, 4), count, 73.0, valid=lambda r: r[1] <= r[0]) == (3, 3)
    assert ranks_within_budget((4, 4), count, 84.0, valid=lambda r: r[1] <= r[0]) == (4, 4)


def test_default_layers_leave_out_convolutions_the_forms_cannot_represent():
    # A depthwise or reflect-padded convolution in the middle of a network was a default
    # layer, so compress_network(model, form, rate) failed at planning on the user's own
    # network until they listed every other layer by hand.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),          # depthwise
        nn.Conv2d(8, 12, 1), nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4),
    ).eval()
    assert default_layers(model) == ["4", "10"]
    out, plans = compress_network(model, "tucker", 0.5)
    assert [p.name for p in plans] == ["4", "10"]
    assert out(torch.randn(2, 3, 9, 9)).shape == (2, 4)
    with pytest.raises(ValueError, match=r"2: grouped convolutions are not supported \(groups=8"
                                         r"\); leave the layer out of layers="):
        compress_network(model, "tucker", 0.5, layers=["2", "4"])
    only = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 2, 3))
    with pytest.raises(ValueError, match="grouped convolutions or padding modes other than "
                                         "'zeros'\\); pass layers= explicitly"):
        default_layers(only)


def test_a_model_on_the_meta_device_is_refused_first():
    # It failed inside the first decomposition: "Tensor.item() cannot be called on meta
    # tensors".
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 3)).to("meta")
    message = (r"parameters or buffers \['0.weight', '0.bias', '2.weight', '2.bias', "
               r"'4.weight'\] \.\.\. are on the 'meta' device.*model.to_empty")
    with pytest.raises(ValueError, match=message):
        compress_network(model, "cp", 0.5)
    x, y = torch.randn(8, 6), torch.arange(8) % 3
    with pytest.raises(ValueError, match=message):
        compress_and_train(model, "cp", 0.5, (x, y), (x, y))
