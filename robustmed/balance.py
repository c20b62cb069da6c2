"""Accuracy's blind spot: per-class recall, balanced accuracy and the majority-class rate.

On MedMNIST's unbalanced test sets a model that answers one class for every image scores the
majority-class rate with no skill at all, and stays as "robust" as it is accurate. These figures stand beside
every accuracy so that such a model is seen.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from robustmed import expected


def class_balance(labels, correct) -> dict:
    """Per-class recall of ``correct`` (booleans, or fractions of correct draws), their mean (balanced
    accuracy) and the share of the most common label (what answering it for every sample would score)."""
    frame = pd.DataFrame({"label": np.asarray(labels), "correct": np.asarray(correct, dtype=float)})
    recall = frame.groupby("label").correct.mean()
    counts = frame.label.value_counts()
    return {
        "balanced_accuracy": float(recall.mean()),
        "per_class_recall": {str(k): float(v) for k, v in recall.items()},
        "majority_class_rate": float(counts.max() / counts.sum()),
    }


def per_sample(rows: pd.DataFrame) -> pd.DataFrame:
    """Per sample, in id order: label, clean answer, and clean and worst-case robust correctness over the
    rows' attacks; rows with per-draw verdicts (randomized models) count fractions of correct draws."""
    if expected.has_draws(rows):  # read from the per-draw masks, as expected.judgements does
        draws = int(rows.draws.max())
        clean = expected.bits(rows.clean_draw_mask, draws).mean(1)
        robust = expected.bits(rows.draw_mask, draws).mean(1)
    else:
        clean, robust = rows.clean_correct.astype(float), rows.robust.astype(float)
    answers = {"pred": ("clean_pred", "first")} if "clean_pred" in rows else {}
    frame = rows.assign(clean_rate=clean, robust_rate=robust).groupby("sample_id", sort=True).agg(
        label=("label", "first"), **answers, clean=("clean_rate", "first"), robust=("robust_rate", "min"))
    frame["robust"] = frame[["clean", "robust"]].min(axis=1)  # an attacker can always present the clean image
    return frame


def prediction_share(predictions) -> tuple[object, float]:
    """The most common answer and the share of samples that got it (1.0 for a constant classifier)."""
    counts = pd.Series(np.asarray(predictions)).value_counts()
    return counts.index[0], float(counts.iloc[0] / counts.sum())


def chance(num_classes: int) -> float:
    """Balanced accuracy of a model that ignores its input: one over the number of classes."""
    return 1.0 / num_classes
