"""Learn2Perturb (Jeddi et al., CVPR 2020).

Perturbation-injection modules add σ ⊙ ε, σ a learnable C×H×W map (init 0.25, clamped ≥ 0.01),
ε ~ N(0, I) drawn once per forward and shared by the batch, after the stem BN and after every
ERLA residual addition. σ has its own optimiser, which also takes a step on the regulariser
R(σ) = −(γ/τ(t))·Σ√σ that rewards larger noise.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from robustmed.defenses._surgery import network_of
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.defenses.pgd_at import pgd_at_step
from robustmed.models.mail import ERLA, Stem
from robustmed.randomness import RandomModule
from robustmed.steps import TRAIN_STEPS, StepContext, delay_epochs

SIGMA_MIN = 0.01


class PerturbationInjection(LazyModuleMixin, RandomModule):
    """x + σ ⊙ ε; σ's shape (C×H×W) is taken from the first input, so any input size works."""

    param_groups = {"sigma": "noise_opt"}

    def __init__(self, init: float = 0.25, per_sample: bool = False):
        super().__init__()
        self.init, self.per_sample = init, per_sample
        self.sigma = UninitializedParameter()
        self.unit_noise: torch.Tensor | None = None
        self.enabled = True  # training's noise delay only; never switched by eval()

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.sigma.materialize(x.shape[1:], device=x.device, dtype=x.dtype)
                self.sigma.fill_(self.init)

    def draw(self) -> None:
        self.unit_noise = None  # drawn lazily: its shape (per-sample option) depends on the batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_resample()
        if not self.enabled:
            return x
        shape = x.shape if self.per_sample else x.shape[1:]
        if self.unit_noise is None or self.unit_noise.shape != shape:
            self.unit_noise = self.normal(shape, x)
        return x + self.sigma * self.unit_noise

    @torch.no_grad()
    def after_update(self) -> None:
        self.sigma.clamp_(min=SIGMA_MIN)

    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: the identity (the injected noise has mean 0)."""
        return nn.Identity()


def injections(model: nn.Module) -> list[PerturbationInjection]:
    return [m for m in model.modules() if isinstance(m, PerturbationInjection)]


def harmonic(n: int) -> float:
    return sum(1.0 / k for k in range(1, n + 1))


def regularizer(model: nn.Module, epochs_with_noise: int, gamma: float = 1e-4) -> torch.Tensor:
    """R(σ) = −(γ/τ)·Σ√σ with τ = H(t − t_noise + 1), which avoids the reference's 1/H(0)."""
    tau = harmonic(epochs_with_noise + 1)
    return -(gamma / tau) * sum(m.sigma.clamp_min(SIGMA_MIN).sqrt().sum() for m in injections(model))


def attach(model: nn.Module, init: float = 0.25, per_sample: bool = False) -> nn.Module:
    for module in network_of(model).modules():
        if isinstance(module, Stem):
            module.post_bn = PerturbationInjection(init, per_sample)
        elif isinstance(module, ERLA):
            module.post_add = PerturbationInjection(init, per_sample)
    return model


DEFENSES.register("l2p", DefenseInfo(
    name="l2p",
    family="randomized features + adversarial training",
    reference="Jeddi et al. Learn2Perturb. CVPR 2020",
    description="learnable C×H×W noise maps after the stem BN and every ERLA, own σ optimiser and "
                "noise-rewarding regulariser, 0.5 clean + 0.5 PGD loss",
    randomized=True,
    train_step="l2p",
    train_options={"clean_weight": 0.5, "attack_mode": "eval", "realization": "per-forward",
                   "targets": "predicted", "noise_delay": 10 / 200, "at_delay": 20 / 200, "gamma": 1e-4,
                   "select": "robust"},
    attach=attach,
    options={"init": 0.25, "per_sample": False},
    cpu_recipe="cpu-at",
))


@TRAIN_STEPS.decorator("l2p")
def l2p_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    """σ optimiser steps on R(σ) first, then the 0.5/0.5 PGD-AT loss updates both optimisers."""
    options = ctx.extras["options"]
    noise_from = delay_epochs(options.get("noise_delay", 0.0), ctx.epochs)
    modules = injections(model)
    if ctx.epoch < noise_from:
        for module in modules:
            module.enabled = False
        try:
            return pgd_at_step(model, x, y, ctx)  # the graph is built now; noise is back on for inference
        finally:
            for module in modules:
                module.enabled = True
    noise_optimizer = ctx.extras["optimizers"]["noise_opt"]
    noise_optimizer.zero_grad(set_to_none=True)
    regularizer(model, ctx.epoch - noise_from, options.get("gamma", 1e-4)).backward()
    noise_optimizer.step()
    for module in modules:
        module.after_update()
    return pgd_at_step(model, x, y, ctx)
