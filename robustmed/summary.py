"""A run's figures from its rows, per ε: clean and per-sample worst-case robust accuracy with intervals, per
attack, balanced accuracy, the expected figures of randomized models, and the attacks' time and passes."""
from __future__ import annotations

import pandas as pd

from robustmed import expected, passes
from robustmed.balance import class_balance, per_sample
from robustmed.stats import wilson
from robustmed.tracks import by_norm


def summarize(rows: pd.DataFrame) -> list[dict]:
    """Per threat model (L∞ first) and ε: clean accuracy and per-sample worst-case robust accuracy over that
    norm's attacks, with Wilson CIs.

    The corruption track's rows never enter it (:mod:`robustmed.corruption_summary` has their figures): a run
    with no attack but ``corruptions`` has no per-ε summary."""
    return [_figures(group, norm, eps) for norm, track in by_norm(rows)
            for eps, group in track.groupby("eps", sort=True)]


def _figures(group: pd.DataFrame, norm: str, eps: float) -> dict:
    """One threat model at one ε: the worst case is only ever taken over that norm's attacks."""
    per_sample = group.groupby("sample_id").agg(clean=("clean_correct", "first"), robust=("robust", "all"))
    n, clean, robust = len(per_sample), int(per_sample.clean.sum()), int(per_sample.robust.sum())
    return {
        "eps": float(eps), "norm": norm, "n": n,
        "clean_accuracy": clean / n, "clean_ci": wilson(clean, n),
        "robust_accuracy": robust / n, "robust_ci": wilson(robust, n),
        "per_attack": {a: float(g.robust.mean()) for a, g in group.groupby("attack")},
        **_balance(group),
        **expected.summary(group),
        **_cost(group),
    }



def _balance(group: pd.DataFrame) -> dict:
    """Clean and worst-case robust balanced accuracy with per-class recall, beside the majority-class rate.

    Randomized models count a sample by its fraction of correct draws (their headline is expected accuracy)."""
    if "label" not in group:  # rows assembled by hand, without labels: nothing to balance over
        return {}
    samples = per_sample(group)
    clean, robust = class_balance(samples.label, samples.clean), class_balance(samples.label, samples.robust)
    return {"clean_balanced_accuracy": clean["balanced_accuracy"], "clean_per_class_recall": clean["per_class_recall"],
            "robust_balanced_accuracy": robust["balanced_accuracy"],
            "robust_per_class_recall": robust["per_class_recall"], "majority_class_rate": clean["majority_class_rate"]}



def _cost(group: pd.DataFrame) -> dict:
    """The attacks' time and model passes per sample at one ε, in total (each run once) and per attack;
    passes are None for rows stored before they were counted."""
    return {"attack_time_s": passes.total_time(group),
            "per_attack_time_s": {a: float(g.attack_time_s.iloc[0]) if "attack_time_s" in g else None
                                  for a, g in group.groupby("attack")},
            "passes_per_sample": passes.total(group), "per_attack_passes": passes.per_attack(group)}
