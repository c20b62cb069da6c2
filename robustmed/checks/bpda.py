"""Switching a model's straight-through (BPDA) backward passes on and off, for the attack and check D1.

Two kinds of switch exist: :class:`robustmed.attacks.bpda.BPDA` wrappers and modules carrying a
boolean ``straight_through`` flag (RPAN's clipped attention noise). Forward values are unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from robustmed.attacks.bpda import BPDA


def switches(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules()
            if isinstance(m, BPDA) or isinstance(getattr(m, "straight_through", None), bool)]


def _flag(module: nn.Module) -> str:
    return "enabled" if isinstance(module, BPDA) else "straight_through"


def active_sites(model: nn.Module) -> int:
    """Switches now set to straight-through: how many non-differentiable ops an attack sees through (E1)."""
    return sum(bool(getattr(m, _flag(m))) for m in switches(model))


@contextmanager
def bpda(model: nn.Module, enabled: bool = True):
    """Every switch set to ``enabled`` for the duration, then restored."""
    sites = switches(model)
    previous = [getattr(m, _flag(m)) for m in sites]
    for module in sites:
        setattr(module, _flag(module), enabled)
    try:
        yield len(sites)
    finally:
        for module, flag in zip(sites, previous):
            setattr(module, _flag(module), flag)
