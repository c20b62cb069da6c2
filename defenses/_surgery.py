"""Module surgery shared by the defense modules: replace layers in place, keep everything else."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def replace_modules(root: nn.Module, match: Callable[[nn.Module], bool],
                    make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every descendant ``m`` with ``match(m)`` by ``make(m)``; returns how many were replaced.

    Replacements are not searched again, so ``make`` may wrap the module it replaces.
    """
    count = 0
    for name, child in list(root.named_children()):
        if match(child):
            setattr(root, name, make(child))
            count += 1
        else:
            count += replace_modules(child, match, make)
    return count


def swap_class(module: nn.Module, cls: type) -> nn.Module:
    """Re-class ``module`` to a subclass that only overrides ``forward`` (same parameters and keys)."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    module.__class__ = cls
    return module


def network_of(model: nn.Module) -> nn.Module:
    """The MAIL network inside a :class:`RobustModel` (the adapter has no weights to defend)."""
    return getattr(model, "network", model)


class Scale(nn.Module):
    """x ⊙ factor (fixed): the mean of a multiplicative noise; a 1-D factor scales channels (dim 1)."""

    def __init__(self, factor: torch.Tensor, channelwise: bool = False):
        super().__init__()
        self.register_buffer("factor", factor.detach().clone())
        self.channelwise = channelwise

    def forward(self, x):
        factor = self.factor.view(1, -1, *([1] * (x.ndim - 2))) if self.channelwise else self.factor
        return x * factor


class Shift(nn.Module):
    """x + offset (a fixed tensor): the mean of an additive noise, without any clip."""

    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.register_buffer("offset", offset.detach().clone())

    def forward(self, x):
        return x + self.offset
