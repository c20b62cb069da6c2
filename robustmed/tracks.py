"""Threat-model tracks of stored rows: the attacks' rows (norm-ball budgets, L∞ or L2) and the corruption rows,
never pooled.

A corruption row (family ``corruptions``) carries its ``corruption`` and ``severity``; adversarial rows carry
neither (or nulls, in a run that has both). Every worst case, ranking and check of the attacks reads
:func:`adversarial` rows only, and the corruption views read :func:`corrupted` rows only.
"""
from __future__ import annotations

import pandas as pd

CORRUPTIONS = "corruptions"  # the family and the stored attack name of the corruption track


def corruption_mask(rows: pd.DataFrame) -> pd.Series:
    """True on the rows of the corruption track."""
    if "corruption" not in rows:
        return pd.Series(False, index=rows.index)
    names = rows["corruption"]
    return names.notna() & (names.astype(str) != "")


def adversarial(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the attacks (their norm-ball threat models): everything but the corruption track."""
    mask = corruption_mask(rows)
    return rows[~mask] if mask.any() else rows


def corrupted(rows: pd.DataFrame) -> pd.DataFrame:
    """The corruption track's rows (empty when the run has none)."""
    return rows[corruption_mask(rows)]


def is_corruption_attack(name: str) -> bool:
    """Whether an attack name (as typed or stored, options kept) belongs to the corruption track."""
    stem = name.split(":")[0].split("[")[0].rstrip("0123456789")
    return stem == CORRUPTIONS


LINF, L2, L1 = "Linf", "L2", "L1"
NORM_LABELS = {LINF: "L∞", L2: "L2", L1: "L1"}  # how views name a threat model
NORM_COLUMNS = {LINF: "linf", L2: "l2", L1: "l1"}  # the row column holding a candidate's size in that norm
NORM_SUBSCRIPTS = {LINF: "∞", L2: "₂", L1: "₁"}  # ‖δ‖ written in that norm
WHOLE_IMAGE = (L2, L1)  # norms whose ε bounds the whole image (it may exceed 1), written as a plain number


def eps_label(eps: float, norm: str = LINF) -> str:
    """ε as the views write it: L∞ in /255 of the [0, 1] range, L2 and L1 as the whole image's budget."""
    return f"{eps:.3g}" if norm in WHOLE_IMAGE else f"{eps * 255:.3g}/255"


def norms(rows: pd.DataFrame) -> pd.Series:
    """Each row's threat model; rows stored before the ``norm`` column existed are L∞."""
    if "norm" not in rows:
        return pd.Series(LINF, index=rows.index)
    return rows["norm"].fillna(LINF).astype(str).replace("", LINF)


def by_norm(rows: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The attacks' rows per threat model (L∞ first): no worst case or ranking is ever taken across two."""
    attacks = adversarial(rows)
    if not len(attacks):
        return []
    kinds = norms(attacks)
    return [(norm, attacks[kinds == norm]) for norm in sorted(kinds.unique(), key=lambda n: (n != LINF, n))]


def norm_label(norm: str) -> str:
    return NORM_LABELS.get(norm, norm)
