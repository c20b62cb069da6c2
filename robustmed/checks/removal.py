"""The defense-removed model of checks B11 and D3: the same weights, the defense's inference-time parts bypassed.

A defense is a set of components attached to MAIL; each component class says how it is removed (its
``defense_removed`` method, in the defense's file; the generic ones are registered here), the part it plays
at inference replaced by its mean (or by nothing):

| defense | component | removed |
|---|---|---|
| `none`, `pgd-at`, `cap` | none at inference (the defense is in the weights) | the model itself |
| `dbn-clean`, `dbn-adv` | dual BN | routed through BN_clean, the path never trained on adversarial inputs |
| `pni` | weight noise α·ε | off: the plain weights (the noise has mean 0) |
| `l2p` | injections σ ⊙ ε | identity (mean 0) |
| `rpf` | random projection filters | random kernels replaced by their mean, 0 |
| `ctrw` | x ⊙ (μ + σ ⊙ ε) | x ⊙ μ |
| `rpan` | RPF as `rpf`; MAN t ⊙ η′ | t ⊙ δσ_n² (E[η′] = δσ_n²) |
| `rpan-code` | MAN clip(t + η′, 0, 1); always-on dropout | t + δσ_n², no clip (mean-field); dropout off |
| any | :class:`~robustmed.attacks.bpda.BPDA`, :class:`~robustmed.randomness.InputNoise` | identity |

Whether the weights themselves carry the defense (adversarial training) is the defense's registry
metadata (``DefenseInfo.train_step``): only a model trained without it may be held to D3's
"≈0% robust for an undefended model". The removed model is a deep copy; the deployed one is untouched.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from robustmed.attacks.bpda import BPDA
from robustmed.defenses._surgery import replace_modules
from robustmed.randomness import InputNoise, random_modules
from robustmed.registry import Registry

Removal = Callable[[nn.Module], nn.Module]
REMOVALS: Registry[Removal] = Registry("defense component")  # class name → its removal


def register_removal(cls: type) -> Callable[[Removal], Removal]:
    """Declare how a component class is bypassed; a class may instead define ``defense_removed(self)``."""
    return REMOVALS.decorator(f"{cls.__module__}.{cls.__qualname__}")


def removal_for(module: nn.Module) -> Removal | None:
    """The module's own ``defense_removed`` method, else the removal registered for its class (or a base)."""
    if callable(getattr(module, "defense_removed", None)):
        return type(module).defense_removed
    for cls in type(module).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in REMOVALS:
            return REMOVALS.get(name)
    return None


@register_removal(BPDA)
def _bpda(module: BPDA) -> nn.Module:
    return nn.Identity()


@register_removal(InputNoise)
def _input_noise(module: InputNoise) -> nn.Module:
    return nn.Identity()


@register_removal(nn.modules.dropout._DropoutNd)
def _dropout(module: nn.Module) -> nn.Module:
    return nn.Identity()  # inverted dropout's mean; matters where dropout stays on at inference (rpan-code)


@dataclass
class Removed:
    """The defense-removed copy, what was bypassed in it, and random modules left in it."""

    model: nn.Module
    components: dict[str, int] = field(default_factory=dict)  # component class → how many were bypassed
    leftover: list[str] = field(default_factory=list)  # random modules no removal is registered for

    def describe(self) -> str:
        return ", ".join(f"{n} {name}" for name, n in self.components.items()) or "nothing"


def remove_defense(model: nn.Module) -> Removed:
    """A deep copy of ``model`` with every registered defense component bypassed, in eval mode.

    Dropout is always replaced by the identity (its inference value); it is counted as a removed
    component only where it was on at inference (MC dropout).
    """
    removed = copy.deepcopy(model)
    dropout = nn.modules.dropout._DropoutNd
    mc_dropout = any(isinstance(m, dropout) and m.training and m.p > 0 for m in model.modules())
    counts: dict[str, int] = {}

    def make(module: nn.Module) -> nn.Module:
        if not isinstance(module, dropout) or mc_dropout:
            counts[type(module).__name__] = counts.get(type(module).__name__, 0) + 1
        return removal_for(module)(module)

    replace_modules(removed, lambda m: removal_for(m) is not None, make)
    removed.eval()
    return Removed(removed, counts, sorted({type(m).__name__ for m in random_modules(removed)}))
