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
    """What a reader and the harness must know about a defense (spec/defenses.md §4–§5).

    ``attach`` turns a freshly built MAIL model into the defended one; ``train_step``
    names the training step in :data:`robustmed.training.TRAIN_STEPS` (standard,
    PGD-AT, or a defense-specific step). ``randomized`` switches the harness to EOT
    and multi-draw judgement; ``nondiff_ops`` lists operations that need BPDA.
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
    version: str = "1"


DEFENSES: Registry[DefenseInfo] = Registry("defense")
