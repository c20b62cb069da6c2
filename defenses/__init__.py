"""Defenses attached to MAIL; importing this package registers every entry.

To add one: copy ``none.py``, give it an ``attach`` (and a training step if it
needs one), register a :class:`DefenseInfo`, and import the module here.
"""
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.defenses import none  # noqa: F401  (registers)
from robustmed.defenses import cap, ctrw, dbn, learn2perturb, pgd_at, pni, rpan, rpf  # noqa: F401  (registers)

__all__ = ["DEFENSES", "DefenseInfo"]
