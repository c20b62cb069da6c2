"""The benchmark harness: clean pass, attacks per ε, invariant checks, one row per sample × attack × ε.

A sample counts as robust only if it is classified correctly clean *and* under every
attack at that ε (per-sample worst case, checks B3/B4).
"""
from __future__ import annotations

import hashlib
import time
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from robustmed.attacks import FAMILIES, AttackSpec, parse_attack
from robustmed.progress import progress_bar
from robustmed.stats import wilson

BUDGET_TOL = 1e-6


class InvariantError(RuntimeError):
    """An attack broke a hard invariant (check B1/B2): the run is refused, nothing is stored."""


def sample_seed(seed: int, sample_id: int, digest: str) -> int:
    """Seed derived from (run seed, sample id, attack spec): sharding and resuming change nothing."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}:{digest}".encode()).digest()[:8], "little") >> 1


def seeded_starts(x: torch.Tensor, sample_ids: Sequence[int], eps: float, seed: int, digest: str) -> torch.Tensor:
    """Uniform random starts in the ε-ball, one generator per sample."""
    starts = torch.empty_like(x, device="cpu")
    for row, sid in enumerate(sample_ids):
        gen = torch.Generator().manual_seed(sample_seed(seed, int(sid), digest))
        starts[row] = torch.rand(x.shape[1:], generator=gen).mul_(2 * eps).sub_(eps)
    return starts


def select_subset(total: int, n: int | None, seed: int) -> np.ndarray:
    """A seeded evaluation subset of sample ids (sorted); all ids when n is None or ≥ total."""
    if n is None or n >= total:
        return np.arange(total)
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[:n])


def check_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> float:
    """B1: ‖x_adv − x‖∞ ≤ ε, x_adv ∈ [0, 1], no NaN — on every run. Returns the largest norm."""
    if not torch.isfinite(x_adv).all():
        raise InvariantError("B1: adversarial examples contain NaN or inf")
    if x_adv.min() < 0 or x_adv.max() > 1:
        raise InvariantError(f"B1: adversarial examples leave [0, 1] (min {x_adv.min():.4g}, max {x_adv.max():.4g})")
    norm = (x_adv - x).abs().amax().item() if len(x) else 0.0
    if norm > eps * (1 + BUDGET_TOL) + BUDGET_TOL:
        raise InvariantError(f"B1: ‖δ‖∞ = {norm:.6g} exceeds ε = {eps:.6g}")
    return norm


@torch.no_grad()
def clean_pass(model, x, y, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    preds, losses = [], []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size].to(device))
        labels = y[start:start + batch_size].to(device)
        preds.append(logits.argmax(1).cpu())
        losses.append(F.cross_entropy(logits, labels, reduction="none").cpu())
    return torch.cat(preds), torch.cat(losses)


def _run_attack(model, spec: AttackSpec, x, y, ids, eps, seed, device):
    digest = spec.digest(eps)
    family = FAMILIES.get(spec.family)
    start = seeded_starts(x, ids, eps, seed, digest) if spec.random_start else torch.zeros_like(x)
    result = family.run(model, x.to(device), y.to(device), spec=spec, eps=eps, start=start.to(device))
    x_adv = result.x_adv.detach()
    check_budget(x_adv, x.to(device), eps)
    with torch.no_grad():  # B2: a fresh forward pass on the returned examples must agree
        verified = model(x_adv).argmax(1)
    if not torch.equal(verified, result.adv_pred):
        raise InvariantError("B2: re-scoring the adversarial examples disagrees with the attack's own predictions")
    return result, (x_adv.cpu() - x).abs().flatten(1).amax(1)


def attack_rows(model, x, y, sample_ids, specs: Sequence[AttackSpec], eps_list: Sequence[float], *, seed: int = 0,
                batch_size: int = 256, device="cpu", progress: bool = False) -> pd.DataFrame:
    """Per-sample rows for every attack × ε; only clean-correct samples are attacked."""
    model.eval()
    sample_ids = np.asarray(sample_ids)
    clean_pred, clean_loss = clean_pass(model, x, y, batch_size, device)
    correct = clean_pred == y
    frames = []
    with progress_bar(progress) as bar:
        total = len(specs) * len(eps_list) * int(correct.sum())
        task = bar.add_task("attack", total=total)
        for spec in specs:
            for eps in eps_list:
                bar.update(task, description=f"{spec.name} ε={eps:.4g}")
                started = time.perf_counter()
                adv_pred, success, first = clean_pred.clone(), ~correct, torch.where(correct, -1, 0)
                loss, linf = clean_loss.clone(), torch.zeros(len(x))
                todo = torch.nonzero(correct).flatten()
                for chunk in todo.split(batch_size):
                    result, norms = _run_attack(model, spec, x[chunk], y[chunk], sample_ids[chunk.numpy()],
                                                eps, seed, device)
                    adv_pred[chunk], success[chunk] = result.adv_pred.cpu(), result.success.cpu()
                    first[chunk], loss[chunk], linf[chunk] = result.first_success.cpu(), result.loss.cpu(), norms
                    bar.advance(task, len(chunk))
                frames.append(pd.DataFrame({
                    "sample_id": sample_ids, "label": y.numpy(), "clean_pred": clean_pred.numpy(),
                    "clean_correct": correct.numpy(), "adv_pred": adv_pred.numpy(), "success": success.numpy(),
                    "robust": (correct & ~success).numpy(), "first_success_step": first.numpy(),
                    "final_loss": loss.numpy(), "linf": linf.numpy(), "eps": eps, "attack": spec.name,
                    "spec": spec.to_json(eps), "spec_hash": spec.digest(eps), "seed": seed,
                    "attack_time_s": time.perf_counter() - started,
                }))
    return pd.concat(frames, ignore_index=True)


def summarize(rows: pd.DataFrame) -> list[dict]:
    """Per ε: clean accuracy and per-sample worst-case robust accuracy over all attacks, with Wilson CIs."""
    out = []
    for eps, group in rows.groupby("eps", sort=True):
        per_sample = group.groupby("sample_id").agg(clean=("clean_correct", "first"), robust=("robust", "all"))
        n, clean, robust = len(per_sample), int(per_sample.clean.sum()), int(per_sample.robust.sum())
        out.append({
            "eps": float(eps), "n": n,
            "clean_accuracy": clean / n, "clean_ci": wilson(clean, n),
            "robust_accuracy": robust / n, "robust_ci": wilson(robust, n),
            "per_attack": {a: float(g.robust.mean()) for a, g in group.groupby("attack")},
            "attack_time_s": float(group.groupby("attack").attack_time_s.first().sum()),
        })
    return out


def benchmark(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str | Sequence[str] = "pgd100",
              eps: float | Sequence[float] = 4 / 255, *, seed: int = 0, batch_size: int = 256, device="cpu",
              sample_ids: Sequence[int] | None = None, progress: bool = False) -> pd.DataFrame:
    """Public API: run the harness on any ``nn.Module`` (inputs in [0, 1], returns logits).

    >>> rows = benchmark(model, x, y, attack="pgd10", eps=4/255)  # doctest: +SKIP
    >>> rows.robust.mean()  # doctest: +SKIP
    """
    attacks = [attack] if isinstance(attack, str) else list(attack)
    eps_list = sorted({float(eps)} if isinstance(eps, (int, float)) else {float(e) for e in eps})
    specs = [parse_attack(a) for a in attacks]
    ids = np.arange(len(x)) if sample_ids is None else np.asarray(sample_ids)
    model = model.to(device)
    return attack_rows(model, x, y, ids, specs, eps_list, seed=seed, batch_size=batch_size, device=device,
                       progress=progress)
