"""L∞ PGD (Madry et al. 2018) keeping the best iterate and each sample's first-success step.

Samples leave the batch the step they break (their adversarial example is kept), so
each step costs one forward+backward over the samples still being attacked.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Onto the ε-ball around the clean input, then onto [0, 1] (same float ops as torchattacks)."""
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=0, max=1)


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return noise.mul_(2 * eps).sub_(eps)


def _better(broke, loss, best_broke, best_loss):
    """Lexicographic (adversarial, loss): an adversarial point beats any clean one, then higher loss wins."""
    return (broke & ~best_broke) | ((broke == best_broke) & (loss > best_loss))


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, eps: float,
        steps: int, step_size: float, start: torch.Tensor | None = None, random_start: bool = True,
        momentum: float = 0.0, keep_best: bool = True, early_stop: bool = True,
        generator: torch.Generator | None = None) -> AttackResult:
    """Sign-gradient ascent on cross-entropy within ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1].

    ``start`` is the initial perturbation (per-sample seeded by the harness); without it a
    uniform start is drawn from ``generator`` when ``random_start`` is set (BIM: no start).
    ``momentum`` > 0 gives MIM: momentum on the L1-normalised gradient, still projected
    around the clean input. ``keep_best=False, early_stop=False`` returns the last iterate,
    as torchattacks does (used by conformance tests).
    """
    x = x.detach()
    n = len(x)
    if start is None:
        start = uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
    current = project(x + start.to(x), x, eps)
    best = current.clone()
    best_loss = torch.full((n,), -torch.inf, device=x.device)
    best_broke = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_pred = torch.zeros(n, dtype=torch.long, device=x.device)
    first = torch.full((n,), -1, dtype=torch.long, device=x.device)
    velocity = torch.zeros_like(x) if momentum else None
    active = torch.arange(n, device=x.device)
    spent = 0
    for step in range(steps + 1):
        x_active = current[active].requires_grad_(step < steps)
        logits = forward(x_active)
        losses = F.cross_entropy(logits, y[active], reduction="none")
        preds = logits.argmax(1)
        broke = preds != y[active]
        first[active[broke & (first[active] < 0)]] = step
        update = _better(broke, losses.detach(), best_broke[active], best_loss[active]) if keep_best else \
            torch.ones_like(broke)
        chosen = active[update]
        best[chosen] = x_active.detach()[update]
        best_loss[chosen], best_broke[chosen], best_pred[chosen] = losses.detach()[update], broke[update], preds[update]
        if step == steps:
            break
        grad, = torch.autograd.grad(losses.sum(), x_active)
        spent += len(active)
        keep = ~broke if early_stop else torch.ones_like(broke)
        active, grad, x_active = active[keep], grad[keep], x_active.detach()[keep]
        if momentum:
            grad = grad / grad.abs().sum(dim=tuple(range(1, grad.ndim)), keepdim=True).clamp_min(1e-12)
            velocity[active] = momentum * velocity[active] + grad
            grad = velocity[active]
        current[active] = project(x_active + step_size * grad.sign(), x[active], eps)
        if len(active) == 0:
            break
    return AttackResult(x_adv=best, success=best_broke, first_success=first, loss=best_loss, adv_pred=best_pred,
                        forward_backward=spent)


def _pgd_alpha(eps: float, steps: int) -> float:
    return 2.5 * eps / steps


def run_pgd(forward, x, y, *, spec: AttackSpec, eps: float, start: torch.Tensor | None = None) -> AttackResult:
    """Registry entry point: the spec's fields become PGD's options."""
    return pgd(forward, x, y, eps=eps, steps=spec.steps, step_size=spec.step_size(eps), start=start,
               random_start=spec.random_start, momentum=spec.momentum, keep_best=spec.keep_best,
               early_stop=spec.early_stop)


FAMILIES.register("pgd", AttackFamily(
    name="pgd",
    description="L∞ PGD, uniform random start, sign steps, best iterate kept (Madry et al. 2018)",
    run=run_pgd,
    default_steps=10,
    alpha=_pgd_alpha,
    alpha_rule="2.5*eps/steps",
))
