"""BPDA (Athalye et al. 2018): forward through a non-differentiable op, backward as identity.

A model wraps each op it declares non-differentiable (``DefenseInfo.nondiff_ops``: MAN's clip,
quantizers, hard gates) so that an attack gets a straight-through gradient (check D1):

>>> import torch
>>> x = torch.tensor([0.26, 0.74], requires_grad=True)
>>> y = straight_through(lambda t: torch.round(t * 4) / 4, x)
>>> y.tolist(), torch.autograd.grad(y.sum(), x)[0].tolist()
([0.25, 0.75], [1.0, 1.0])
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, op):
        with torch.no_grad():
            out = op(x)
        if out.shape != x.shape:
            raise ValueError(f"BPDA needs a shape-preserving op; {tuple(x.shape)} → {tuple(out.shape)}")
        return out

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output, None


def straight_through(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``op(x)`` in the forward pass (bit-exact), the identity's gradient in the backward pass."""
    return _StraightThrough.apply(x, op)


class BPDA(nn.Module):
    """Wraps a shape-preserving module; with ``enabled`` its backward pass is the identity.

    Keeping the flag on the module lets one model serve both the plain attack and the BPDA
    attack (D1 compares the two).
    """

    def __init__(self, op: nn.Module | Callable[[torch.Tensor], torch.Tensor], enabled: bool = True):
        super().__init__()
        self.op, self.enabled = op, enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return straight_through(self.op, x) if self.enabled else self.op(x)


def set_bpda(model: nn.Module, enabled: bool) -> int:
    """Switch every :class:`BPDA` wrapper in ``model``; returns how many were switched."""
    wrappers = [m for m in model.modules() if isinstance(m, BPDA)]
    for wrapper in wrappers:
        wrapper.enabled = enabled
    return len(wrappers)
