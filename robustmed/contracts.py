"""The contract a model under test keeps, and adapters for the common ways users' models differ from it.

robustmed attacks images in [0, 1] pixel units and reads one logit per class. Users bring binary heads
with a single logit (the sigmoid convention), models that expect mean/std-normalized inputs and, on
multi-label tasks, one logit per label; all are wrapped here so that ε keeps meaning pixels, instead of
failing deep inside an attack.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from robustmed.errors import UserError
from robustmed.models.multimodal import MultiLabelClassifier

RANGE_TOL = 1e-6


class SingleLogitBinary(nn.Module):
    """A one-logit binary head read as two logits ``(0, z)``: softmax over them is ``(1 − σ(z), σ(z))``,
    so class 1 is predicted exactly when the sigmoid convention says so, and cross-entropy equals BCE."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        z = self.model(x).reshape(-1, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)


class Normalized(nn.Module):
    """``Normalized(model, mean, std)``: the model sees ``(x − mean) / std`` while the attack works on
    ``x`` in [0, 1], so ε stays in pixel units (normalizing outside the model would rescale ε per channel)."""

    def __init__(self, model: nn.Module, mean: Sequence[float] | float, std: Sequence[float] | float):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def adapt_head(model: nn.Module, sample, num_classes: int | None) -> tuple[nn.Module, str | None]:
    """(model, note): a single-logit head on a 2-class task is wrapped; any other width than the data
    set's class count is refused with what to change (``num_classes`` None: the task is binary if the
    head has one logit, else as the model says)."""
    with torch.no_grad():
        out = model(sample)
    width = out.shape[-1] if out.dim() > 1 else 1
    if width == num_classes or (num_classes is None and width > 1):
        return model, None
    if width == 1 and num_classes in (2, None):
        return SingleLogitBinary(model), "single-logit binary head read as logits (0, z) (sigmoid convention)"
    raise UserError(f"the model predicts {width} classes but the data set has {num_classes}: return one logit "
                    f"per class (or one logit for a binary task, read with the sigmoid convention)")


def as_multilabel(model: nn.Module, sample, labels: Sequence[str]) -> nn.Module:
    """A model giving one logit per label, read as positive above 0 (sigmoid 0.5), answering through the
    run's success criterion; a model with its own thresholds and criterion (robustmed's) is kept."""
    if hasattr(model, "set_criterion"):
        return model
    with torch.no_grad():
        width = model(sample).shape[-1]
    if width != len(labels):
        raise UserError(f"the model gives {width} logits but the task has {len(labels)} labels: return one logit "
                        "per label (positive above 0, the sigmoid convention)")
    return MultiLabelClassifier(model, (), tuple(labels))


def check_range(x) -> None:
    """Images must be in [0, 1]; anything else would make ε and the box meaningless. Named inputs (multi-input
    models) are left to their threat model, since tabular features live in their own units."""
    if isinstance(x, Mapping):
        return
    for tensor in [x]:
        if not torch.is_tensor(tensor) or not tensor.is_floating_point() or not tensor.numel():
            continue
        low, high = float(tensor.min()), float(tensor.max())
        if low < -RANGE_TOL or high > 1 + RANGE_TOL:
            raise UserError(f"inputs span [{low:.3g}, {high:.3g}] but robustmed attacks images in [0, 1]: divide "
                            "8-bit images by 255 and move any mean/std normalization into the model "
                            "(robustmed.Normalized(model, mean, std))")
