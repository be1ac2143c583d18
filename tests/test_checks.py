"""The argument checks shared by the package (tenflex.checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tenflex.checks import check_seed, is_int


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
