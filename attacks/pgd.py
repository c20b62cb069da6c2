"""L∞ PGD (Madry et al. 2018) keeping the best iterate and each sample's first-success step.

Samples leave the batch the step they break (their adversarial example is kept), so
each step costs one forward+backward over the samples still being attacked. BIM and MIM
(``bim.py``, ``mim.py``) are this loop with other defaults.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec
from robustmed.attacks.eot import LOSSES, eot_loss_grad
from robustmed.attacks.threat import Packing, ThreatModel

Budget = float | torch.Tensor  # a scalar, or per element of a packed multi-input sample


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: Budget, bounds: tuple[Budget, Budget] = (0, 1)) -> torch.Tensor:
    """Onto the ε-ball around the clean input, then onto the bounds (same float ops as torchattacks)."""
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=bounds[0], max=bounds[1])


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return noise.mul_(2 * eps).sub_(eps)


def _better(broke, loss, best_broke, best_loss):
    """Lexicographic (adversarial, loss): an adversarial point beats any clean one, then higher loss wins."""
    return (broke & ~best_broke) | ((broke == best_broke) & (loss > best_loss))


def _snapshot(best, best_broke, first, best_loss, best_pred, spent) -> AttackResult:
    return AttackResult(x_adv=best.clone(), success=best_broke.clone(), first_success=first.clone(),
                        loss=best_loss.clone(), adv_pred=best_pred.clone(), forward_backward=spent)


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, eps: Budget,
        steps: int, step_size: Budget, start: torch.Tensor | None = None, random_start: bool = True,
        momentum: float = 0.0, keep_best: bool = True, early_stop: bool = True, eot: int = 1,
        loss: str = "ce", generator: torch.Generator | None = None, bounds: tuple[Budget, Budget] = (0, 1),
        snapshots: tuple[int, ...] = (), constrain: Callable | None = None) -> AttackResult:
    """Sign-gradient ascent on ``loss`` (ce | margin) within ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1].

    ``start`` is the initial perturbation (per-sample seeded by the harness); without it a
    uniform start is drawn from ``generator`` when ``random_start`` is set (BIM: no start).
    ``momentum`` > 0 gives MIM: momentum on the L1-normalised gradient, still projected
    around the clean input. ``eot`` > 1 averages loss, logits and gradient over that many
    separate forward+backward passes (randomized models); "broke" is then judged on the
    averaged logits. ``keep_best=False, early_stop=False`` returns the last iterate, as
    torchattacks does (used by conformance tests). ``snapshots`` lists steps k at which the
    best-so-far state is copied into ``result.snapshots[k]``: the k-step attack with this α.
    ``eps``, ``step_size`` and ``bounds`` may be per-element tensors (packed multi-input samples);
    ``constrain(x_adv, x)`` then maps every projected iterate onto valid values (integer features).
    """
    x = x.detach()
    n = len(x)
    loss_fn = LOSSES[loss]
    if start is None:
        start = uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
    current = project(x + start.to(x), x, eps, bounds)
    if constrain is not None:
        current = constrain(current, x)
    best = current.clone()
    best_loss = torch.full((n,), -torch.inf, device=x.device)
    best_broke = torch.zeros(n, dtype=torch.bool, device=x.device)
    best_pred = torch.zeros(n, dtype=torch.long, device=x.device)
    first = torch.full((n,), -1, dtype=torch.long, device=x.device)
    velocity = torch.zeros_like(x) if momentum else None
    active = torch.arange(n, device=x.device)
    spent, taken = 0, {}
    for step in range(steps + 1):
        x_active = current[active]
        losses, logits, grad = eot_loss_grad(forward, x_active, y[active], loss=loss_fn, samples=eot,
                                             grad=step < steps)
        preds = logits.argmax(1)
        broke = preds != y[active]
        first[active[broke & (first[active] < 0)]] = step
        update = _better(broke, losses, best_broke[active], best_loss[active]) if keep_best else \
            torch.ones_like(broke)
        chosen = active[update]
        best[chosen] = x_active[update]
        best_loss[chosen], best_broke[chosen], best_pred[chosen] = losses[update], broke[update], preds[update]
        if step in snapshots:
            taken[step] = _snapshot(best, best_broke, first, best_loss, best_pred, spent)
        if step == steps:
            break
        spent += len(active) * max(1, eot)
        keep = ~broke if early_stop else torch.ones_like(broke)
        active, grad, x_active = active[keep], grad[keep], x_active[keep]
        if momentum:
            grad = grad / grad.abs().sum(dim=tuple(range(1, grad.ndim)), keepdim=True).clamp_min(1e-12)
            velocity[active] = momentum * velocity[active] + grad
            grad = velocity[active]
        stepped = project(x_active + step_size * grad.sign(), x[active], eps, bounds)
        current[active] = stepped if constrain is None else constrain(stepped, x[active])
        if len(active) == 0:
            break
    for k in snapshots:  # steps after an early exit of every sample change nothing
        taken.setdefault(k, _snapshot(best, best_broke, first, best_loss, best_pred, spent))
    return AttackResult(x_adv=best, success=best_broke, first_success=first, loss=best_loss, adv_pred=best_pred,
                        forward_backward=spent, snapshots=taken)


def _merge(total: AttackResult, trial: AttackResult, rows: torch.Tensor) -> None:
    """Keep, per sample, the better of two restarts (adversarial first, then higher loss)."""
    take = _better(trial.success, trial.loss, total.success[rows], total.loss[rows])
    chosen = rows[take]
    total.x_adv[chosen], total.loss[chosen] = trial.x_adv[take], trial.loss[take]
    total.success[chosen], total.adv_pred[chosen] = trial.success[take], trial.adv_pred[take]
    total.first_success[chosen] = trial.first_success[take]
    total.forward_backward += trial.forward_backward


def run_pgd(forward, x, y, *, spec: AttackSpec, eps: float, start=None, seed: int = 0,
            threat: ThreatModel | None = None) -> AttackResult:
    """Registry entry point for PGD, BIM and MIM: the spec's fields become the loop's options.

    With ``restarts`` > 1, ``start`` holds one start per restart (shape ``(restarts, *x.shape)``);
    a restart only attacks the samples no earlier restart broke. ``x`` (and ``start``) may be a
    mapping of named inputs: the loop then runs on their :class:`Packing` under ``threat``
    (default: every input attacked with the run's ε), and the result's examples are mappings.
    """
    if isinstance(x, Mapping):
        return _run_packed(forward, x, y, spec=spec, eps=eps, start=start, seed=seed,
                           threat=threat or ThreatModel.joint(x))
    return _run_flat(forward, x, y, spec=spec, eps=eps, start=start, seed=seed)


def _run_packed(forward, x, y, *, spec, eps, start, seed, threat) -> AttackResult:
    packing = Packing(x, threat, eps)
    flat_start = None if start is None else packing.pack(start)
    result = _run_flat(packing.forward(forward), packing.pack(x), y, spec=spec, eps=packing.eps, start=flat_start,
                       seed=seed, bounds=(packing.low, packing.high),
                       constrain=packing.constrain if packing.constrained else None)
    for outcome in (result, *result.snapshots.values()):
        outcome.x_adv = packing.unpack(outcome.x_adv)
    return result


def _run_flat(forward, x, y, *, spec: AttackSpec, eps: Budget, start, seed: int,
              bounds: tuple[Budget, Budget] = (0, 1), constrain: Callable | None = None) -> AttackResult:
    starts = start if start is not None and start.ndim == x.ndim + 1 else [start]
    options = dict(eps=eps, steps=spec.steps, step_size=spec.step_size(eps), random_start=spec.random_start,
                   momentum=spec.momentum, keep_best=spec.keep_best, early_stop=spec.early_stop,
                   eot=max(1, spec.eot), loss=spec.loss, generator=torch.Generator().manual_seed(seed),
                   bounds=bounds, snapshots=tuple(spec.sweep), constrain=constrain)
    total = pgd(forward, x, y, start=starts[0], **options)
    for restart_start in starts[1:]:
        rows = torch.nonzero(~total.success).flatten()
        if len(rows) == 0:
            break
        _merge(total, pgd(forward, x[rows], y[rows], start=restart_start[rows], **options), rows)
    return total


def _pgd_alpha(eps: float, steps: int) -> float:
    return 2.5 * eps / steps


FAMILIES.register("pgd", AttackFamily(
    name="pgd",
    description="L∞ PGD, uniform random start, sign steps, best iterate kept (Madry et al. 2018)",
    run=run_pgd,
    default_steps=10,
    alpha=_pgd_alpha,
    alpha_rule="2.5*eps/steps",
    randomized_eot=20,
    restartable=True,
    prefix_sweep=True,
    warm_start=True,
    mapping_inputs=True,
))
