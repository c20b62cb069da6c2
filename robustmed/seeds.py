"""Which samples a run takes and where each attack starts: seeded per (run seed, sample id, attack spec), so
sharding, resuming and batching change no sample's start."""
from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import torch

from robustmed.attacks import AttackSpec
from robustmed.attacks.pgd import project_l2
from robustmed.attacks.threat import ThreatModel
from robustmed.tensors import Inputs


def sample_seed(seed: int, sample_id: int, digest: str) -> int:
    """Seed derived from (run seed, sample id, attack spec): sharding and resuming change nothing."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}:{digest}".encode()).digest()[:8], "little") >> 1



def seed_digest(spec: AttackSpec, eps: float) -> str:
    """The digest seeding starts: the spec's without its ε mode (option and field), which changes
    which samples run, never their seeds — so ``eps_mode=sweep`` reuses the independent run's starts."""
    name = re.sub(r"(?<=[:,])eps_mode=[a-z]+,?", "", spec.name).rstrip(",:")
    return replace(spec, name=name, eps_mode="").digest(eps)



def seeded_starts(x: Inputs, sample_ids: Sequence[int], eps, seed: int, digest: str, norm: str = "Linf") -> Inputs:
    """Uniform random starts in the ε-ball, one generator per sample (L2: a uniformly random direction at a
    uniformly random radius, torchattacks' PGDL2 start).

    For a mapping of inputs ``eps`` maps each name to its budget (0: frozen, start 0); the
    inputs draw in that order from the sample's one generator.
    """
    if not isinstance(x, Mapping):
        if norm == "L2":
            return _l2_starts(x, sample_ids, eps, seed, digest)
        if norm == "L1":  # the L1 attacks (pyautoattack's kernels) draw their own starts
            return torch.zeros_like(x, device="cpu")
        return _mapping_starts({"x": x}, sample_ids, {"x": eps}, seed, digest)["x"]
    return _mapping_starts(x, sample_ids, eps, seed, digest)


def _l2_starts(x: torch.Tensor, sample_ids, eps: float, seed: int, digest: str) -> torch.Tensor:
    starts = torch.zeros_like(x, device="cpu")
    for row, sid in enumerate(sample_ids):
        gen = torch.Generator().manual_seed(sample_seed(seed, int(sid), digest))
        direction = torch.randn(x.shape[1:], generator=gen)
        radius = torch.rand(1, generator=gen)
        starts[row] = direction * (radius * eps / direction.norm(p=2).clamp_min(1e-12))
    return starts



def _mapping_starts(x, sample_ids, budgets: dict, seed, digest) -> dict:
    starts = {name: torch.zeros_like(x[name], device="cpu") for name in budgets}
    for row, sid in enumerate(sample_ids):
        gen = torch.Generator().manual_seed(sample_seed(seed, int(sid), digest))
        for name, eps in budgets.items():
            if eps:
                starts[name][row] = torch.rand(x[name].shape[1:], generator=gen).mul_(2 * eps).sub_(eps)
    return starts



def select_subset(total: int, n: int | None, seed: int) -> np.ndarray:
    """A seeded evaluation subset of sample ids (sorted); all ids when n is None or ≥ total."""
    if n is None or n >= total:
        return np.arange(total)
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[:n])



def _stack(starts: list) -> Inputs:
    if isinstance(starts[0], Mapping):
        return {name: torch.stack([s[name] for s in starts]) for name in starts[0]}
    return torch.stack(starts)



def starts(spec: AttackSpec, x, ids, eps, seed, digest, threat: ThreatModel | None = None) -> Inputs:
    """Seeded starts; one per restart (stacked) when the spec has several."""
    if not spec.random_start:
        return {k: torch.zeros_like(v) for k, v in x.items()} if isinstance(x, Mapping) else torch.zeros_like(x)
    budget = threat.budgets(eps) if threat is not None else eps
    if spec.restarts == 1:
        return seeded_starts(x, ids, budget, seed, digest, spec.norm)
    return _stack([seeded_starts(x, ids, budget, seed, digest if r == 0 else f"{digest}/restart{r}", spec.norm)
                   for r in range(spec.restarts)])



def warm_start(start: Inputs, previous: Inputs, x: Inputs, eps: float, threat: ThreatModel | None,
               norm: str = "Linf") -> Inputs:
    """The previous ε's example, projected into the new ball: it replaces the (first) start."""
    if norm == "L2" and not isinstance(x, Mapping):
        return _replace_first(start, project_l2(previous, x, eps) - x, x)
    if isinstance(x, Mapping):
        budgets = threat.budgets(eps)
        delta = {n: torch.clamp(previous[n] - x[n], -budgets[n], budgets[n]) for n in x}
        return {n: _replace_first(start[n], delta[n], x[n]) for n in x}
    return _replace_first(start, torch.clamp(previous - x, -eps, eps), x)



def _replace_first(start: torch.Tensor, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if start.ndim == x.ndim + 1:  # restarts: the warm start is the first
        return torch.cat([delta[None], start[1:]])
    return delta
