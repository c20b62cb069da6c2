"""CTRW — Constrained Trainable Random Weight (Ma, Dong, Xu, NeurIPS 2023).

The input of every branch is multiplied element-wise by W = μ + σ ⊙ ε (μ, σ learnable, C×H×W,
init 1; ε ~ N(0, I) one realization per forward shared by the batch). Before every resampling σ
is lifted so that min σ ≥ b (the reference's lower bound on randomness, b = 2/3 per element).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from robustmed.defenses._surgery import Scale, network_of
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.models.mail import Stem
from robustmed.randomness import RandomModule


class TrainableRandomWeight(LazyModuleMixin, RandomModule):
    """x ⊙ (μ + σ ⊙ ε); μ and σ take the input's C×H×W shape on the first forward."""

    def __init__(self, bound: float = 2 / 3, init: float = 1.0):
        super().__init__()
        self.bound, self.init = bound, init
        self.mu = UninitializedParameter()
        self.sigma = UninitializedParameter()
        self.unit_noise: torch.Tensor | None = None

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                for param in (self.mu, self.sigma):
                    param.materialize(x.shape[1:], device=x.device, dtype=x.dtype)
                    param.fill_(self.init)

    @torch.no_grad()
    def enforce_bound(self) -> None:
        """Reference rule: if min σ < b, raise every entry below b by (b − min σ)."""
        if isinstance(self.sigma, UninitializedParameter):
            return
        low = self.sigma.min()
        if low < self.bound:
            self.sigma[self.sigma < self.bound] += self.bound - low

    def draw(self) -> None:
        self.enforce_bound()
        self.unit_noise = None  # drawn on the next forward, once σ's shape is known

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_resample()
        if self.unit_noise is None:
            self.unit_noise = self.normal(self.sigma.shape, x)
        return x * (self.mu + self.sigma * self.unit_noise)

    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: x ⊙ μ, the mean of x ⊙ (μ + σ ⊙ ε)."""
        return Scale(self.mu.detach()[None])


def attach(model: nn.Module, bound: float = 2 / 3) -> nn.Module:
    for module in network_of(model).modules():
        if isinstance(module, Stem):
            module.input_site = TrainableRandomWeight(bound)
    return model


DEFENSES.register("ctrw", DefenseInfo(
    name="ctrw",
    family="trainable random weights + adversarial training",
    reference="Ma, Dong, Xu. Adversarial Robustness through Random Weight Sampling. NeurIPS 2023",
    description="input of each branch times μ + σ ⊙ N(0, I) (σ ≥ 2/3), [A]/[I] realizations, PGD loss only",
    randomized=True,
    train_step="pgd-at",
    train_options={"clean_weight": 0.0, "attack_mode": "train", "realization": "ai", "select": "robust"},
    attach=attach,
    options={"bound": 2 / 3},
    cpu_recipe="cpu-at",
))
