"""The null attack: the clean image itself, judged exactly as an attack's candidate.

On a randomized model it is the baseline an attack column must beat: judging a candidate over
fresh draws and taking each sample's worst case already lowers accuracy with no attack at all, so
an attack is only shown to work where it falls below this column (check C5).
"""
from __future__ import annotations

import torch

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult


def run_null(forward, x, y, *, spec, eps, start=None, seed: int = 0) -> AttackResult:
    with torch.no_grad():
        pred = forward(x).argmax(1)
    return AttackResult(x_adv=x.detach().clone(), success=pred != y, first_success=torch.where(pred != y, 0, -1),
                        loss=torch.zeros(len(y), device=y.device), adv_pred=pred)


FAMILIES.register("null", AttackFamily(
    name="null",
    description="no attack: the clean image judged like a candidate (the randomized baseline, check C5)",
    run=run_null,
    default_steps=1,
    alpha=lambda eps, steps: 0.0,
    alpha_rule="none",
    uses_eps=False,
    norms=("Linf", "L2", "L1"),  # the baseline stands in whichever threat model its attacks use
))
