"""Defenses attached to MAIL; importing this package registers every entry.

A defense is one file: its ``attach``, its training step (registered in
:data:`robustmed.steps.TRAIN_STEPS`, if it needs its own) and the defense-removed form of each component
it adds (a ``defense_removed`` method, used by checks B11 and D3). To add one: copy ``none.py``, register a
:class:`DefenseInfo`, and import the module here.
"""
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.defenses import none  # noqa: F401  (registers)
from robustmed.defenses import cap, ctrw, dbn, learn2perturb, pgd_at, pni, rpan, rpf  # noqa: F401  (registers)

__all__ = ["DEFENSES", "DefenseInfo"]
