"""The seeded subset the costly checks re-attack, and the harness call they all share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from robustmed.attacks import AttackSpec, parse_attack
from robustmed.checks.context import CheckContext
from robustmed.harness import attack_rows
from robustmed.seeds import select_subset

FULL_SIZE = 64  # samples re-attacked by each costly check
GRADIENT_FAMILIES = ("pgd", "bim", "mim")


@dataclass(frozen=True)
class Subset:
    ids: np.ndarray  # sample ids, as in the rows
    x: torch.Tensor
    y: torch.Tensor
    eps: float  # the run's smallest ε


def subset(ctx: CheckContext, rows: pd.DataFrame | None = None, size: int = FULL_SIZE) -> Subset:
    """``size`` of the run's samples, chosen by the run's seed (the same ones every time)."""
    positions = select_subset(len(ctx.x), size, ctx.seed)
    return Subset(ctx.ids[positions], ctx.x[positions], ctx.y[positions], float(min(ctx.eps)))


def run_robust(rows: pd.DataFrame, ids: np.ndarray, eps: float) -> np.ndarray:
    """The run's per-sample verdict at ``eps`` (robust under every attack) for ``ids``, in that order."""
    at = rows[(rows.eps == eps) & rows.sample_id.isin(ids)]
    return at.groupby("sample_id").robust.all().reindex(ids).to_numpy(dtype=bool)


def gradient_spec(ctx: CheckContext) -> AttackSpec:
    """The run's first PGD-like attack (its family and steps are what B6/B12/B15 vary), else PGD-10."""
    return next((s for s in ctx.specs if s.family in GRADIENT_FAMILIES), parse_attack("pgd10"))


def attack_robust(ctx: CheckContext, sub: Subset, attack: str, eps: float | None = None,
                  model=None, randomized: bool | None = None) -> np.ndarray:
    """Per-sample robust flags of ``attack`` on the subset, through the harness (seeded, EOT, R draws)."""
    rows = attack_rows(model or ctx.model, sub.x, sub.y, sub.ids, [parse_attack(attack)],
                       [sub.eps if eps is None else eps], seed=ctx.seed, batch_size=ctx.batch_size,
                       device=ctx.device, randomized=ctx.randomized if randomized is None else randomized)
    return rows.robust.to_numpy(dtype=bool)
