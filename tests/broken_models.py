"""A zoo of deliberately broken models: each one must trip the evaluation check named in ``TRIPS``."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from robustmed.randomness import InputNoise, RandomModule


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


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad


class ReversedGradient(Tiny):
    """An identity layer whose backward flips the gradient: finite and non-zero (A6 passes), pointing the wrong
    way, so the attack cannot find adversarial examples that exist (B16)."""

    def forward(self, x):
        return super().forward(_ReverseGradient.apply(x))


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


class AttacksASurrogate(Tiny):
    """Gradient-enabled calls (the attack) see the bare classifier; inference adds a 4-bit purifier (D2)."""

    def forward(self, x):
        if torch.is_grad_enabled():
            return super().forward(x)
        return super().forward(torch.round(x * 15) / 15)


class SaturatingClip(nn.Module):
    """A declared non-differentiable op: clamp to [−0.05, 0.05], with RPAN's straight-through switch."""

    def __init__(self):
        super().__init__()
        self.straight_through = False

    def forward(self, h):
        clipped = h.clamp(-0.05, 0.05)
        return h + (clipped - h).detach() if self.straight_through else clipped


class ClippedFeatures(Tiny):
    """Clips its first feature map (declared in ``nondiff_ops``): input gradients survive, most entries are
    blocked at the clip (A6 per site)."""

    nondiff_ops = ("clamp(−0.05, 0.05) after the first convolution",)

    def __init__(self):
        super().__init__()
        self.net.insert(1, SaturatingClip())


class Checkerboard(nn.Module):
    """A linear classifier on the checkerboard contrast of the image: it splits the samples between the classes,
    and its margins are far below any ε, so every gradient attack breaks it. The undefended base below."""

    def __init__(self, size: int = 28, scale: float = 100.0):
        super().__init__()
        index = torch.arange(size)
        self.register_buffer("pattern", ((index[:, None] + index[None, :]) % 2) * 2.0 - 1)
        self.scale = scale

    def forward(self, x):
        z = self.scale * (x[:, 0] * self.pattern).mean((1, 2))
        return torch.stack([-z, z], 1)


class Quantizer(nn.Module):
    """A "defense" component: 8-bit input quantization (zero gradient); removed, it is the identity."""

    def forward(self, x):
        return torch.round(x * 255) / 255

    def defense_removed(self):
        return nn.Identity()


class QuantizedLinear(nn.Module):
    """Quantizer in front of :class:`Checkerboard`: white-box PGD sees no gradient, examples crafted on the
    base (the defense removed) transfer (B11)."""

    def __init__(self):
        super().__init__()
        self.defense, self.base = Quantizer(), Checkerboard()

    def forward(self, x):
        return self.base(self.defense(x))


class NoisyLinear(nn.Module):
    """Declared input noise (removable: :class:`~robustmed.randomness.InputNoise`) on :class:`Checkerboard`; with
    ``kill_gradient`` the base hides its gradient outside the declared defense, so attacks still fail once the
    defense is removed (D3). Without it, a clean model with a removable defense."""

    def __init__(self, kill_gradient: bool = False):
        super().__init__()
        self.defense, self.base, self.kill_gradient = InputNoise((1, 28, 28), std=1e-3), Checkerboard(), kill_gradient

    def forward(self, x):
        x = self.defense(x)
        return self.base(_KillGradient.apply(x) if self.kill_gradient else x)


class HiddenMasking(NoisyLinear):
    """:class:`NoisyLinear` whose base kills the gradient: the robustness is not in the declared defense (D3)."""

    def __init__(self):
        super().__init__(kill_gradient=True)


class Trip(NamedTuple):
    """The check a fixture must fire, the attack the run uses, and how the run is set up."""

    check: str
    attack: str = "pgd3"
    standardized: bool = False  # the data standardized outside the model
    level: str = "cheap"  # "full" for the costly checks


TRIPS = {
    SoftmaxOutput: Trip("A3"),
    RoundingQuantizer: Trip("A6"),
    ClippedFeatures: Trip("A6"),
    NoisyLogits: Trip("A4"),
    GradientKiller: Trip("A6"),
    InnerGradient: Trip("A5"),
    BatchNormInTrain: Trip("A1"),
    ExpectsStandardizedInput: Trip("A2", standardized=True),
    RandomizedNoise: Trip("C1", "pgd3:protocol=paper"),
    AttacksASurrogate: Trip("D2"),
    QuantizedLinear: Trip("B11", level="full"),
    ReversedGradient: Trip("B16", level="full"),
    HiddenMasking: Trip("D3", level="full"),
}


def make_softmax():
    """Factory for ``--model-file tests/broken_models.py:make_softmax``."""
    return SoftmaxOutput()


def make_batchnorm_in_train():
    return BatchNormInTrain()


def make_attacks_a_surrogate():
    return AttacksASurrogate()
