"""Defense metadata and registry: one entry per deployable defense on a MAIL-backed model."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from robustmed.registry import Registry


def no_change(model: nn.Module, **options) -> nn.Module:
    return model


@dataclass(frozen=True)
class DefenseInfo:
    """What a reader and the harness must know about a defense (docs/models.md, Defenses).

    ``attach`` turns a freshly built MAIL model into the defended one; ``train_step``
    names the training step in :data:`robustmed.steps.TRAIN_STEPS`, registered in the defense's file (standard,
    PGD-AT, or a defense-specific step) and ``train_options`` are that step's
    defense-specific settings (loss weights, attack mode, [A]/[I] realizations,
    delays, parameter-group decays). ``cpu_recipe`` is the recipe used for ``-mini``
    models when none is given. ``randomized`` switches the harness to EOT and
    multi-draw judgement; ``nondiff_ops`` lists operations that need BPDA.
    """

    name: str
    family: str
    reference: str
    description: str
    randomized: bool = False
    nondiff_ops: tuple[str, ...] = ()
    forward_passes: int = 1
    train_step: str = "standard"
    attach: Callable[..., nn.Module] = no_change
    options: dict = field(default_factory=dict, hash=False, compare=False)
    train_options: dict = field(default_factory=dict, hash=False, compare=False)
    cpu_recipe: str = "cpu"
    version: str = "1"


DEFENSES: Registry[DefenseInfo] = Registry("defense")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by optimiser group: modules declare theirs in ``param_groups``.

    A module's ``param_groups`` maps its own (direct) parameter names to a group name:
    ``"no_decay"`` (noise scales: PNI α, MAN δ), ``"rp"`` (trainable part of random-projection
    layers, own decay), ``"noise_opt"`` (Learn2Perturb σ, own optimiser). Everything else is
    ``"default"``.
    """
    tagged: dict[int, str] = {}
    for module in model.modules():
        for local, group in getattr(module, "param_groups", {}).items():
            tagged[id(getattr(module, local))] = group
    groups: dict[str, list[nn.Parameter]] = {}
    for param in model.parameters():
        if param.requires_grad:
            groups.setdefault(tagged.get(id(param), "default"), []).append(param)
    return groups
