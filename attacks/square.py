"""Square Attack (Andriushchenko et al. 2020), L∞, score-based, via pyautoattack's kernel.

On randomized models each query's margin is averaged over q forward passes;
q is the spec's ``eot`` field (4 by default on randomized models, 1 otherwise).
"""
from __future__ import annotations

import torch
from pyautoattack.square import SquareAttack

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec
from robustmed.attacks.eot import margin_loss


class AveragedSquare(SquareAttack):
    """SquareAttack whose margin and loss are means over ``q`` forward passes per query."""

    def __init__(self, predict, *, q: int = 1, **options):
        super().__init__(predict, **options)
        self.q = max(1, q)

    def margin_and_loss(self, x, y):
        if self.q == 1:
            return super().margin_and_loss(x, y)
        pairs = [super(AveragedSquare, self).margin_and_loss(x, y) for _ in range(self.q)]
        return torch.stack([m for m, _ in pairs]).mean(0), torch.stack([l for _, l in pairs]).mean(0)


def square_kernel(forward, eps: float, *, queries: int, seed: int, q: int, device, norm: str = "Linf") -> AveragedSquare:
    """The kernel exactly as AutoAttack's standard version configures it (p_init 0.8, no rescaling)."""
    return AveragedSquare(forward, q=q, p_init=.8, n_queries=queries, eps=eps, norm=norm, n_restarts=1,
                          seed=seed, verbose=False, device=device, resc_schedule=False)


def best_candidates(kernel: AveragedSquare, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The kernel's ``perturb`` (same seed, same queries) returning its best point for every sample.

    ``perturb`` hands back the clean image wherever its final check still finds the sample correct;
    on a randomized model that check is one draw, so the attack's work would be thrown away and the
    clean image judged instead. The best point (lowest margin) is the attack's candidate either way.
    """
    kernel.init_hyperparam(x)
    torch.random.manual_seed(kernel.seed)
    torch.cuda.random.manual_seed(kernel.seed)
    _, candidate = kernel.attack_single_run(x.detach().clone(), y.detach().clone().long())
    return candidate


def score(forward, x_adv: torch.Tensor, y: torch.Tensor, stage: torch.Tensor) -> AttackResult:
    """An :class:`AttackResult` for kernels that return only x_adv (``stage``: where each sample broke)."""
    with torch.no_grad():
        logits = forward(x_adv)
    pred = logits.argmax(1)
    return AttackResult(x_adv=x_adv, success=pred != y, first_success=torch.where(pred != y, stage, -1),
                        loss=margin_loss(logits, y), adv_pred=pred)


def run_square(forward, x, y, *, spec: AttackSpec, eps: float, start=None, seed: int = 0) -> AttackResult:
    """Registry entry point: every sample's best point; pyautoattack reseeds the global RNG, so its
    state is restored afterwards."""
    kernel = square_kernel(forward, eps, queries=spec.steps, seed=seed, q=max(1, spec.eot), device=x.device,
                           norm=spec.norm)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        x_adv = best_candidates(kernel, x, y)
    result = score(forward, x_adv.detach(), y, torch.zeros_like(y))
    result.forward_backward = 0
    return result


FAMILIES.register("square", AttackFamily(
    name="square",
    description="Square Attack (L∞ or L2), steps = queries (Andriushchenko et al. 2020); margin averaged over q=eot passes",
    run=run_square,
    default_steps=5000,
    alpha=lambda eps, steps: 0.8,
    alpha_rule="p_init=0.8 (square size schedule, no gradient step)",
    randomized_eot=4,
    norms=("Linf", "L2", "L1"),
))
