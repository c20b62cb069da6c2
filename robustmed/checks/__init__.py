"""Evaluation checks as documented flags (docs/checks.md): each a small function with an ID.

>>> from robustmed.checks import CHECKS
>>> CHECKS.get("A3").severity
'FLAG'
"""
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import CHECKS, ERROR, FLAG, INFO, Check, Finding, blocking, unreliable
# imported for their side effect: each module registers its checks
from robustmed.checks import ablation, binarization, corruption, degenerate, invariants, preflight, randomized  # noqa: F401
from robustmed.checks.preflight import run_preflight
from robustmed.checks.suite import LEVELS, post_run

__all__ = ["CHECKS", "ERROR", "FLAG", "INFO", "Check", "CheckContext", "Finding", "LEVELS", "blocking",
           "post_run", "run_preflight", "unreliable"]
