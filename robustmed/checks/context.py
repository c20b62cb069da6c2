"""What every check sees: the model under evaluation, its data, the budgets and attacks asked for."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from robustmed.attacks import AttackSpec

PROBE_SIZE = 64  # samples used by the cheap model probes (A3–A6)


@dataclass
class CheckContext:
    """The run as the checks see it; ``x``/``y`` are the evaluation subset, on the CPU.

    ``registry_accuracy`` is the checkpoint metadata's ``test_accuracy`` (None for user models);
    ``full_split`` says whether ``x`` is the whole split it was measured on (A9's tolerance).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: Sequence[float]
    specs: Sequence[AttackSpec]
    num_classes: int
    task: str = "multi-class"
    declared_randomized: bool = False
    nondiff_ops: tuple[str, ...] = ()
    adversarially_trained: bool | None = None  # the defense's training step uses attacks (registry); None: unknown
    registry_accuracy: float | None = None
    full_split: bool = False
    device: torch.device | str = "cpu"
    seed: int = 0
    batch_size: int = 256
    sample_ids: Sequence[int] | None = None  # the ids rows carry for x (default 0..n-1)
    extras: dict = field(default_factory=dict)  # facts found by earlier checks (A4: randomized)

    @property
    def ids(self) -> np.ndarray:
        return np.arange(len(self.x)) if self.sample_ids is None else np.asarray(self.sample_ids)

    @property
    def probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[:PROBE_SIZE].to(self.device), self.y[:PROBE_SIZE].to(self.device)

    @property
    def values_per_sample(self) -> int:
        """D: the values one sample holds (all inputs of a mapping together), which whole-image budgets scale with."""
        inputs = self.x.values() if isinstance(self.x, Mapping) else [self.x]
        return sum(v[0].numel() for v in inputs)

    @property
    def randomized(self) -> bool:
        return bool(self.declared_randomized or self.extras.get("randomized"))
