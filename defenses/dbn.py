"""DBN — adversarial training with dual batch normalisation (Han et al., Nat. Commun. 2021).

Every BN of MAIL becomes a {clean, adv} pair sharing all conv/linear weights. A deployed model
has one fixed route (never the reference's oracle routing): ``dbn-clean`` or ``dbn-adv``.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from robustmed.defenses._surgery import network_of, replace_modules
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.steps import TRAIN_STEPS, StepContext, adversarial_examples, task_loss

ROUTES = ("clean", "adv")


class DualBatchNorm2d(nn.Module):
    """Two BNs (own affine parameters and running statistics); ``route`` picks the one in use."""

    def __init__(self, bn: nn.BatchNorm2d, route: str = "clean"):
        super().__init__()
        self.clean, self.adv = bn, copy.deepcopy(bn)
        self.route = route

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.clean if self.route == "clean" else self.adv)(x)

    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: BN_clean, the route never trained on adversarial inputs."""
        return self.clean


def dual_norms(model: nn.Module) -> list[DualBatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, DualBatchNorm2d)]


def set_route(model: nn.Module, route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"unknown DBN route {route!r}; choices: {ROUTES}")
    for norm in dual_norms(model):
        norm.route = route


def deployed_route(model: nn.Module) -> str:
    return model.dbn_route


@contextmanager
def routed(model: nn.Module, route: str):
    """Temporarily send every dual BN through ``route`` (training only); restores the deployed route."""
    set_route(model, route)
    try:
        yield model
    finally:
        set_route(model, deployed_route(model))


def attach(model: nn.Module, route: str = "clean") -> nn.Module:
    replace_modules(network_of(model), lambda m: isinstance(m, nn.BatchNorm2d), DualBatchNorm2d)
    model.dbn_route = route  # plain attribute: the route is part of the deployment, not of the weights
    set_route(model, route)
    return model


def _register(route: str) -> None:
    DEFENSES.register(f"dbn-{route}", DefenseInfo(
        name=f"dbn-{route}",
        family="adversarial training + dual batch normalisation",
        reference="Han et al., Nature Communications 12:4315, 2021 (dual BN)",
        description=f"dual BN trained on clean (BN_clean) + PGD (BN_adv) loss; deployed and attacked "
                    f"through BN_{route} only",
        train_step="dbn",
        train_options={"adv_weight": 1.0, "select": "robust"},
        attach=attach,
        options={"route": route},
        cpu_recipe="cpu-at",
    ))


for _route in ROUTES:
    _register(_route)


@TRAIN_STEPS.decorator("dbn")
def dbn_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    """CE(f(x; BN_clean)) + λ·CE(f(x_adv; BN_adv)); the attack runs through BN_adv in eval mode."""
    with routed(model, "adv"):
        x_adv = adversarial_examples(model, x, y, ctx)
        adv_loss = task_loss(model(x_adv), y, ctx.extras.get("class_weight"))
    with routed(model, "clean"):
        clean_loss = task_loss(model(x), y, ctx.extras.get("class_weight"))
    return clean_loss + ctx.extras["options"].get("adv_weight", 1.0) * adv_loss
