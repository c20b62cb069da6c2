"""The ordinal success criterion ``grade:K``: an attack succeeds when the prediction moves at least K grades
from the true grade (``grade:1`` is MedMNIST's own criterion, any wrong grade).

Success then depends on the true grade, so the samples of each grade c are attacked through
:class:`GradeView`: the model's logits folded into two, the best grade within K of c and the best grade
K or more away. Its argmax flips exactly when the model's predicted grade moves K grades from c, every
attack family (AutoAttack and Square included) runs on it unchanged, and a randomized model is judged over
draws as always. The rows keep the true grade as ``label``; a prediction within K grades reads as the true
grade, one K or more away as −1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from robustmed.errors import UserError
from robustmed.harness import attack_rows
from robustmed.tensors import take

FAR = -1  # the stored prediction of a candidate K or more grades from the true grade
GRADE = re.compile(r"grade:(\d+)")
UNREACHABLE = 1e4  # the far logit's gap below the near one where no grade is K away


@dataclass(frozen=True)
class GradeCriterion:
    k: int
    grades: int  # how many grades the task has

    @property
    def name(self) -> str:
        return f"grade:{self.k}"

    @property
    def description(self) -> str:
        return f"the predicted grade moves at least {self.k} grade(s) from the true grade"


def parse_grade(text: str | None, num_grades: int) -> GradeCriterion | None:
    """``grade:K`` (1 ≤ K < the number of grades), else None for any other text."""
    match = GRADE.fullmatch((text or "").strip())
    if not match:
        return None
    k = int(match.group(1))
    if not 1 <= k < num_grades:
        raise UserError(f"bad success criterion {text!r}: K must be between 1 and {num_grades - 1} "
                        f"for {num_grades} grades")
    return GradeCriterion(k, num_grades)


class GradeView(nn.Module):
    """Two logits for the samples of true grade ``center``: (best grade within K, best grade K or more away)."""

    def __init__(self, model: nn.Module, center: int, k: int, num_grades: int):
        super().__init__()
        self.model = model
        grades = torch.arange(num_grades)
        self.register_buffer("near", (grades - center).abs() < k)

    def forward(self, x):
        logits = self.model(x)
        near = self.near.to(logits.device)
        within = logits[:, near].amax(1)
        if near.all():  # no grade lies K away from this one: the criterion cannot be met here
            return torch.stack([within, within - UNREACHABLE], 1)
        return torch.stack([within, logits[:, ~near].amax(1)], 1)


def graded_rows(model, x, y, sample_ids, specs, eps_list, criterion: GradeCriterion, **options) -> pd.DataFrame:
    """:func:`robustmed.harness.attack_rows` under ``grade:K``: each grade's samples through its view, rows back
    in the harness's order (attack, ε, sample), each (attack, ε)'s time summed over the grades."""
    sample_ids = np.asarray(sample_ids)
    options = {**options, "clean_pass": None}  # a caller's clean pass judges the exact grade, not the band
    frames = []
    for grade in sorted(int(g) for g in torch.unique(y)):
        rows = torch.nonzero(y == grade).flatten()
        view = GradeView(model, grade, criterion.k, criterion.grades)
        frame = attack_rows(view, take(x, rows), torch.zeros(len(rows), dtype=torch.long), sample_ids[rows.numpy()],
                            specs, eps_list, **options)
        frame["label"] = grade
        for column in ("clean_pred", "adv_pred"):
            frame[column] = np.where(frame[column] == 0, grade, FAR)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    order = {name: i for i, name in enumerate(dict.fromkeys(frames[0].attack))}
    seconds = sum(f.groupby(["attack", "eps"]).attack_time_s.first() for f in frames)  # each grade's time, summed
    rows["attack_time_s"] = [seconds[key] for key in zip(rows.attack, rows.eps)]
    rows = rows.assign(_order=rows.attack.map(order)).sort_values(["_order", "eps", "sample_id"], kind="stable")
    return rows.drop(columns="_order").reset_index(drop=True)


def criterion_of(text: str | None, model, x, device) -> GradeCriterion | None:
    """A unit's ``grade:K`` from its config (other criteria live in the model itself)."""
    if not GRADE.fullmatch((text or "").strip()):
        return None
    with torch.no_grad():
        return parse_grade(text, model(take(x, slice(0, 1)).to(device)).shape[-1])


def judged_rows(model, x, y, sample_ids, specs, eps_list, criterion: GradeCriterion | None = None,
                **options) -> pd.DataFrame:
    """The run's rows under its success criterion: an argmax flip (the harness itself), or ``grade:K``."""
    if criterion is None:
        return attack_rows(model, x, y, sample_ids, specs, eps_list, **options)
    return graded_rows(model, x, y, sample_ids, specs, eps_list, criterion, **options)
