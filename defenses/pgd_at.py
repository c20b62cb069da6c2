"""The adversarial-training control: MAIL + plain PGD-AT (Madry et al. 2018), spec §4.7.

Every defense in the paper is AT-based; this control tells whether a defense adds
anything beyond adversarial training with the same recipe.
"""
from robustmed.defenses.base import DEFENSES, DefenseInfo

DEFENSES.register("pgd-at", DefenseInfo(
    name="pgd-at",
    family="adversarial training (control)",
    reference="Madry et al., ICLR 2018; shared recipe of spec §4.7",
    description="MAIL unchanged, trained on PGD examples only (ε 4/255), selected on robust val accuracy",
    train_step="pgd-at",
    train_options={"clean_weight": 0.0, "attack_mode": "eval", "realization": "per-forward", "select": "robust"},
    cpu_recipe="cpu-at",
))
