"""All checks of one run: pre-flight before the attack; invariant, randomness, ablation, unit-test checks after."""
from __future__ import annotations

import pandas as pd

from robustmed.checks.ablation import run_ablation
from robustmed.checks.binarization import run_binarization
from robustmed.checks.context import CheckContext
from robustmed.checks.corruption import run_corruption
from robustmed.checks.degenerate import degenerate_classifier, run_degenerate
from robustmed.checks.invariants import run_invariants
from robustmed.checks.norms import per_norm
from robustmed.checks.randomized import adaptive_required, run_randomized
from robustmed.checks.registry import Finding, sort_key
from robustmed.tracks import adversarial, corrupted as corrupted_rows

LEVELS = ("cheap", "full")


def _attack_checks(ctx: CheckContext, attacks: pd.DataFrame, full: bool) -> list[Finding]:
    return [*run_invariants(ctx, attacks, full), *run_randomized(ctx, attacks, full),
            *run_ablation(ctx, attacks, full), *run_binarization(ctx, attacks, full), *run_degenerate(ctx, attacks)]


def post_run(ctx: CheckContext, rows: pd.DataFrame, preflight: list[Finding], level: str = "cheap") -> list[Finding]:
    """The row checks (and, at ``level="full"``, the costly re-attacks), merged with the pre-flight ones; the
    corruption track's rows get their own invariant (B18) and never the attacks' checks."""
    if level not in LEVELS:
        raise ValueError(f"checks level must be one of {LEVELS}, got {level!r}")
    full, attacks, corrupted = level == "full", adversarial(rows), corrupted_rows(rows)
    findings = [*preflight, *run_corruption(ctx, corrupted)]
    if len(attacks):  # the attacks' checks read the attacks' rows alone, each norm's on their own
        findings += per_norm(lambda rows, full: _attack_checks(ctx, rows, full), attacks, full)
    else:  # the corruption track alone: A11 still reads the clean predictions
        findings.append(degenerate_classifier(ctx, rows))
    findings.append(adaptive_required(findings))
    return sorted(findings, key=sort_key)
