"""PNI — Parametric Noise Injection on weights (He, Rakin, Fan, CVPR 2019).

Every conv and linear layer of MAIL uses w̃ = w + α·ε, ε ~ N(0, std(w)²) drawn once per forward
(shared by the batch, in training and at test time); α is learnable (init 0.25) and not decayed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.defenses._surgery import network_of, replace_modules
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.randomness import RandomModule


class NoisyWeight(RandomModule):
    """Wraps a Conv2d or Linear; ``alpha`` is layer-wise (scalar) or channel-wise (one per output)."""

    param_groups = {"alpha": "no_decay"}

    def __init__(self, layer: nn.Conv2d | nn.Linear, alpha: float = 0.25, granularity: str = "layer"):
        super().__init__()
        self.layer = layer
        shape = () if granularity == "layer" else (layer.weight.shape[0],) + (1,) * (layer.weight.ndim - 1)
        self.alpha = nn.Parameter(torch.full(shape, alpha))
        self.unit_noise: torch.Tensor | None = None

    def draw(self) -> None:
        self.unit_noise = self.normal(self.layer.weight.shape, self.layer.weight)

    def perturbation(self) -> torch.Tensor:
        """α·std(W)·ε₀ for the current realization (std of the whole tensor, without gradient)."""
        return self.alpha * self.layer.weight.detach().std() * self.unit_noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_resample()
        weight = self.layer.weight + self.perturbation()
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)

    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: the plain layer (the weight noise has mean 0)."""
        return self.layer


def attach(model: nn.Module, alpha: float = 0.25, granularity: str = "layer") -> nn.Module:
    replace_modules(network_of(model), lambda m: isinstance(m, (nn.Conv2d, nn.Linear)),
                    lambda m: NoisyWeight(m, alpha, granularity))
    return model


DEFENSES.register("pni", DefenseInfo(
    name="pni",
    family="randomized weights + adversarial training",
    reference="He, Rakin, Fan. Parametric Noise Injection. CVPR 2019 (PNI-W, layer-wise α)",
    description="learnable weight noise α·N(0, std(W)²) in every conv/linear, 0.5 clean + 0.5 PGD loss",
    randomized=True,
    train_step="pgd-at",
    train_options={"clean_weight": 0.5, "attack_mode": "eval", "realization": "per-forward",
                   "targets": "predicted", "at_delay": 5 / 160, "select": "robust",
                   "freeze_bn_after_warmup": True},
    attach=attach,
    options={"alpha": 0.25, "granularity": "layer"},
    cpu_recipe="cpu-at",
))
