"""Judging a candidate: the budget invariants every run checks (B1), and a model's verdicts over fresh inference
draws (C2), kept per draw as bits so intervals can resample draws as well as samples."""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from robustmed.attacks.threat import ThreatModel
from robustmed.errors import UserError
from robustmed.tensors import take, to_device
from robustmed.tracks import NORM_SUBSCRIPTS


BUDGET_TOL = 1e-6
NORM_ORDERS = {"Linf": float("inf"), "L2": 2, "L1": 1}
ROUNDING = 2.0 ** -24  # float32's half-ulp at 1: how far each stored pixel of a candidate may sit off its exact value


def budget_slack(eps: float, norm: str, dims: int) -> float:
    """How far above ε a candidate may measure and still be in the ball: the relative and absolute tolerance, and in
    L1 the float32 rounding of each of its D values, which a sum over D values accumulates."""
    return eps * BUDGET_TOL + BUDGET_TOL + (ROUNDING * dims if norm == "L1" else 0.0)



DEFAULT_DRAWS = 10  # R: inference draws judging a randomized model (docs/randomized.md)



MAX_DRAWS = 62  # per-draw verdicts are stored as the bits of one int64



class InvariantError(RuntimeError):
    """An attack broke a hard invariant (check B1/B2): the run is refused, nothing is stored."""



def check_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: tuple[float, float] = (0.0, 1.0),
                 norm: str = "Linf") -> float:
    """B1: ‖x_adv − x‖ ≤ ε in the attack's norm (L∞, L2 or L1, per sample), x_adv within the bounds ([0, 1]), no
    NaN — on every run. Returns the largest norm."""
    if not torch.isfinite(x_adv).all():
        raise InvariantError("B1: adversarial examples contain NaN or inf")
    low, high = bounds
    if len(x_adv) and (x_adv.min() < low or x_adv.max() > high):
        raise InvariantError(f"B1: adversarial examples leave [{low:g}, {high:g}] "
                             f"(min {x_adv.min():.4g}, max {x_adv.max():.4g})")
    delta = (x_adv - x).flatten(1)
    size = delta.double().norm(p=NORM_ORDERS[norm], dim=1).amax().item() if len(x) else 0.0
    if size > eps + budget_slack(eps, norm, delta.shape[1]):
        raise InvariantError(f"B1: ‖δ‖{NORM_SUBSCRIPTS[norm]} = {size:.9g} exceeds ε = {eps:.6g}")
    return size



def check_threat_budget(x_adv: Mapping, x: Mapping, threat: ThreatModel, eps: float) -> None:
    """B1 per input: each attacked input within its own ball and bounds; frozen inputs bit-identical."""
    for name, budget in threat.budgets(eps).items():
        if not threat.inputs[name].attackable:
            if not torch.equal(x_adv[name], x[name]):
                raise InvariantError(f"B1: frozen input {name!r} was changed by the attack")
            continue
        check_budget(x_adv[name], x[name], budget, threat.inputs[name].bounds)



@torch.no_grad()
def judge_draws(model, x, y, draws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample over ``draws`` forward passes: (correct draws, majority prediction, mean CE loss)."""
    hits, pred, loss, _ = judge_draws_masked(model, x, y, draws)
    return hits, pred, loss



@torch.no_grad()
def judge_draws_masked(model, x, y, draws: int):
    """:func:`judge_draws` plus which draws were correct, as a bit mask per sample (bit d: draw d).

    The masks let intervals resample draws as well as samples (:func:`robustmed.expected.bootstrap`):
    a defense that draws one realization per batch makes a draw's verdicts on all samples move together.
    """
    preds, losses = [], []
    for _ in range(draws):
        logits = model(x)
        preds.append(logits.argmax(1))
        losses.append(F.cross_entropy(logits, y, reduction="none"))
    preds = torch.stack(preds)
    correct = preds == y
    return correct.sum(0), preds.mode(0).values, torch.stack(losses).mean(0), draw_mask(correct)



def draw_mask(correct: torch.Tensor) -> torch.Tensor:
    """(draws, N) booleans → one int64 per sample with bit d set where draw d was correct (draws ≤ 62)."""
    if len(correct) > MAX_DRAWS:
        raise UserError(f"draws={len(correct)}: at most {MAX_DRAWS} inference draws per judgement")
    weights = torch.ones(len(correct), dtype=torch.long, device=correct.device) << torch.arange(
        len(correct), device=correct.device)
    return (correct.long() * weights[:, None]).sum(0)



def clean_pass(model, x, y, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, loss) per sample from one forward pass."""
    preds, losses, _ = clean_draws(model, x, y, batch_size, device, 1)
    return preds, losses



def clean_draws(model, x, y, batch_size: int, device, draws: int):
    """(prediction, loss, correct draws) per sample; a majority vote and mean loss when draws > 1."""
    return clean_draws_masked(model, x, y, batch_size, device, draws)[:3]



def clean_draws_masked(model, x, y, batch_size: int, device, draws: int):
    """:func:`clean_draws` plus each sample's per-draw bit mask (:func:`judge_draws_masked`)."""
    parts = []
    for start in range(0, len(y), batch_size):
        labels = y[start:start + batch_size].to(device)
        chunk = to_device(take(x, slice(start, start + batch_size)), device)
        parts.append([t.cpu() for t in judge_draws_masked(model, chunk, labels, draws)])
    hits, preds, losses, masks = (torch.cat(column) for column in zip(*parts))
    return preds, losses, hits, masks
