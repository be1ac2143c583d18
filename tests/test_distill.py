"""Argument checks of tenflex.nn.distill (its training is tested in tests/test_lowrank.py)."""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from tenflex.nn.distill import distill_blocks, fine_tune


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(2, 3, 3, padding=1)), ("relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(3, 4)),
    ]))


@pytest.mark.parametrize("label", [4, 7, -1])
def test_fine_tune_refuses_labels_outside_the_classes_before_any_step(label):
    model = tiny_net()
    x = torch.randn(6, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 3, label, 0])
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=rf"labels must be class indices in \[0, 4\).*\[{label}\]"):
        fine_tune(model, (x, y), epochs=1)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_distill_blocks_takes_numpy_learning_rates():
    pretrained = tiny_net()
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    results = []
    for lr in (np.float32(1e-2), float(np.float32(1e-2))):
        student = copy.deepcopy(pretrained)
        with torch.no_grad():
            student.conv.weight.mul_(0.5)
        res = distill_blocks(student, pretrained, "conv", x, epochs=1, lr=lr, batch_size=4)
        results.append((res.final_error["conv"], student.conv.weight.detach().clone()))
    assert results[0][0] == results[1][0]
    assert torch.equal(results[0][1], results[1][1])
    for lr in (True, "1e-3"):
        with pytest.raises(TypeError, match="lr must be a positive finite number"):
            distill_blocks(pretrained, pretrained, "conv", x, lr=lr)
    for lr in (0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="lr must be a positive finite number"):
            distill_blocks(pretrained, pretrained, "conv", x, lr=lr)


class _RecordsDeterminism(nn.Module):
    """Wraps a block and records whether deterministic kernels were asked for in training."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block, self.seen = block, []

    def forward(self, x):
        if self.training:
            self.seen.append(torch.are_deterministic_algorithms_enabled())
        return self.block(x)


@pytest.mark.parametrize("deterministic", [True, False])
def test_distill_blocks_asks_for_deterministic_kernels_and_restores_the_setting(deterministic):
    # On a GPU, atomic-add kernels make seeded training differ run to run unless
    # deterministic kernels are asked for (tests/test_cuda.py checks the weights there).
    pretrained = tiny_net()
    student = copy.deepcopy(pretrained)
    student.conv = _RecordsDeterminism(student.conv)
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    before = torch.are_deterministic_algorithms_enabled()
    distill_blocks(student, pretrained, "conv", x, epochs=1, batch_size=4,
                   deterministic=deterministic)
    assert student.conv.seen == [deterministic or before] * 2
    assert torch.are_deterministic_algorithms_enabled() == before
    with pytest.raises(TypeError, match="deterministic must be a bool \\(True or False\\), got str"):
        distill_blocks(student, pretrained, "conv", x, deterministic="yes")


def test_a_block_of_another_output_shape_is_refused_before_training():
    # (B, 1) against the teacher's (B, 3) used to broadcast in the loss and train silently.
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    compressed = copy.deepcopy(pretrained)
    compressed[0] = nn.Linear(4, 1)
    before = copy.deepcopy(compressed.state_dict())
    with pytest.raises(ValueError, match=r"block '0' returns \(8, 1\) where the pretrained "
                                         r"block returns \(8, 3\)"):
        distill_blocks(compressed, pretrained, "0", torch.randn(8, 4), epochs=2, batch_size=8)
    assert all(torch.equal(v, compressed.state_dict()[k]) for k, v in before.items())


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


def test_a_block_that_returns_a_tuple_is_refused_clearly():
    pretrained = nn.Sequential(nn.Linear(4, 4), _Pair())
    with pytest.raises(ValueError, match="return a single tensor, got tuple from _Pair"):
        distill_blocks(copy.deepcopy(pretrained), pretrained, "1", torch.randn(4, 4), epochs=1)


def test_each_block_gets_its_modes_back():
    # A block in evaluation mode (BatchNorm using its running statistics) used to be left
    # in training mode, so the network's outputs then depended on the batch.
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), nn.ReLU(),
                               nn.Linear(3, 2)).eval()
    compressed = copy.deepcopy(pretrained)
    compressed[0][0].weight.data.mul_(1.1)
    compressed.eval()
    compressed[0][0].train()  # a mixed setting comes back as it was, too
    modes = [m.training for m in compressed.modules()]
    x = torch.randn(16, 4)
    result = distill_blocks(compressed, pretrained, "0", x, epochs=2, batch_size=8)
    assert result.losses["0"].shape == (2,)
    assert [m.training for m in compressed.modules()] == modes


class _WithAuxiliary(nn.Module):
    """A network whose auxiliary head runs in training mode only."""

    def __init__(self):
        super().__init__()
        self.body, self.aux = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.body(x)
        return (y, self.aux(y)) if self.training else y


def test_a_block_the_forward_never_calls_is_named_with_the_reason():
    # The message named neither the block nor why: an attention reads out_proj's weights
    # itself, and a training-only head does not run in evaluation mode.
    torch.manual_seed(0)
    attention = nn.Sequential(nn.TransformerEncoderLayer(8, 2, dim_feedforward=16,
                                                         batch_first=True))
    with pytest.raises(ValueError, match=r"block '0.self_attn.out_proj' was not called .*"
                                         r"0.self_attn \(MultiheadAttention\) reads its weight"):
        distill_blocks(copy.deepcopy(attention), attention, "0.self_attn.out_proj",
                       torch.randn(4, 5, 8), epochs=1)
    auxiliary = _WithAuxiliary()
    with pytest.raises(ValueError, match=r"block 'aux' was not called .*training-only"):
        distill_blocks(copy.deepcopy(auxiliary), auxiliary, "aux", torch.randn(4, 4), epochs=1)


def test_a_reused_block_is_refused_by_name():
    # named_modules() lists a reused module once: its second name used to be "no submodule",
    # its first one distilled on the inputs of whichever call the hook saw first.
    shared = nn.Linear(4, 4)
    pretrained = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(4, 2))
    for name in ("0", "2"):
        with pytest.raises(ValueError, match=r"registered under the names \['0', '2'\]"):
            distill_blocks(copy.deepcopy(pretrained), pretrained, name, torch.randn(4, 4))


@pytest.mark.parametrize("fault", ["shape", "frozen"])
def test_a_bad_later_block_is_refused_before_any_block_trains(fault):
    # Only the block being trained was checked: an error on the second block came after the
    # first one had been trained in place.
    pretrained = tiny_net()
    compressed = copy.deepcopy(pretrained)
    with torch.no_grad():
        compressed.conv.weight.mul_(0.5)
    if fault == "shape":
        compressed.fc = nn.Linear(3, 5)
        match = r"compressed block 'fc' returns \(4, 5\) where the pretrained block returns"
    else:
        compressed.fc.requires_grad_(False)
        match = "compressed block 'fc' has no trainable parameters"
    before = copy.deepcopy(compressed.state_dict())
    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match=match):
        distill_blocks(compressed, pretrained, ["conv", "fc"], x, epochs=1, batch_size=4)
    for name, value in compressed.state_dict().items():
        assert torch.equal(value, before[name])


def test_a_pretrained_network_in_training_mode_is_read_in_evaluation_mode_and_left_untouched():
    # Documented: the pretrained network runs in evaluation mode and is left untouched. In
    # training mode its BatchNorm would update its running statistics on every batch (the
    # targets then drift and the caller's network changes); no test had such a layer.
    torch.manual_seed(0)
    pretrained = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(4, 4)), ("bn", nn.BatchNorm1d(4)), ("fc2", nn.Linear(4, 3)),
    ])).train()
    with torch.no_grad():
        pretrained.bn.running_mean.fill_(0.3)
        pretrained.bn.running_var.fill_(2.0)
    state = copy.deepcopy(pretrained.state_dict())
    compressed = copy.deepcopy(pretrained)
    with torch.no_grad():
        compressed.fc2.weight.mul_(0.5)
    distill_blocks(compressed, pretrained, "fc2", torch.randn(32, 4), epochs=1, batch_size=8)
    assert pretrained.training and all(m.training for m in pretrained.modules())
    for key, value in pretrained.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_the_seed_chooses_the_shuffling():
    # "seed: seeds the shuffling": two seeds give two batch orders, hence other weights
    # after one epoch of several batches (a block without randomness of its own); the same
    # seed gives the same weights.
    pretrained = tiny_net()
    x = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    weights = []
    for seed in (0, 1, 0):
        student = copy.deepcopy(pretrained)
        with torch.no_grad():
            student.conv.weight.mul_(0.5)
        distill_blocks(student, pretrained, "conv", x, epochs=1, lr=1e-2, batch_size=4, seed=seed)
        weights.append(student.conv.weight.detach().clone())
    assert torch.equal(weights[0], weights[2])
    assert not torch.allclose(weights[0], weights[1], rtol=1e-6, atol=1e-7)
