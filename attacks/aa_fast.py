"""The stages of AutoAttack's fast cascades (``aa``, ``aa-rand``; the ``:canonical`` ones are in ``autoattack.py``).

Every stage runs robustmed's shrinking-batch APGD (``apgd.py``) or Square on the samples earlier
stages left, so a pass is spent only where a verdict can still change. What each stage is for:
the first APGD-CE run from the harness's seeded start breaks nearly every breakable sample; the
survivors get targeted runs where the class count gives targets, then starts the first run did not
try (the clean image and seeded vertices of the ε-box) side by side in one batch, and a gradient-free Square run
last, as a check against gradient masking. The order and budgets follow the measured yield of each stage
(docs/performance.md, "AutoAttack at PGD-100 cost").
"""
from __future__ import annotations

from typing import Callable

import torch

from robustmed.attacks.apgd import apgd, targeted_loss
from robustmed.attacks.base import AttackSpec
from robustmed.attacks.eot import margin_loss
from robustmed.attacks.pgd import padding_bits
from robustmed.attacks.square import best_candidates, square_kernel

FAST_TARGETS = 3  # targeted runs (C ≥ 3) aim at the clean prediction's runners-up, most likely first
# Beside the clean start, each sample the first run left gets seeded vertex starts: at least FAST_STARTS_MIN, and
# more when few samples are left, up to FAST_STARTS_MAX, so the batch holds about FAST_START_ROWS rows. A hard sample
# breaks from a few percent of starts, each with its whole schedule (docs/performance.md): only many starts find it.
FAST_STARTS_MIN, FAST_STARTS_MAX, FAST_START_ROWS = 10, 32, 100
RAND_RESTART_SALT = 10  # aa-rand's second start (C = 2), seeded apart from the first run's
FAST_SQUARE_QUERIES = 250
SQUARE_COPIES, SQUARE_ROWS = 4, 32  # on few survivors, up to 4 copies each, at most 32 rows (docs/performance.md)

Stage = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, y, rows) → candidates


def fast_stages(num_classes: int) -> list[str]:
    """Untargeted CE from the seeded start, then (survivors only) targeted runs where C ≥ 3, the clean start and
    10–32 seeded vertex starts side by side in one batch, Square."""
    targeted = ["apgd-t"] if num_classes >= 3 else []
    return ["apgd-ce", *targeted, "apgd-ce@starts", "square"]


def fast_start_budget() -> dict[str, int]:
    """The starts stage's budget as the expanded spec stores it."""
    return {"clean": 1, "vertices_min": FAST_STARTS_MIN, "vertices_max": FAST_STARTS_MAX,
            "batch_rows": FAST_START_ROWS}


def fast_rand_stages(num_classes: int) -> list[str]:
    """The EOT variant (``aa-rand``) with the canonical rand budget, early exit inside every run: APGD-CE, then on
    what it leaves APGD-DLR where C ≥ 3, or (C = 2, where DLR is undefined) APGD-CE from one more seeded random
    start. A sample leaves a run once its iterate is wrong in every draw of a step."""
    return ["apgd-ce", "apgd-dlr" if num_classes >= 3 else "apgd-ce@random"]


def _best_copy(candidates: torch.Tensor, score: torch.Tensor, copies: int) -> torch.Tensor:
    """Of ``copies`` stacked runs over the same m samples (copy-major rows), each sample's highest-scoring one."""
    m = len(candidates) // copies
    choice = score.view(copies, m).argmax(0)
    return candidates.view(copies, m, *candidates.shape[1:])[choice, torch.arange(m, device=candidates.device)]


def _random_start(x: torch.Tensor, eps: float, seed: int, vertex: bool = False) -> torch.Tensor:
    """A seeded start: uniform in the box [−ε, ε]ᵈ, or (``vertex``) one of its vertices, each sign a coin flip."""
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype).to(x.device)
    return noise.sub_(.5).sign_().mul_(eps) if vertex else noise.mul_(2 * eps).sub_(eps)


def _from_start(loss: str) -> Callable[..., Stage]:
    """One APGD run on ``loss`` from the harness's seeded start."""
    def build(forward, eps: float, spec: AttackSpec, seed: int, start: torch.Tensor | None) -> Stage:
        def attack(x, y, rows):
            return apgd(forward, x, y, eps=eps, steps=spec.steps, loss=loss, norm=spec.norm,
                        start=None if start is None else start[rows], eot=max(1, spec.eot),
                        bucket_bits=padding_bits(spec)).x_adv
        return attack
    return build


def _apgd_ce_from(forward, x, y, spec: AttackSpec, eps: float, starts: list[torch.Tensor]) -> torch.Tensor:
    """APGD-CE from each of ``starts`` (perturbations of ``x``), all in one batch; a sample's rows leave together
    once one of them breaks, and its best row is its candidate."""
    k, m = len(starts), len(y)
    group = torch.arange(m, device=y.device).repeat(k)
    result = apgd(forward, x.repeat(k, *([1] * (x.ndim - 1))), y.repeat(k), eps=eps, steps=spec.steps, loss="ce",
                  start=torch.cat(starts), eot=max(1, spec.eot), bucket_bits=padding_bits(spec), group=group,
                  norm=spec.norm)
    return _best_copy(result.x_adv, torch.where(result.success, torch.inf, result.loss), k)


def _random_restart(forward, eps: float, spec: AttackSpec, seed: int, start: torch.Tensor | None) -> Stage:
    """APGD-CE from one more seeded uniform start (``aa-rand`` on two classes)."""
    return lambda x, y, rows: _apgd_ce_from(forward, x, y, spec, eps,
                                            [_random_start(x, eps, seed + RAND_RESTART_SALT + 1)])


def _starts(forward, eps: float, spec: AttackSpec, seed: int, start: torch.Tensor | None) -> Stage:
    """APGD-CE from the clean image and seeded vertex starts, with the budget the spec stores (``starts``): at least
    ``vertices_min`` per sample, more when few samples are left, up to ``vertices_max`` or ``batch_rows`` rows."""
    budget = spec.extra["starts"]

    def attack(x, y, rows):
        vertices = max(budget["vertices_min"], min(budget["vertices_max"], budget["batch_rows"] // len(y)))
        return _apgd_ce_from(forward, x, y, spec, eps, [torch.zeros_like(x)] + [
            _random_start(x, eps, seed + r, vertex=True) for r in range(1, vertices + 1)])
    return attack


def _targeted(forward, eps: float, spec: AttackSpec, seed: int, start: torch.Tensor | None) -> Stage:
    """APGD on the targeted margin (DLR-scaled when C ≥ 4) towards each runner-up in turn, survivors only."""
    def attack(x, y, rows):
        with torch.no_grad():
            logits = forward(x)
        ranked, candidate = logits.sort(dim=1, descending=True)[1], x.clone()
        open_rows = torch.ones(len(y), dtype=torch.bool, device=y.device)
        dlr = logits.shape[1] >= 4
        for rank in range(1, spec.extra["n_target_classes"] + 1):
            todo = torch.nonzero(open_rows).flatten()
            if len(todo) == 0:
                break
            target = torch.where(ranked[todo, 0] == y[todo], ranked[todo, rank], ranked[todo, 0])
            result = apgd(forward, x[todo], y[todo], eps=eps, steps=spec.steps, loss=targeted_loss(target, dlr),
                          eot=max(1, spec.eot), bucket_bits=padding_bits(spec), norm=spec.norm)
            candidate[todo] = result.x_adv
            open_rows[todo[result.success]] = False
        return candidate
    return attack


def _square(forward, eps: float, spec: AttackSpec, seed: int, start: torch.Tensor | None) -> Stage:
    """Square on the survivors; when they are few, each as up to four independent runs sharing its query budget. On a
    few rows a query costs mostly a pass's fixed part, so the copies finish about ``copies``× sooner, at some cost in
    strength (shorter runs never reach the small squares). A sample's candidate is its copy with the highest mean
    margin over ``square_q`` passes."""
    def attack(x, y, rows):
        copies = max(1, min(SQUARE_COPIES, SQUARE_ROWS // max(1, len(y))))
        queries = -(-spec.extra["square_queries"] // copies)
        kernel = square_kernel(forward, eps, queries=queries, seed=seed, q=spec.extra["square_q"], device=x.device,
                               norm=spec.norm)
        repeated = best_candidates(kernel, x.repeat(copies, *([1] * (x.ndim - 1))), y.repeat(copies))
        if copies == 1:
            return repeated
        with torch.no_grad():
            margin = sum(margin_loss(forward(repeated), y.repeat(copies)) for _ in range(spec.extra["square_q"]))
        return _best_copy(repeated, margin, copies)
    return attack


FAST_STAGES: dict[str, Callable[..., Stage]] = {
    "apgd-ce": _from_start("ce"),
    "apgd-dlr": _from_start("dlr"),
    "apgd-ce@random": _random_restart,
    "apgd-ce@starts": _starts,
    "apgd-t": _targeted,
    "square": _square,
}
