"""Multi-label success criteria (checks A8, F2), as logits the single-label harness can attack.

A multi-label model gives one logit z_k per label; a label is predicted positive when z_k exceeds its
threshold t_k, fixed on validation data (:func:`calibrate_thresholds`). With margins m_k = z_k − t_k:

* ``any`` (any-label flip): 2^L "joint" classes, one per label vector v, with logit Σ_k ±m_k / 2 (+ where
  v_k = 1). Its argmax is the vector of thresholded predictions, so an argmax flip is a flip of at least
  one label, and softmax over it is Π_k σ(±m_k): its cross-entropy is the sum of per-label BCEs.
* ``label:<name>`` (a named target label): the two logits (−m_k/2, m_k/2); success flips that label only.

>>> import torch
>>> view_logits(torch.tensor([[2.0, -1.0]]), parse_criterion("any", ("a", "b"))).argmax(1).item()  # a=1, b=0
1
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from robustmed.errors import UserError
from robustmed.tensors import batch_size, take, to_device

ANY = "any"


@dataclass(frozen=True)
class Criterion:
    """The declared success criterion: ``label`` is None for any-label flips, else the target label's index."""

    name: str
    labels: tuple[str, ...]
    label: int | None = None

    @property
    def num_classes(self) -> int:
        return 2 ** len(self.labels) if self.label is None else 2

    @property
    def description(self) -> str:
        if self.label is None and len(self.labels) == 1:
            return f"flip of the label {self.labels[0]} (threshold fixed on validation data)"
        if self.label is None:
            return f"any-label flip over {', '.join(self.labels)} (thresholds fixed on validation data)"
        return f"flip of the target label {self.labels[self.label]} (threshold fixed on validation data)"


def parse_criterion(text: str | None, labels: tuple[str, ...]) -> Criterion:
    """``any`` (default) or ``label:<name>`` for a model with the given labels."""
    text = (text or ANY).strip()
    if text == ANY:
        return Criterion(ANY, tuple(labels))
    name = text.partition(":")[2] if text.startswith("label:") else None
    if name not in labels:
        raise UserError(f"bad success criterion {text!r}: use 'any' or one of "
                        f"{', '.join(f'label:{n}' for n in labels)}")
    return Criterion(text, tuple(labels), labels.index(name))


def signs(n_labels: int) -> torch.Tensor:
    """(2^L, L): +1 where bit k of the joint class is set, else −1."""
    classes = torch.arange(2 ** n_labels)[:, None]
    return ((classes >> torch.arange(n_labels)) & 1).float() * 2 - 1


def view_logits(margins: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """(N, L) margins z − t → the criterion's logits (N, 2^L) or (N, 2)."""
    if criterion.label is not None:
        margin = margins[:, criterion.label]
        return torch.stack([-margin / 2, margin / 2], 1)
    return margins @ signs(margins.shape[1]).to(margins) .T / 2


def view_labels(labels: torch.Tensor, criterion: Criterion) -> torch.Tensor:
    """(N, L) binary labels → the criterion's class index per sample."""
    if criterion.label is not None:
        return labels[:, criterion.label].long()
    return (labels.long() << torch.arange(labels.shape[1])).sum(1)


def decode(classes: np.ndarray, n_labels: int) -> np.ndarray:
    """Joint class indices → (N, L) label bits."""
    return (np.asarray(classes)[:, None] >> np.arange(n_labels)) & 1


def youden_threshold(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The logit threshold maximising balanced accuracy (Youden's J); ties: the higher accuracy, then nearer 0."""
    values = torch.unique(logits.double())
    candidates = torch.cat([values[:1] - 1, (values[1:] + values[:-1]) / 2, values[-1:] + 1])
    predicted = logits.double()[None, :] > candidates[:, None]
    positive = labels.bool()[None, :]
    recall = [(predicted & positive).sum(1) / positive.sum().clamp_min(1),
              (~predicted & ~positive).sum(1) / (~positive).sum().clamp_min(1)]
    balanced = (recall[0] + recall[1]) / 2
    accuracy = (predicted == positive).double().mean(1)
    order = np.lexsort((-candidates.abs().numpy(), accuracy.numpy(), balanced.numpy()))
    return float(candidates[order[-1]])


def calibrate_thresholds(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-label thresholds (L,) from validation logits and labels (N, L)."""
    return torch.tensor([youden_threshold(logits[:, k], labels[:, k]) for k in range(logits.shape[1])])


def label_accuracy(predicted: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]) -> dict:
    """Per label: accuracy, balanced accuracy and the majority-class rate of these labels."""
    out = {}
    for k, name in enumerate(names):
        hit, y = predicted[:, k] == labels[:, k], labels[:, k]
        rate = float(y.float().mean())
        out[name] = {"accuracy": float(hit.float().mean()), "majority_rate": max(rate, 1 - rate),
                     "balanced_accuracy": float(np.mean([hit[y == c].float().mean() for c in (0, 1)
                                                         if (y == c).any()]))}
    return out


def label_flips(rows: pd.DataFrame, criterion: Criterion) -> dict:
    """F2 from stored rows, per ε and attack: per label, clean accuracy and the flip rate among the samples
    the attack ran on (every label correct clean: the harness attacks clean-correct samples only).

    Any-label rows decode per-label predictions from the joint classes; a target-label run observes
    only its own label.
    """
    names = criterion.labels if criterion.label is None else (criterion.labels[criterion.label],)
    out: dict = {}
    for (attack, eps), group in rows.groupby(["attack", "eps"], sort=True):
        if criterion.label is None:
            truth, clean, adv = (decode(group[c].to_numpy(), len(names)) for c in ("label", "clean_pred", "adv_pred"))
        else:
            truth, clean, adv = (group[c].to_numpy()[:, None] for c in ("label", "clean_pred", "adv_pred"))
        attacked = (clean == truth).all(1)
        per = {}
        for k, name in enumerate(names):
            flipped = attacked & (adv[:, k] != truth[:, k])
            per[name] = {"clean_accuracy": float((clean[:, k] == truth[:, k]).mean()), "attacked": int(attacked.sum()),
                         "flipped": int(flipped.sum()), "flip_rate": float(flipped.sum() / max(attacked.sum(), 1))}
        out.setdefault(str(float(eps)), {})[attack] = per
    return out


@torch.no_grad()
def label_logits(model, x, batch: int = 128) -> torch.Tensor:
    """The network's raw per-label logits (N, L) of a :class:`MultiLabelClassifier`, batched, in eval mode;
    ``x`` is an image tensor or a mapping of named inputs."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.network(to_device(take(x, slice(s, s + batch)), device)).cpu()
                      for s in range(0, batch_size(x), batch)])


def mean_auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean per-label AUROC over the labels with both values present (AUROC is undefined otherwise)."""
    from sklearn.metrics import roc_auc_score

    scored = [k for k in range(labels.shape[1]) if 0 < int(labels[:, k].sum()) < len(labels)]
    if not scored:
        return float("nan")
    return float(np.mean([roc_auc_score(labels[:, k].numpy(), logits[:, k].numpy()) for k in scored]))


def criteria_accuracy(predicted: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]) -> dict:
    """Accuracy under each success criterion: every label right (``any``) and each label alone."""
    hits = predicted == labels
    return {ANY: float(hits.all(1).float().mean()),
            **{f"label:{n}": float(hits[:, k].float().mean()) for k, n in enumerate(names)}}
