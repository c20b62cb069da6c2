"""Attack unit test B16: the binarization test of Zimmermann et al. (NeurIPS 2022), opt-in under ``--checks full``.

For a sample x the model's classification head is replaced by a binary linear readout trained on the
model's own features so that x and points near it (the ε/2-ball) are class 0 and one corner of the
ε-ball is class 1. An adversarial example then provably exists within ε (the corner, verified by a
forward pass), and the run's gradient attack, pointed at the binarized model, must find one. An attack
that fails on many samples cannot be trusted to find adversarial examples on the original model either
(the paper: 11 of 13 published evaluations fail this test). Everything up to the features — the
defense included — is unchanged. A randomized model is tested with its randomness frozen: one
realization of every random module and one global seed per forward, so "exists" is a fact.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from robustmed.attacks import FAMILIES
from robustmed.attacks.pgd import uniform_start
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import FLAG, FULL, Finding, register
from robustmed.checks.subset import gradient_spec, subset
from robustmed.resolve import resolve_spec
from robustmed.randomness import frozen

B16 = register("B16", "attack unit test (binarization)", FLAG, FULL)

TESTS = 16  # samples of the seeded subset, one binarized model each
INNER_POINTS = 32  # class-0 points drawn in the ε/2-ball around x
READOUT_STEPS = 200
PASS_RATE = 0.9  # the attack must find the adversarial region on at least 90% of the valid tests


class SeededForward(nn.Module):
    """Every forward under one global seed (MC dropout and other global-RNG noise held fixed)."""

    def __init__(self, model: nn.Module, seed: int):
        super().__init__()
        self.model, self.seed = model, seed

    def forward(self, x):
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            return self.model(x)


def final_linear(model: nn.Module, num_classes: int) -> tuple[nn.Module, str] | None:
    """(parent, attribute) of the last ``nn.Linear`` producing the class logits, the layer the test replaces."""
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear) and child.out_features == num_classes:
                found = (parent, name)
    return found


def _readout(features: torch.Tensor, labels: torch.Tensor) -> nn.Linear:
    """A logistic-regression readout on standardized features, the one positive weighted like all negatives."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    weight = torch.where(labels == 1, float((labels == 0).sum()), 1.0)
    optimizer = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(READOUT_STEPS):
        optimizer.zero_grad()
        loss = (weight * F.binary_cross_entropy_with_logits(z @ w + b, labels.float(), reduction="none")).mean()
        (loss + 1e-4 * w.pow(2).sum()).backward()
        optimizer.step()
    layer = nn.Linear(features.shape[1], 2)
    with torch.no_grad():  # logits (0, w·φ + b) in the original feature units
        layer.weight.zero_()
        layer.weight[1] = w / std
        layer.bias.zero_()
        layer.bias[1] = b - (w / std) @ mean
    return layer.to(features)


def _forward(model: nn.Module, points: torch.Tensor, one_by_one: bool) -> torch.Tensor:
    """Logits of ``points``; one per forward under frozen per-sample noise, so every point sees the same map."""
    with torch.no_grad():
        if one_by_one:
            return torch.cat([model(p[None]) for p in points])
        return model(points)


def _one_test(model: nn.Module, head: tuple[nn.Module, str], x: torch.Tensor, eps: float, spec, seed: int,
              one_by_one: bool) -> tuple[bool, bool]:
    """(valid, found) for one sample: the readout makes the corner the class-1 point; the attack finds class 1."""
    generator = torch.Generator().manual_seed(seed)
    inner = (x + uniform_start(x.expand(INNER_POINTS, *x.shape[1:]), eps / 2, generator)).clamp(0, 1)
    corner = (x + eps * torch.randint(0, 2, x.shape, generator=generator).to(x).mul(2).sub(1)).clamp(0, 1)
    points = torch.cat([x, inner, corner])
    labels = torch.zeros(len(points), dtype=torch.long)
    labels[-1] = 1
    parent, name = head
    setattr(parent, name, nn.Identity())
    features = _forward(model, points, one_by_one).float().cpu()
    setattr(parent, name, _readout(features, labels).to(x.device))
    predicted = _forward(model, points, one_by_one).argmax(1).cpu()
    exists = _forward(model, corner, True).argmax(1).item() == 1  # the proof, in the attack's own batch shape
    if not (exists and torch.equal(predicted, labels)):
        return False, False
    target = torch.zeros(1, dtype=torch.long, device=x.device)
    result = FAMILIES.get(spec.family).run(model, x, target, spec=spec, eps=eps, start=None, seed=seed)
    return True, bool(result.success.item())


@B16.guard
def binarization(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B16: on binarized copies of the model where an adversarial example provably exists, the attack finds it."""
    sub = subset(ctx, rows, TESTS)
    tested = copy.deepcopy(ctx.model).eval()
    head = final_linear(tested, ctx.num_classes)
    if head is None:
        return B16.passed("no final linear layer producing the logits: nothing to binarize")
    run_spec = gradient_spec(ctx)
    spec = replace(resolve_spec(run_spec, randomized=False, num_classes=2), eot=1, draws=1)
    forward = SeededForward(tested, ctx.seed)
    valid = found = 0
    with frozen(tested):
        for i in range(len(sub.ids)):
            ok, hit = _one_test(forward, head, sub.x[i:i + 1].to(ctx.device), sub.eps, spec, ctx.seed + i,
                                one_by_one=ctx.randomized)
            valid, found = valid + ok, found + hit
    if not valid:
        return B16.passed(f"no valid test on {len(sub.ids)} samples (the readout could not isolate the corner)",
                          valid=0, tests=len(sub.ids))
    rate = found / valid
    details = {"valid": valid, "found": found, "tests": len(sub.ids), "pass_rate": rate,
               "frozen_randomness": ctx.randomized}
    return B16.outcome(rate < PASS_RATE, f"{run_spec.family}{run_spec.steps} finds the adversarial example that "
                       f"provably exists on {found} of {valid} binarized models ({100 * rate:.0f}%, pass ≥ "
                       f"{100 * PASS_RATE:.0f}%)" + (": the attack is too weak for this model" if rate < PASS_RATE
                                                     else ""), **details)


def run_binarization(ctx: CheckContext, rows: pd.DataFrame, full: bool = False) -> list[Finding]:
    return [binarization(ctx, rows)] if full else []
