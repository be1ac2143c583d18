"""Tests of tenflex.nn.lowrank (low-rank baselines) and tenflex.nn.distill."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from tensorly.decomposition import parafac
from torch import nn

from tenflex.nn.distill import distill_blocks, fine_tune
from tenflex.nn.lowrank import (
    CPConv2d,
    SVDLinear,
    TTConv2d,
    TuckerConv2d,
    decompose_layer,
    lowrank_max_ranks,
    lowrank_n_parameters,
    rank_for_rate,
    replace_layer,
)

DT = torch.float64

CONV_METHODS = ["cp", "tucker2", "tt"]
GEOMETRIES = [
    {"stride": 1, "padding": 0, "dilation": 1},
    {"stride": 2, "padding": 1, "dilation": 1},
    {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 1)},
    {"padding": "same", "dilation": 2},
]


# Tiny tensors: one thread avoids oversubscription on shared CPUs.
pytestmark = pytest.mark.usefixtures("single_thread_module")


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


def make_conv(S=4, T=6, k=(3, 2), bias=True, seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(S, T, k, bias=bias, **kw).to(DT)


@pytest.mark.parametrize("method", CONV_METHODS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_full_rank_reproduces_dense_conv(method, geometry):
    conv = make_conv(**geometry)
    full = lowrank_max_ranks(conv, method)
    layer = decompose_layer(conv, method, rank=max(full))
    assert layer.ranks == full
    x = rand(2, 4, 9, 8)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-12)
    assert layer.decomposition_error < 1e-13


def test_full_rank_svd_and_no_bias():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5).to(DT)
    layer = SVDLinear.from_dense(lin, rank=5)
    x = rand(3, 7)
    torch.testing.assert_close(layer(x), lin(x), rtol=0, atol=1e-12)
    conv = make_conv(bias=False, padding=1)
    cp = CPConv2d.from_dense(conv, rank=lowrank_max_ranks(conv, "cp")[0])
    assert cp[3].bias is None
    torch.testing.assert_close(cp(rand(1, 4, 6, 6)), conv(rand(1, 4, 6, 6)), rtol=0, atol=1e-12)


def test_reduced_rank_svd_is_eckart_young():
    torch.manual_seed(0)
    lin = nn.Linear(10, 8).to(DT)
    layer = SVDLinear.from_dense(lin, rank=3)
    w = lin.weight.detach().numpy()
    sig = np.linalg.svd(w, compute_uv=False)
    w_hat = layer.to_dense_weight().detach().numpy()
    # Frobenius error of the best rank-3 approximation: the discarded singular values
    assert np.linalg.norm(w - w_hat) == pytest.approx(np.sqrt((sig[3:] ** 2).sum()), rel=1e-10)
    assert layer.decomposition_error == pytest.approx(
        np.sqrt((sig[3:] ** 2).sum()) / np.linalg.norm(w), rel=1e-10
    )
    x = rand(4, 10)
    torch.testing.assert_close(layer(x), F.linear(x, torch.as_tensor(w_hat), lin.bias))
    assert layer.n_parameters == 3 * (10 + 8) + 8 == lowrank_n_parameters(lin, "svd", 3)


@pytest.mark.parametrize("method", CONV_METHODS)
@pytest.mark.parametrize("geometry", GEOMETRIES[1:3])
def test_reduced_rank_error_equals_decomposition_error(method, geometry):
    conv = make_conv(S=6, T=8, k=3, **geometry)
    layer = decompose_layer(conv, method, rank=2)
    w = conv.weight.detach()
    w_hat = layer.to_dense_weight().detach()
    rel = (torch.linalg.norm(w - w_hat) / torch.linalg.norm(w)).item()
    assert 0.05 < rel < 1
    assert rel == pytest.approx(layer.decomposition_error, rel=1e-9)
    x = rand(2, 6, 9, 8)
    with torch.no_grad():
        err = layer(x) - conv(x)
        ref = F.conv2d(x, w_hat - w, **geometry)
    torch.testing.assert_close(err, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore:Trying to compute SVD")
def test_cp_reconstruction_matches_tensorly_parafac():
    conv = make_conv(S=5, T=6, k=3, padding=1)
    layer = CPConv2d.from_dense(conv, rank=4, seed=0, n_iter_max=300)
    cp = parafac(
        conv.weight.detach().numpy(), 4, init="svd", n_iter_max=300, tol=1e-10, random_state=0
    )
    ref = tl.cp_to_tensor(cp)
    np.testing.assert_allclose(layer.to_dense_weight().detach().numpy(), ref, atol=1e-10)
    # Lebedev structure: 1x1, kx1 depthwise, 1xk depthwise, 1x1
    kinds = [(m.kernel_size, m.groups) for m in layer]
    assert kinds == [((1, 1), 1), ((3, 1), 4), ((1, 3), 4), ((1, 1), 1)]



@pytest.mark.filterwarnings("ignore:Trying to compute SVD")
@pytest.mark.parametrize("rank", [4, 45])  # 45 = 6 * 5 * 3 * 3 / 6: the exact CP
def test_cp_factor_norms_are_balanced_across_the_four_layers(rank):
    # Documented: every rank-one term's norm is spread evenly over A_s, A_h, A_w, A_t (the
    # ALS weights would otherwise sit in one layer and scale its gradients). Putting all of
    # it into the first factor passed every other test. Measured spread 0 to rounding.
    conv = make_conv(S=5, T=6, k=3, padding=1)
    layer = CPConv2d.from_dense(conv, rank=rank, seed=0)
    norms = torch.stack([
        layer[0].weight[:, :, 0, 0].norm(dim=1),  # A_s, (R, S)
        layer[1].weight[:, 0, :, 0].norm(dim=1),  # A_h, (R, k_h)
        layer[2].weight[:, 0, 0, :].norm(dim=1),  # A_w, (R, k_w)
        layer[3].weight[:, :, 0, 0].norm(dim=0),  # A_t, (T, R)
    ]).detach()
    assert norms.min() > 0
    torch.testing.assert_close(norms, norms[:1].expand(4, -1), rtol=1e-12, atol=0)


def test_tucker2_and_tt_structures():
    conv = make_conv(S=6, T=8, k=3, padding=1, stride=2)
    tk = TuckerConv2d.from_dense(conv, rank=(3, 4))
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in tk] == [
        (6, 3, (1, 1)), (3, 4, (3, 3)), (4, 8, (1, 1))
    ]
    assert tk[1].stride == (2, 2) and tk[1].padding == (1, 1)
    assert tk.n_parameters == 6 * 3 + 3 * 4 * 9 + 4 * 8 + 8
    tt = TTConv2d.from_dense(conv, rank=(2, 3, 4))
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in tt] == [
        (6, 2, (1, 1)), (2, 3, (3, 1)), (3, 4, (1, 3)), (4, 8, (1, 1))
    ]
    assert tt.n_parameters == lowrank_n_parameters(conv, "tt", (2, 3, 4))


@pytest.mark.parametrize("method", CONV_METHODS + ["svd"])
@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_rank_for_rate(method, rate):
    layer = nn.Linear(40, 30) if method == "svd" else nn.Conv2d(16, 24, 3)
    dense = sum(p.numel() for p in layer.parameters())
    ranks = rank_for_rate(layer, method, rate)
    assert lowrank_n_parameters(layer, method, ranks) <= rate * dense
    caps = lowrank_max_ranks(layer, method)
    bigger = tuple(min(max(ranks) + 1, c) for c in caps)
    if bigger != ranks:
        assert lowrank_n_parameters(layer, method, bigger) > rate * dense
    compressed = decompose_layer(layer, method, rate=rate)
    assert compressed.ranks == ranks
    assert compressed.n_parameters <= rate * dense



def test_rank_for_rate_admits_a_count_equal_to_the_budget():
    # "at most rate of the parameters": Linear(9, 9) at rank r has 18 r + 9 of 90 parameters,
    # so rate 0.5 (a budget of exactly 45, no rounding) admits rank 2; a strict inequality
    # in the rank search gave rank 1 and passed every other test.
    layer = nn.Linear(9, 9)
    assert rank_for_rate(layer, "svd", 0.5) == (2,)
    assert decompose_layer(layer, "svd", rate=0.5).n_parameters == 45
    # rank 1 exactly on the budget is allowed too: 27 of 90 parameters is rate 0.3
    assert rank_for_rate(layer, "svd", 27 / 90) == (1,)


def test_bad_inputs():
    conv = make_conv()
    with pytest.raises(ValueError, match="no rank >= 1"):
        rank_for_rate(conv, "cp", 0.01)
    with pytest.raises(ValueError, match="exceeds the full rank"):
        decompose_layer(conv, "cp", rank=10_000)
    with pytest.raises(ValueError, match="exceeds the full rank"):
        SVDLinear.from_dense(nn.Linear(4, 3), rank=4)
    with pytest.raises(ValueError, match=r"rank\[0\]"):
        TuckerConv2d.from_dense(conv, rank=(5, 1))
    with pytest.raises(TypeError, match="Conv2d or torch.nn.Linear"):
        decompose_layer(nn.Conv1d(2, 2, 3), "cp", rank=1)
    with pytest.raises(TypeError, match="needs an nn.Conv2d"):
        decompose_layer(nn.Linear(4, 4), "tucker2", rank=1)
    with pytest.raises(TypeError, match="needs an nn.Linear"):
        decompose_layer(conv, "svd", rank=1)
    with pytest.raises(ValueError, match="groups=2"):
        decompose_layer(nn.Conv2d(4, 4, 3, groups=2), "tt", rank=1)
    with pytest.raises(ValueError, match="unknown method"):
        decompose_layer(conv, "pca", rank=1)
    with pytest.raises(ValueError, match="exactly one of rank= and rate="):
        decompose_layer(conv, "cp")
    with pytest.raises(ValueError, match="rate must be"):
        rank_for_rate(conv, "tt", float("nan"))


def test_float32_layer_keeps_dtype():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    layer = TuckerConv2d.from_dense(conv, rank=lowrank_max_ranks(conv, "tucker2"))
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-5)


def _dense(method, seed=0, bias=True):
    if method == "svd":
        torch.manual_seed(seed)
        return nn.Linear(7, 5, bias=bias).to(DT)
    return make_conv(bias=bias, seed=seed, padding=1)


def _input(method):
    return rand(3, 7) if method == "svd" else rand(2, 4, 6, 5)


@pytest.mark.parametrize("method", CONV_METHODS + ["svd"])
@pytest.mark.parametrize("rank", [1, 2, "full"])
def test_all_zero_weight_gives_exact_zero_factors(method, rank):
    # A dead (all-zero) layer: ALS used to fail with "Singular matrix" for CP.
    dense = _dense(method)
    with torch.no_grad():
        dense.weight.zero_()
    r = max(lowrank_max_ranks(dense, method)) if rank == "full" else rank
    layer = decompose_layer(dense, method, rank=r)
    assert layer.decomposition_error == 0.0
    bias = layer[-1].bias
    for p in layer.parameters():
        if p is not bias:
            assert not torch.any(p)
    torch.testing.assert_close(bias, dense.bias, rtol=0, atol=0)
    x = _input(method)
    # the compressed layer outputs the bias, exactly as the dense one
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=0)
    assert not torch.any(layer.to_dense_weight())


@pytest.mark.parametrize("method", CONV_METHODS + ["svd"])
@pytest.mark.parametrize(("where", "value"), [
    ("weight", float("nan")), ("weight", float("inf")), ("bias", float("-inf")),
])
def test_non_finite_weight_or_bias_is_refused(method, where, value):
    dense = _dense(method)
    with torch.no_grad():
        getattr(dense, where).view(-1)[1] = value
    with pytest.raises(ValueError, match=rf"layer\.{where} .*must be finite, it has 1 NaN/Inf"):
        decompose_layer(dense, method, rank=1)


@pytest.mark.parametrize("cls", [CPConv2d, TuckerConv2d])
def test_iterative_methods_check_n_iter_max_and_seed(cls):
    conv = make_conv()
    for bad in (0, -5):
        with pytest.raises(ValueError, match=rf"n_iter_max must be an int >= 1, got {bad}"):
            cls.from_dense(conv, rank=2, n_iter_max=bad)
    with pytest.raises(TypeError, match="n_iter_max must be an int"):
        cls.from_dense(conv, rank=2, n_iter_max=2.5)
    for bad in (1.5, "a", True):
        with pytest.raises(TypeError, match="seed must be an int"):
            cls.from_dense(conv, rank=2, seed=bad)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        cls.from_dense(conv, rank=2, seed=-1)
    # NumPy ints are ints: the same decomposition as the Python int
    a = cls.from_dense(conv, rank=2, seed=np.int64(3), n_iter_max=np.int32(20))
    b = cls.from_dense(conv, rank=2, seed=3, n_iter_max=20)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("method", ["tt", "svd"])
def test_deterministic_methods_accept_and_ignore_seed(method):
    dense = _dense(method)
    ref = decompose_layer(dense, method, rank=2)
    for kwargs in ({"seed": 0}, {"seed": 7, "n_iter_max": 3}):
        layer = decompose_layer(dense, method, rank=2, **kwargs)
        for p, q in zip(layer.parameters(), ref.parameters()):
            assert torch.equal(p, q)
        assert layer.decomposition_error == ref.decomposition_error
    # checked all the same
    with pytest.raises(TypeError, match="seed must be an int"):
        decompose_layer(dense, method, rank=2, seed=0.5)
    with pytest.raises(ValueError, match="n_iter_max must be an int >= 1"):
        decompose_layer(dense, method, rank=2, n_iter_max=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        decompose_layer(dense, method, rank=2, foo=1)


# ---------------------------------------------------------------------------------------
# replace_layer
# ---------------------------------------------------------------------------------------


def test_replace_layer_sequential_named_and_nested():
    model = nn.Sequential(
        OrderedDict(
            [
                ("features", nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())),
                ("head", nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 3)])),
                ("fc", nn.Linear(3, 3)),
            ]
        )
    )
    new = nn.Identity()
    old = replace_layer(model, "features.0", new)
    assert isinstance(old, nn.Conv2d) and model.features[0] is new
    old = replace_layer(model, "head.1", nn.Identity())
    assert isinstance(old, nn.Linear) and isinstance(model.head[1], nn.Identity)
    replace_layer(model, "fc", nn.Tanh())
    assert isinstance(model.fc, nn.Tanh)
    plain = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    replace_layer(plain, "0", nn.Identity())
    assert isinstance(plain[0], nn.Identity)
    with pytest.raises(ValueError, match="valid names"):
        replace_layer(model, "features.7", nn.Identity())
    with pytest.raises(ValueError, match="non-empty"):
        replace_layer(model, "", nn.Identity())
    with pytest.raises(TypeError, match="nn.Module"):
        replace_layer(model, "fc", lambda x: x)


def test_replace_layer_refuses_a_layer_its_owner_reads_unless_it_keeps_a_weight():
    # nn.MultiheadAttention reads out_proj.weight instead of calling out_proj, and the
    # encoder layer's eval fast path reads linear1/linear2: a factorized layer there used to
    # be accepted and the model failed at its next forward pass.
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16,
                                                     batch_first=True))
    svd = decompose_layer(model[0].linear1, "svd", rank=2)
    for name in ("0.self_attn.out_proj", "0.linear1"):
        with pytest.raises(ValueError, match="reads its weight and bias itself"):
            replace_layer(model, name, svd)
    with pytest.raises(ValueError, match=r"shape \(8, 8\)"):
        replace_layer(model, "0.self_attn.out_proj", nn.Linear(8, 4))
    assert isinstance(model[0].linear1, nn.Linear)  # nothing was replaced
    # A dense layer of the same shape keeps the owner working, in both modes.
    fresh = nn.Linear(8, 16)
    replace_layer(model, "0.linear1", fresh)
    assert model[0].linear1 is fresh
    x = torch.randn(3, 5, 8)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (3, 5, 8)


def test_replace_layer_replaces_one_position_of_a_reused_module():
    # named_modules() lists `relu` once, as '1': position '3' used to be "no submodule".
    torch.manual_seed(0)
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = torch.tanh(model[2](relu(model[0](x))))
    tanh = nn.Tanh()
    assert replace_layer(model, "3", tanh) is relu
    assert model[3] is tanh and model[1] is relu  # only the named position changed
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    # and the first position, the name named_modules() gave
    assert replace_layer(model, "1", nn.Identity()) is relu and model[3] is tanh


def test_replace_layer_goes_by_child_name_not_position():
    # An nn.Sequential from an OrderedDict: its child '0' is its second layer.
    first, second = nn.ReLU(), nn.Linear(3, 3)
    model = nn.Sequential(OrderedDict([("1", first), ("0", second)]))
    assert replace_layer(model, "0", nn.Tanh()) is second
    assert model[0] is first and isinstance(model[1], nn.Tanh)
    assert list(model._modules) == ["1", "0"]


def test_replace_layer_refuses_a_child_of_a_reused_parent():
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(block, nn.Linear(4, 4), block)
    with pytest.raises(ValueError, match=r"the parent of '2.0' is one module registered under "
                                         r"the names \['0', '2'\]"):
        replace_layer(model, "2.0", nn.Identity())
    assert isinstance(block[0], nn.Linear)
    # the reused block itself, at one of its positions, is replaced there only
    new = nn.Identity()
    assert replace_layer(model, "2", new) is block and model[0] is block and model[2] is new


# ---------------------------------------------------------------------------------------
# Distillation and fine-tuning
# ---------------------------------------------------------------------------------------


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(2, 8, 3, padding=1)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(8, 8, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(2)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(32, 3)),
            ]
        )
    )


def compressed_copy(pretrained):
    import copy

    model = copy.deepcopy(pretrained)
    replace_layer(model, "conv2", CPConv2d.from_dense(pretrained.conv2, rank=2))
    replace_layer(model, "fc", SVDLinear.from_dense(pretrained.fc, rank=1))
    return model


def test_distillation_reduces_block_error_and_is_deterministic():
    pretrained = tiny_net()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 2, 6, 6, generator=g)
    before = [p.detach().clone() for p in pretrained.parameters()]

    runs = []
    for _ in range(2):
        model = compressed_copy(pretrained)
        res = distill_blocks(
            model, pretrained, ["conv2", "fc"], x, epochs=10, lr=1e-2, batch_size=16, seed=3
        )
        runs.append((model, res))
    model, res = runs[0]
    for name in ("conv2", "fc"):
        # rank-limited blocks: the weight-fitted start is not the activation optimum
        assert res.final_error[name] < 0.85 * res.initial_error[name], name
        assert res.losses[name].shape == (10,)
        assert res.losses[name][-1] < res.losses[name][0]
    # same seed -> identical parameters; pretrained network untouched
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters()):
        assert torch.equal(p, q)
    for p, q in zip(pretrained.parameters(), before):
        assert torch.equal(p, q)
    # the block error recorded is the true relative error of the block
    with torch.no_grad():
        a = pretrained.relu1(pretrained.conv1(x))
        t, c = pretrained.conv2(a), model.conv2(a)
    true = float((c - t).square().sum() / t.square().sum())
    assert res.final_error["conv2"] == pytest.approx(true, rel=1e-5)


def test_fine_tuning_reduces_loss():
    pretrained = tiny_net()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 2, 6, 6, generator=g)
    with torch.no_grad():
        y = pretrained(x).argmax(1)
    model = compressed_copy(pretrained)
    with torch.no_grad():
        loss0 = F.cross_entropy(model(x), y).item()
    res = fine_tune(model, (x, y), epochs=8, lr=1e-2, batch_size=32, seed=0)
    with torch.no_grad():
        loss1 = F.cross_entropy(model(x), y).item()
    assert loss1 < 0.8 * loss0
    assert res.epoch_losses[-1] < res.epoch_losses[0]


def test_distill_bad_names():
    pretrained = tiny_net()
    with pytest.raises(ValueError, match="valid names"):
        distill_blocks(compressed_copy(pretrained), pretrained, ["conv9"], torch.zeros(4, 2, 6, 6))
    with pytest.raises(ValueError, match="epochs"):
        distill_blocks(pretrained, pretrained, "conv1", torch.zeros(4, 2, 6, 6), epochs=0)
    with pytest.raises(TypeError, match="seed must be an int >= 0"):
        distill_blocks(pretrained, pretrained, "conv1", torch.zeros(4, 2, 6, 6), seed=1.5)
    with pytest.raises(ValueError, match=r"distinct; repeated: \['conv1'\]"):
        distill_blocks(compressed_copy(pretrained), pretrained, ["conv1", "conv1"],
                       torch.zeros(4, 2, 6, 6))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        fine_tune(pretrained, (torch.zeros(4, 2, 6, 6), torch.zeros(4, dtype=torch.long)),
                  seed=-1)


def test_tt_ranks_beyond_the_tt_svd_are_refused_clearly():
    # Modes (S, kh, kw, T) = (4, 3, 2, 6): full ranks (4, 12, 6), but after R_1 = 1 the
    # TT-SVD reaches at most R_2 = 1 * 3 (tensorly lowers it silently; the cores then did
    # not fit the layer and copy_ failed with a bare shape error).
    conv = make_conv()
    assert lowrank_max_ranks(conv, "tt") == (4, 12, 6)
    with pytest.raises(ValueError, match=r"rank\[1\] = 12 exceeds rank\[0\] \* 3 = 3"):
        TTConv2d.from_dense(conv, rank=(1, 12, 1))
    with pytest.raises(ValueError, match=r"rank\[2\] = 6 exceeds rank\[1\] \* 2 = 2"):
        decompose_layer(conv, "tt", rank=(4, 1, 6))
    # Reachable ranks still decompose, the chain matching its own dense kernel
    layer = TTConv2d.from_dense(conv, rank=(1, 3, 6))
    assert layer.ranks == (1, 3, 6)
    x = rand(2, 4, 7, 6)
    ref = F.conv2d(x, layer.to_dense_weight().detach(), conv.bias)
    torch.testing.assert_close(layer(x), ref)


@pytest.mark.parametrize("cls, ranks", [(CPConv2d, 3), (TuckerConv2d, (2, 3)),
                                        (TTConv2d, (2, 3, 2))])
def test_an_int_kernel_size_means_a_square_kernel(cls, ranks):
    # As for nn.Conv2d, kernel_size=3 is (3, 3).
    square = cls(4, 5, 3, ranks, padding=1)
    pair = cls(4, 5, (3, 3), ranks, padding=1)
    assert [m.weight.shape for m in square] == [m.weight.shape for m in pair]
    with pytest.raises(ValueError, match="kernel_size must be an int or a pair"):
        cls(4, 5, (3, 3, 3), ranks)
