"""Model passes an attack spends, counted where it calls the model, and their per-sample figures from rows.

Time depends on the machine; passes do not, so they make an evaluation's cost comparable across machines.
A forward pass over a batch of B samples counts B sample-passes (padded rows too: they are computed), and
a backward pass counts B when a gradient actually flows back through the logits. Only the attack's own calls
count: the judgement of its candidates is the harness's, the same for every attack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping

import pandas as pd
import torch

COLUMNS = ("forward_passes", "backward_passes")


def batch_length(inputs) -> int:
    """Samples in one model call: a tensor's rows, or those of any entry of a mapping of named inputs."""
    return len(next(iter(inputs.values()))) if isinstance(inputs, Mapping) else len(inputs)


@dataclass
class PassCounter:
    """Sample-level forward and backward passes through one wrapped forward."""

    forward: int = 0
    backward: int = 0

    def wrap(self, forward: Callable) -> Callable:
        def counted(inputs):
            out = forward(inputs)
            self.forward += batch_length(inputs)
            if isinstance(out, torch.Tensor) and out.requires_grad:  # no graph: no backward can run
                out.register_hook(self._backward)
            return out
        return counted

    def _backward(self, grad: torch.Tensor) -> None:
        self.backward += len(grad)

    def per_sample(self, samples: int) -> tuple[float, float]:
        """The counts shared over the ``samples`` the calls attacked: the mean a row of them carries."""
        return self.forward / samples, self.backward / samples


def _own(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows an attack run produced itself: an iteration sweep's derived rows (``derived_from`` in their spec)
    carry their long run's cost, which a total counts once, with that run."""
    if "spec" not in rows:
        return rows
    derived = {s: bool(json.loads(s).get("derived_from")) for s in rows.spec.unique()}
    return rows[~rows.spec.map(derived).astype(bool)]


def _mean(values: pd.Series) -> float | None:
    value = values.mean(skipna=False)
    return None if pd.isna(value) else float(value)


def per_attack(rows: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Per attack at one ε: mean forward and backward passes per sample; None where rows predate the columns."""
    out = {}
    for attack, group in rows.groupby("attack"):
        out[attack] = {kind: _mean(group[column]) if column in group else None
                       for kind, column in zip(("forward", "backward"), COLUMNS)}
    return out


def total(rows: pd.DataFrame) -> dict[str, float | None]:
    """Passes per sample over every attack at one ε (each run once); None where any attack lacks them."""
    figures = per_attack(_own(rows)).values()
    return {kind: None if any(f[kind] is None for f in figures) else float(sum(f[kind] for f in figures))
            for kind in ("forward", "backward")}


def total_time(rows: pd.DataFrame) -> float | None:
    """The attacks' time at one ε (each run once); None for rows stored without it."""
    if "attack_time_s" not in rows:
        return None
    seconds = _own(rows).groupby("attack").attack_time_s.first()
    return None if seconds.isna().any() else float(seconds.sum())


def text(figures: dict | None) -> str:
    """``forward / backward`` passes per sample, or "–" where they were not recorded."""
    if not figures or figures.get("forward") is None or figures.get("backward") is None:
        return "–"
    return f"{figures['forward']:.4g} / {figures['backward']:.4g}"
