"""Degenerate models (A11) and attacks that moved nothing (B17), read from the run's rows.

A model that answers one class whatever the image scores the majority-class rate, and no attack can
lower it: its "robust accuracy" equals its clean accuracy and every other check passes. These two
checks name that case instead of printing it as a robust model.
"""
from __future__ import annotations

import pandas as pd

from robustmed.balance import chance, class_balance, per_sample, prediction_share
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import FLAG, Finding, register

A11 = register("A11", "a classifier, not a constant (balanced accuracy above chance)", FLAG)
B17 = register("B17", "the attacks moved some prediction", FLAG)

ONE_CLASS_SHARE = 0.95  # one answer for this share of the samples is "nearly all"
CHANCE_MARGIN = 0.05  # balanced accuracy within 5 points of chance is "at chance"
MIN_SAMPLES = 20  # below this the shares say too little to flag
BANDS = ("under grade:K a prediction is stored as its band (the true grade, or −1 when K or more grades away), "
         "so a move within the band is not seen: bench without --criterion to check that the model uses its input")


@A11.guard
def degenerate_classifier(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """A11: the clean predictions are not (nearly) one class, unless the labels are too."""
    if ctx.task.startswith("multi-label"):
        return A11.passed("multi-label task: joint label vectors are judged by the per-label thresholds instead")
    if ctx.extras.get("grade"):
        return A11.passed(BANDS)
    clean = per_sample(rows)
    if len(clean) < MIN_SAMPLES:
        return A11.passed(f"{len(clean)} samples: too few to judge", n=len(clean))
    answer, share = prediction_share(clean.pred)
    balance = class_balance(clean.label, clean.clean)
    floor = chance(ctx.num_classes) + CHANCE_MARGIN
    one_class = share >= ONE_CLASS_SHARE and balance["majority_class_rate"] < ONE_CLASS_SHARE
    at_chance = balance["balanced_accuracy"] <= floor
    details = {"top_answer": int(answer), "top_answer_share": share, **balance, "chance": chance(ctx.num_classes)}
    if one_class or at_chance:
        why = (f"answers class {answer} for {100 * share:.1f}% of the samples" if one_class else
               f"balanced accuracy {100 * balance['balanced_accuracy']:.1f}% is at chance")
        return A11.fired(f"{why}: the model does not use its input, so robust accuracy measures the label "
                         f"mix (majority-class rate {100 * balance['majority_class_rate']:.1f}%), not robustness",
                         **details)
    return A11.passed(f"balanced accuracy {100 * balance['balanced_accuracy']:.1f}% (chance "
                      f"{100 * chance(ctx.num_classes):.1f}%), top answer on {100 * share:.1f}% of samples", **details)


@B17.guard
def attacks_moved_something(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B17: with ε > 0 some attack changes some prediction; if none does, robust equals clean by construction."""
    if ctx.extras.get("grade"):
        return B17.passed(BANDS)
    attacked = rows[(rows.eps > 0) & ~rows.attack.str.startswith("null")]  # null presents the clean image
    samples = attacked.sample_id.nunique()
    if samples < MIN_SAMPLES:
        return B17.passed(f"{samples} attacked samples: too few to judge", n=int(samples))
    moved = int((attacked.adv_pred != attacked.clean_pred).sum())
    if moved == 0:
        return B17.fired(f"no attack changed any prediction on {samples} samples: robust accuracy equals clean by "
                         "construction (a model whose output ignores its input, or attacks that never ran)",
                         rows=len(attacked), moved=0)
    return B17.passed(f"{moved} of {len(attacked)} attacked rows changed the prediction", moved=moved)


def run_degenerate(ctx: CheckContext, rows: pd.DataFrame) -> list[Finding]:
    return [degenerate_classifier(ctx, rows), attacks_moved_something(ctx, rows)]
