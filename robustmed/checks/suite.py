"""All checks of one run: pre-flight before the attack; invariant, randomness, ablation, unit-test checks after."""
from __future__ import annotations

import pandas as pd

from robustmed.checks.ablation import run_ablation
from robustmed.checks.binarization import run_binarization
from robustmed.checks.context import CheckContext
from robustmed.checks.degenerate import run_degenerate
from robustmed.checks.invariants import run_invariants
from robustmed.checks.randomized import adaptive_required, run_randomized
from robustmed.checks.registry import Finding, sort_key

LEVELS = ("cheap", "full")


def post_run(ctx: CheckContext, rows: pd.DataFrame, preflight: list[Finding], level: str = "cheap") -> list[Finding]:
    """The row checks (and, at ``level="full"``, the costly re-attacks), merged with the pre-flight ones."""
    if level not in LEVELS:
        raise ValueError(f"checks level must be one of {LEVELS}, got {level!r}")
    full = level == "full"
    findings = [*preflight, *run_invariants(ctx, rows, full), *run_randomized(ctx, rows, full),
                *run_ablation(ctx, rows, full), *run_binarization(ctx, rows, full), *run_degenerate(ctx, rows)]
    findings.append(adaptive_required(findings))
    return sorted(findings, key=sort_key)
