"""Threat models for multi-input models (evaluation spec §7 item 5, check F4; defenses.md §6).

A model may take a mapping of named inputs. A :class:`ThreatModel` says, per input, whether it
is attacked, its L∞ ε (absolute or a multiple of the run's ε) and its bounds. Gradient attacks
run on a :class:`Packing` of the mapping: one flat tensor per sample whose elements carry their
own ε and bounds; frozen inputs get ε = 0, no bounds and no gradient, so the ordinary projection
returns them bit-identical.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import torch

from robustmed.errors import UserError


@dataclass(frozen=True)
class InputThreat:
    """One input's budget: ε is ``eps`` when given, else ``scale`` × the run's ε."""

    attackable: bool = True
    norm: str = "Linf"
    eps: float | None = None
    scale: float = 1.0
    bounds: tuple[float, float] = (0.0, 1.0)

    def budget(self, run_eps: float) -> float:
        if not self.attackable:
            return 0.0
        return self.eps if self.eps is not None else self.scale * run_eps


@dataclass(frozen=True)
class ThreatModel:
    """Per-input threat, in the model's input order; ``name`` labels the rows (``joint``, ``image`` …)."""

    inputs: dict[str, InputThreat] = field(default_factory=dict)
    name: str = "joint"

    def __post_init__(self):
        if any(t.norm != "Linf" for t in self.inputs.values()):
            raise UserError("threat model: only the L∞ norm is implemented")
        if not any(t.attackable for t in self.inputs.values()):
            raise UserError(f"threat model {self.name!r}: no input is attackable")

    @classmethod
    def joint(cls, names, **options) -> "ThreatModel":
        """Every input attacked, each within its own ball (``options`` apply to all)."""
        return cls({n: InputThreat(**options) for n in names}, "joint")

    @classmethod
    def only(cls, name: str, names, **options) -> "ThreatModel":
        """Only ``name`` attacked (a per-modality attack); the other inputs frozen."""
        return cls({n: InputThreat(attackable=n == name, **options) for n in names}, name)

    def budgets(self, run_eps: float) -> dict[str, float]:
        return {n: t.budget(run_eps) for n, t in self.inputs.items()}

    def to_json(self) -> dict:
        return {"name": self.name, "inputs": {n: asdict(t) for n, t in self.inputs.items()}}


def modality_threats(names, **options) -> list[ThreatModel]:
    """F4: the joint attack and one attack per input alone."""
    names = tuple(names)
    return [ThreatModel.joint(names, **options), *(ThreatModel.only(n, names, **options) for n in names)]


class Packing:
    """Flat view of a mapping of inputs: per-element ε and bounds; frozen inputs detached."""

    def __init__(self, x: Mapping[str, torch.Tensor], threat: ThreatModel, run_eps: float):
        missing = set(threat.inputs) ^ set(x)
        if missing:
            raise UserError(f"threat model and inputs disagree on {sorted(missing)}")
        dtypes = {t.dtype for t in x.values()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise UserError("multi-input attacks need floating inputs of one dtype")
        self.names, self.threat = list(threat.inputs), threat
        self.shapes = {n: x[n].shape[1:] for n in self.names}
        sizes = [math.prod(self.shapes[n]) for n in self.names]
        ends = torch.tensor(sizes).cumsum(0).tolist()
        self.slices = {n: slice(e - s, e) for n, s, e in zip(self.names, sizes, ends)}
        device, dtype = x[self.names[0]].device, x[self.names[0]].dtype
        budgets = threat.budgets(run_eps)
        self.eps = self._fill(lambda n: budgets[n], device, dtype)
        self.low = self._fill(lambda n: self._bound(n, 0), device, dtype)
        self.high = self._fill(lambda n: self._bound(n, 1), device, dtype)

    def _bound(self, name: str, side: int) -> float:
        threat = self.threat.inputs[name]
        return threat.bounds[side] if threat.attackable else (-math.inf, math.inf)[side]

    def _fill(self, value: Callable[[str], float], device, dtype) -> torch.Tensor:
        return torch.cat([torch.full((math.prod(self.shapes[n]),), float(value(n)), device=device, dtype=dtype)
                          for n in self.names])

    def pack(self, tree: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(…, N, *shape) per input → (…, N, D); leading dimensions (restarts) are kept."""
        parts = [tree[n].reshape(*tree[n].shape[:tree[n].ndim - len(self.shapes[n])], -1) for n in self.names]
        return torch.cat(parts, dim=-1)

    def unpack(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, D) → mapping; frozen inputs are detached, so no gradient reaches them."""
        out = {}
        for name in self.names:
            part = flat[:, self.slices[name]].reshape(len(flat), *self.shapes[name])
            out[name] = part if self.threat.inputs[name].attackable else part.detach()
        return out

    def forward(self, forward: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda flat: forward(self.unpack(flat))
