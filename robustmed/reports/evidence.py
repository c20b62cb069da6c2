"""Evaluations derived from stored per-sample rows: the one place tables, leaderboards and gates read.

An *evaluation* is one attack (or the per-sample worst case of a run) at one ε on one
defense/model/dataset under one protocol; its accuracy is always recomputed from rows.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from robustmed import expected
from robustmed.balance import class_balance, per_sample
from robustmed.provenance import ENGINE
from robustmed.stats import wilson
from robustmed.tracks import L1, L2, by_norm

WORST = "worst case"
NULL = "null"


L2_SUFFIX, L1_SUFFIX = " (L2)", " (L1)"  # an L2 or L1 column's mark: never a column (or worst case) with L∞ ones
NORM_SUFFIXES = {L2: L2_SUFFIX, L1: L1_SUFFIX}


def _stem(name: str) -> str:
    return re.sub(r":[^\[]*", "", name)


def column_attack(name: str, substitutes: dict | None = None) -> str:
    """The column an evaluation belongs to: the attack without its options (``pgd20:protocol=paper``
    → ``pgd20``, threat suffix kept), a suite's randomized substitute under the attack it
    replaces (``aa-rand`` → ``aa``), and `` (L2)`` after an L2 attack (``pgd20:norm=l2`` → ``pgd20 (L2)``; L1 alike)."""
    back = {_stem(sub): _stem(orig) for orig, sub in (substitutes or {}).items()}
    stem, bracket, rest = _stem(name).partition("[")
    norm = re.search(r"[:,]norm=(l2|l1)\b", name.lower())
    mark = NORM_SUFFIXES[norm.group(1).upper()] if norm else ""
    return back.get(stem, stem) + bracket + rest + ("" if name.endswith(mark) else mark)


def suffix(norm: str) -> str:
    """What an L2 or L1 evaluation's worst case and null columns carry after their names."""
    return NORM_SUFFIXES.get(norm, "")


@dataclass(frozen=True)
class Evaluation:
    """One column of a run. On a randomized model ``expected`` is set and is the headline
    (:mod:`robustmed.expected`): ``robust_accuracy`` and ``ci`` then read it and its two-way bootstrap
    interval, while ``all_draws_accuracy`` keeps "correct in all R draws"."""

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
    expected: float | None = field(default=None, compare=False)
    expected_ci: tuple | None = field(default=None, compare=False)
    expected_clean: float | None = field(default=None, compare=False)
    draws: int = field(default=1, compare=False)
    single_draw: float | None = field(default=None, compare=False)  # the paper's one-draw reading
    null_gap_ci: tuple | None = field(default=None, compare=False)  # how far below the null attack (C5)
    stale: bool = field(default=False, compare=False)  # made by an engine whose results this one replaced
    balanced_clean: float | None = field(default=None, compare=False)  # mean per-class clean recall
    norm: str = "Linf"  # the threat model of its attacks: evaluations of two norms never share a worst case

    @property
    def randomized(self) -> bool:
        return self.draws > 1

    @property
    def all_draws_accuracy(self) -> float:
        return self.robust / self.n if self.n else 0.0

    @property
    def robust_accuracy(self) -> float:
        return self.expected if self.expected is not None else self.all_draws_accuracy

    @property
    def clean_accuracy(self) -> float:
        if self.expected_clean is not None:
            return self.expected_clean
        return self.clean / self.n if self.n else 0.0

    @property
    def ci(self) -> tuple[float, float]:
        return self.expected_ci if self.expected_ci is not None else wilson(self.robust, self.n)

    @property
    def indistinguishable_from_null(self) -> bool:
        return self.null_gap_ci is not None and self.null_gap_ci[0] <= 0


def _protocol(rows: pd.DataFrame) -> str:
    return str(rows.protocol.iloc[0]) if "protocol" in rows else "adaptive"


def fired_flags(manifest: dict) -> tuple[str, ...]:
    """IDs of FLAG/ERROR findings a run recorded (docs/checks.md)."""
    return tuple(sorted({f["id"] for f in manifest.get("findings", [])
                         if f.get("fired") and f.get("severity") in ("FLAG", "ERROR")}))


def stale(manifest: dict, attack: str) -> bool:
    """Whether an engine before the current one made this column and this engine would change it:
    every column of a randomized model, and the AutoAttack columns (binary cascade) of any model."""
    if manifest.get("engine", 1) >= ENGINE:
        return False
    randomized = any(spec.get("extra", {}).get("randomized") for spec in manifest.get("attacks", {}).values())
    return randomized or attack == WORST or column_attack(attack).startswith("aa")


def _expected_fields(verdicts, attack: str) -> dict:
    """The expected figures of one column (or of the worst case) from the per-draw verdicts."""
    if verdicts is None:
        return {}
    worst = attack.startswith(WORST)
    attacks = [a for a in verdicts if a != expected.CLEAN] if worst else [attack]
    value, ci = expected.worst_case(verdicts, attacks)
    fields = {"expected": value, "expected_ci": ci, "expected_clean": float(verdicts[expected.CLEAN].mean(1).mean()),
              "draws": int(verdicts[expected.CLEAN].shape[1]), "single_draw": expected.single_draw(verdicts, attacks)}
    null = next((a for a in verdicts if _stem(a) == NULL), None)  # ``null:norm=l2`` in an L2 run
    if not worst and _stem(attack) != NULL and null is not None:
        fields["null_gap_ci"] = expected.gap_to_baseline(verdicts, attack, null)[1]
    return fields


def _balanced_clean(group: pd.DataFrame) -> float | None:
    """Balanced clean accuracy of one ε's rows: per-class recall of clean correctness (a randomized model's
    fraction of correct draws), averaged over classes."""
    if "label" not in group:
        return None
    samples = per_sample(group)
    return class_balance(samples.label, samples.clean)["balanced_accuracy"]


def evaluations(runs: list[tuple[pd.DataFrame, dict]]) -> list[Evaluation]:
    """Per run: one evaluation per attack × ε plus the per-sample worst case over its attacks (B4).

    When the same (defense, model, dataset, protocol, attack, ε) was run more than once, the
    latest run wins (runs are passed oldest first).
    """
    latest: dict[tuple, Evaluation] = {}
    for rows, manifest in runs:
        flags = fired_flags(manifest)
        for norm, eps, group in _tracks(rows):  # corruptions: their own table; each norm its own worst case
            per_attack = [(a, g.groupby("sample_id").robust.all()) for a, g in group.groupby("attack")]
            worst = group.groupby("sample_id").robust.all()
            clean = int(group.groupby("sample_id").clean_correct.first().sum())
            verdicts = expected.judgements(group)
            balanced = _balanced_clean(group)
            for attack, flags_by_sample in [*per_attack, (WORST + suffix(norm), worst)]:
                ev = Evaluation(manifest["defense"], manifest["model"], manifest["dataset"], _protocol(group),
                                attack, float(eps), len(flags_by_sample), int(flags_by_sample.sum()), clean,
                                manifest["run_id"], flags, stale=stale(manifest, attack),
                                balanced_clean=balanced, **_expected_fields(verdicts, attack), norm=norm)
                latest[(ev.defense, ev.model, ev.dataset, ev.protocol, ev.attack, ev.eps)] = ev
    return list(latest.values())


def _tracks(rows: pd.DataFrame):
    """(norm, ε, rows) of the attacks' rows: L∞ first, then L2; rows stored before the norm column are L∞."""
    for norm, track in by_norm(rows):
        for eps, group in track.groupby("eps"):
            yield norm, float(eps), group
