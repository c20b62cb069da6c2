"""A zoo of deliberately broken models: each one must trip the evaluation check named in ``TRIPS``."""
from __future__ import annotations

import torch
from torch import nn

from robustmed.randomness import RandomModule


class Tiny(nn.Module):
    """A seeded two-layer CNN for 1-channel 28 px images, optionally with BatchNorm."""

    def __init__(self, classes: int = 2, seed: int = 0, batch_norm: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8) if batch_norm else nn.Identity(), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes),
        )

    def forward(self, x):
        return self.net(x)


class SoftmaxOutput(Tiny):
    """Returns probabilities instead of logits (A3)."""

    def forward(self, x):
        return super().forward(x).softmax(1)


class RoundingQuantizer(Tiny):
    """Quantizes the input to 8 bits with ``round``: the input gradient is exactly zero (A6)."""

    def forward(self, x):
        return super().forward(torch.round(x * 255) / 255)


class NoisyLogits(Tiny):
    """Adds fresh Gaussian noise to the logits, outside any declared random module (A4)."""

    def forward(self, x):
        logits = super().forward(x)
        return logits + 0.5 * torch.randn_like(logits)


class _KillGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class GradientKiller(Tiny):
    """An identity layer whose backward pass returns zeros (A6)."""

    def forward(self, x):
        return super().forward(_KillGradient.apply(x))


class InnerGradient(Tiny):
    """Purifies its input with one gradient step computed inside ``forward`` (A5)."""

    def forward(self, x):
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            energy = super().forward(probe).logsumexp(1).sum()
            step, = torch.autograd.grad(energy, probe)
        return super().forward((x + 0.01 * step.sign()).clamp(0, 1))


class BatchNormInTrain(Tiny):
    """Keeps its BatchNorm in train mode whatever ``eval()`` says: predictions depend on the batch (A1)."""

    def __init__(self):
        super().__init__(batch_norm=True)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net[1].train(True)
        return self


class MCDropout(Tiny):
    """Dropout kept on at inference (MC dropout, as RPAN's released code): randomized, A1 flags it."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.2)

    def train(self, mode: bool = True):
        super().train(mode)
        self.dropout.train(True)
        return self

    def forward(self, x):
        return super().forward(self.dropout(x))


class ExpectsStandardizedInput(Tiny):
    """Trained on standardized images: the user normalizes the data outside the model (A2)."""

    @classmethod
    def prepare(cls, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / x.std()


class _LogitNoise(RandomModule):
    def forward(self, logits):
        self.maybe_resample()
        return logits + self.normal(logits.shape, logits, std=0.5, key="logits")


class RandomizedNoise(Tiny):
    """A declared random module (noise on the logits); attacked with ``protocol=paper`` it gets no EOT (C1)."""

    def __init__(self):
        super().__init__()
        self.noise = _LogitNoise()

    def forward(self, x):
        return self.noise(super().forward(x))


# fixture → (check that must fire, the attack to run, whether the data must be standardized)
TRIPS = {
    SoftmaxOutput: ("A3", "pgd3", False),
    RoundingQuantizer: ("A6", "pgd3", False),
    NoisyLogits: ("A4", "pgd3", False),
    GradientKiller: ("A6", "pgd3", False),
    InnerGradient: ("A5", "pgd3", False),
    BatchNormInTrain: ("A1", "pgd3", False),
    ExpectsStandardizedInput: ("A2", "pgd3", True),
    RandomizedNoise: ("C1", "pgd3:protocol=paper", False),
}


def make_softmax():
    """Factory for ``--model-file tests/broken_models.py:make_softmax``."""
    return SoftmaxOutput()


def make_batchnorm_in_train():
    return BatchNormInTrain()
