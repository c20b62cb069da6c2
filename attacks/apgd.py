"""APGD (Croce & Hein 2020, Alg. 1), L∞ or L2, with a shrinking batch: robustmed's own loop.

The step-size schedule is per sample (halved at the paper's checkpoints when the loss stopped
rising, the iterate then reset to the sample's best point), so a sample can leave the batch the
step it breaks without changing any other sample's trajectory. Each step then costs one
forward+backward over the samples still attacked, padded to a few batch sizes as in PGD.
pyautoattack's kernel keeps every sample in the batch to the last step; the fast AutoAttack
cascade (``autoattack.py``) runs this loop instead, the canonical cascade runs pyautoattack's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from robustmed.attacks.eot import eot_loss_grad, margin_loss
from robustmed.attacks.pgd import DETERMINISTIC_BITS, PROJECTIONS, _padded, l2_step, padded_size

MOMENTUM = 0.75  # α of the paper's heavy-ball step
RHO = 0.75  # a window in which the loss rose in at most this share of steps halves the step


def checkpoints(steps: int) -> list[int]:
    """The steps after which the step size may halve: the paper's p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)
    from p₁ = 0.22, in whole steps (windows of 22, 19, 16, … steps of 100, never under 6)."""
    points, window = [], max(int(0.22 * steps), 1)
    shrink, floor = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    while (points[-1] if points else 0) + window <= steps:
        points.append((points[-1] if points else 0) + window)
        window = max(window - shrink, floor)
    return points


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR (C ≥ 3): −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3)."""
    ordered = logits.sort(dim=1)[0]
    return margin_loss(logits, y) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def targeted_loss(target: torch.Tensor, dlr: bool) -> Callable:
    """The targeted margin z_t − z_y, scaled as targeted DLR (C ≥ 4) when ``dlr``."""
    def loss(logits, y):
        u = torch.arange(len(y), device=y.device)
        value = logits[u, target[: len(y)]] - logits[u, y]
        if not dlr:
            return value
        ordered = logits.sort(dim=1)[0]
        return value / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)
    return loss


LOSSES = {"ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"), "margin": margin_loss,
          "dlr": dlr_loss}


@dataclass
class ApgdResult:
    """Per sample: the candidate (the first point wrong in every pass of its step, else the one with the highest
    mean loss over its step's passes), whether it broke, its loss, the step it broke at (−1 if none), and the
    sample-passes spent."""

    x_adv: torch.Tensor
    success: torch.Tensor
    loss: torch.Tensor
    first: torch.Tensor
    passes: int


@dataclass
class _State:
    """What APGD carries per sample between steps (full-size tensors; rows of retired samples are left alone)."""

    current: torch.Tensor
    previous: torch.Tensor
    grad: torch.Tensor
    loss: torch.Tensor
    best_x: torch.Tensor
    best_grad: torch.Tensor
    best_loss: torch.Tensor
    step: torch.Tensor
    rises: torch.Tensor
    best_at_check: torch.Tensor
    halved_at_check: torch.Tensor


def _step(s: _State, rows: torch.Tensor, x: torch.Tensor, eps: float, first: bool, norm: str) -> torch.Tensor:
    """The heavy-ball step of the rows (signed for L∞, along the L2-normalised gradient for L2), projected onto
    the ε-ball and the box."""
    here, step = s.current[rows], s.step[rows].view(-1, *([1] * (x.ndim - 1)))
    project = PROJECTIONS[norm]
    z = project(here + step * (s.grad[rows].sign() if norm == "Linf" else l2_step(s.grad[rows])), x[rows], eps)
    if first:
        return z
    moved = here + MOMENTUM * (z - here) + (1 - MOMENTUM) * (here - s.previous[rows])
    return project(moved, x[rows], eps)


def _checkpoint(s: _State, rows: torch.Tensor, window: int) -> None:
    """Halve the step of rows whose loss rose in too few steps, or whose best stalled at an unhalved step;
    they restart from their best point (and its gradient)."""
    stalled = ~s.halved_at_check[rows] & (s.best_at_check[rows] >= s.best_loss[rows])
    halve = (s.rises[rows] <= window * RHO) | stalled
    s.halved_at_check[rows] = halve
    s.best_at_check[rows] = s.best_loss[rows]
    s.rises[rows] = 0
    moved = rows[halve]
    s.step[moved] /= 2
    s.current[moved], s.grad[moved] = s.best_x[moved], s.best_grad[moved]


def apgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, eps: float,
         steps: int, loss: str | Callable = "ce", start: torch.Tensor | None = None, eot: int = 1,
         early_stop: bool = True, bucket_bits: int = DETERMINISTIC_BITS,
         group: torch.Tensor | None = None, norm: str = "Linf") -> ApgdResult:
    """APGD from ``x + start`` (zeros: the clean image) for ``steps`` steps; with ``early_stop`` a sample
    leaves the batch at the step it breaks (wrong in every one of the step's EOT passes). ``group`` names the sample
    each row attacks when one sample runs from several starts at once: a broken row retires its group."""
    x, n = x.detach(), len(x)
    loss_fn = LOSSES[loss] if isinstance(loss, str) else loss
    current = PROJECTIONS[norm](x + (torch.zeros_like(x) if start is None else start.to(x)), x, eps)
    result = ApgdResult(current.clone(), torch.zeros(n, dtype=torch.bool, device=x.device),
                        torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device),
                        torch.full((n,), -1, dtype=torch.long, device=x.device), 0)
    active = torch.arange(n, device=x.device)
    s, checks, last_check = None, set(checkpoints(steps)), 0
    for k in range(steps + 1):
        m = len(active)
        size = padded_size(m, n, bucket_bits) if early_stop else m
        losses, _, grad, wrong = eot_loss_grad(forward, _padded(current[active] if s is None else s.current[active],
                                                                size), _padded(y[active], size), loss=loss_fn,
                                               samples=eot, grad=k < steps)
        losses, wrong, grad = losses[:m], wrong[:m], None if grad is None else grad[:m]
        result.passes += size * max(1, eot)
        if s is None:
            s = _start_state(current, grad, losses, eps)
        broke = _record(result, s, active, losses, wrong, max(1, eot), grad, k)
        if k == steps:
            break
        keep = ~broke if early_stop else torch.ones_like(broke)
        if group is not None and early_stop:
            keep &= ~torch.isin(group[active], group[result.success])
        active = active[keep]
        if len(active) == 0:
            break
        if k in checks:
            _checkpoint(s, active, k - last_check)
            last_check = k
        stepped = _step(s, active, x, eps, first=k == 0, norm=norm)
        s.previous[active] = s.current[active]
        s.current[active] = stepped
    return result


def _start_state(current: torch.Tensor, grad: torch.Tensor, losses: torch.Tensor, eps: float) -> _State:
    n = len(current)
    return _State(current=current.clone(), previous=current.clone(), grad=grad.clone(),
                  loss=losses.clone(), best_x=current.clone(), best_grad=grad.clone(),
                  best_loss=losses.clone(), step=torch.full((n,), 2 * eps, dtype=current.dtype, device=current.device),
                  rises=torch.zeros(n, dtype=torch.long, device=current.device),
                  best_at_check=losses.clone(), halved_at_check=torch.ones(n, dtype=torch.bool, device=current.device))


def _record(result: ApgdResult, s: _State, active, losses, wrong, passes: int, grad, k: int) -> torch.Tensor:
    """Book one step's losses: rises, the best point (and its gradient), the candidate; returns who broke (wrong in
    every pass of the step: with EOT, in each of its draws, so an early exit never rests on one lucky draw)."""
    here = s.current[active]
    if k > 0:
        s.rises[active] += (losses > s.loss[active]).long()
        s.loss[active] = losses
        better = losses > s.best_loss[active]
        rows = active[better]
        s.best_loss[rows], s.best_x[rows] = losses[better], here[better]
        if grad is not None:
            s.best_grad[rows], s.grad[active] = grad[better], grad
    broke = wrong == passes
    fresh = broke & ~result.success[active]
    rows = active[fresh]
    result.x_adv[rows], result.success[rows], result.first[rows] = here[fresh], True, k
    result.loss[rows] = losses[fresh]
    # Not broken: the highest mean loss, as in pyautoattack's kernel. Ranking by the step's wrong-draw count first
    # was tried and measured no stronger (docs/performance.md, "The rand version"): a count over 20 draws is noisy.
    keep_best = ~result.success[active] & (losses > result.loss[active])
    rows = active[keep_best]
    result.x_adv[rows], result.loss[rows] = here[keep_best], losses[keep_best]
    return broke
