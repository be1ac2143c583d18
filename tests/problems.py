"""Test problems shared by several test modules (imported, not collected: no ``test_`` prefix)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from tenflex.basis import make_basis
from tenflex.model import DecoupledFunction


def decoupled_samples(n, m, R, name, D, N, seed=0, **options):
    """Noise-free samples of a random decoupled function; its basis map fitted to X V.

    Returns ``f, X (N, m), Y (N, n), J (n, m, N)``, all float64, drawn from one seeded
    generator (W, V, C, b, then X).
    """
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, R, generator=gen, dtype=torch.float64)
    V = torch.randn(m, R, generator=gen, dtype=torch.float64)
    C = torch.randn(D, R, generator=gen, dtype=torch.float64)
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    X = torch.randn(N, m, generator=gen, dtype=torch.float64)
    f = DecoupledFunction(W, V, C, b, make_basis(name, D, **options).fit_domain(X @ V))
    Y, J = f.outputs_and_jacobian(X)
    return f, X, Y, J


class WrappedCNN(nn.Module):
    """The reference CNN's layers in a network of one's own: two containers, flattening in
    ``forward`` (the span ``("classifier.fc1", "classifier.fc2")`` or ``"classifier"``)."""

    def __init__(self, cnn: nn.Sequential):
        super().__init__()
        self.features = nn.Sequential(*list(cnn)[:6])
        self.classifier = nn.Sequential(OrderedDict(
            (name, getattr(cnn, name)) for name in ("fc1", "relu3", "fc2")))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Headed(nn.Module):
    """A network of one's own whose ``forward`` only calls its ``nn.Sequential`` ``head``
    of the given layers (spans named by dotted paths, e.g. ``("head.0", "head.2")``)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.head = nn.Sequential(*layers)

    def forward(self, x):
        return self.head(x)


class Interrupt(Exception):
    """Stands for a Ctrl-C or a killed job in the middle of a training."""


def stop_in_epoch(epoch_to_stop):
    """A ``zoo.train`` callback that raises :class:`Interrupt` at the first step of
    ``epoch_to_stop`` (the epochs before it are finished, and checkpointed if asked)."""
    def callback(epoch, step, loss):
        if epoch == epoch_to_stop:
            raise Interrupt(f"stopped in epoch {epoch} at step {step}")
    return callback


class Looped(nn.Module):
    """Runs its nn.Sequential's layers in its own loop (residual steps), or, with
    ``call=True``, calls the nn.Sequential once (a residual around the whole chain)."""

    def __init__(self, call=False):
        super().__init__()
        torch.manual_seed(0)
        self.call = call
        self.blocks = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        if self.call:
            return self.head(x + self.blocks(x))
        for layer in self.blocks:  # nn.Sequential.forward never runs
            x = x + layer(x)
        return self.head(x)
