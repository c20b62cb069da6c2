"""What a defense's training step is built from: the step context, the task loss, the training attack and the
mode it runs in. Each defense registers its own step in :data:`TRAIN_STEPS` (in its file under ``defenses/``);
``standard`` (clean cross-entropy) is registered here.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from robustmed.attacks.pgd import pgd, uniform_start
from robustmed.randomness import frozen
from robustmed.recipes import Recipe
from robustmed.registry import Registry


@dataclass
class StepContext:
    """What a training step may need beyond the batch."""

    epoch: int
    epochs: int
    recipe: Recipe
    generator: torch.Generator
    extras: dict = field(default_factory=dict)



def task_loss(logits, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """CE for one head; the mean of per-head CEs in paired mode (the code's 0.5·CE₁ + 0.5·CE₂)."""
    if isinstance(logits, tuple):
        return sum(F.cross_entropy(out, labels[:, i]) for i, out in enumerate(logits)) / len(logits)
    return F.cross_entropy(logits, labels, weight=weight)



def standard_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    return task_loss(model(x), y, ctx.extras.get("class_weight"))



def delay_epochs(fraction: float, epochs: int) -> int:
    """A reference delay given as a fraction of its schedule (e.g. 5/160), scaled to this budget."""
    return round(fraction * epochs)



def attack_labels(model, x, y, options: dict) -> torch.Tensor:
    """Training-attack targets: ground truth, or the model's clean predictions (PNI/L2P: no label leaking)."""
    labels = y if y.ndim == 1 else y[:, 0]
    if options.get("targets") != "predicted":
        return labels
    with torch.no_grad():
        return model(x).argmax(1)



@contextmanager
def attack_phase(model, options: dict):
    """Mode and realization while crafting training examples.

    Eval mode keeps BN statistics frozen (RPF/CTRW use train mode, as their references do);
    ``realization="ai"`` holds one fresh draw for the whole attack ([A]); leaving the context
    unfreezes, so the update forward draws a new one ([I]).
    """
    was_training = model.training
    set_mode(model, options.get("attack_mode", "eval") == "train", options.get("bn_frozen", False))
    try:
        with frozen(model) if options.get("realization") == "ai" else nullcontext():
            yield model
    finally:
        set_mode(model, was_training, options.get("bn_frozen", False))



def set_mode(model, training: bool, bn_frozen: bool = False) -> None:
    """``model.train(training)``, but BatchNorm stays in eval mode while ``bn_frozen``.

    PNI's weight noise and RPF's random filters are one realization per batch, so each draw shifts
    every channel's mean by a draw-specific offset. Batch statistics subtract that offset in training;
    running statistics at test time cannot, and the mini model then loses 20+ points of clean accuracy
    (PNI: 85% with batch statistics vs 64% with running ones, same weights). Freezing BN after the
    warm-up lets the network learn under the statistics it is tested with.
    """
    model.train(training)
    if training and bn_frozen:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()



def adversarial_examples(model, x, y, ctx: StepContext) -> torch.Tensor:
    """PGD (uniform start, sign steps, last iterate) at the recipe's training budget."""
    options, recipe = ctx.extras["options"], ctx.recipe
    with attack_phase(model, options):
        labels = attack_labels(model, x, y, options)
        start = uniform_start(x, recipe.train_eps, ctx.generator)
        result = pgd(model, x, labels, eps=recipe.train_eps, steps=recipe.train_attack_steps,
                     step_size=recipe.train_attack_step, start=start, keep_best=False, early_stop=False)
    return result.x_adv.detach()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px (replicate padding): cheap, label-preserving for these images."""
    pad = 2
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def bce_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    """A multi-input preset's loss: BCE per label on the network's logits (weighted per label when balanced)."""
    return F.binary_cross_entropy_with_logits(model.network(x), y.float(), pos_weight=ctx.extras.get("pos_weight"))


TRAIN_STEPS: Registry[Callable] = Registry("training step")
TRAIN_STEPS.register("standard", standard_step)
TRAIN_STEPS.register("bce", bce_step)
