"""BIM / iterative FGSM (Kurakin et al. 2017): PGD without a random start."""
from __future__ import annotations

from robustmed.attacks.base import FAMILIES, AttackFamily
from robustmed.attacks.pgd import run_pgd


def _bim_alpha(eps: float, steps: int) -> float:
    return 1.25 * eps / steps


FAMILIES.register("bim", AttackFamily(
    name="bim",
    description="BIM: PGD from the clean input, best iterate kept (Kurakin et al. 2017)",
    run=run_pgd,
    default_steps=10,
    alpha=_bim_alpha,
    alpha_rule="1.25*eps/steps",
    defaults={"random_start": False},
    randomized_eot=20,
    restartable=True,
    prefix_sweep=True,
    warm_start=True,
    mapping_inputs=True,
    eps_rows=True,
    norms=("Linf", "L2"),
))
