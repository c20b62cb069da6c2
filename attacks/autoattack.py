"""AutoAttack (Croce & Hein 2020) as robustmed's own cascade over pyautoattack 0.2.0 kernels.

Each stage attacks only the samples it can still change, and every sample ends with one
candidate: the strongest any stage produced for it (fewest correct draws, then the highest
margin), never the clean image once a stage has run on it. A sample leaves the cascade only
when its candidate is wrong in every one of the model's draws; the harness then judges that one
candidate on fresh draws, so no stage's draws decide a row. The cascade is adapted to the class
count (check A7) and the adapted configuration is stored in the expanded spec (``extra``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Callable

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT

from robustmed.attacks import aa_fast
from robustmed.attacks.aa_fast import FAST_STAGES, fast_rand_stages, fast_stages
from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec
from robustmed.attacks.eot import margin_loss
from robustmed.attacks.square import best_candidates, score, square_kernel
from robustmed.errors import UserError

_LOG = logging.getLogger("auto-attack")
SQUARE_QUERIES = 5000
SQUARE_Q_RANDOMIZED = 4
# With C < 4 the targeted stages have fewer targets than standard AA's nine (C = 2: APGD-T on the
# margin would retrace APGD-CE, whose loss is a monotone function of the same margin), so their
# budget goes to further random starts of APGD-CE: five in all, as `APGDAttack(n_restarts=5)`.
FEW_CLASS_CE_RESTARTS = 5
L1_CE_RESTARTS, L1_APGD_TARGETS = 5, 5  # pyautoattack's standard version for norm='L1'
L1_MIN_STEPS = 5  # fewer leave a phase of the 30/30/40% split without steps (1, 2 and 4 do)
RAND_BINARY_CE_RESTARTS = 2  # aa-rand on C = 2: the margin stage it replaces is one more APGD-CE run


class MarginAPGD(APGDAttack):
    """APGD on the CW margin loss: the replacement for DLR where DLR is undefined (C < 3).

    pyautoattack accepts only 'ce' and 'dlr'; running as 'dlr' with the DLR loss swapped for
    the margin keeps every other part of the kernel (step schedule, checkpoints) unchanged.
    """

    def dlr_loss(self, x, y):
        return margin_loss(x, y)


class TargetedMarginAPGD(APGDAttack_targeted):
    """Targeted APGD on the margin z_t − z_y: the targeted DLR loss needs C ≥ 4, this one C ≥ 3."""

    def dlr_loss_targeted(self, x, y):
        u = torch.arange(len(x), device=x.device)
        return x[u, self.y_target] - x[u, y]


def _kernel_candidates(kernel, x, y, restarts: int, targets: int = 0):
    """pyautoattack's ``perturb`` restart for restart (same seed, same use of the RNG), except that
    every sample gets a candidate: the adversarial point where a run found one, else the highest-loss
    point of its runs. Every row passed in is attacked: the cascade passes only rows it has not
    settled (pyautoattack skips rows wrong on its first pass, which on a randomized model is one draw).
    """
    kernel.n_iter, kernel.eps = kernel.n_iter_orig, kernel.eps_orig  # L1's schedule leaves them at its last phase
    kernel.init_hyperparam(x)
    x = x.detach().clone().float()
    candidate, open_rows = x.clone(), torch.ones(len(y), dtype=torch.bool, device=x.device)
    best_loss = torch.full((len(y),), -torch.inf, device=x.device)
    torch.random.manual_seed(kernel.seed)
    torch.cuda.random.manual_seed(kernel.seed)
    for target in range(2, targets + 2) if targets else [None]:
        for _ in range(restarts):
            rows = torch.nonzero(open_rows).flatten()
            if len(rows) == 0:
                return candidate
            if target is not None:
                with torch.no_grad():
                    kernel.y_target = kernel.model(x[rows]).sort(dim=1)[1][:, -target]
            highest, still, loss, adversarial = _single_run(kernel, x[rows], y[rows])
            fooled = still == 0
            open_rows[rows[fooled]] = False
            candidate[rows[fooled]] = adversarial[fooled]
            better = ~fooled & (loss > best_loss[rows])
            candidate[rows[better]], best_loss[rows[better]] = highest[better], loss[better]
    return candidate


def _single_run(kernel, x, y):
    """One APGD run as ``perturb`` makes it: L1 runs the kernel's shrinking-ε schedule (3ε, 2ε, then ε over 30%,
    30% and 40% of the steps, AutoAttack's L1 setting), the other norms one run at ε."""
    if not kernel.use_largereps:
        return kernel.attack_single_run(x, y)
    iters = [math.ceil(.3 * kernel.n_iter_orig)] * 2
    iters.append(kernel.n_iter_orig - sum(iters))
    return kernel.decr_eps_pgd(x, y, [3. * kernel.eps_orig, 2. * kernel.eps_orig, 1. * kernel.eps_orig], iters)


def _apgd(kind: type, loss: str, stage: str) -> Callable:
    def build(forward, eps, spec: AttackSpec, seed: int, device):
        kernel = kind(forward, n_restarts=1, n_iter=spec.steps, verbose=False, eps=eps, norm=spec.norm,
                      eot_iter=max(1, spec.eot), rho=.75, seed=seed, device=device, logger=_LOG,
                      use_largereps=bool(spec.extra.get("largereps")))
        kernel.loss = loss
        restarts = spec.extra.get("restarts", {}).get(stage, 1)
        return lambda x, y: _kernel_candidates(kernel, x, y, restarts)
    return build


def _apgd_targeted(kind: type) -> Callable:
    def build(forward, eps, spec: AttackSpec, seed: int, device):
        kernel = kind(forward, n_restarts=1, n_iter=spec.steps, verbose=False, eps=eps, norm=spec.norm,
                      eot_iter=max(1, spec.eot), rho=.75, seed=seed, device=device, logger=_LOG,
                      n_target_classes=spec.extra.get("apgd_target_classes", spec.extra["n_target_classes"]),
                      use_largereps=bool(spec.extra.get("largereps")))
        return lambda x, y: _kernel_candidates(kernel, x, y, 1, kernel.n_target_classes)
    return build


def _fab_targeted(forward, eps, spec: AttackSpec, seed: int, device):
    kernel = FABAttack_PT(forward, n_restarts=1, n_iter=spec.steps, eps=eps, seed=seed, norm=spec.norm,
                          verbose=False, device=device, targeted=True,
                          n_target_classes=spec.extra["n_target_classes"])
    return kernel.perturb  # a minimum-norm attack: where it fails it has no bounded point to offer


def _square(forward, eps, spec: AttackSpec, seed: int, device):
    kernel = square_kernel(forward, eps, queries=spec.extra["square_queries"], seed=seed,
                           q=spec.extra["square_q"], device=device, norm=spec.norm)
    return lambda x, y: best_candidates(kernel, x, y)


STAGES: dict[str, Callable] = {
    "apgd-ce": _apgd(APGDAttack, "ce", "apgd-ce"),
    "apgd-dlr": _apgd(APGDAttack, "dlr", "apgd-dlr"),
    "apgd-margin": _apgd(MarginAPGD, "dlr", "apgd-margin"),
    "apgd-t": _apgd_targeted(APGDAttack_targeted),
    "apgd-t-margin": _apgd_targeted(TargetedMarginAPGD),
    "fab-t": _fab_targeted,
    "square": _square,
}


def standard_stages(num_classes: int) -> list[str]:
    """A7: targeted DLR needs C ≥ 4, DLR C ≥ 3; a targeted margin stands in at C = 3, and at C = 2
    (one target: the margin path is APGD-CE's) the targeted budget goes to APGD-CE restarts."""
    if num_classes >= 4:
        return ["apgd-ce", "apgd-t", "fab-t", "square"]
    if num_classes == 3:
        return ["apgd-ce", "apgd-dlr", "apgd-t-margin", "fab-t", "square"]
    return ["apgd-ce", "fab-t", "square"]


def rand_stages(num_classes: int) -> list[str]:
    return ["apgd-ce", "apgd-dlr"] if num_classes >= 3 else ["apgd-ce"]


def standard_restarts(num_classes: int) -> dict[str, int]:
    return {"apgd-ce": FEW_CLASS_CE_RESTARTS} if num_classes < 4 else {}


def rand_restarts(num_classes: int) -> dict[str, int]:
    return {"apgd-ce": RAND_BINARY_CE_RESTARTS} if num_classes == 2 else {}


def _adapter(stages: Callable[[int], list[str]], restarts_of: Callable[[int], dict[str, int]],
             fast: Callable[[int], list[str]], l1_setting: bool) -> Callable[[AttackSpec, int], AttackSpec]:
    """``l1_setting``: the standard version's L1 configuration (the rand version keeps its own under L1)."""
    def adapt(spec: AttackSpec, num_classes: int) -> AttackSpec:
        randomized = bool(spec.extra.get("randomized")) and spec.protocol != "paper"
        if spec.variant == "fast":
            cascade = fast(num_classes)
            extra = {**spec.extra, "cascade": cascade,
                     "n_target_classes": min(aa_fast.FAST_TARGETS, num_classes - 1) if "apgd-t" in cascade else 0}
            if "apgd-ce@starts" in cascade:
                extra["starts"] = aa_fast.fast_start_budget()
            if spec.eot > 1:  # a sample leaves a run only once wrong in every draw of a step (E1: stored)
                extra["early_exit"] = "wrong in every EOT draw"
            if "square" not in cascade:
                return replace(spec, extra={**extra, "kernels": "robustmed apgd"})
            return replace(spec, extra={**extra, "kernels": "robustmed apgd, pyautoattack==0.2.0 square",
                                        "square_queries": aa_fast.FAST_SQUARE_QUERIES,
                                        "square_q": SQUARE_Q_RANDOMIZED if randomized else 1})
        cascade = stages(num_classes)
        extra = {**spec.extra, "cascade": cascade, "n_target_classes": min(9, num_classes - 1),
                 "kernels": "pyautoattack==0.2.0"}
        if restarts := restarts_of(num_classes):
            extra["restarts"] = restarts
        if spec.norm == "L1" and l1_setting:  # AutoAttack's: APGD-CE from 5 starts, APGD-T on 5 targets, 3ε → ε
            if spec.steps < L1_MIN_STEPS:
                raise UserError(f"attack {spec.name!r}: AutoAttack's L1 schedule splits the steps 30/30/40% over "
                                f"3ε, 2ε, ε and needs at least {L1_MIN_STEPS}; e.g. aa{L1_MIN_STEPS}:canonical")
            extra.update(restarts={**extra.get("restarts", {}), "apgd-ce": L1_CE_RESTARTS}, largereps=True)
            if "apgd-t" in cascade:
                extra["apgd_target_classes"] = min(L1_APGD_TARGETS, num_classes - 1)
        if "square" in cascade:
            extra.update(square_queries=SQUARE_QUERIES, square_q=SQUARE_Q_RANDOMIZED if randomized else 1)
        return replace(spec, extra=extra)
    return adapt


def assess(forward, x, y, draws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct draws out of ``draws`` passes, mean margin) per sample: how a candidate is ranked."""
    hits = torch.zeros(len(y), dtype=torch.long, device=y.device)
    margin = torch.zeros(len(y), device=y.device)
    with torch.no_grad():
        for _ in range(max(1, draws)):
            logits = forward(x)
            hits += logits.argmax(1) == y
            margin += margin_loss(logits, y)
    return hits, margin / max(1, draws)


def _stage(name: str, index: int, forward, eps, spec: AttackSpec, seed: int, start, device):
    """A stage as ``(x, y, rows) → candidates``: the fast cascade's own (each seeded apart), else pyautoattack's."""
    if spec.variant == "fast":
        return FAST_STAGES[name](forward, eps, spec, seed + index, start)
    kernel = STAGES[name](forward, eps, spec, seed, device)
    return lambda x, y, rows: kernel(x, y)


def run_autoattack(forward, x, y, *, spec: AttackSpec, eps: float, start=None, seed: int = 0,
                   on_stage=None) -> AttackResult:
    """The cascade: stage k runs on the samples whose best candidate is still correct in some draw.

    A candidate replaces a sample's best when it is correct in fewer of ``draws`` passes (one on a
    deterministic model), or as often with a higher mean margin; ``first_success`` is the stage at
    which the best became wrong in every pass. All stages share ``seed`` (as fra31's AutoAttack
    does); pyautoattack reseeds the global RNG, so its state is restored afterwards. ``on_stage`` hears the
    share of stages done after each one (later stages run only on survivors, so passes are not known ahead).
    """
    if "cascade" not in spec.extra:  # called directly, not through the harness
        with torch.no_grad():
            spec = FAMILIES.get(spec.family).adapt(spec, forward(x[:1]).shape[-1])
    draws = spec.draws if spec.extra.get("randomized") and spec.protocol != "paper" else 1  # paper: one draw
    n = len(y)
    best = x.detach().clone()
    best_hits = torch.full((n,), draws + 1, dtype=torch.long, device=y.device)  # any candidate beats the clean image
    best_margin = torch.full((n,), -torch.inf, device=y.device)
    stage_of = torch.full((n,), -1, dtype=torch.long, device=y.device)
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        for stage, name in enumerate(spec.extra["cascade"]):
            rows = torch.nonzero(best_hits > 0).flatten()
            if len(rows) == 0:
                break
            candidate = _stage(name, stage, forward, eps, spec, seed, start, x.device)(x[rows], y[rows], rows).detach()
            hits, margin = assess(forward, candidate, y[rows], draws)
            offered = (candidate != x[rows]).flatten(1).any(1)  # FAB hands back the clean image where it fails
            better = offered & ((hits < best_hits[rows]) | ((hits == best_hits[rows]) & (margin > best_margin[rows])))
            chosen = rows[better]
            best[chosen], best_hits[chosen], best_margin[chosen] = candidate[better], hits[better], margin[better]
            stage_of[chosen[hits[better] == 0]] = stage
            if on_stage is not None:
                on_stage((stage + 1) / len(spec.extra["cascade"]))
    return score(forward, best, y, stage_of)


for _name, _stages, _restarts, _fast, _l1, _description, _defaults, _amp in (  # FAB overflows fp16: AA stays fp32
    ("aa", standard_stages, standard_restarts, fast_stages, True,
     "AutoAttack: early-exit APGD-CE, then on survivors APGD-T (C ≥ 3), the clean and 10-32 vertex starts, "
     "Square-250; "
     "aa:canonical: the standard APGD-CE, APGD-T, FAB-T, Square-5000 (adapted to C, check A7)", {}, False),
    ("aa-rand", rand_stages, rand_restarts, fast_rand_stages, False,
     "AutoAttack rand with EOT 20: early-exit APGD-CE, then on survivors APGD-DLR (C = 2: APGD-CE from one more "
     "start); aa-rand:canonical: pyautoattack's kernels, every sample to the last step", {"eot": 20}, True),
):
    FAMILIES.register(_name, AttackFamily(
        name=_name, description=_description, run=run_autoattack, default_steps=100,
        alpha=lambda eps, steps: 2 * eps, alpha_rule="apgd: initial step 2*eps, halved adaptively",
        defaults=_defaults, randomized_eot=20, adapt=_adapter(_stages, _restarts, _fast, _l1), amp=_amp,
        reports_stages=True, default_variant="fast", norms=("Linf", "L2", "L1"),
        revisions={"fast": 1} if _name == "aa" else {},  # 1: the starts stage (clean + 10-32 vertex starts)
    ))
