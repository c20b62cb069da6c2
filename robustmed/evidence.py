"""Evaluations derived from stored per-sample rows: the one place tables, leaderboards and gates read.

An *evaluation* is one attack (or the per-sample worst case of a run) at one ε on one
defense/model/dataset under one protocol; its accuracy is always recomputed from rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from robustmed.stats import wilson

WORST = "worst case"


def column_attack(name: str, substitutes: dict | None = None) -> str:
    """The column an evaluation belongs to: the attack without its options (``pgd20:protocol=paper``
    → ``pgd20``, threat suffix kept), and a suite's randomized substitute under the attack it
    replaces (``aa-rand`` → ``aa``)."""
    base = re.sub(r":[^\[]*", "", name)
    back = {sub: orig for orig, sub in (substitutes or {}).items()}
    stem, bracket, rest = base.partition("[")
    return back.get(stem, stem) + bracket + rest


@dataclass(frozen=True)
class Evaluation:
    defense: str
    model: str
    dataset: str
    protocol: str
    attack: str
    eps: float
    n: int
    robust: int
    clean: int
    run_id: str
    findings: tuple = field(default=(), compare=False)

    @property
    def robust_accuracy(self) -> float:
        return self.robust / self.n if self.n else 0.0

    @property
    def clean_accuracy(self) -> float:
        return self.clean / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return wilson(self.robust, self.n)


def _protocol(rows: pd.DataFrame) -> str:
    return str(rows.protocol.iloc[0]) if "protocol" in rows else "adaptive"


def fired_flags(manifest: dict) -> tuple[str, ...]:
    """IDs of FLAG/ERROR findings a run recorded (checks of spec/evaluation.md §4)."""
    return tuple(sorted({f["id"] for f in manifest.get("findings", [])
                         if f.get("fired") and f.get("severity") in ("FLAG", "ERROR")}))


def evaluations(runs: list[tuple[pd.DataFrame, dict]]) -> list[Evaluation]:
    """Per run: one evaluation per attack × ε plus the per-sample worst case over its attacks (B4).

    When the same (defense, model, dataset, protocol, attack, ε) was run more than once, the
    latest run wins (runs are passed oldest first).
    """
    latest: dict[tuple, Evaluation] = {}
    for rows, manifest in runs:
        flags = fired_flags(manifest)
        for eps, group in rows.groupby("eps"):
            per_attack = [(a, g.groupby("sample_id").robust.all()) for a, g in group.groupby("attack")]
            worst = group.groupby("sample_id").robust.all()
            clean = int(group.groupby("sample_id").clean_correct.first().sum())
            for attack, flags_by_sample in [*per_attack, (WORST, worst)]:
                ev = Evaluation(manifest["defense"], manifest["model"], manifest["dataset"], _protocol(group),
                                attack, float(eps), len(flags_by_sample), int(flags_by_sample.sum()), clean,
                                manifest["run_id"], flags)
                latest[(ev.defense, ev.model, ev.dataset, ev.protocol, ev.attack, ev.eps)] = ev
    return list(latest.values())
