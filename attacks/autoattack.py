"""AutoAttack (Croce & Hein 2020) as robustmed's own cascade over pyautoattack 0.2.0 kernels.

Each stage attacks only the samples still robust, and a sample's result is its worst case
over stages (fra31's protocol). The cascade is adapted to the class count (check A7) and the
adapted configuration is stored in the expanded spec (``extra``).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec
from robustmed.attacks.eot import margin_loss
from robustmed.attacks.square import score, square_kernel

_LOG = logging.getLogger("auto-attack")
SQUARE_QUERIES = 5000
SQUARE_Q_RANDOMIZED = 4


class MarginAPGD(APGDAttack):
    """APGD on the CW margin loss: the binary-safe replacement for DLR (undefined for C < 3).

    pyautoattack accepts only 'ce' and 'dlr'; running as 'dlr' with the DLR loss swapped for
    the margin keeps every other part of the kernel (step schedule, checkpoints) unchanged.
    """

    def dlr_loss(self, x, y):
        return margin_loss(x, y)


def _apgd(kind: type, loss: str) -> Callable:
    def build(forward, eps, spec: AttackSpec, seed: int, device):
        kernel = kind(forward, n_restarts=1, n_iter=spec.steps, verbose=False, eps=eps, norm="Linf",
                      eot_iter=max(1, spec.eot), rho=.75, seed=seed, device=device, logger=_LOG)
        kernel.loss = loss
        return kernel.perturb
    return build


def _apgd_targeted(forward, eps, spec: AttackSpec, seed: int, device):
    kernel = APGDAttack_targeted(forward, n_restarts=1, n_iter=spec.steps, verbose=False, eps=eps, norm="Linf",
                                 eot_iter=max(1, spec.eot), rho=.75, seed=seed, device=device, logger=_LOG,
                                 n_target_classes=spec.extra["n_target_classes"])
    return kernel.perturb


def _fab_targeted(forward, eps, spec: AttackSpec, seed: int, device):
    kernel = FABAttack_PT(forward, n_restarts=1, n_iter=spec.steps, eps=eps, seed=seed, norm="Linf",
                          verbose=False, device=device, targeted=True,
                          n_target_classes=spec.extra["n_target_classes"])
    return kernel.perturb


def _square(forward, eps, spec: AttackSpec, seed: int, device):
    return square_kernel(forward, eps, queries=spec.extra["square_queries"], seed=seed,
                         q=spec.extra["square_q"], device=device).perturb


STAGES: dict[str, Callable] = {
    "apgd-ce": _apgd(APGDAttack, "ce"),
    "apgd-dlr": _apgd(APGDAttack, "dlr"),
    "apgd-margin": _apgd(MarginAPGD, "dlr"),
    "apgd-t": _apgd_targeted,
    "fab-t": _fab_targeted,
    "square": _square,
}


def standard_stages(num_classes: int) -> list[str]:
    """A7: targeted DLR needs C ≥ 4, DLR needs C ≥ 3; below that the margin loss replaces it."""
    if num_classes >= 4:
        return ["apgd-ce", "apgd-t", "fab-t", "square"]
    return ["apgd-ce", "apgd-dlr" if num_classes == 3 else "apgd-margin", "fab-t", "square"]


def rand_stages(num_classes: int) -> list[str]:
    return ["apgd-ce", "apgd-dlr" if num_classes >= 3 else "apgd-margin"]


def _adapter(stages: Callable[[int], list[str]]) -> Callable[[AttackSpec, int], AttackSpec]:
    def adapt(spec: AttackSpec, num_classes: int) -> AttackSpec:
        randomized = bool(spec.extra.get("randomized"))
        extra = {**spec.extra, "cascade": stages(num_classes), "n_target_classes": min(9, num_classes - 1),
                 "kernels": "pyautoattack==0.2.0"}
        if "square" in extra["cascade"]:
            extra.update(square_queries=SQUARE_QUERIES, square_q=SQUARE_Q_RANDOMIZED if randomized else 1)
        return replace(spec, extra=extra)
    return adapt


def _robust_now(forward, x, y, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(still correct in every one of ``draws`` passes, prediction of the first pass)."""
    with torch.no_grad():
        preds = torch.stack([forward(x).argmax(1) for _ in range(max(1, draws))])
    return (preds == y).all(0), preds[0]


def run_autoattack(forward, x, y, *, spec: AttackSpec, eps: float, start=None, seed: int = 0) -> AttackResult:
    """The cascade: stage k runs on the samples no earlier stage broke; ``first_success`` is the stage index.

    All stages share ``seed`` (as fra31's AutoAttack does). pyautoattack reseeds the global RNG,
    so its state is restored afterwards. On randomized models a sample leaves the cascade only
    when it is wrong in one of ``draws`` fresh passes (the harness re-judges the result, C2).
    """
    if "cascade" not in spec.extra:  # called directly, not through the harness
        with torch.no_grad():
            spec = FAMILIES.get(spec.family).adapt(spec, forward(x[:1]).shape[-1])
    stages = spec.extra["cascade"]
    robust, _ = _robust_now(forward, x, y, 1)
    x_adv, stage_of = x.detach().clone(), torch.where(robust, -1, 0)
    draws = spec.draws if spec.extra.get("randomized") else 1
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for stage, name in enumerate(stages):
            rows = torch.nonzero(robust).flatten()
            if len(rows) == 0:
                break
            candidate = STAGES[name](forward, eps, spec, seed, x.device)(x[rows], y[rows]).detach()
            still, _ = _robust_now(forward, candidate, y[rows], draws)
            broke = rows[~still]
            x_adv[broke], stage_of[broke], robust[broke] = candidate[~still], stage, False
    return score(forward, x_adv, y, stage_of)


for _name, _stages, _description, _defaults, _amp in (  # FAB's constants overflow fp16: standard AA stays fp32
    ("aa", standard_stages, "AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square (adapted to C, check A7)", {}, False),
    ("aa-rand", rand_stages, "AutoAttack rand: APGD-CE + APGD-DLR (margin for C=2) with EOT 20", {"eot": 20}, True),
):
    FAMILIES.register(_name, AttackFamily(
        name=_name, description=_description, run=run_autoattack, default_steps=100,
        alpha=lambda eps, steps: 2 * eps, alpha_rule="apgd: initial step 2*eps, halved adaptively",
        defaults=_defaults, randomized_eot=20, adapt=_adapter(_stages), amp=_amp,
    ))
