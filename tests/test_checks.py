"""The argument checks shared by the package (tenflex.checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tenflex.checks import check_float, check_seed, is_int, is_real


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
