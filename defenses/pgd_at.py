"""The adversarial-training control: MAIL + plain PGD-AT (Madry et al. 2018).

Every defense in the paper is AT-based; this control tells whether a defense adds
anything beyond adversarial training with the same recipe.
"""
from __future__ import annotations

from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.steps import TRAIN_STEPS, StepContext, adversarial_examples, delay_epochs, task_loss

DEFENSES.register("pgd-at", DefenseInfo(
    name="pgd-at",
    family="adversarial training (control)",
    reference="Madry et al., ICLR 2018; the recipe shared by every adversarially trained defense",
    description="MAIL unchanged, trained on PGD examples only (ε 4/255), selected on robust val accuracy",
    train_step="pgd-at",
    train_options={"clean_weight": 0.0, "attack_mode": "eval", "realization": "per-forward", "select": "robust"},
    cpu_recipe="cpu-at",
))


@TRAIN_STEPS.decorator("pgd-at")
def pgd_at_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    """(1 − w)·CE(f(x_adv)) + w·CE(f(x)); w = 0 is Madry's adversarial-only loss (RPF, CTRW, RPAN)."""
    options = ctx.extras["options"]
    if ctx.epoch < delay_epochs(options.get("at_delay", 0.0), ctx.epochs):
        return task_loss(model(x), y, ctx.extras.get("class_weight"))
    x_adv = adversarial_examples(model, x, y, ctx)
    weight = ctx.extras.get("class_weight")
    loss = task_loss(model(x_adv), y, weight)
    clean_weight = options.get("clean_weight", 0.0)
    if clean_weight:
        loss = clean_weight * task_loss(model(x), y, weight) + (1 - clean_weight) * loss
    return loss
