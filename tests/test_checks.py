"""The argument checks shared by the package (tenflex.checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tenflex.checks import all_finite, check_bool, check_float, check_seed, is_int, is_real


def test_is_int():
    assert is_int(3) and is_int(np.int64(3)) and is_int(np.uint8(0))
    assert not any(is_int(v) for v in (True, 3.0, np.float64(3), "3", None))


def test_check_seed_accepts_integers_and_refuses_the_rest():
    assert check_seed(0) == 0 and check_seed(np.int32(7)) == 7
    assert type(check_seed(np.int64(7))) is int
    assert check_seed(2**63 - 1) == 2**63 - 1
    torch.Generator().manual_seed(check_seed(2**63 - 1))  # the largest seed torch takes
    assert check_seed(None, allow_none=True) is None
    for bad in (1.5, np.float64(2.0), True, "0", None, torch.Generator()):
        with pytest.raises(TypeError, match=r"seed must be an int >= 0, got"):
            check_seed(bad)
    for bad in (-1, 2**63, 2**70):
        with pytest.raises(ValueError, match=r"seed must be an int >= 0 \(and < 2\*\*63\)"):
            check_seed(bad)
    with pytest.raises(TypeError, match="random_state must be an int >= 0 or None"):
        check_seed("x", allow_none=True, name="random_state")


def test_is_real():
    assert all(is_real(v) for v in (3, 2.5, np.float32(1e-3), np.int8(-1), np.float64("nan")))
    assert not any(is_real(v) for v in (True, np.bool_(True), "1", None, 1j, torch.tensor(1.0)))


def test_check_float_accepts_numpy_numbers_and_refuses_the_rest():
    assert check_float(np.float32(0.5), "lr", positive=True) == 0.5
    assert type(check_float(np.int64(2), "lr", positive=True)) is float
    assert check_float(0, "rtol") == 0.0 and check_float(0.0, "weight_decay") == 0.0
    for bad in (True, "0.1", None, 1j, np.array([0.1])):
        with pytest.raises(TypeError, match=r"lr must be a positive finite number, got"):
            check_float(bad, "lr", positive=True)
    for bad in (0, 0.0, -1e-3, float("nan"), float("inf"), np.float32("inf"), 10**400):
        with pytest.raises(ValueError, match=r"lr must be a positive finite number, got"):
            check_float(bad, "lr", positive=True)
    for bad in (-1, float("nan"), -float("inf")):
        with pytest.raises(ValueError, match=r"rtol must be a finite number >= 0, got"):
            check_float(bad, "rtol")


def test_as_int_tuple_takes_integer_sequences_only():
    from tenflex.checks import as_int_tuple

    for value in ([2, 3], (2, 3), range(2, 4), torch.Size([2, 3]), np.array([2, 3]),
                  torch.tensor([2, 3])):
        assert as_int_tuple(value) == (2, 3), value
    for value in ("23", [2.0, 3], np.array([2.0, 3.0]), torch.tensor([2.5]), np.array(3),
                  [[2, 3]], [True, 2], 3, None):
        assert as_int_tuple(value) is None, value


# ---------------------------------------------------------------------------- all_finite
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.complex64])
def test_all_finite_against_the_mask(dtype):
    generator = torch.Generator().manual_seed(0)
    t = torch.randn(3, 1000, generator=generator).to(dtype)
    assert all_finite(t) is True
    for bad in (float("nan"), float("inf"), float("-inf")):
        u = t.clone()
        u[2, 999] = bad
        assert all_finite(u) is False and not torch.isfinite(u).all()


def test_all_finite_when_finite_entries_overflow_their_sum():
    # The sum is inf, yet every entry is finite: the block-by-block check decides.
    big = torch.full((10,), torch.finfo(torch.float32).max)
    assert not torch.isfinite(big.sum())
    assert all_finite(big) is True
    big[7] = float("nan")
    assert all_finite(big) is False


def test_all_finite_finds_a_nan_beyond_the_first_block():
    t = torch.zeros(2**22 + 5, dtype=torch.float32)
    t[-1] = float("nan")
    assert all_finite(t) is False


def test_all_finite_of_integers_and_empty_tensors():
    assert all_finite(torch.arange(5)) is True
    assert all_finite(torch.tensor([True, False])) is True
    assert all_finite(torch.empty(0, 3)) is True


def test_all_finite_passes_under_vmap():
    x = torch.randn(4, 3)
    # A tensor inside a torch.func transform cannot become a bool: the check answers True.
    out = torch.func.vmap(lambda row: row * float(all_finite(row)))(x)
    assert torch.equal(out, x)


def test_asks_to_stop():
    from tenflex.checks import asks_to_stop

    assert asks_to_stop(True) and asks_to_stop(np.True_) and asks_to_stop(torch.tensor(True))
    assert not any(asks_to_stop(v) for v in (None, False, np.False_, torch.tensor([False])))
    for value in (1, 0.0, "yes", torch.tensor([True, True]), torch.tensor(1.0)):
        with pytest.raises(TypeError, match="a callback must return None, False or True"):
            asks_to_stop(value)


def test_check_bool_takes_python_and_numpy_bools_only():
    assert check_bool(True, "flag") is True and check_bool(np.False_, "flag") is False
    for value in ("no", None, 0, 1, 1.0, torch.tensor(True)):
        with pytest.raises(TypeError, match=r"flag must be a bool \(True or False\), got "):
            check_bool(value, "flag")
