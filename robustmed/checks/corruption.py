"""B18: the corruption track's invariants, on its rows (the harness holds every chunk to them as it runs).

A corrupted image must stay finite, in [0, 1] and of its input's shape, and corrupting again from the same seeds
must give the same bytes; the harness refuses a chunk that breaks any of these. On the stored rows this check
confirms that every sample has exactly one row per corruption and severity of its spec, no ‖x_c − x‖∞ above 1,
and rows that never enter an attack's ε (their ε is 0).
"""
from __future__ import annotations

import json

import pandas as pd

from robustmed.checks.context import CheckContext
from robustmed.checks.registry import ERROR, Finding, register

B18 = register("B18", "corruption outputs valid (box, shape, seeded, complete)", ERROR)


@B18.guard
def corruption_rows(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B18 on the stored corruption rows: complete, unique, within the box, off every ε."""
    spec = json.loads(rows.spec.iloc[0])
    expected = {(c, s) for c, values in spec["extra"]["corruptions"].items() for s in range(1, len(values) + 1)}
    pairs = pd.Series(list(zip(rows.corruption, rows.severity.astype(int))), index=rows.index)
    cells = rows.assign(pair=pairs).groupby(["sample_id", "pair"]).size()
    known = rows.assign(pair=pairs)[pairs.isin(expected)]
    per_sample = known.groupby("sample_id").pair.nunique().reindex(rows.sample_id.unique()) == len(expected)
    problems = []
    if (cells > 1).any():
        problems.append(f"{int((cells > 1).sum())} (sample, corruption, severity) cell(s) stored twice")
    if not per_sample.all():
        problems.append(f"{int((~per_sample).sum())} sample(s) lack some corruption or severity")
    if not pairs.isin(expected).all():
        problems.append(f"{int((~pairs.isin(expected)).sum())} row(s) of a corruption or severity the spec lacks")
    if (rows.linf > 1 + 1e-6).any() or (rows.eps != 0).any():
        problems.append("rows outside [0, 1] or carrying an ε")
    return B18.outcome(bool(problems), "; ".join(problems) if problems else
                       f"{rows.sample_id.nunique()} samples × {len(expected)} corruption-severity pairs, each once; "
                       "every chunk in [0, 1], shaped like its input and reproduced from its seeds",
                       pairs=len(expected))


def run_corruption(ctx: CheckContext, rows: pd.DataFrame) -> list[Finding]:
    return [corruption_rows(ctx, rows)] if len(rows) else []
