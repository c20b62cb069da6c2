"""Checks on the defense-removed model (:mod:`robustmed.checks.removal`): B11 transfer and D3 ablation.

Both run under ``--checks full`` on the seeded subset. B11 crafts APGD examples on the model without its
defense and replays them on the deployed one: points the run's white-box attacks left robust but a transfer
attack breaks mean the defense hides its gradients rather than removing the vulnerability (Carlini et al.
2019, "On Evaluating Adversarial Robustness"; RobustBench's Kang2021Stable fell from 71.28 to 64.20 this way).
D3 runs the run's gradient attack on the defense-removed model: without the defense it must succeed, ≈0%
robust for an undefended network at a budget where such networks collapse; if it does not, the robustness
lives outside the declared defense or the attack is broken.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from robustmed.attacks import FAMILIES, parse_attack
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import FLAG, FULL, Finding, register, stops_the_run
from robustmed.checks.removal import Removed, remove_defense
from robustmed.checks.subset import Subset, attack_robust, gradient_spec, run_robust, subset
from robustmed.judging import DEFAULT_DRAWS, judge_draws
from robustmed.resolve import resolve_spec
from robustmed.randomness import seed_model

B11 = register("B11", "transfer from the defense-removed model", FLAG, FULL)
D3 = register("D3", "ablation: attacks succeed on the defense-removed model", FLAG, FULL)

# pyautoattack's APGD-CE then APGD-DLR (two CE starts on C = 2), deterministic base: the name read as of spec
# version 2, when it meant the canonical cascade, so stored findings keep their attack and its seeds
TRANSFER_ATTACK, TRANSFER_SPEC_VERSION = "aa-rand100:eot=1,draws=1", "2"
RATE_TOL = 0.005  # 0.5 points, and at least two samples
ABLATION_EPS = 16 / 255  # A10's largest small perturbation: undefended networks are ≈0% robust there
ABLATION_TOL = 0.05  # "≈0%": at most 5% of the subset stays robust


@torch.no_grad()
def _predictions(model, x: torch.Tensor, device) -> torch.Tensor:
    return model(x.to(device)).argmax(1).cpu()


def _not_applicable(removed: Removed, ctx: CheckContext, sub: Subset) -> str | None:
    """Why the removed model cannot serve: nothing was removed, or without its defense it predicts one class."""
    if not removed.components:
        return ("the defense has no inference-time component to remove (it lives in the weights, or there is "
                "none): the deployed model is its own base")
    preds = _predictions(removed.model, sub.x, ctx.device)
    if len(preds.unique()) == 1:
        return (f"without its defense ({removed.describe()} removed) the network predicts class {int(preds[0])} "
                f"for every sample (clean accuracy {100 * float((preds == sub.y).float().mean()):.1f}%): it "
                "classifies only with its defense, so there is nothing to attack")
    return None


def _transfer_examples(ctx: CheckContext, model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    spec = resolve_spec(parse_attack(TRANSFER_ATTACK, TRANSFER_SPEC_VERSION), randomized=False,
                        num_classes=ctx.num_classes)
    result = FAMILIES.get(spec.family).run(model, x.to(ctx.device), y.to(ctx.device), spec=spec, eps=eps,
                                           start=None, seed=ctx.seed)
    return result.x_adv.detach()


@B11.guard
def transfer(ctx: CheckContext, rows: pd.DataFrame, sub: Subset, removed: Removed) -> Finding:
    """B11: APGD examples from the defense-removed model must not break points the white-box attacks left robust."""
    reason = _not_applicable(removed, ctx, sub)
    if reason:
        return B11.passed(reason + "; no transfer source", removed=removed.components)
    robust = np.flatnonzero(run_robust(rows, sub.ids, sub.eps))
    if not len(robust):
        return B11.passed("the run's attacks left no sample of the subset robust", removed=removed.components)
    x, y = sub.x[robust], sub.y[robust]
    x_adv = _transfer_examples(ctx, removed.model, x, y, sub.eps)
    draws = DEFAULT_DRAWS if ctx.randomized else 1
    if ctx.randomized:
        seed_model(ctx.model, ctx.seed)
    hits, _, _ = judge_draws(ctx.model, x_adv, y.to(ctx.device), draws)
    broken = int((hits < draws).sum())
    rate = broken / len(sub.ids)
    base_broken = float((_predictions(removed.model, x_adv, ctx.device) != y).float().mean())
    details = {"removed": removed.components, "transfer_only": rate, "broken": broken, "attacked": len(robust),
               "base_success": base_broken, "draws": draws}
    fired = rate > max(RATE_TOL, 1 / len(sub.ids))
    return B11.outcome(fired, f"of the {len(robust)} samples the run's attacks left robust, APGD on the model without "
                       f"its defense ({removed.describe()} removed) breaks {100 * base_broken:.0f}% there, and "
                       f"replayed on the deployed model {broken} are misclassified ({100 * rate:.1f}% of the subset)"
                       + (": the defense masks gradients" if fired else ""), **details)


@D3.guard
def ablation(ctx: CheckContext, rows: pd.DataFrame, sub: Subset, removed: Removed) -> Finding:
    """D3: the run's gradient attack on the defense-removed model must leave ≈0% robust at 16/255."""
    reason = _not_applicable(removed, ctx, sub)
    if reason:
        return D3.passed(reason, removed=removed.components)
    spec = gradient_spec(ctx)
    attack = f"{spec.family}{spec.steps}:loss={spec.loss}"
    large = max(ABLATION_EPS, sub.eps)
    at_eps, at_large = (float(attack_robust(ctx, sub, attack, eps=e, model=removed.model, randomized=False).mean())
                        for e in (sub.eps, large))
    defended = float(run_robust(rows, sub.ids, sub.eps).mean())
    details = {"removed": removed.components, "leftover_random": removed.leftover, "robust_removed": at_eps,
               "robust_removed_large": at_large, "large_eps": large, "robust_defended": defended,
               "adversarially_trained": ctx.adversarially_trained}
    numbers = (f"{attack} leaves {100 * at_eps:.1f}% robust at ε {255 * sub.eps:.3g}/255 and {100 * at_large:.1f}% "
               f"at {255 * large:.3g}/255 without the defense ({removed.describe()} removed), "
               f"{100 * defended:.1f}% with it")
    if ctx.adversarially_trained:
        return D3.passed(numbers + "; the weights are adversarially trained (registry), so no ≈0% is expected",
                         **details)
    return D3.outcome(at_large > ABLATION_TOL, numbers + (": the attack fails on the undefended network (masking "
                      "outside the declared defense, or a broken attack)" if at_large > ABLATION_TOL else ""),
                      **details)


def run_ablation(ctx: CheckContext, rows: pd.DataFrame, full: bool = False) -> list[Finding]:
    if not full:
        return []
    try:
        removed = remove_defense(ctx.model)
    except Exception as exc:  # noqa: BLE001  (a user's model may not survive the copy and surgery)
        if stops_the_run(exc):
            raise
        return [B11.not_run(exc), D3.not_run(exc)]
    sub = subset(ctx, rows)
    return [transfer(ctx, rows, sub, removed), ablation(ctx, rows, sub, removed)]
