"""Input adapters: a registered model takes a data set's native tensors, so ε lives in native pixel space."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class InputAdapter(nn.Module):
    """Native images in [0, 1] → what the network wants: channels replicated, resized, fanned out.

    ``mode="replicated"``: one image, the same tensor to every branch (one perturbation reaches all).
    ``mode="paired"``: a mapping of named inputs, one per branch, in ``input_names`` order.
    Everything here is differentiable, so attacks see the deployed pipeline end to end (check D2).
    """

    def __init__(self, in_channels: int, branches: int, size: int | None, mode: str = "replicated",
                 input_names: tuple[str, ...] = ("image",)):
        super().__init__()
        self.in_channels, self.branches, self.size = in_channels, branches, size
        self.mode, self.input_names = mode, input_names

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor | Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.mode == "paired":
            return [self.prepare(x[name]) for name in self.input_names]
        image = self.prepare(x if isinstance(x, torch.Tensor) else x[self.input_names[0]])
        return [image] * self.branches


class RobustModel(nn.Module):
    """A deployable classifier: adapter → network → logits of the evaluated head.

    This is what :func:`robustmed.load_model` returns and what attacks differentiate through.
    ``head`` picks the task in paired mode; ``None`` returns every head's logits.
    """

    def __init__(self, network: nn.Module, adapter: InputAdapter, head: int | None = 0):
        super().__init__()
        self.network, self.adapter, self.head = network, adapter, head

    def forward(self, x):
        out = self.network(self.adapter(x))
        if isinstance(out, tuple) and self.head is not None:
            return out[self.head]
        return out
