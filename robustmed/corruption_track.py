"""The harness's corruption track: every sample corrupted by each of its data set's MedMNIST-C corruptions at each
severity, judged like a candidate, one row per sample × corruption × severity.

Unlike an attack, a corruption is applied to every sample (a clean error it happens to fix counts as correct,
as MedMNIST-C counts accuracy), consults no model (its rows spend no passes of their own) and has no norm-ball
budget: its rows carry ε = 0 and norm "none", and ``linf``, ``l2``, ``l1`` are the measured ‖x_c − x‖∞, ₂ and ₁,
for information. Each (sample, corruption, severity) draws from its own generator seeded by (run seed, sample id,
spec digest, corruption, severity), so a row does not depend on the batch it was corrupted in. Check B18 holds every chunk to its invariants: finite,
in [0, 1], the input's shape, and the same bytes when corrupted again from the same seeds.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from robustmed.attacks import AttackSpec
from robustmed.attacks.corruptions import corrupt, resolve, severities
from robustmed.errors import UserError
from robustmed.judging import InvariantError, judge_draws_masked
from robustmed.randomness import seed_model
from robustmed.seeds import sample_seed
from robustmed.tensors import to_device


def check_corrupted(corrupted: torch.Tensor, x: torch.Tensor, again: torch.Tensor) -> None:
    """B18: a corrupted chunk is finite, in [0, 1], shaped like its input and reproduced by its seeds."""
    if corrupted.shape != x.shape:
        raise InvariantError(f"B18: corrupted images have shape {tuple(corrupted.shape)}, not {tuple(x.shape)}")
    if not torch.isfinite(corrupted).all() or (len(x) and (corrupted.min() < 0 or corrupted.max() > 1)):
        raise InvariantError("B18: corrupted images leave [0, 1] or contain NaN")
    if not torch.equal(corrupted, again):
        raise InvariantError("B18: corrupting again from the same seeds gave other images")


def _seeds(seed: int, ids, digest: str, corruption: str, severity: int) -> list[int]:
    return [sample_seed(seed, int(i), f"{digest}/{corruption}/{severity}") for i in ids]


def _judged_chunk(model, spec: AttackSpec, x, y, ids, corruption: str, severity: int, parameter, seed: int,
                  digest: str, device) -> tuple:
    """One chunk corrupted (twice: B18) and judged: (images, correct draws, prediction, loss, draw mask)."""
    seeds = _seeds(seed, ids, digest, corruption, severity)
    images = corrupt(x, corruption, parameter, seeds)
    check_corrupted(images, x, corrupt(x, corruption, parameter, seeds))
    if spec.extra.get("randomized"):  # the judgement's draws, seeded per chunk like an attack's
        seed_model(model, seeds[0])
    hits, pred, loss, mask = judge_draws_masked(model, to_device(images, device), y.to(device), spec.draws)
    return images, hits.cpu(), pred.cpu(), loss.cpu(), mask.cpu()


def _rows(spec: AttackSpec, corruption: str, severity: int, judged: list, x, y, ids, clean, seed: int):
    """The rows of one (corruption, severity) over every sample, in input order."""
    images = torch.cat([j[0] for j in judged])
    hits, pred, loss, mask = (torch.cat([j[k] for j in judged]) for k in range(1, 5))
    correct = hits == spec.draws
    return pd.DataFrame({
        "sample_id": ids, "label": y.numpy(), "clean_pred": clean.pred.numpy(),
        "clean_correct": clean.correct.numpy(), "adv_pred": pred.numpy(), "success": (~correct).numpy(),
        "robust": correct.numpy(), "first_success_step": torch.where(correct, -1, 0).numpy(),
        "final_loss": loss.numpy(), "linf": (images - x).abs().flatten(1).amax(1).numpy(),
        "l2": (images - x).flatten(1).norm(dim=1).numpy(), "l1": (images - x).flatten(1).abs().sum(1).numpy(),
        "eps": 0.0, "norm": spec.norm, "attack": spec.name, "spec": spec.to_json(0.0), "spec_hash": spec.digest(0.0), "seed": seed,
        "clean_correct_draws": clean.hits.numpy(), "correct_draws": hits.numpy(),
        "clean_draw_mask": clean.mask.numpy(), "draw_mask": mask.numpy(), "draws": spec.draws,
        "protocol": spec.protocol, "source_eps": 0.0, "attack_time_s": 0.0,
        "forward_passes": 0.0, "backward_passes": 0.0, "corruption": corruption, "severity": severity,
        "_position": np.arange(len(ids)),
    })


def corruption_rows(model, spec: AttackSpec, x, y, sample_ids, clean, *, seed: int, batch_size: int, device,
                    dataset: str | None, tick: Callable[[float], None], share: float) -> pd.DataFrame:
    """Rows of every sample × corruption × severity of ``dataset``'s set (the generic one when None), sample by
    sample in input order; ``share`` is the progress this track stands for, ticked as it goes."""
    if isinstance(x, Mapping):
        raise UserError("corruptions take a single image tensor; multi-input models: pgd, bim, mim")
    spec = resolve(spec, dataset, x.shape[-1])
    digest, ids = spec.digest(0.0), np.asarray(sample_ids)
    steps = [(c, s, p) for c, values in spec.extra["corruptions"].items() for s, p in zip(severities(spec), values)]
    started, frames = time.perf_counter(), []
    for corruption, severity, parameter in steps:
        judged = [_judged_chunk(model, spec, x[start:start + batch_size], y[start:start + batch_size],
                                ids[start:start + batch_size], corruption, severity, parameter, seed, digest, device)
                  for start in range(0, len(y), batch_size)]
        frames.append(_rows(spec, corruption, severity, judged, x, y, ids, clean, seed))
        tick(share / len(steps))
    rows = pd.concat(frames, ignore_index=True).sort_values("_position", kind="stable")
    rows["attack_time_s"] = time.perf_counter() - started
    return rows.drop(columns="_position").reset_index(drop=True)
