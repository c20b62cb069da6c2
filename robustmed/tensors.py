"""Helpers for inputs that are a tensor or a mapping of named tensors (multi-input models)."""
from __future__ import annotations

from typing import Mapping, Union

import torch

Inputs = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def take(inputs: Inputs, index) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs[index]
    return {k: v[index] for k, v in inputs.items()}


def to_device(inputs: Inputs, device) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    return {k: v.to(device) for k, v in inputs.items()}


def batch_size(inputs: Inputs) -> int:
    return len(inputs) if isinstance(inputs, torch.Tensor) else len(next(iter(inputs.values())))


@torch.no_grad()
def predict(model: torch.nn.Module, inputs: Inputs, batch: int = 256, device="cpu") -> torch.Tensor:
    """Arg-max predictions, batched, on ``device``; returned on the CPU."""
    preds = []
    for start in range(0, batch_size(inputs), batch):
        chunk = to_device(take(inputs, slice(start, start + batch)), device)
        preds.append(model(chunk).argmax(1).cpu())
    return torch.cat(preds)
