"""`train` on a multi-label task: what an epoch is scored on, which epoch is kept, and what the checkpoint records.

The model answers through :class:`~robustmed.models.multimodal.MultiLabelClassifier` (one logit per label,
the any-label criterion while training), so every defense's training step applies unchanged: cross-entropy
over the joint label vectors is the sum of the per-label BCEs (:mod:`robustmed.multilabel`). Epochs are
scored by mean validation AUROC over labels, a threshold-free figure; the kept epoch's decision thresholds
are then fixed on validation data (Youden's J per label).
"""
from __future__ import annotations

import torch

from robustmed import multilabel

# Mean validation AUROC above which an epoch counts as having learnt something (0.5 is a constant answer).
LEARNED_AUROC = 0.55


def scores(model, x_val, label_matrix: torch.Tensor) -> dict:
    """An epoch's validation figures: mean AUROC, and every-label accuracy at the current thresholds."""
    logits = multilabel.label_logits(model, x_val)
    predicted = (logits > model.thresholds.cpu()).long()
    return {"val_mean_auroc": multilabel.mean_auroc(logits, label_matrix),
            "val_accuracy": multilabel.criteria_accuracy(predicted, label_matrix, model.labels)[multilabel.ANY]}


def selection_key(scores: dict) -> tuple[bool, float, float]:
    auroc = scores["val_mean_auroc"]
    auroc = -1.0 if auroc != auroc else auroc  # NaN: no label has both values on validation data
    return auroc > LEARNED_AUROC, auroc, scores["val_accuracy"]


def warnings(scores: dict) -> list[str]:
    auroc = scores.get("val_mean_auroc")
    if auroc is not None and auroc > LEARNED_AUROC:
        return []
    return [f"the selected epoch's mean validation AUROC is {auroc:.3f} (a constant answer scores 0.5): it has not "
            "learnt the labels; train for more epochs (--epochs)"]


def finish(model, x_val, val_labels: torch.Tensor, x_test, test_labels: torch.Tensor) -> dict:
    """Fix the thresholds on validation data; the checkpoint's multi-label record (test figures per criterion)."""
    model.thresholds.copy_(multilabel.calibrate_thresholds(multilabel.label_logits(model, x_val), val_labels))
    thresholds = model.thresholds.cpu()
    test_logits = multilabel.label_logits(model, x_test)
    predicted = (test_logits > thresholds).long()
    by_criterion = multilabel.criteria_accuracy(predicted, test_labels, model.labels)
    return {"labels": list(model.labels), "thresholds": thresholds.tolist(),
            "threshold_rule": "per label, the validation threshold maximising balanced accuracy (Youden's J)",
            "selection": "mean validation AUROC over labels",
            "test_mean_auroc": multilabel.mean_auroc(test_logits, test_labels),
            "test_accuracy": by_criterion[multilabel.ANY], "test_accuracy_draws": 1,
            "test_accuracy_by_criterion": by_criterion,
            "test_label_accuracy": multilabel.label_accuracy(predicted, test_labels, model.labels)}
