"""Threat models for multi-input models (check F4).

A model may take a mapping of named inputs. A :class:`ThreatModel` says, per input, whether it
is attacked, its L∞ ε (absolute or a multiple of the run's ε) and its bounds. Gradient attacks
run on a :class:`Packing` of the mapping: one flat tensor per sample whose elements carry their
own ε and bounds; frozen inputs get ε = 0, no bounds and no gradient, so the ordinary projection
returns them bit-identical. Tabular inputs may also constrain single elements: a per-element ε
scale (0 freezes a categorical feature), per-element bounds (valid values) and a grid of valid
values (integer features), which :meth:`Packing.constrain` enforces after every projection.
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
    bounds: tuple[float, float] = (0.0, 1.0)  # the hull of ``element_bounds`` when those are given
    element_scale: tuple[float, ...] | None = None  # per element, × this input's ε (0 freezes the element)
    element_bounds: tuple[tuple[float, float], ...] | None = None  # per element valid range
    element_grid: tuple[float, ...] | None = None  # per element spacing of valid values (0: continuous)

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
        """Element constraints are stored only when set, so earlier threat models keep their digests."""
        inputs = {n: {k: v for k, v in asdict(t).items() if v is not None or not k.startswith("element_")}
                  for n, t in self.inputs.items()}
        return {"name": self.name, "inputs": inputs}


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
        self.eps = self._fill(lambda n: self._scaled(n, budgets[n]), device, dtype)
        self.low = self._fill(lambda n: self._bound(n, 0), device, dtype)
        self.high = self._fill(lambda n: self._bound(n, 1), device, dtype)
        self.grid = self._fill(self._grid, device, dtype)
        self.constrained = bool((self.grid > 0).any())

    def _attacked(self, name: str, field: str):
        threat = self.threat.inputs[name]
        return getattr(threat, field) if threat.attackable else None

    def _scaled(self, name: str, budget: float):
        scale = self._attacked(name, "element_scale")
        return budget if scale is None else [budget * s for s in scale]

    def _bound(self, name: str, side: int):
        threat = self.threat.inputs[name]
        if not threat.attackable:
            return (-math.inf, math.inf)[side]
        elements = threat.element_bounds
        return threat.bounds[side] if elements is None else [b[side] for b in elements]

    def _grid(self, name: str):
        grid = self._attacked(name, "element_grid")
        return 0.0 if grid is None else grid

    def _fill(self, value: Callable[[str], float | list], device, dtype) -> torch.Tensor:
        """One value per element: a scalar fills the input, a list gives each element its own."""
        parts = []
        for name in self.names:
            size, given = math.prod(self.shapes[name]), value(name)
            if isinstance(given, (list, tuple)) and len(given) != size:
                raise UserError(f"threat model: input {name!r} has {size} elements but {len(given)} constraints")
            parts.append(torch.tensor(given, device=device, dtype=dtype) if isinstance(given, (list, tuple))
                         else torch.full((size,), float(given), device=device, dtype=dtype))
        return torch.cat(parts)

    def constrain(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Grid elements onto valid values: each change truncated toward zero to whole grid steps (so it
        stays within ε), then ε and the bounds again (bounds lie on the grid of a valid clean value)."""
        on_grid = self.grid > 0
        steps = (x_adv - x) / torch.where(on_grid, self.grid, torch.ones_like(self.grid))
        delta = torch.sign(steps) * torch.floor(steps.abs() + 1e-4) * self.grid
        delta = torch.minimum(torch.maximum(delta, -self.eps), self.eps)
        snapped = torch.minimum(torch.maximum(x + delta, self.low), self.high)
        return torch.where(on_grid, snapped, x_adv)  # other elements exactly as projected

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
