"""Expectation over Transformation (Athalye et al. 2018): average ∇ₓL over N separate passes.

Randomized defenses draw one realization per forward, shared by the batch, so the N
samples are N separate forward+backward passes — never a replicated batch.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin max_{j≠y} z_j − z_y per sample (positive once misclassified); safe for 2 classes."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -torch.inf).amax(1)
    return other - true


LOSSES: dict[str, Loss] = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "margin": margin_loss,
}


class EotPass(NamedTuple):
    """Per sample: mean loss, mean logits and mean input gradient over the passes (None when not asked for),
    and how many of the passes misclassified it (on a randomized model, of the step's draws)."""

    loss: torch.Tensor
    logits: torch.Tensor
    grad: torch.Tensor | None
    wrong_passes: torch.Tensor


def eot_loss_grad(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *,
                  loss: Loss, samples: int = 1, grad: bool = True) -> EotPass:
    """Mean per-sample loss, mean logits and mean input gradient over ``samples`` passes.

    With ``samples=1`` this is exactly one forward and one backward (the float ops of a
    plain attack step, so conformance with reference libraries is bit-exact). The gradient
    is None when ``grad`` is False.
    """
    x = x.detach().requires_grad_(grad)
    loss_sum = logits_sum = grad_sum = None
    wrong = torch.zeros(len(y), dtype=torch.long, device=y.device)
    for _ in range(max(1, samples)):
        with torch.set_grad_enabled(grad):  # no graph for a pass that only scores (the final iterate)
            logits = forward(x)
            losses = loss(logits, y)
        if grad:
            g, = torch.autograd.grad(losses.sum(), x)
            grad_sum = g if grad_sum is None else grad_sum.add_(g)  # the same sums, one buffer
        losses, logits = losses.detach(), logits.detach()
        wrong += logits.argmax(1) != y
        loss_sum = losses if loss_sum is None else loss_sum + losses
        logits_sum = logits if logits_sum is None else logits_sum + logits
    if samples <= 1:
        return EotPass(loss_sum, logits_sum, grad_sum, wrong)
    return EotPass(loss_sum / samples, logits_sum / samples, None if grad_sum is None else grad_sum / samples, wrong)
