"""The attacks' checks per threat model: each norm's rows are checked on their own, never pooled, and the
costly re-attacks (L∞ probes: FGSM, corners of the L∞ ball, 16/255 ablation, the binarization corner) run
on the L∞ rows only; a run without L∞ rows gets them as not applicable."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from robustmed.checks.registry import CHECKS, ERROR, FLAG, FULL, Finding
from robustmed.tracks import LINF, by_norm, norm_label

_RANK = {ERROR: 0, FLAG: 1}


def per_norm(check_rows: Callable[[pd.DataFrame, bool], list[Finding]], attacks: pd.DataFrame,
             full: bool) -> list[Finding]:
    """``check_rows(rows, full)`` on each norm's rows (full only on L∞); one finding per ID, the most severe
    fired one when several norms ran, its reason naming the norm."""
    groups = by_norm(attacks)
    if len(groups) == 1 and groups[0][0] == LINF:
        return check_rows(groups[0][1], full)
    found: dict[str, list[Finding]] = {}
    for norm, rows in groups:
        for finding in check_rows(rows, full and norm == LINF):
            found.setdefault(finding.id, []).append(_labelled(finding, norm, len(groups) > 1))
    merged = [min(fs, key=lambda f: (not f.fired, _RANK.get(f.severity, 2))) for fs in found.values()]
    if full and all(norm != LINF for norm, _ in groups):
        alone = " and ".join(sorted(norm for norm, _ in groups))
        merged += [c.passed(f"not applicable: an L∞-only re-attack and the run attacks in {alone} alone")
                   for _, c in CHECKS.items() if c.tier == FULL and c.id not in found]
    return merged


def _labelled(finding: Finding, norm: str, several: bool) -> Finding:
    if not several:
        return finding
    return Finding(finding.id, finding.severity, finding.fired, f"{norm_label(norm)}: {finding.reason}",
                   {**finding.details, "norm": norm})
