"""Tests of tenflex.nn.tensorial: generalized tensor operations and tensorial layers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tensorly as tl
import torch
import torch.nn.functional as F
from tensorly.decomposition import tucker
from torch import nn

from tenflex.nn.tensorial import (
    CHAIN_FLOP_ADVANTAGE,
    EVALUATIONS,
    FORMS,
    TensorialConv2d,
    TensorialLinear,
    conv_output_length,
    evaluation_route,
    factorize,
    parse_tensor_op,
    tensor_op,
    tensorial_max_ranks,
    tensorial_n_parameters,
    tensorial_ranks_for_rate,
    tensorize,
)

DT = torch.float64


# Tiny tensors: one thread avoids oversubscription on shared CPUs.
pytestmark = pytest.mark.usefixtures("single_thread_module")


@pytest.fixture(params=["torch", "unfold"])
def impl(request):
    """Both evaluation routes of tensor_op."""
    return request.param


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT)


# ---------------------------------------------------------------------------------------
# tensor_op: contraction, partial outer product, convolution
# ---------------------------------------------------------------------------------------


def test_contraction_matches_tensordot():
    x, y = rand(2, 3, 4), rand(4, 5, seed=1)
    out = tensor_op("abc,cd->abd", x, y)
    ref = np.tensordot(x.numpy(), y.numpy(), axes=([2], [0]))
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13, atol=1e-13)


def test_partial_outer_product_keeps_shared_mode():
    x, y = rand(2, 3, 4), rand(3, 5, seed=1)
    out = tensor_op("bhc,hd->bhcd", x, y)
    ref = np.empty((2, 3, 4, 5))
    for b, h, c, d in itertools.product(range(2), range(3), range(4), range(5)):
        ref[b, h, c, d] = x[b, h, c] * y[h, d]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-13)
    # contraction of c and partial outer product of h together
    x2 = rand(2, 3, 4, seed=2)
    y2 = rand(3, 4, 5, seed=3)
    out2 = tensor_op("bhc,hcd->bhd", x2, y2)
    ref2 = np.einsum("bhc,hcd->bhd", x2.numpy(), y2.numpy())
    np.testing.assert_allclose(out2.numpy(), ref2, rtol=1e-13)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("K", [3, 4])
def test_true_convolution_matches_numpy_convolve(mode, K, impl):
    x, w = rand(9), rand(K, seed=1)
    out = tensor_op("h,h->h|h", x, w, conv={"h": {"padding": mode, "flip": True}}, impl=impl)
    ref = np.convolve(x.numpy(), w.numpy(), mode=mode)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-13)


def test_default_is_valid_cross_correlation(impl):
    x, w = rand(10), rand(4, seed=1)
    out = tensor_op("h,h->h|h", x, w, impl=impl)
    ref = np.correlate(x.numpy(), w.numpy(), mode="valid")
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize(
    "opts",
    [
        {"padding": 2, "stride": 2, "dilation": 1},
        {"padding": 1, "stride": 3, "dilation": 2},
        {"padding": "same", "dilation": 2},
        {"padding": "same"},
        {"padding": 0, "stride": 1, "dilation": 3},
    ],
)
def test_batched_conv1d_matches_torch(opts, impl):
    x, w = rand(3, 4, 13), rand(5, 4, 4, seed=1)
    out = tensor_op("bsh,tsh->bth|h", x, w, conv={"h": opts}, impl=impl)
    ref = F.conv1d(
        x, w, padding=opts.get("padding", 0), stride=opts.get("stride", 1),
        dilation=opts.get("dilation", 1),
    )
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_asymmetric_padding_pair(impl):
    x, w = rand(2, 11), rand(3, seed=1)
    out = tensor_op("bh,h->bh|h", x, w, conv={"h": {"padding": (2, 0)}}, impl=impl)
    ref = F.conv1d(F.pad(x, (2, 0)).unsqueeze(1), w.view(1, 1, 3)).squeeze(1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_conv2d_layer_notation_matches_f_conv2d(impl):
    x, w = rand(2, 3, 9, 8), rand(4, 3, 3, 2, seed=1)
    conv = {"h": {"padding": 1, "stride": 2}, "w": {"padding": (1, 1), "dilation": 2}}
    out = tensor_op("bshw,tshw->bthw|hw", x, w, conv=conv, impl=impl)
    ref = F.conv2d(x, w, stride=(2, 1), padding=(1, 1), dilation=(1, 2))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_mixed_contraction_convolution_partial_outer_product(impl):
    # s contracted, h convolved, r kept in both (partial outer product), b and t outer.
    x, y = rand(2, 3, 7, 4), rand(3, 3, 4, 5, seed=1)
    out = tensor_op("bshr,shrt->bhrt|h", x, y, conv={"h": {"padding": 1}}, impl=impl)
    X = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (0, 0)))
    Y = y.numpy()
    ref = np.zeros((2, 7, 4, 5))
    for b, i, r, t in itertools.product(range(2), range(7), range(4), range(5)):
        ref[b, i, r, t] = sum(
            X[b, s, i + k, r] * Y[s, k, r, t] for s in range(3) for k in range(3)
        )
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_multi_operand_cp_convolution_in_one_call():
    # Lebedev et al. CP convolution written as one conv_einsum-style string.
    x = rand(2, 3, 8, 8)
    a_s, a_h, a_w, a_t = rand(5, 3, seed=1), rand(5, 3, seed=2), rand(5, 3, seed=3), rand(5, 4, seed=4)
    conv = {"h": {"padding": 1}, "w": {"padding": 1}}
    out = tensor_op("bshw,rs,rh,rw,rt->bthw|hw", x, a_s, a_h, a_w, a_t, conv=conv)
    kernel = torch.einsum("rs,rh,rw,rt->tshw", a_s, a_h, a_w, a_t)
    torch.testing.assert_close(out, F.conv2d(x, kernel, padding=1), rtol=1e-12, atol=1e-12)


def test_ellipsis_batch_dims():
    x, w = rand(2, 3, 6), rand(4, 6, seed=1)
    out = tensor_op("...s,ts->...t", x, w)
    torch.testing.assert_close(out, x @ w.T, rtol=1e-13, atol=1e-13)
    y = rand(3, 6, seed=2)  # fewer ellipsis dims: right-aligned
    out2 = tensor_op("...s,...s->...", x, y)
    torch.testing.assert_close(out2, (x * y).sum(-1), rtol=1e-13, atol=1e-13)


def test_numpy_operands_accepted():
    out = tensor_op("ab,bc->ac", np.eye(2), np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(out.numpy(), np.arange(6.0).reshape(2, 3))


def test_gradcheck_mixed_operation(impl):
    x = rand(2, 3, 6, 2).requires_grad_()
    y = rand(3, 3, 2, 2, seed=1).requires_grad_()
    conv = {"h": {"padding": 1, "stride": 2, "dilation": 1}}
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_op("bshr,shrt->bhrt|h", a, b, conv=conv, impl=impl), (x, y)
    )
    full = {"h": {"padding": "full", "flip": True}}
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_op("h,h->h|h", a, b, conv=full, impl=impl),
        (rand(5).requires_grad_(), rand(3, seed=2).requires_grad_()),
    )


def test_routes_agree_with_lone_summed_modes_and_2d_3d():
    # q summed in the signal only, p summed in the kernel only, r partial outer product,
    # h/w/z convolved (3-D), s contracted, t kernel-only, b signal-only.
    x = rand(2, 3, 4, 5, 6, 4, 2)  # b s r h w z q
    y = rand(3, 4, 2, 3, 2, 5, 2, seed=1)  # s r h w z t p
    conv = {"h": {"padding": (1, 0)}, "w": {"stride": 2, "padding": 1}, "z": {"dilation": 2}}
    spec = "bsrhwzq,srhwztp->brthwz|hwz"
    a = tensor_op(spec, x, y, conv=conv, impl="torch")
    b = tensor_op(spec, x, y, conv=conv, impl="unfold")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # the brief's example: h kept (partial outer product), c summed
    x2, y2 = rand(2, 3, 4), rand(3, 5, seed=2)
    ref = x2.sum(-1, keepdim=True) * y2
    torch.testing.assert_close(tensor_op("bhc,hd->bhd", x2, y2), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize(
    "spec, shapes",
    [
        ("brtxy,rxy->btxy|xy", [(2, 3, 4, 6, 5), (3, 2, 3)]),  # contracted r, then T
        ("brtxy,rxy->brtxy|xy", [(2, 3, 4, 6, 5), (3, 2, 3)]),  # r kept, T after it
        ("btaqxy,axy->btqxy|xy", [(2, 2, 3, 2, 6, 5), (3, 3, 2)]),
        ("bsxy,rxy->bsrxy|xy", [(2, 3, 6, 5), (4, 2, 2)]),  # kernel-only r
        ("bsxy,rxy->brsxy|xy", [(2, 3, 6, 5), (4, 2, 2)]),
        # the depthwise route (shared modes c d between signal-only b and n) with several
        # contracted shared modes, one kept, and a kernel-only mode o
        ("bcdnxy,cdxy->bnxy|xy", [(2, 2, 3, 2, 6, 5), (2, 3, 3, 2)]),
        ("bcdnxy,cdxy->bcnxy|xy", [(2, 2, 3, 2, 6, 5), (2, 3, 3, 2)]),
        ("bcdnxy,cdoxy->bnoxy|xy", [(2, 2, 3, 2, 6, 5), (2, 3, 4, 3, 2)]),
    ],
)
def test_grouped_routes_match_unfold(spec, shapes):
    ops = [rand(*sh, seed=i) for i, sh in enumerate(shapes)]
    conv = {"x": {"padding": 1, "stride": 2}, "y": {"padding": (0, 1), "dilation": 2}}
    a = tensor_op(spec, *ops, conv=conv, impl="torch")
    b = tensor_op(spec, *ops, conv=conv, impl="unfold")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_impl_errors():
    x = torch.zeros(2, 5, dtype=DT)
    with pytest.raises(ValueError, match="impl must be"):
        tensor_op("bh,h->bh|h", x, torch.zeros(3, dtype=DT), impl="fft")
    with pytest.raises(ValueError, match="two operands"):
        tensor_op("bh,h,b->bh|h", x, torch.zeros(3, dtype=DT), torch.zeros(2, dtype=DT),
                  impl="torch")


@pytest.mark.parametrize(
    "spec",
    [
        "brtsqx,rus->brtuqx",  # rank r kept, s contracted, u new: B (r,u,s) @ A (b,r,t,s,qx)
        "btrsq,rvus->btuvq",  # r and s contracted (contiguous), u v new, order from output
        "bts,ust->bu",  # contracted block at the end, matmul A (b, ts) @ B (ts, u)
        "abcs,sd->abcd",  # linear-layer pattern
        "ras,bs->rab",  # K ends A, b new after an A-only tail
        "rab,rbc->rac",  # batched matmul, partial outer product r
        "bsrt,rs->bt",  # non-contiguous contraction: einsum fallback
        "us,bts->btu",  # big operand second
        "bsq,sd->bdq",  # out = P N Q
        "bsq,sd->bqd",  # out = P Q N but K not at the end: fallback
    ],
)
def test_binary_contractions_match_einsum(spec):
    lhs = spec.split("->")[0].split(",")
    sizes = dict(zip("abcdqrstuvx", [2, 3, 2, 4, 5, 3, 4, 2, 3, 2, 3]))
    sizes["b"] = 6  # make the operand holding b the big one
    ops = [rand(*[sizes[c] for c in term], seed=i) for i, term in enumerate(lhs)]
    ref = np.einsum(spec, *[o.numpy() for o in ops])
    out = tensor_op(spec, *ops)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-12)
    ops = [o.requires_grad_() for o in ops]
    assert torch.autograd.gradcheck(lambda *xs: tensor_op(spec, *xs), ops)


def test_roles():
    roles = parse_tensor_op("bshw,tshw,b->bthw|hw").roles()
    assert roles == {
        "b": "partial outer product", "s": "contraction", "h": "convolution",
        "w": "convolution", "t": "outer product",
    }
    assert parse_tensor_op("ab,b->").roles() == {"a": "summation", "b": "contraction"}


def test_conv_output_length():
    assert conv_output_length(28, 5, (2, 2), 1, 1) == 28
    assert conv_output_length(10, 3, (0, 0), 2, 2) == 3


@pytest.mark.parametrize(
    "spec, shapes, conv, match",
    [
        ("abc,cd", [(2, 3), (3, 4)], None, "->"),
        ("ab,bc->ad", [(2, 3), (3, 4)], None, "output mode 'd'"),
        ("ab,bc->ac", [(2, 3), (4, 5)], None, "mode 'b' has size 3"),
        ("ab,bc->ac", [(2, 3, 1), (3, 4)], None, "ndim 3"),
        ("ab,bc->ac", [(2, 3)], None, "1 operand"),
        ("ah,bc->ahbc|h", [(2, 3), (3, 4)], None, "exactly\\s+two operands"),
        ("ah,bh->ab|h", [(2, 3), (3, 3)], None, "must appear in the output"),
        ("ah,bh->abh", [(2, 3), (4, 3)], {"h": {}}, "not marked as convolved"),
        ("h,h->h|h", [(5,), (3,)], {"h": {"pad": 1}}, "unknown option"),
        ("h,h->h|h", [(5,), (3,)], {"h": {"stride": 0}}, "stride"),
        ("h,h->h|h", [(5,), (3,)], {"h": {"padding": "half"}}, "padding"),
        ("h,h->h|h", [(5,), (3,)], {"h": {"padding": "same", "stride": 2}}, "stride 1"),
        ("h,h->h|h", [(2,), (4,)], None, "empty"),
        ("aa,ab->b", [(2, 2), (2, 3)], None, "repeats"),
        ("a1,ab->b", [(2, 2), (2, 3)], None, "invalid character"),
        ("...a,ab->b", [(2, 2), (2, 3)], None, "must keep"),
        ("a.b,bc->a.c", [(2, 3, 4), (4, 5)], None, "'a.b' has a '.' outside '...'"),
        ("a......b,bc->a...c", [(2, 3, 4), (4, 5)], None, "'a......b' has more than one"),
    ],
)
def test_bad_notation_errors(spec, shapes, conv, match):
    ops = [torch.zeros(s, dtype=DT) for s in shapes]
    with pytest.raises(ValueError, match=match):
        tensor_op(spec, *ops, conv=conv)


def test_dtype_mismatch_is_type_error():
    with pytest.raises(TypeError, match="dtype"):
        tensor_op("ab,bc->ac", torch.zeros(2, 3), torch.zeros(3, 2, dtype=DT))


# ---------------------------------------------------------------------------------------
# factorize
# ---------------------------------------------------------------------------------------


def test_factorize_examples_and_balance():
    assert factorize(16, 2) == (4, 4)
    assert factorize(120, 3) == (4, 5, 6)
    assert factorize(6, 3) == (1, 2, 3)
    assert factorize(1, 2) == (1, 1)
    assert factorize(7, 1) == (7,)
    def all_factorizations(n, m):
        if m == 1:
            yield (n,)
            return
        for d in range(1, n + 1):
            if n % d == 0:
                for rest in all_factorizations(n // d, m - 1):
                    yield (d, *rest)

    for n, m in [(64, 3), (84, 2), (400, 3), (96, 4), (13, 2), (360, 3)]:
        f = factorize(n, m)
        assert math.prod(f) == n and len(f) == m and list(f) == sorted(f)
        # brute force: no factorization has a smaller largest factor
        assert max(f) == min(max(c) for c in all_factorizations(n, m))


def test_factorize_errors():
    with pytest.raises(ValueError, match="prime factors"):
        factorize(7, 2, allow_ones=False)
    assert factorize(12, 2, allow_ones=False) == (3, 4)
    with pytest.raises(ValueError, match="n must be"):
        factorize(0, 2)
    with pytest.raises(ValueError, match="modes must be"):
        factorize(4, 0)


def test_factorize_more_modes_than_prime_factors():
    # The extra modes are 1 (allow_ones=True: always possible); this used to recurse once
    # per mode and raise RecursionError.
    assert factorize(8, 2000) == (1,) * 1997 + (2, 2, 2)
    assert factorize(1, 500) == (1,) * 500
    assert factorize(2**10 * 3, 64) == (1,) * 53 + (2,) * 10 + (3,)
    with pytest.raises(ValueError, match="only 3 prime factors"):
        factorize(8, 2000, allow_ones=False)

    def best_key(n, m):  # brute force over all factorizations: smallest (max, -min)
        if m == 1:
            return (n, -n)
        keys = [
            (max(d, k[0]), max(-d, k[1]))
            for d in range(1, n + 1) if n % d == 0
            for k in [best_key(n // d, m - 1)]
        ]
        return min(keys)

    for n, m in [(60, 5), (12, 4), (36, 6), (30, 7)]:
        f = factorize(n, m)
        assert math.prod(f) == n and len(f) == m and list(f) == sorted(f)
        assert (max(f), -min(f)) == best_key(n, m)


# ---------------------------------------------------------------------------------------
# Tensorial layers
# ---------------------------------------------------------------------------------------


def dense_conv(S, T, k=3, dtype=DT, seed=0, **kw):
    torch.manual_seed(seed)
    return nn.Conv2d(S, T, k, **kw).to(dtype)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("order", ["conv_first", "conv_last"])
@pytest.mark.parametrize("S, T", [(6, 8), (8, 6)])
def test_full_rank_conv_matches_dense_float64(form, order, S, T):
    conv = dense_conv(S, T, 3, stride=2, padding=1)
    full = tensorial_max_ranks(form, factorize(S, 2), factorize(T, 2), (3, 3))
    layer = TensorialConv2d.from_dense(conv, rank=max(full), form=form)
    layer.order = order
    assert layer.ranks == full
    x = rand(2, S, 7, 9)
    # Both routes explicitly: "auto" takes the formed kernel for most of these small layers,
    # which would leave the chain of tensor operations (the layer's own evaluation,
    # with the stride and padding) unchecked. Measured error <= 3e-15 on either route.
    for evaluation in ("chain", "dense"):
        layer.evaluation = evaluation
        torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-12)
    assert layer.decomposition_error < 1e-12


@pytest.mark.parametrize("form", FORMS)
def test_full_rank_three_modes_float32_and_linear(form):
    conv = dense_conv(8, 12, (3, 2), dtype=torch.float32, padding=(1, 0), dilation=(1, 2))
    s, t = (2, 2, 2), (2, 2, 3)
    full = tensorial_max_ranks(form, s, t, (3, 2))
    layer = TensorialConv2d.from_dense(conv, rank=full, form=form, in_factors=s, out_factors=t)
    assert layer.spatial.dtype == torch.float32
    x = torch.randn(2, 8, 6, 7)
    # every route and chain order (measured error <= 7.2e-7 in float32, outputs of size ~1)
    for evaluation, order in itertools.product(("chain", "dense"), ("conv_first", "conv_last")):
        layer.evaluation, layer.order = evaluation, order
        torch.testing.assert_close(layer(x), conv(x), rtol=0, atol=1e-5)

    torch.manual_seed(1)
    lin = nn.Linear(12, 10).to(DT)
    full = tensorial_max_ranks(form, factorize(12, 2), factorize(10, 2))
    tl_layer = TensorialLinear.from_dense(lin, rank=full, form=form)
    x = rand(4, 3, 12)
    for evaluation in ("chain", "dense"):  # "auto" takes "dense" here; measured <= 2e-15
        tl_layer.evaluation = evaluation
        torch.testing.assert_close(tl_layer(x), lin(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "conv_kw",
    [
        {"stride": 1, "padding": 0, "dilation": 1},
        {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)},
        {"padding": "same", "dilation": 2},
    ],
)
def test_forward_equals_conv_with_reconstructed_weight(form, conv_kw):
    layer = TensorialConv2d(
        6, 9, (3, 2), form=form, rank=2, in_factors=(2, 3), out_factors=(3, 3),
        dtype=DT, seed=3, **conv_kw,
    )
    x = rand(2, 6, 8, 7)
    w = layer.to_dense_weight()
    assert w.shape == (9, 6, 3, 2)
    ref = F.conv2d(x, w, layer.bias, **conv_kw)
    # The chain explicitly: "auto" forms the kernel for this small layer, and the chain's
    # stride, padding and dilation per axis would go unchecked (measured error <= 1.4e-15).
    layer.evaluation = "chain"
    for order in ("conv_first", "conv_last"):
        layer.order = order
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer(x[0]), ref[0], rtol=1e-10, atol=1e-12)  # unbatched
    layer.evaluation = "dense"
    torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)
    layer.evaluation = "fast"
    with pytest.raises(ValueError, match="evaluation must be"):
        layer(x)


def _routes_output(layer, x):
    out = {}
    for route in EVALUATIONS:
        layer.evaluation = route
        out[route] = layer(x)
    layer.evaluation = "auto"
    return out


@pytest.mark.parametrize(
    ("kernel", "in_factors", "out_factors"),
    [((5, 5), (2, 3), (4, 4)), ((3, 3), (4, 4), (4, 4)), ((2, 1), (2, 2, 2), (3, 1, 2))],
)
def test_rcp_kernel_is_the_sum_of_its_rank_one_terms(kernel, in_factors, out_factors):
    # covers both contraction orders of to_dense_weight: the spatial factor last (5 x 5
    # kernel, 4 x 3 last mode) and before the last channel factor (3 x 3, 4 x 4)
    layer = TensorialConv2d(math.prod(in_factors), math.prod(out_factors), kernel,
                            form="rcp", rank=3, in_factors=in_factors,
                            out_factors=out_factors, dtype=DT, seed=2)
    M = len(in_factors)
    ref = 0
    for r in range(3):
        term = layer.factors[0][r]  # (t_0, s_0)
        for m in range(1, M):
            # (t_0..t_{m-1}, s_0..s_{m-1}) x (t_m, s_m): t modes first, then s modes
            a = term.reshape(math.prod(out_factors[:m]), math.prod(in_factors[:m]))
            term = torch.einsum("ts,uv->tusv", a, layer.factors[m][r])
        term = term.reshape(math.prod(out_factors), math.prod(in_factors))
        ref = ref + term[:, :, None, None] * layer.spatial[r]
    torch.testing.assert_close(layer.to_dense_weight(), ref, rtol=1e-12, atol=1e-12)


def test_route_flops_counts_the_dense_product_and_scale_with_the_batch():
    layer = TensorialLinear(40, 30, form="rcp", rank=3, in_factors=(5, 8), out_factors=(5, 6))
    chain1, dense1 = layer.route_flops((1, 40))
    chain7, dense7 = layer.route_flops((7, 40))
    # the formed kernel costs the same for any batch; each sample adds one 30 x 40 product
    assert dense7 - dense1 == 6 * 2 * 30 * 40
    # forming the kernel: (r t0 s0) x (r t1 s1) -> (t0 s0 t1 s1), summing over r
    assert dense1 == 2 * 30 * 40 * 3 + 2 * 30 * 40
    assert chain7 == 7 * chain1 > 0  # every step of the chain is per sample
    # counting runs on meta tensors: parameters untouched, route restored
    before = [p.detach().clone() for p in layer.parameters()]
    assert layer.evaluation == "auto"
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))


def test_route_choice_is_invisible_to_a_callers_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    layer = TensorialLinear(400, 120, form="rcp", rank=39, in_factors=(5, 8, 10),
                            out_factors=(4, 5, 6))
    x = torch.randn(32, 400)
    counts = []
    for _ in range(2):  # the first call counts both routes on meta tensors, the second not
        with FlopCounterMode(display=False) as counter:
            layer(x)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == layer.route_flops(x.shape)[1]  # the dense route ran


def test_reshaped_tucker_kernel_is_formed_core_first():
    # factor-first contraction would build a 1.4e8-entry intermediate for this layer
    layer = TensorialLinear(400, 120, form="rtk", rank=(15, 14, 14), in_factors=(5, 8, 10),
                            out_factors=(4, 5, 6))
    _, dense = layer.route_flops((1, 400))
    assert dense < 1e7


def test_auto_route_takes_the_chain_only_when_it_is_much_cheaper():
    # a wide layer of rank 2 on one sample: the chain needs ~1e4 operations, forming the
    # 1024 x 1024 kernel ~1e7
    wide = TensorialLinear(1024, 1024, form="rcp", rank=2, modes=2, seed=0)
    x = torch.randn(1, 1024)
    chain, dense = wide.route_flops(x.shape)
    assert chain < CHAIN_FLOP_ADVANTAGE * dense
    assert wide.route(x.shape) == "chain"
    out = _routes_output(wide, x)
    assert torch.equal(out["auto"], out["chain"])
    torch.testing.assert_close(out["dense"], out["chain"], rtol=1e-4, atol=1e-5)
    # LeNet-5's conv2 at rate 10 %, batch 64: the formed kernel wins
    conv = TensorialConv2d(6, 16, 5, form="rcp", rank=5, in_factors=(2, 3), out_factors=(4, 4))
    xc = torch.randn(64, 6, 14, 14)
    chain, dense = conv.route_flops(xc.shape)
    assert chain > CHAIN_FLOP_ADVANTAGE * dense
    assert conv.route(xc.shape) == "dense"
    out = _routes_output(conv, xc)
    assert torch.equal(out["auto"], out["dense"])
    torch.testing.assert_close(out["chain"], out["dense"], rtol=1e-4, atol=1e-5)
    # the unbatched input is routed like a batch of one
    assert torch.equal(conv(xc[0]), conv(xc[:1])[0])


@pytest.mark.parametrize("form", FORMS)
def test_new_layers_choose_their_route(form):
    layer = TensorialLinear(24, 10, form=form, rank=2, modes=3, dtype=DT)
    conv = TensorialConv2d(6, 4, 3, form=form, rank=2, dtype=DT)
    assert layer.evaluation == conv.evaluation == "auto"
    assert TensorialLinear.from_dense(nn.Linear(24, 10), rank=2, form=form).evaluation == "auto"


@pytest.mark.parametrize("form", FORMS)
def test_linear_forward_equals_reconstructed_weight(form):
    layer = TensorialLinear(24, 10, form=form, rank=3, modes=3, dtype=DT, seed=1)
    x = rand(5, 24)
    ref = F.linear(x, layer.to_dense_weight(), layer.bias)
    # "auto" takes "dense" for this layer: the chain explicitly (measured error <= 3e-16)
    for evaluation in ("chain", "dense", "auto"):
        layer.evaluation = evaluation
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_ranks_honour_rate(form, rate):
    conv = dense_conv(16, 16, 3)
    layer = TensorialConv2d.from_dense(conv, rate=rate, form=form)
    dense = sum(p.numel() for p in conv.parameters())
    assert layer.n_parameters <= rate * dense
    assert layer.n_parameters == tensorial_n_parameters(
        form, layer.in_factors, layer.out_factors, (3, 3), layer.ranks
    )
    # the next uniform rank would break the budget (or the ranks are already full)
    r = max(layer.ranks)
    if layer.ranks != layer.max_ranks:
        bigger = tuple(min(r + 1, c) for c in layer.max_ranks)
        n = tensorial_n_parameters(form, layer.in_factors, layer.out_factors, (3, 3), bigger)
        assert n > rate * dense
    assert tensorial_ranks_for_rate(conv, rate, form=form) == layer.ranks



def test_ranks_for_rate_admit_a_count_equal_to_the_budget():
    # Linear(12, 8) reshaped (3, 4) x (2, 4): rank r of "rcp" has r (6 + 16) + 8 parameters,
    # 52 of 104 at rank 2, so rate 0.5 (a budget of exactly 52) admits rank 2; a strict
    # inequality in the rank search gave rank 1 and passed the other tests.
    lin = nn.Linear(12, 8)
    assert tensorial_ranks_for_rate(lin, 0.5, form="rcp") == (2,)
    layer = TensorialLinear.from_dense(lin, rate=0.5, form="rcp")
    assert (layer.in_factors, layer.out_factors, layer.ranks) == ((3, 4), (2, 4), (2,))
    assert sum(p.numel() for p in layer.parameters()) == 52


@pytest.mark.parametrize("form", FORMS)
def test_reduced_rank_error_is_the_decomposition_error(form):
    conv = dense_conv(8, 8, 3, padding=1)
    layer = TensorialConv2d.from_dense(conv, rate=0.3, form=form, seed=0)
    w = conv.weight.detach()
    w_hat = layer.to_dense_weight().detach()
    rel = (torch.linalg.norm(w - w_hat) / torch.linalg.norm(w)).item()
    assert 1e-3 < layer.decomposition_error < 1
    assert rel == pytest.approx(layer.decomposition_error, rel=1e-9)
    x = rand(2, 8, 6, 6)
    with torch.no_grad():
        err = layer(x) - conv(x)
        ref = F.conv2d(x, w_hat - w, padding=1)
    torch.testing.assert_close(err, ref, rtol=1e-9, atol=1e-11)



def test_rcp_factor_norms_are_balanced():
    # cp_factors: each rank-one term's norm spread evenly over the channel and spatial
    # factors (measured spread 0 to rounding); all of it in one factor passed the other tests
    layer = TensorialConv2d.from_dense(dense_conv(4, 6, 3), rank=3, form="rcp",
                                       in_factors=(2, 2), out_factors=(2, 3), seed=0)
    norms = torch.stack([f.detach().flatten(1).norm(dim=1)
                         for f in (*layer.factors, layer.spatial)])
    assert norms.min() > 0
    torch.testing.assert_close(norms, norms[:1].expand(len(norms), -1), rtol=1e-12, atol=0)


def test_rtk_matches_tensorly_tucker_directly():
    conv = dense_conv(4, 6, 3)
    layer = TensorialConv2d.from_dense(conv, rank=(3, 4, 5), form="rtk", seed=0)
    assert (layer.in_factors, layer.out_factors) == ((2, 2), (2, 3))
    w = conv.weight.detach().numpy().reshape(2, 3, 2, 2, 3, 3)  # t1 t2 s1 s2 kh kw
    w = w.transpose(0, 2, 1, 3, 4, 5).reshape(4, 6, 9)  # (t1 s1, t2 s2, kh kw)
    core, factors = tucker(w, rank=[3, 4, 5], init="svd", n_iter_max=300, tol=1e-10,
                           random_state=0)
    ref = tl.tucker_to_tensor((core, factors)).reshape(2, 2, 3, 2, 3, 3)
    ref = ref.transpose(0, 2, 1, 3, 4, 5).reshape(6, 4, 3, 3)
    np.testing.assert_allclose(layer.to_dense_weight().detach().numpy(), ref, atol=1e-12)


def test_gradients_reach_every_core():
    for form in FORMS:
        layer = TensorialConv2d(4, 6, 3, form=form, rank=2, padding=1, dtype=DT)
        layer(rand(2, 4, 5, 5)).square().sum().backward()
        for name, p in layer.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), (form, name)
            assert p.grad.abs().sum() > 0, (form, name)



@pytest.mark.parametrize("form", FORMS)
def test_chain_gradients_equal_those_of_the_formed_kernel(form):
    # The chain of tensor operations is differentiable in every core and the input, with the
    # gradients of the dense layer it represents (its formed kernel through F.conv2d /
    # F.linear, checked against the decompositions above). "auto" takes the formed kernel for
    # these small layers, so without this a core the chain detached went unnoticed.
    # Measured difference <= 1.3e-14 (float64, gradients up to ~45).
    conv = TensorialConv2d(6, 4, (3, 2), form=form, rank=2, in_factors=(2, 3),
                           out_factors=(2, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                           dtype=DT, seed=4)
    lin = TensorialLinear(12, 10, form=form, rank=2, modes=2, dtype=DT, seed=4)
    for layer, x0 in ((conv, rand(2, 6, 7, 8, seed=5)), (lin, rand(3, 12, seed=5))):
        grads = {}
        for evaluation in ("chain", "dense"):
            layer.evaluation = evaluation
            for order in (("conv_first", "conv_last") if layer is conv else ("auto",)):
                layer.order = order
                layer.zero_grad(set_to_none=True)
                x = x0.clone().requires_grad_(True)
                y = layer(x)
                (y * torch.cos(y)).sum().backward()  # a non-linear loss: not just sums
                grads[evaluation, order] = [x.grad] + [p.grad for p in layer.parameters()]
        ref = next(g for (evaluation, _), g in grads.items() if evaluation == "dense")
        for key, got in grads.items():
            assert len(got) == len(ref) and all(g is not None for g in got), key
            for g, r in zip(got, ref):
                torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_seeded_init_is_reproducible_and_scaled():
    a = TensorialConv2d(16, 16, 3, form="rtt", rank=4, seed=5)
    b = TensorialConv2d(16, 16, 3, form="rtt", rank=4, seed=5)
    c = TensorialConv2d(16, 16, 3, form="rtt", rank=4, seed=6)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.factors[0], c.factors[0])
    std = a.to_dense_weight().std().item()
    assert 0.2 < std * math.sqrt(3 * 16 * 9) < 5  # near PyTorch's default scale


def test_tensorize_dispatch_and_bad_inputs():
    conv = dense_conv(4, 4, 3)
    assert isinstance(tensorize(conv, rate=0.9, form="rtt"), TensorialConv2d)
    assert isinstance(tensorize(nn.Linear(8, 6), rank=2), TensorialLinear)
    with pytest.raises(TypeError, match="Conv2d and nn.Linear"):
        tensorize(nn.Conv1d(2, 2, 3), rank=1)
    with pytest.raises(TypeError, match="nn.Conv2d"):
        TensorialConv2d.from_dense(nn.Linear(4, 4), rank=1)
    with pytest.raises(ValueError, match="no rank >= 1"):
        TensorialConv2d.from_dense(conv, rate=0.01, form="rcp")
    with pytest.raises(ValueError, match="exceeds the full rank"):
        TensorialConv2d.from_dense(conv, rank=10_000, form="rcp")
    with pytest.raises(ValueError, match=r"rank\[1\]"):
        TensorialConv2d.from_dense(conv, rank=(1, 100, 1), form="rtk")
    with pytest.raises(ValueError, match="exactly one of rate= and rank="):
        TensorialConv2d.from_dense(conv, rate=0.5, rank=1)
    with pytest.raises(ValueError, match="groups"):
        TensorialConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2), rank=1)
    with pytest.raises(ValueError, match="padding_mode"):
        TensorialConv2d.from_dense(nn.Conv2d(4, 4, 3, padding_mode="reflect"), rank=1)
    with pytest.raises(ValueError, match="product 6 but"):
        TensorialConv2d.from_dense(conv, rank=1, in_factors=(2, 3))
    with pytest.raises(ValueError, match="unknown form"):
        TensorialConv2d.from_dense(conv, rank=1, form="cp")
    with pytest.raises(ValueError, match="modes must be >= 2"):
        TensorialLinear(8, 6, modes=1)
    with pytest.raises(ValueError, match="rate must be"):
        TensorialConv2d.from_dense(conv, rate=-1.0)
    layer = TensorialConv2d(4, 4, 3)
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        layer(torch.zeros(1, 3, 5, 5))


def _dense_layer(kind, bias=True):
    if kind == "conv":
        return dense_conv(4, 6, 3, padding=1, bias=bias)
    torch.manual_seed(0)
    return nn.Linear(12, 8, bias=bias).to(DT)


def _layer_input(kind):
    return rand(2, 4, 6, 5) if kind == "conv" else rand(3, 12)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("rank", [1, 2, "full"])
def test_from_dense_all_zero_weight_gives_exact_zero_factors(form, kind, rank):
    dense = _dense_layer(kind)
    with torch.no_grad():
        dense.weight.zero_()
    if rank == "full":
        s, t = factorize(dense.weight.shape[1], 2), factorize(dense.weight.shape[0], 2)
        rank = tensorial_max_ranks(form, s, t, (3, 3) if kind == "conv" else None)
    # "rcp" used to fail with "Singular matrix" inside parafac's ALS
    layer = tensorize(dense, rank=rank, form=form)
    assert layer.decomposition_error == 0.0
    for p in layer.parameters():
        if p is not layer.bias:
            assert not torch.any(p)
    torch.testing.assert_close(layer.bias, dense.bias, rtol=0, atol=0)
    x = _layer_input(kind)
    torch.testing.assert_close(layer(x), dense(x), rtol=0, atol=0)  # the bias only


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize(("where", "value"), [
    ("weight", float("nan")), ("weight", float("-inf")), ("bias", float("nan")),
])
def test_from_dense_refuses_non_finite_weight_or_bias(form, kind, where, value):
    dense = _dense_layer(kind)
    with torch.no_grad():
        getattr(dense, where).view(-1)[0] = value
    cls = TensorialConv2d if kind == "conv" else TensorialLinear
    with pytest.raises(ValueError, match=rf"from_dense: layer\.{where} .*must be finite"):
        cls.from_dense(dense, rank=2, form=form)
    with pytest.raises(ValueError, match=rf"layer\.{where} .*1 NaN/Inf"):
        tensorize(dense, rate=0.5, form=form)


@pytest.mark.parametrize("cls", [TensorialConv2d, TensorialLinear])
def test_seed_must_be_a_non_negative_int(cls):
    args = (4, 6, 3) if cls is TensorialConv2d else (12, 8)
    for bad in (1.5, "a", 2.0, True, torch.Generator()):
        with pytest.raises(TypeError, match="seed must be an int"):
            cls(*args, rank=2, seed=bad)
    with pytest.raises(ValueError, match=r"seed must be an int >= 0 \(and < 2\*\*63\), got -1"):
        cls(*args, rank=2, seed=-1)
    # NumPy ints are ints; None keeps meaning seed 0
    for same in (np.int64(3), np.uint8(3)):
        a, b = cls(*args, rank=2, seed=same), cls(*args, rank=2, seed=3)
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    a, b = cls(*args, rank=2, seed=None), cls(*args, rank=2, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))

    dense = _dense_layer("conv" if cls is TensorialConv2d else "linear")
    for bad in (1.5, "a"):
        with pytest.raises(TypeError, match="seed must be an int"):
            cls.from_dense(dense, rank=2, seed=bad)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        cls.from_dense(dense, rank=2, seed=-2)
    a = cls.from_dense(dense, rank=2, seed=np.int64(1))
    b = cls.from_dense(dense, rank=2, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("cls", [TensorialConv2d, TensorialLinear])
def test_from_dense_n_iter_max_must_be_positive(form, cls):
    dense = _dense_layer("conv" if cls is TensorialConv2d else "linear")
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"n_iter_max must be an int >= 1, got {bad}"):
            cls.from_dense(dense, rank=2, form=form, n_iter_max=bad)
    with pytest.raises(TypeError, match="n_iter_max must be an int"):
        cls.from_dense(dense, rank=2, form=form, n_iter_max=10.0)


def test_max_ranks_and_counts_check_the_factor_lists():
    with pytest.raises(ValueError, match="same length"):
        tensorial_max_ranks("rcp", (2, 2), (2,))
    with pytest.raises(ValueError, match="same length"):
        tensorial_n_parameters("rtt", (2, 2), (2, 2, 1), (3, 3), 1)
    with pytest.raises(ValueError, match="in_factors must be one or more ints >= 1"):
        tensorial_max_ranks("rtk", (2, 0), (2, 2))
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        tensorial_max_ranks("rtk", (2, 2), (2, 2), (0, 3))
    # One mode without a kernel: refused like TensorialLinear(modes=1), for every form
    # (for "rtt" there would be no bond at all).
    for form in FORMS:
        with pytest.raises(ValueError, match="needs at least 2 modes"):
            tensorial_n_parameters(form, (4,), (4,), None, 1)
        with pytest.raises(ValueError, match="needs at least 2 modes"):
            tensorial_max_ranks(form, (4,), (4,))
        with pytest.raises(ValueError, match="modes must be >= 2"):
            TensorialLinear(4, 4, form=form, modes=1)
    # One mode with a kernel is a valid TensorialConv2d: counts agree with the layer.
    for form in FORMS:
        caps = tensorial_max_ranks(form, (4,), (6,), (3, 3))
        layer = TensorialConv2d(4, 6, 3, form=form, rank=caps, modes=1)
        assert layer.max_ranks == caps
        assert layer.n_parameters == tensorial_n_parameters(form, (4,), (6,), (3, 3), caps)
    # "rtt", one mode: a single bond of full rank min(24, 9) = 9
    assert tensorial_max_ranks("rtt", (4,), (6,), (3, 3)) == (9,)
    assert tensorial_n_parameters("rtt", (4,), (6,), (3, 3), 9) == 24 * 9 + 9 * 9 + 6


@pytest.mark.parametrize("form, modes", [("rtt", 2), ("rtt", 3), ("rtk", 2), ("rcp", 2)])
def test_layer_chains_avoid_einsum_copies(form, modes, monkeypatch):
    # Layouts are chosen so every data step is a matmul on views or a grouped conv;
    # only tiny parameter-only contractions (the merged Tucker core, to_dense) use einsum.
    layer = TensorialConv2d(8, 8, 3, form=form, rank=2, modes=modes, padding=1, dtype=DT)
    x = rand(2, 8, 5, 5)
    ref = F.conv2d(x, layer.to_dense_weight(), layer.bias, padding=1)
    calls = []
    real = torch.einsum

    def spy(eq, *ops):
        calls.append((eq, max(o.numel() for o in ops)))
        return real(eq, *ops)

    monkeypatch.setattr(torch, "einsum", spy)
    for order in ("conv_first", "conv_last"):
        layer.order = order
        calls.clear()
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-12)
        big = [c for c in calls if c[1] >= x.numel()]
        # RCP's rank sum is one reduction over the activations
        assert len(big) <= (1 if form == "rcp" else 0), (order, calls)


# ---------------------------------------------------------------------------------------
# input checks: one error for every evaluation route
# ---------------------------------------------------------------------------------------


def _with_order(layer, order):
    layer.order = order
    return layer


@pytest.mark.parametrize(
    ("make", "x", "error", "match"),
    [
        # float64 input into a float32 layer: the layer's dtype and how to convert
        (lambda: TensorialConv2d(4, 6, 3, rank=2), torch.zeros(1, 4, 5, 5, dtype=DT), TypeError,
         r"x has dtype torch.float64 but the layer's parameters are torch.float32.*x.to"),
        (lambda: TensorialLinear(4, 6, form="rtt", rank=2), torch.zeros(2, 4, dtype=DT),
         TypeError, r"x has dtype torch.float64 .* torch.float32"),
        (lambda: TensorialConv2d(4, 6, 3), torch.zeros(1, 4, 5, 5, dtype=torch.int64),
         TypeError, r"x has dtype torch.int64 .* x.to\(torch.float32\)"),
        # smaller than the kernel, or than the dilated kernel after padding
        (lambda: TensorialConv2d(4, 6, 3, rank=2), torch.zeros(1, 4, 2, 2), ValueError,
         r"x must have H, W >= 1 and H \+ 2 \* 0 >= 3.*\(H, W\) = \(2, 2\)"),
        (lambda: TensorialConv2d(4, 6, 3, padding=1, dilation=2), torch.zeros(4, 2, 5),
         ValueError, r"H \+ 2 \* 1 >= 5.*\(H, W\) = \(2, 5\)"),
        (lambda: TensorialConv2d(4, 6, 1, padding="same"), torch.zeros(1, 4, 0, 5),
         ValueError, r"x must have H, W >= 1 \(padding 'same'.*\(H, W\) = \(0, 5\)"),
        (lambda: TensorialConv2d(4, 6, 3), torch.zeros(1, 3, 5, 5), ValueError,
         r"x must have shape \(B, 4, H, W\) or \(4, H, W\), got \(1, 3, 5, 5\)"),
        (lambda: TensorialLinear(4, 6), "abcd", TypeError, "x must be a tensor or array, got str"),
        (lambda: _with_order(TensorialConv2d(4, 6, 3, rank=2), "conv_middle"),
         torch.zeros(1, 4, 5, 5), ValueError, "order must be 'auto', 'conv_first' or 'conv_last'"),
    ],
)
def test_layer_input_errors_are_the_same_on_every_route(make, x, error, match):
    layer, messages = make(), set()
    for route in EVALUATIONS:
        layer.evaluation = route
        with pytest.raises(error, match=match) as info:
            layer(x)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def test_layer_numpy_input_works_on_every_route():
    conv, lin = TensorialConv2d(4, 6, 3, rank=2), TensorialLinear(4, 6, rank=2)
    xc, xl = np.ones((1, 4, 5, 5), np.float32), np.ones((2, 4), np.float32)
    refs = {
        conv: F.conv2d(torch.from_numpy(xc), conv.to_dense_weight(), conv.bias),
        lin: F.linear(torch.from_numpy(xl), lin.to_dense_weight(), lin.bias),
    }
    for layer, x in ((conv, xc), (lin, xl)):
        for route in EVALUATIONS:
            layer.evaluation = route
            torch.testing.assert_close(layer(x), refs[layer], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [TensorialConv2d, TensorialLinear])
def test_layer_dtype_must_be_floating(cls):
    args = (4, 4, 3) if cls is TensorialConv2d else (4, 4)
    match = "dtype must be a floating point torch.dtype, got torch.int64"
    with pytest.raises(TypeError, match=match):
        cls(*args, dtype=torch.int64)


def test_tensor_op_zero_length_kernel_and_ellipsis_sizes():
    x, w = rand(2, 3, 4), rand(5, 3, 2)
    with pytest.raises(ValueError, match=r"mode 'h': the kernel \(operands\[1\].* length 0"):
        tensor_op("bch,och->boh|h", x, w[:, :, :0])
    # the '...' dimensions are named as such, not by the letter standing in for them
    with pytest.raises(ValueError, match=r"'\.\.\.' dimensions must match.*\(3, 4\) in "
                       r"operands\[0\] but \(5, 4\) in operands\[1\]"):
        tensor_op("a...b,...bc->a...c", torch.ones(7, 3, 4, 2), torch.ones(5, 4, 2, 3))


def _numpy_reference(spec, ops, conv):
    """``tensor_op`` evaluated with numpy alone: each convolved mode of the signal is
    replaced by (output position, kernel offset) through an index gather, then one
    ``np.einsum``. Padding as an int or a pair; stride, dilation, flip."""
    lhs, rhs = spec.split("->")
    out, _, conv_letters = rhs.partition("|")
    terms, arrays = lhs.split(","), [o.detach().numpy() for o in ops]
    fresh = iter("ABCDEFGH")
    for c in conv_letters:
        i, j = [k for k, t in enumerate(terms) if c in t]
        opts = conv.get(c, {})
        pad = opts.get("padding", 0)
        pl, pr = (pad, pad) if isinstance(pad, int) else pad
        st, d = opts.get("stride", 1), opts.get("dilation", 1)
        named = terms[i].replace("...", ".")
        di = named.index(c)
        if "." in named[:di]:
            di += arrays[i].ndim - len(named)
        dj = terms[j].index(c)  # kernels in these tests have no '...'
        K = arrays[j].shape[dj]
        widths = [(0, 0)] * arrays[i].ndim
        widths[di] = (pl, pr)
        x = np.pad(arrays[i], widths)
        n_out = (x.shape[di] - d * (K - 1) - 1) // st + 1
        idx = np.arange(n_out)[:, None] * st + np.arange(K)[None, :] * d
        arrays[i] = np.take(x, idx, axis=di)  # axis di -> (n_out, K)
        if opts.get("flip", False):
            arrays[j] = np.flip(arrays[j], dj)
        w = next(fresh)
        terms[i] = terms[i].replace(c, c + w)
        terms[j] = terms[j].replace(c, w)
    return np.einsum(",".join(terms) + "->" + out, *arrays)


@pytest.mark.parametrize(
    "spec, shapes, conv, out_shape",
    [
        ("bsh,tsh->bth|h", [(2, 3, 6), (4, 3, 3)], {"h": {"padding": 1}}, (2, 4, 6)),  # sanity
        ("bsh,tsh->bth|h", [(2, 0, 6), (4, 0, 3)], {}, (2, 4, 4)),  # contracted s = 0
        ("bsh,tsh->bth|h", [(2, 3, 6), (0, 3, 3)], {}, (2, 0, 4)),  # kernel-only t = 0
        ("bsgh,tgh->bgth|h", [(2, 3, 0, 6), (4, 0, 3)], {}, (2, 0, 4, 4)),  # shared g = 0
        ("bsh,tsh->bth|h", [(0, 3, 6), (4, 3, 3)], {}, (0, 4, 4)),  # signal-only b = 0
        ("bsh,tsh->bth|h", [(2, 3, 0), (4, 3, 3)], {"h": {"padding": 2}}, (2, 4, 2)),  # L = 0
        ("bsh,tsh->bth|h", [(2, 0, 7), (4, 0, 3)],
         {"h": {"padding": (2, 0), "stride": 2, "dilation": 2, "flip": True}}, (2, 4, 3)),
        ("bsqh,tsph->bth|h", [(2, 3, 0, 6), (4, 3, 2, 3)], {}, (2, 4, 4)),  # summed q = 0
        ("bsqh,tsph->bth|h", [(2, 3, 2, 6), (4, 3, 0, 3)], {}, (2, 4, 4)),  # summed p = 0
        ("btaqxy,axy->btqxy|xy", [(2, 2, 0, 2, 6, 5), (0, 3, 2)],  # depthwise pattern
         {"x": {"padding": 1}}, (2, 2, 2, 6, 4)),
        ("bshw,tshw->bthw|hw", [(2, 0, 6, 5), (4, 0, 3, 2)],
         {"h": {"padding": 1, "stride": 2}, "w": {"padding": (0, 1), "dilation": 2}},
         (2, 4, 3, 4)),
        ("bshwz,tshwz->bthwz|hwz", [(2, 3, 4, 4, 4), (0, 3, 2, 2, 2)], {}, (2, 0, 3, 3, 3)),
        ("...sh,tsh->...th|h", [(0, 2, 3, 6), (4, 3, 3)], {}, (0, 2, 4, 4)),  # '...' = 0
        ("abc,cd->abd", [(2, 3, 0), (0, 4)], {}, (2, 3, 4)),  # no convolution: mode product
        ("abc,cd->abd", [(2, 3, 3), (3, 0)], {}, (2, 3, 0)),
    ],
)
@pytest.mark.parametrize("route", ["auto", "torch", "unfold"])
def test_tensor_op_zero_size_modes_agree_with_a_dense_reference(
    spec, shapes, conv, out_shape, route
):
    if route == "torch" and "|" not in spec:
        pytest.skip("impl='torch' is for convolutions")
    ops = [rand(*sh, seed=i).requires_grad_() for i, sh in enumerate(shapes)]
    ref = _numpy_reference(spec, ops, conv)
    assert ref.shape == out_shape
    if any(o.numel() == 0 for o in ops):
        assert not ref.any()  # empty, or a sum over nothing / over padding zeros
    y = tensor_op(spec, *ops, conv=conv, impl=route)
    assert y.shape == out_shape and y.dtype == DT
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    g = rand(*out_shape, seed=7)
    grads = torch.autograd.grad((y * g).sum(), ops, allow_unused=True)
    for o, gr in zip(ops, grads):
        assert gr is None or gr.shape == o.shape
    if any(o.numel() == 0 for o in ops):
        # every output term is a product with an entry of the empty operand
        assert all(gr is None or not gr.any() for gr in grads)


def test_conv_output_length_refuses_zero_stride_and_dilation():
    with pytest.raises(ValueError, match="stride must be an int >= 1, got 0"):
        conv_output_length(5, 3, (0, 0), 0, 1)
    with pytest.raises(ValueError, match="dilation must be an int >= 1, got 0"):
        conv_output_length(5, 3, (0, 0), 1, 0)


def test_dense_route_runs_under_autocast():
    # autocast mixes dtypes on purpose: the input check must not refuse it
    layer = TensorialLinear(16, 8, form="rtt", rank=2)
    layer.evaluation = "dense"
    x = torch.randn(3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=0.05, atol=0.05)


def test_evaluation_route_sets_and_restores_every_layer():
    model = nn.Sequential(TensorialConv2d(4, 6, 3, rank=2), nn.Flatten(),
                          TensorialLinear(6 * 3 * 3, 8, rank=2))
    model[0].evaluation = "chain"
    with evaluation_route(model, "dense") as layers:
        assert layers == [model[0], model[2]]
        assert [m.evaluation for m in layers] == ["dense", "dense"]
    assert (model[0].evaluation, model[2].evaluation) == ("chain", "auto")
    with pytest.raises(RuntimeError, match="inside"), evaluation_route(model, "dense"):
        raise RuntimeError("an error inside the block")
    assert (model[0].evaluation, model[2].evaluation) == ("chain", "auto")  # restored anyway
    with (pytest.raises(ValueError, match=r"route must be one of \('auto', 'chain', 'dense'\)"),
          evaluation_route(model, "fast")):
        pass


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_rtt_ranks_beyond_the_tt_svd_are_refused_clearly(kind):
    # Reshaped modes (4, 4, 9[, 9]): after rank[0] = 1 the TT-SVD reaches at most
    # rank[1] = 1 * 4; tensorly lowered a larger rank silently and the cores then failed
    # to reshape into the layer's ("cannot reshape array of size 16 ...").
    torch.manual_seed(0)
    dense = nn.Linear(12, 12).to(DT) if kind == "linear" else nn.Conv2d(12, 12, 3).to(DT)
    rank = (1, 9) if kind == "linear" else (1, 9, 9)
    with pytest.raises(ValueError, match=r"rank\[1\] = 9 exceeds rank\[0\] \* 4 = 4"):
        tensorize(dense, form="rtt", rank=rank, in_factors=(2, 2, 3), out_factors=(2, 2, 3))
    ok = (1, 4) if kind == "linear" else (1, 4, 9)
    layer = tensorize(dense, form="rtt", rank=ok, in_factors=(2, 2, 3), out_factors=(2, 2, 3))
    assert layer.ranks == ok


def test_valid_padding_with_stride_picks_the_same_chain_order_as_zero_padding():
    # order="auto" estimated the output size of padding="valid" without the stride, so a
    # strided "valid" layer ran the conv-last chain (3x the operations here) where the same
    # layer with padding=0 ran the cheaper conv-first one.
    flops = {}
    for padding in (0, "valid"):
        layer = TensorialConv2d(8, 4, 1, stride=2, padding=padding, rank=2)
        flops[padding] = layer.route_flops((2, 8, 8, 8))[0]
        layer.order = "conv_first"
        assert flops[padding] == layer.route_flops((2, 8, 8, 8))[0]
    assert flops[0] == flops["valid"]
