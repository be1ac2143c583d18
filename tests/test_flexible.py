"""Tests for tenflex.nn.FlexibleLayer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from tenflex.basis import make_basis
from tenflex.model import DecoupledFunction
from tenflex.nn import FlexibleLayer


def _df(m=6, n=3, R=4, name="bspline", D=7, seed=0, **opts) -> DecoupledFunction:
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, R, generator=gen, dtype=torch.float64)
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    C = torch.randn(D, R, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    X = torch.randn(40, m, generator=gen, dtype=torch.float64)
    return DecoupledFunction(W, V, C, b, make_basis(name, D, **opts).fit_domain(X @ V))


@pytest.mark.parametrize(
    ("name", "D", "opts"),
    [("bspline", 7, {"degree": 3}), ("monomial", 3, {}), ("legendre", 4, {}), ("hinge", 5, {})],
)
def test_layer_output_equals_decoupled_function(name, D, opts):
    df = _df(name=name, D=D, **opts)
    layer = df.to_module()
    assert isinstance(layer, FlexibleLayer)
    assert layer.W.dtype == torch.float64
    X = torch.randn(11, df.m, dtype=torch.float64) * 2  # partly outside the fitted domain
    torch.testing.assert_close(layer(X), df(X), rtol=0, atol=0)
    # Trailing input dimensions are flattened.
    torch.testing.assert_close(layer(X.reshape(11, 2, 3)), df(X), rtol=0, atol=0)
    back = layer.to_decoupled()
    torch.testing.assert_close(back(X), df(X), rtol=0, atol=0)
    torch.testing.assert_close(back.jacobian(X), df.jacobian(X), rtol=0, atol=0)


def test_from_decoupled_copies_parameters():
    df = _df()
    layer = FlexibleLayer.from_decoupled(df)
    W0 = df.W.clone()
    with torch.no_grad():
        layer.W.mul_(3.0)
    layer.basis.fit_domain(torch.randn(10, df.rank, dtype=torch.float64))
    torch.testing.assert_close(df.W, W0, rtol=0, atol=0)
    assert not torch.equal(layer.basis.scale, df.basis.scale)
    back = layer.to_decoupled()
    X = torch.randn(5, df.m, dtype=torch.float64)
    expected = back(X)
    with torch.no_grad():
        layer.V.zero_()
        for parameter in (layer.W, layer.C, layer.b):  # a training step changes them all
            parameter.add_(1.0)
    layer.basis.fit_domain(torch.randn(10, df.rank, dtype=torch.float64))
    assert back.V.abs().max() > 0
    # The decoupled copy shares no parameter or buffer with the layer: it still computes
    # what the layer computed when it was taken.
    torch.testing.assert_close(back(X), expected, rtol=0, atol=0)


def test_gradcheck_tiny_layer_float64():
    df = _df(m=3, n=2, R=2, name="bspline", D=5, degree=3)
    layer = df.to_module()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in layer.named_parameters()}
    names = list(params)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()))


def test_gradients_reach_all_parameters():
    layer = FlexibleLayer(5, 3, rank=4, basis="bspline", n_functions=6, seed=0)
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
    layer(x).pow(2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert list(dict(layer.named_parameters())) == ["W", "V", "C", "b"]
    assert list(dict(layer.named_buffers())) == ["basis.scale", "basis.shift"]


def test_parameter_counts():
    layer = FlexibleLayer(10, 4, rank=3, basis="chebyshev", n_functions=5, seed=0)
    assert layer.n_parameters == 4 * 3 + 10 * 3 + 5 * 3 + 4
    assert layer.n_parameters == layer.to_decoupled().n_parameters
    nob = FlexibleLayer(10, 4, rank=3, basis="chebyshev", n_functions=5, bias=False, seed=0)
    assert nob.b is None and nob.n_parameters == 4 * 3 + 10 * 3 + 5 * 3
    x = torch.randn(2, 10)
    torch.testing.assert_close(nob.to_decoupled()(x), nob(x), rtol=1e-6, atol=1e-6)
    spline = FlexibleLayer(
        10, 4, rank=3, basis="bspline", n_functions=9, basis_options={"degree": 2}
    )
    assert spline.basis.degree == 2 and spline.n_parameters == 12 + 30 + 27 + 4


def test_seed_reproducible_and_identity_map():
    a = FlexibleLayer(6, 2, rank=3, seed=5)
    b = FlexibleLayer(6, 2, rank=3, seed=5)
    c = FlexibleLayer(6, 2, rank=3, seed=torch.Generator().manual_seed(5))
    d = FlexibleLayer(6, 2, rank=3, seed=6)
    for p, q, r, s in zip(
        a.parameters(), b.parameters(), c.parameters(), d.parameters(), strict=True
    ):
        assert torch.equal(p, q) and torch.equal(p, r)
    assert not torch.equal(a.V, d.V)
    torch.testing.assert_close(a.basis.scale, torch.ones(3))
    torch.testing.assert_close(a.basis.shift, torch.zeros(3))


def test_to_dtype_moves_basis_buffers_and_state_dict():
    layer = _df().to_module()
    x = torch.randn(5, 6, dtype=torch.float64)
    y64 = layer(x)
    layer32 = FlexibleLayer.from_decoupled(_df()).to(torch.float32)
    assert layer32.basis.scale.dtype == torch.float32 and layer32.C.dtype == torch.float32
    torch.testing.assert_close(layer32(x.float()).double(), y64, rtol=1e-4, atol=1e-4)
    # A freshly built layer (identity map) takes the fitted map from the state dict.
    fresh = FlexibleLayer(6, 3, rank=4, basis="bspline", n_functions=7, dtype=torch.float64)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x), y64, rtol=0, atol=0)


def test_output_shape():
    layer = FlexibleLayer(12, 6, rank=2, basis="hinge", n_functions=3, output_shape=(2, 3), seed=0)
    x = torch.randn(4, 3, 4)
    y = layer(x)
    assert y.shape == (4, 2, 3)
    torch.testing.assert_close(y.reshape(4, 6), layer.to_decoupled()(x.reshape(4, 12)))
    for shape in (np.array([2, 3]), torch.Size([2, 3]), [2, 3]):  # any sequence of ints
        assert FlexibleLayer(12, 6, rank=2, output_shape=shape).output_shape == (2, 3)


def test_training_reduces_loss():
    # A rank-1 flexible layer can represent y = sin(2 x . u) on the line spanned by u.
    gen = torch.Generator().manual_seed(0)
    u = torch.tensor([0.6, 0.8], dtype=torch.float64)
    X = torch.randn(200, 2, generator=gen, dtype=torch.float64)
    Y = torch.sin(2 * X @ u)[:, None]
    layer = FlexibleLayer(
        2, 1, rank=1, basis="bspline", n_functions=10, seed=0, dtype=torch.float64
    )
    layer.basis.fit_domain(X @ layer.V.detach())
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    loss0 = torch.mean((layer(X) - Y) ** 2).item()
    for _ in range(150):
        opt.zero_grad()
        loss = torch.mean((layer(X) - Y) ** 2)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * loss0


def test_bad_inputs_raise():
    layer = FlexibleLayer(6, 2, rank=3, seed=0)
    with pytest.raises(ValueError, match=r"m = 6 features, got \(4, 5\)"):
        layer(torch.randn(4, 5))
    with pytest.raises(ValueError, match="m = 6 features"):
        layer(torch.randn(6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        layer(torch.full((2, 6), float("nan")))
    with pytest.raises(ValueError, match="rank must be a positive int"):
        FlexibleLayer(6, 2, rank=0)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        FlexibleLayer(-1, 2, rank=2)
    with pytest.raises(ValueError, match="rank must be a positive int"):
        FlexibleLayer(6, 2, rank=2.0)
    # a fractional seed is refused rather than silently truncated
    with pytest.raises(TypeError, match="seed must be an int"):
        FlexibleLayer(6, 2, rank=2, seed=1.5)
    # NumPy integers (e.g. from a rank grid) are sizes and seeds like Python ints
    np_layer = FlexibleLayer(np.int64(6), np.int32(2), rank=np.int64(3), seed=np.int64(5))
    assert np_layer.rank == 3 and isinstance(np_layer.rank, int)
    assert torch.equal(np_layer.V, FlexibleLayer(6, 2, rank=3, seed=5).V)
    with pytest.raises(ValueError, match="output_shape must be positive sizes with product n = 2"):
        FlexibleLayer(6, 2, rank=2, output_shape=(3,))
    with pytest.raises(ValueError, match="output_shape must be positive sizes"):
        FlexibleLayer(6, 6, rank=2, output_shape=(-2, -3))
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the layer's"):
        layer(torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected rank = 2"):
        FlexibleLayer(6, 2, rank=2, basis=make_basis("hinge", 3, n_branches=3))
    with pytest.raises(ValueError, match="basis_options only apply"):
        FlexibleLayer(6, 2, rank=2, basis=make_basis("hinge", 3), basis_options={"degree": 1})
    with pytest.raises(ValueError, match="valid names"):
        FlexibleLayer(6, 2, rank=2, basis="rbf")
    with pytest.raises(TypeError, match="must be a DecoupledFunction"):
        FlexibleLayer.from_decoupled(layer)


# torch's own jvp decompositions call the deprecated torch.jit.script when first imported.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["bspline", "chebyshev", "hinge"])
def test_torch_func_jacobians_match_decoupled_jacobian(name):
    # The layer must work under vmap(jacrev/jacfwd), as used to sample Jacobians of networks.
    df = _df(name=name, D=6, **({"degree": 3} if name == "bspline" else {}))
    layer = df.to_module()
    x = torch.randn(7, df.m, dtype=torch.float64)
    ref = df.jacobian(x)
    for jac in (torch.func.jacrev, torch.func.jacfwd):
        J = torch.func.vmap(jac(lambda v: layer(v[None])[0]))(x)  # (N, n, m)
        torch.testing.assert_close(J.permute(1, 2, 0), ref, rtol=1e-12, atol=1e-12)
        J = torch.func.vmap(jac(lambda v: df(v[None])[0]))(x)
        torch.testing.assert_close(J.permute(1, 2, 0), ref, rtol=1e-12, atol=1e-12)


def test_input_and_argument_errors_name_the_argument():
    layer = FlexibleLayer(6, 2, rank=3, seed=0)
    # the basis would name its own branch inputs Z; the user passed x
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        layer(torch.full((2, 6), float("nan")))
    # an integer input: convert x (converting the layer to int64 is no fix)
    with pytest.raises(TypeError, match=r"x has dtype torch.int64 .*; convert it \(e.g. x.to"):
        layer(torch.ones(2, 6, dtype=torch.int64))
    match = "dtype must be a floating point torch.dtype, got torch.int64"
    with pytest.raises(TypeError, match=match):
        FlexibleLayer(6, 2, rank=2, dtype=torch.int64)
    # output_shape: an int k is (k,); fractional or non-integer sizes are refused, not truncated
    assert FlexibleLayer(6, 4, rank=2, output_shape=np.int64(4)).output_shape == (4,)
    assert FlexibleLayer(6, 4, rank=2, output_shape=4)(torch.randn(3, 6)).shape == (3, 4)
    for bad in [(2.5, 2), "4", (True, 4)]:
        with pytest.raises(TypeError, match="output_shape must be an int or a tuple of ints"):
            FlexibleLayer(6, 4, rank=2, output_shape=bad)


def test_a_layer_in_a_subspace_is_the_decoupled_function_with_factored_directions():
    df = _df(m=3, n=2, R=5)  # 5 branches of 3 projected inputs
    P = torch.linalg.qr(torch.randn(8, 3, generator=torch.Generator().manual_seed(2),
                                    dtype=torch.float64))[0]
    layer = FlexibleLayer.from_decoupled(df, projection=P)
    assert (layer.in_features, layer.subspace, layer.rank) == (8, 3, 5)
    assert layer.V.shape == (3, 5) and layer.P.shape == (8, 3)
    assert "subspace=3" in repr(layer)
    assert layer.n_parameters == 8 * 3 + 3 * 5 + 2 * 5 + df.n_functions * 5 + 2
    X = torch.randn(9, 8, dtype=torch.float64)
    torch.testing.assert_close(layer(X), df(X @ P), rtol=1e-12, atol=1e-12)
    full = layer.to_decoupled()  # V = P Q in the input space
    assert full.V.shape == (8, 5)
    torch.testing.assert_close(full(X), layer(X), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full.jacobian(X), torch.einsum(
        "imk,lm->ilk", df.jacobian(X @ P), P), rtol=1e-12, atol=1e-12)
    # Gradients reach the projection, so fine-tuning moves the subspace too.
    layer(X).pow(2).sum().backward()
    assert layer.P.grad is not None and layer.P.grad.abs().sum() > 0
    # A state dict rebuilds the layer.
    again = FlexibleLayer(8, 2, 5, basis=df.basis, subspace=3, dtype=torch.float64)
    again.load_state_dict(layer.state_dict())
    torch.testing.assert_close(again(X), layer(X), rtol=0, atol=0)


def test_a_subspace_layer_without_projection_data_draws_it_and_keeps_plain_layers_unchanged():
    plain = FlexibleLayer(6, 2, rank=3, seed=5)
    assert plain.P is None and plain.subspace is None
    assert list(dict(plain.named_parameters())) == ["W", "V", "C", "b"]
    sub = FlexibleLayer(6, 2, rank=4, seed=5, subspace=2)
    assert list(dict(sub.named_parameters())) == ["W", "V", "C", "b", "P"]
    assert sub(torch.randn(3, 6)).shape == (3, 2)
    with pytest.raises(ValueError, match="subspace"):
        FlexibleLayer(6, 2, rank=4, subspace=0)
    df = _df(m=3, n=2, R=5)
    with pytest.raises(ValueError, match=r"projection must have shape \(m, 3\)"):
        FlexibleLayer.from_decoupled(df, projection=torch.randn(8, 4, dtype=torch.float64))
    bad = torch.randn(8, 3, dtype=torch.float64)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        FlexibleLayer.from_decoupled(df, projection=bad)


def test_non_finite_parameters_are_named_rather_than_the_basis_argument():
    layer = FlexibleLayer(4, 3, 2, "chebyshev", 3, seed=0)
    with torch.no_grad():
        layer.V[0, 0] = float("nan")
    with pytest.raises(ValueError, match="although x is finite: its parameters are not finite"):
        layer(torch.randn(2, 4))
    with pytest.raises(ValueError, match="^x contains NaN"):
        layer(torch.full((2, 4), float("nan")))


def test_from_decoupled_refuses_a_complex_projection():
    df = _df()
    with pytest.raises(TypeError, match="projection must hold real numbers"):
        FlexibleLayer.from_decoupled(df, projection=torch.ones(9, df.m, dtype=torch.complex128))


def test_a_failed_load_of_another_rank_leaves_the_layer_usable():
    layer = FlexibleLayer(4, 3, 3, "bspline", 6, seed=1)
    x = torch.randn(5, 4)
    before = layer(x)
    other = FlexibleLayer(4, 3, 2, "bspline", 6, seed=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        layer.load_state_dict(other.state_dict())
    assert layer.basis.n_branches == 3
    torch.testing.assert_close(layer(x), before, rtol=0, atol=0)


def test_a_layer_converted_to_a_dtype_too_narrow_for_its_affine_map_says_so():
    # Branch inputs of range ~1e-5 give scales ~1e5, which float16 cannot hold: layer.half()
    # used to return NaN for every input without a word.
    layer = FlexibleLayer.from_decoupled(_df())
    x = 1e-6 * torch.randn(20, layer.in_features, dtype=torch.float64)
    with torch.no_grad():
        layer.basis.fit_domain(x @ layer.V)
    assert bool((layer.basis.scale > torch.finfo(torch.float16).max).any())
    assert torch.isfinite(layer.float()(x.float())).all()
    half = layer.half()
    with pytest.raises(ValueError, match=r"float16, into which it was converted.*float32"):
        half(x.half())
