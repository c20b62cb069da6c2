"""The benchmark harness: clean pass, attacks per ε, invariant checks, one row per sample × attack × ε.

A sample counts as robust only if it is classified correctly clean *and* under every
attack at that ε (per-sample worst case, checks B3/B4). Randomized models (declared by
the defense, or detected by :func:`robustmed.randomness.is_randomized`) are attacked with
EOT and judged over R inference draws: robust only if correct in all R (check C2).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from robustmed.attacks import FAMILIES, AttackSpec, parse_attack
from robustmed.progress import progress_bar
from robustmed.randomness import is_randomized, seed_model
from robustmed.stats import wilson

BUDGET_TOL = 1e-6
DEFAULT_DRAWS = 10  # R of defenses.md §3.3: inference draws judging a randomized model


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


def resolve_spec(spec: AttackSpec, *, randomized: bool, num_classes: int) -> AttackSpec:
    """The spec as run on this model: EOT samples, inference draws, early exit and the class-count
    adaptation (A7) resolved and stored, so every row states what was actually done (E1).

    On a randomized model a spec without ``eot=`` gets the family's EOT default (20 for PGD,
    BIM, MIM), ``draws`` defaults to R = 10, and early exit is off (one lucky draw must not end
    the attack); ``protocol=paper`` keeps the single-draw, non-EOT protocol and says so.
    """
    family = FAMILIES.get(spec.family)
    adaptive = randomized and spec.protocol != "paper"
    spec = replace(spec, eot=spec.eot or (family.randomized_eot if randomized else 1),
                   draws=spec.draws or (DEFAULT_DRAWS if randomized else 1),
                   early_stop=spec.early_stop and not adaptive,
                   extra={**spec.extra, "randomized": randomized, "num_classes": num_classes})
    return family.adapt(spec, num_classes) if family.adapt else spec


@torch.no_grad()
def judge_draws(model, x, y, draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample over ``draws`` forward passes: (correct draws, majority prediction, mean CE loss)."""
    preds, losses = [], []
    for _ in range(draws):
        logits = model(x)
        preds.append(logits.argmax(1))
        losses.append(F.cross_entropy(logits, y, reduction="none"))
    preds = torch.stack(preds)
    return (preds == y).sum(0), preds.mode(0).values, torch.stack(losses).mean(0)


def clean_pass(model, x, y, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, loss) per sample from one forward pass."""
    preds, losses, _ = clean_draws(model, x, y, batch_size, device, 1)
    return preds, losses


def clean_draws(model, x, y, batch_size: int, device, draws: int):
    """(prediction, loss, correct draws) per sample; a majority vote and mean loss when draws > 1."""
    preds, losses, correct = [], [], []
    for start in range(0, len(x), batch_size):
        labels = y[start:start + batch_size].to(device)
        hits, pred, loss = judge_draws(model, x[start:start + batch_size].to(device), labels, draws)
        preds.append(pred.cpu()), losses.append(loss.cpu()), correct.append(hits.cpu())
    return torch.cat(preds), torch.cat(losses), torch.cat(correct)


def _starts(spec: AttackSpec, x, ids, eps, seed, digest) -> torch.Tensor:
    """Seeded starts; one per restart (stacked) when the spec has several."""
    if not spec.random_start:
        return torch.zeros_like(x)
    if spec.restarts == 1:
        return seeded_starts(x, ids, eps, seed, digest)
    return torch.stack([seeded_starts(x, ids, eps, seed, digest if r == 0 else f"{digest}/restart{r}")
                        for r in range(spec.restarts)])


def _run_attack(model, spec: AttackSpec, x, y, ids, eps, seed, device):
    """Attack one chunk and judge it: B1 always; B2 on deterministic models, R draws (C2) otherwise.

    Returns the attack result (success/adv_pred/loss replaced by the R-draw judgement when
    randomized), the per-sample ‖δ‖∞, and the correct-draw counts.
    """
    digest = spec.digest(eps)
    family = FAMILIES.get(spec.family)
    chunk_seed = sample_seed(seed, int(ids[0]), digest)
    if spec.extra.get("randomized"):
        seed_model(model, chunk_seed)
    start = _starts(spec, x, ids, eps, seed, digest)
    result = family.run(model, x.to(device), y.to(device), spec=spec, eps=eps, start=start.to(device),
                        seed=chunk_seed)
    x_adv = result.x_adv.detach()
    check_budget(x_adv, x.to(device), eps)
    labels = y.to(device)
    if spec.extra.get("randomized"):  # B2 is only a FLAG here; C2 decides over R fresh draws
        hits, result.adv_pred, result.loss = judge_draws(model, x_adv, labels, spec.draws)
        result.success = hits < spec.draws
    else:
        with torch.no_grad():  # B2: a fresh forward pass on the returned examples must agree
            verified = model(x_adv).argmax(1)
        if not torch.equal(verified, result.adv_pred):
            raise InvariantError("B2: re-scoring the adversarial examples disagrees with the attack's own predictions")
        hits = (~result.success).long() * spec.draws
    return result, (x_adv.cpu() - x).abs().flatten(1).amax(1), hits.cpu()


def attack_rows(model, x, y, sample_ids, specs: Sequence[AttackSpec], eps_list: Sequence[float], *, seed: int = 0,
                batch_size: int = 256, device="cpu", progress: bool = False,
                randomized: bool = False) -> pd.DataFrame:
    """Per-sample rows for every attack × ε; only clean-correct samples are attacked.

    ``randomized`` declares the model randomized (the defense registry's flag); randomness is
    also detected. A randomized model's clean pass and attacks are judged over R draws:
    ``clean_correct``/``robust`` mean correct in every draw, ``correct_draws``/``draws`` give the
    expected accuracy; samples correct in at least one clean draw are attacked.
    """
    model.eval()
    randomized = bool(randomized or is_randomized(model))
    sample_ids = np.asarray(sample_ids)
    if randomized:
        seed_model(model, seed)
    with torch.no_grad():
        num_classes = model(x[:1].to(device)).shape[-1]
    specs = [resolve_spec(s, randomized=randomized, num_classes=num_classes) for s in specs]
    n_clean = max(s.draws for s in specs) if randomized else 1
    clean_pred, clean_loss, clean_hits = clean_draws(model, x, y, batch_size, device, n_clean)
    correct, attackable = clean_hits == n_clean, clean_hits > 0
    frames = []
    with progress_bar(progress) as bar:
        total = len(specs) * len(eps_list) * int(attackable.sum())
        task = bar.add_task("attack", total=total)
        for spec in specs:
            for eps in eps_list:
                bar.update(task, description=f"{spec.name} ε={eps:.4g}")
                started = time.perf_counter()
                adv_pred, success, first = clean_pred.clone(), ~correct, torch.where(correct, -1, 0)
                loss, linf, hits = clean_loss.clone(), torch.zeros(len(x)), torch.zeros(len(x), dtype=torch.long)
                todo = torch.nonzero(attackable).flatten()
                for chunk in todo.split(batch_size):
                    result, norms, chunk_hits = _run_attack(model, spec, x[chunk], y[chunk],
                                                            sample_ids[chunk.numpy()], eps, seed, device)
                    adv_pred[chunk], success[chunk] = result.adv_pred.cpu(), result.success.cpu() | ~correct[chunk]
                    first[chunk], loss[chunk], linf[chunk] = result.first_success.cpu(), result.loss.cpu(), norms
                    hits[chunk] = chunk_hits
                    bar.advance(task, len(chunk))
                frames.append(pd.DataFrame({
                    "sample_id": sample_ids, "label": y.numpy(), "clean_pred": clean_pred.numpy(),
                    "clean_correct": correct.numpy(), "adv_pred": adv_pred.numpy(), "success": success.numpy(),
                    "robust": (correct & ~success).numpy(), "first_success_step": first.numpy(),
                    "final_loss": loss.numpy(), "linf": linf.numpy(), "eps": eps, "attack": spec.name,
                    "spec": spec.to_json(eps), "spec_hash": spec.digest(eps), "seed": seed,
                    "clean_correct_draws": clean_hits.numpy(), "correct_draws": hits.numpy(),
                    "draws": spec.draws, "protocol": spec.protocol,
                    "attack_time_s": time.perf_counter() - started,
                }))
    return pd.concat(frames, ignore_index=True)


def _expected(group: pd.DataFrame) -> dict:
    """C2 on randomized models: expected robust accuracy (mean over draws, per-sample minimum over attacks)
    next to the worst-of-R ``robust_accuracy``; empty for single-draw rows."""
    if "correct_draws" not in group or (group.draws == 1).all():
        return {}
    rate = group.correct_draws / group.draws
    per_sample = rate.groupby(group.sample_id).min()
    clean = (group.clean_correct_draws / group.draws.max()).groupby(group.sample_id).first()
    return {"expected_robust_accuracy": float(per_sample.mean()), "expected_clean_accuracy": float(clean.mean()),
            "draws": int(group.draws.max())}


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
            **_expected(group),
            "attack_time_s": float(group.groupby("attack").attack_time_s.first().sum()),
        })
    return out


def benchmark(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attack: str | Sequence[str] = "pgd100",
              eps: float | Sequence[float] = 4 / 255, *, seed: int = 0, batch_size: int = 256, device="cpu",
              sample_ids: Sequence[int] | None = None, progress: bool = False,
              randomized: bool = False) -> pd.DataFrame:
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
                       progress=progress, randomized=randomized)
