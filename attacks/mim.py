"""MIM / MI-FGSM (Dong et al. 2018): momentum μ = 1 on the L1-normalised gradient.

Steps are projected around the *clean* input, as in PGD; no random start.
"""
from __future__ import annotations

from robustmed.attacks.base import FAMILIES, AttackFamily
from robustmed.attacks.pgd import run_pgd


def _mim_alpha(eps: float, steps: int) -> float:
    return eps / steps  # Dong et al.'s α = ε/T


FAMILIES.register("mim", AttackFamily(
    name="mim",
    description="L∞ MIM: momentum 1.0 on the L1-normalised gradient, no random start (Dong et al. 2018)",
    run=run_pgd,
    default_steps=10,
    alpha=_mim_alpha,
    alpha_rule="eps/steps",
    defaults={"random_start": False, "momentum": 1.0},
    randomized_eot=20,
    restartable=True,
    prefix_sweep=True,
    warm_start=True,
    mapping_inputs=True,
    eps_rows=True,
))
