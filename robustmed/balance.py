"""Accuracy's blind spot: per-class recall, balanced accuracy and the majority-class rate.

On MedMNIST's unbalanced test sets a model that answers one class for every image scores the
majority-class rate with no skill at all, and stays as "robust" as it is accurate. These figures stand beside
every accuracy so that such a model is seen.
"""
from __future__ import annotations

import numpy as np
import pandas as pd


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


def prediction_share(predictions) -> tuple[object, float]:
    """The most common answer and the share of samples that got it (1.0 for a constant classifier)."""
    counts = pd.Series(np.asarray(predictions)).value_counts()
    return counts.index[0], float(counts.iloc[0] / counts.sum())


def chance(num_classes: int) -> float:
    """Balanced accuracy of a model that ignores its input: one over the number of classes."""
    return 1.0 / num_classes
