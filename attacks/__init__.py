"""Attacks; importing this package registers every family.

To add one: copy ``pgd.py``, write the attack as a function returning an
:class:`AttackResult`, register an :class:`AttackFamily`, and import it here.
"""
from robustmed.attacks.base import FAMILIES, AttackResult, AttackSpec, parse_attack, parse_eps_list
from robustmed.attacks import autoattack, bim, corruptions, mim, null, pgd, square  # noqa: F401  (registers)

__all__ = ["FAMILIES", "AttackResult", "AttackSpec", "parse_attack", "parse_eps_list"]
