"""The Python API (`robustmed.evaluate`), on the path `robustmed bench` takes.

The same pre-flight checks (range, head, randomness detection: A4), the same attacks (EOT and judgement
over fresh draws once a model is found randomized, without being told), the same invariants and post-run
checks; the store only when asked (``out``).

>>> result = evaluate(model, x, y, attack="pgd20")  # doctest: +SKIP
>>> result.summary[0]["robust_accuracy"], result.findings  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from robustmed import data as data_mod, store
from robustmed.checks import CheckContext, Finding, unreliable
from robustmed.contracts import adapt_head, as_multilabel, check_range
from robustmed.corruption_summary import summarize_corruptions
from robustmed.errors import UserError
from robustmed.ordinal import criterion_of
from robustmed.provenance import ENGINE, package_versions, resolve_device, weights_sha256
from robustmed.run.bench import BenchConfig, attack_and_check
from robustmed.run.config import run_norm
from robustmed.run.threats import declare_criterion, for_checks
from robustmed.seeds import select_subset
from robustmed.summary import summarize
from robustmed.tensors import batch_size, take, to_device

@dataclass
class Evaluation:
    """What one evaluation found: per-ε ``summary`` (worst case over the attacks, per attack, intervals,
    balanced accuracy; randomized models: expected accuracy over draws), per-sample ``rows`` (columns in
    docs/api.md), the checks' ``findings``; ``run_dir`` when it was stored."""

    summary: list[dict]
    rows: pd.DataFrame = field(repr=False)
    findings: list[Finding] = field(repr=False)
    randomized: bool
    run_dir: Path | None = None
    corruptions: dict | None = None  # the corruption track's figures (robustmed.corruption_summary), if it ran

    @property
    def unreliable(self) -> bool:
        """A check flagged the evaluation (a FLAG or ERROR fired): read ``fired`` before quoting a figure."""
        return unreliable(self.findings)

    @property
    def fired(self) -> list[Finding]:
        return [f for f in self.findings if f.fired]

    @property
    def headline(self) -> float:
        """The worst case at the first ε: expected robust accuracy on a randomized model, else robust accuracy;
        with the corruption track alone, the mean accuracy over its corruptions and severities."""
        if not self.summary:
            return self.corruptions["mean"]["accuracy"]
        first = self.summary[0]
        return first.get("expected_robust_accuracy", first["robust_accuracy"])

    def __str__(self) -> str:
        lines = []
        for s in self.summary:
            key = "expected_robust_accuracy" if self.randomized else "robust_accuracy"
            low, high = s["expected_robust_ci" if self.randomized else "robust_ci"]
            lines.append(f"ε = {s['eps'] * 255:.3g}/255, n = {s['n']}: {'expected ' if self.randomized else ''}robust "
                         f"accuracy {100 * s[key]:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (worst case over "
                         f"{', '.join(sorted(s['per_attack']))})")
        if self.corruptions:
            c = self.corruptions["mean"]
            lines.append(f"corruptions ({self.corruptions['corruption_set']} set), n = {self.corruptions['n']}: mean "
                         f"accuracy {100 * c['accuracy']:.1f}%, balanced error {100 * c['balanced_error']:.1f}% "
                         f"({100 * c['balanced_error_increase']:+.1f} points over clean)")
        lines += [f"check {f.id} fired: {f.reason}" for f in self.fired]
        return "\n".join(lines)


def _as_list(value) -> list:
    return [value] if isinstance(value, (str, int, float)) else list(value)


def _from_data_set(model, name: str, split: str, n: int | None, seed: int, data_root, device, criterion):
    dataset = data_mod.load(name, data_root)
    x_all, _ = dataset.split(split)
    sample = to_device(take(x_all, slice(0, 1)), device)
    if dataset.multilabel:
        model = as_multilabel(model, sample, dataset.labels)
    else:
        model = adapt_head(model, sample, dataset.num_classes)[0]
    declare_criterion(model, dataset, criterion)
    x_all, y_all = dataset.split(split)  # after the criterion: a multi-label task's classes follow it
    ids = select_subset(batch_size(x_all), n, seed)
    facts = {"dataset": dataset.key, "dataset_sha256": dataset.sha256, "task": dataset.task,
             "corruption_set": dataset.name,
             "num_classes": dataset.num_classes, "full_split": len(ids) == batch_size(x_all)}
    return model, take(x_all, ids), y_all[ids], ids, facts


def _from_tensors(model, x, y, sample_ids, device):
    if y is None:
        raise UserError("evaluate(model, x, y): give the labels y with the images x, or a data set name as x")
    check_range(x)
    model, _ = adapt_head(model, to_device(take(x, slice(0, 1)), device), None)
    with torch.no_grad():
        classes = int(model(to_device(take(x, slice(0, 1)), device)).shape[-1])
    ids = np.arange(len(y)) if sample_ids is None else np.asarray(sample_ids)
    digest = hashlib.sha256(torch.as_tensor(x).cpu().numpy().tobytes() + y.cpu().numpy().tobytes()).hexdigest()
    return model, x, torch.as_tensor(y).long(), ids, {"dataset": "tensors", "dataset_sha256": digest,
                                                      "task": "multi-class" if classes > 2 else "binary-class",
                                                      "num_classes": classes, "full_split": True}


def evaluate(model: torch.nn.Module, x, y: torch.Tensor | None = None, *, attack: str | Sequence[str] = "pgd100",
             eps: float | Sequence[float] = 4 / 255, n: int | None = None, split: str = "test", seed: int = 0,
             batch_size: int = 256, device: str = "cpu", checks: str = "cheap", criterion: str | None = None,
             sample_ids: Sequence[int] | None = None, data_root: str | None = None, out: str | None = None,
             progress: bool = False, norm: str = "linf") -> Evaluation:
    """Evaluate any ``nn.Module`` (inputs in [0, 1], logits out) as `robustmed bench` does.

    ``x`` is an image tensor with its labels ``y``, or a data set name or file (its ``split``; ``n`` seeded
    samples, all when None). ``attack`` and ``eps`` take what ``bench`` takes (``"pgd20"``, ``"aa"``;
    several ε run as one nested sweep). A randomized model is found by the pre-flight checks and attacked
    with EOT, each candidate judged over fresh draws; its headline is expected accuracy. An ERROR finding
    refuses the evaluation (:class:`~robustmed.errors.UserError`); FLAG findings come back in ``findings``.
    ``out`` stores the rows and a manifest there, as a run directory. ``norm="l2"`` attacks in L2 every attack
    that sets no ``norm=`` of its own (ε over the whole image, which may exceed 1).
    """
    device = resolve_device(device)
    model = model.to(device).eval()
    cfg = BenchConfig(attack=",".join(_as_list(attack)), eps=",".join(repr(float(e)) for e in _as_list(eps)),
                      n=n, split=split, seed=seed, batch_size=batch_size, device=str(device), checks=checks,
                      progress=progress, criterion=criterion, norm=run_norm(norm))
    if isinstance(x, (str, Path)):
        model, x, y, ids, facts = _from_data_set(model, str(x), split, n, seed, data_root, device, criterion)
    else:
        model, x, y, ids, facts = _from_tensors(model, x, y, sample_ids, device)
    ctx = CheckContext(model, x, y, cfg.eps_values(), cfg.specs(), facts["num_classes"], task=facts["task"],
                       full_split=facts["full_split"], device=device, seed=seed, batch_size=batch_size,
                       sample_ids=ids)
    grade = criterion_of(criterion, model, x, device)
    if grade is not None:  # ordinal: success is a move of K grades (robustmed.ordinal)
        ctx.extras.update(success_criterion=grade.description, grade=grade)
    elif criterion and not isinstance(x, (str, Path)) and not hasattr(model, "set_criterion"):
        raise UserError(f"criterion {criterion!r}: on tensors only grade:K applies; give a data set name for the "
                        "multi-label criteria")
    ctx.extras["corruption_set"] = facts.get("corruption_set")  # a data set's MedMNIST-C set; tensors: generic
    ctx = for_checks(ctx)
    rows, findings, _ = attack_and_check(cfg, ctx, refuse=True)
    result = Evaluation(summarize(rows), rows, findings, ctx.randomized, corruptions=summarize_corruptions(rows))
    if out is not None:
        result.run_dir = _store(result, cfg, model, facts, Path(out))
    return result


def _store(result: Evaluation, cfg: BenchConfig, model, facts: dict, root: Path) -> Path:
    """The rows and a manifest under ``root``, named by what decides them (weights, data, attacks, ε, seed)."""
    weights = weights_sha256(model)
    key = {"weights_sha256": weights, "dataset_sha256": facts["dataset_sha256"], "attack": cfg.attack,
           "eps": cfg.eps, "n": cfg.n, "seed": cfg.seed, "split": cfg.split, "engine": ENGINE,
           **({"norm": cfg.norm} if cfg.norm else {})}
    run_id = f"evaluate-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]}"
    run_dir = root.expanduser().resolve() / run_id
    store.writable(run_dir.parent)
    rows = result.rows.assign(run_id=run_id, model=type(model).__name__, defense="custom",
                              dataset=facts["dataset"], split=cfg.split)
    manifest = {"run_id": run_id, "created": datetime.now(timezone.utc).isoformat(), "config": key,
                "model": type(model).__name__, "defense": "custom", "dataset": facts["dataset"],
                "dataset_sha256": facts["dataset_sha256"], "engine": ENGINE,
                "sample_ids": [int(i) for i in result.rows.sample_id.unique()], "summary": result.summary,
                **({"corruption_summary": result.corruptions} if result.corruptions else {}),
                "findings": [f.to_json() for f in result.findings], "unreliable": result.unreliable,
                "packages": package_versions()}
    run_dir.mkdir(parents=True, exist_ok=True)
    store.finish_run(run_dir, rows, manifest)
    return run_dir


def benchmark(model: torch.nn.Module, x, y: torch.Tensor | None = None, **options) -> pd.DataFrame:
    """Kept for scripts written against robustmed 0.1: ``evaluate(...).rows``, so it too runs the checks and
    attacks a randomized model with EOT. New code should call :func:`evaluate` and read its summary."""
    return evaluate(model, x, y, **options).rows
