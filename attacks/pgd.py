"""L∞ PGD (Madry et al. 2018) keeping the best iterate and each sample's first-success step.

Samples leave the batch the step they break (their adversarial example is kept), so
each step costs one forward+backward over the samples still being attacked; the shrinking
batch is padded to one of a few sizes (:func:`batch_bucket`). BIM and MIM (``bim.py``,
``mim.py``) are this loop with other defaults. Several ε can run in one batch
(:class:`EpsRows`: the default ε sweep of the harness).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackResult, AttackSpec
from robustmed.attacks.eot import LOSSES, eot_loss_grad
from robustmed.attacks.threat import Packing, ThreatModel
from robustmed.errors import UserError

Budget = float | torch.Tensor  # a scalar, or per element of a packed multi-input sample

# Each batch size of a shrinking batch needs its own oneDNN kernels on the CPU; a cache too small to hold
# them all sets them up again on every run (the measurements: docs/performance.md, "Kernel cache and padded
# batch sizes"). oneDNN reads this once, at its first primitive; a value the user set wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16384")


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: Budget, bounds: tuple[Budget, Budget] = (0, 1)) -> torch.Tensor:
    """Onto the ε-ball around the clean input, then onto the bounds (same float ops as torchattacks)."""
    delta = torch.clamp(x_adv - x, min=-eps, max=eps)
    return torch.clamp(x + delta, min=bounds[0], max=bounds[1])


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: Budget, bounds: tuple[Budget, Budget] = (0, 1)) -> torch.Tensor:
    """Onto the L2 ball around the clean input (δ scaled by min(1, ε/‖δ‖₂)), then onto the bounds (torchattacks'
    PGDL2 order and float ops)."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(p=2, dim=1)
    radius = eps.flatten() if isinstance(eps, torch.Tensor) else eps
    factor = torch.min(radius / norms, torch.ones_like(norms))
    return torch.clamp(x + delta * factor.view(-1, *([1] * (x.ndim - 1))), min=bounds[0], max=bounds[1])


def l2_step(grad: torch.Tensor) -> torch.Tensor:
    """The gradient scaled to unit L2 norm per sample (the 1e-10 guard as torchattacks' PGDL2)."""
    return grad / (grad.flatten(1).norm(p=2, dim=1) + 1e-10).view(-1, *([1] * (grad.ndim - 1)))


PROJECTIONS = {"Linf": project, "L2": project_l2}


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
    return noise.mul_(2 * eps).sub_(eps)


# Leading bits kept by the padded batch sizes: each new size costs a kernel set-up and each padded row a
# pass, and four bits balance the two on the shipped model (docs/performance.md).
DETERMINISTIC_BITS = 4
# A randomized model draws its noise for the padded batch (RPAN's MAN: ``normal(like.shape)``), so
# its rows depend on the grid: it keeps the three bits its committed paper-protocol rows were made
# with (EOT runs do not pad: early exit is off there). A deterministic model's rows do not depend on
# the grid: the padding rows are dropped, and no row's arithmetic depends on the batch's size
# (tests/test_attacks_pgd.py; the committed deterministic runs regenerate sample for sample).
RANDOMIZED_BITS = 3


def batch_bucket(n: int, bits: int = DETERMINISTIC_BITS) -> int:
    """``n`` rounded up to keep its ``bits`` leading bits (3 bits: …, 16, 20, 24, 28, 32, 40, …; 4: …, 16, 18, …).

    A shrinking batch then takes ``2**(bits-1)`` sizes per octave instead of one per early exit, with
    under ``2**(1-bits)`` of padding: every new batch size costs the backend a fresh kernel set-up.
    """
    shift = max(0, n.bit_length() - bits)
    return -(-n >> shift) << shift


def padded_size(m: int, n: int, bits: int) -> int:
    """The batch size a step over ``m`` still-attacked samples of ``n`` runs at: the grid's, never past ``n``."""
    return min(batch_bucket(m, bits), n)


def _padded(t: torch.Tensor, size: int) -> torch.Tensor:
    """``t`` with its first row repeated up to ``size`` rows (the padding's results are dropped)."""
    return t if len(t) >= size else torch.cat([t, t[:1].expand(size - len(t), *t.shape[1:])])


def _at(value: Budget, rows: torch.Tensor, ndim: int) -> Budget:
    """A per-row budget (shape ``(N, 1, …)``) at ``rows``; scalars and per-element budgets as they are."""
    return value[rows] if isinstance(value, torch.Tensor) and value.ndim == ndim else value


@dataclass(frozen=True)
class EpsRows:
    """Several ε in one batch: row r attacks sample ``group[r]`` within ``eps[level[r]]`` (ε ascending).

    Each row keeps its own start, ε and α (the family's rule at its ε), so its trajectory is that
    of a run at its ε alone. A row that breaks retires the rows of its sample at larger ε: the
    balls are nested, so the sample is broken there too (the caller carries the example over).
    """

    eps: tuple[float, ...]
    level: torch.Tensor  # (R,) long, index into ``eps``
    group: torch.Tensor  # (R,) long, the sample a row belongs to

    def column(self, values, like: torch.Tensor) -> torch.Tensor:
        """Per-level ``values`` as a per-row tensor shaped ``(R, 1, …)`` like ``like``."""
        per_level = torch.tensor([float(v) for v in values], dtype=like.dtype, device=like.device)
        return per_level[self.level].view(-1, *([1] * (like.ndim - 1)))

    def retired(self, broke: torch.Tensor) -> torch.Tensor:
        """Rows at a larger ε than a broken row of the same sample."""
        cut = torch.full((int(self.group.max()) + 1 if len(self.group) else 0,), len(self.eps),
                         dtype=torch.long, device=self.level.device)
        cut.scatter_reduce_(0, self.group[broke], self.level[broke], reduce="amin")
        return self.level > cut[self.group]

    def take(self, rows: torch.Tensor) -> "EpsRows":
        return EpsRows(self.eps, self.level[rows], self.group[rows])


def _better(broke, loss, best_broke, best_loss):
    """Lexicographic (adversarial, loss): an adversarial point beats any clean one, then higher loss wins."""
    return (broke & ~best_broke) | ((broke == best_broke) & (loss > best_loss))


@dataclass
class _Best:
    """Per sample: the best candidate so far (adversarial first, then higher loss) and the first step that broke it."""

    x: torch.Tensor
    loss: torch.Tensor
    broke: torch.Tensor
    pred: torch.Tensor
    first: torch.Tensor

    @classmethod
    def at(cls, current: torch.Tensor) -> "_Best":
        n, device = len(current), current.device
        return cls(current.clone(), torch.full((n,), -torch.inf, device=device),
                   torch.zeros(n, dtype=torch.bool, device=device), torch.zeros(n, dtype=torch.long, device=device),
                   torch.full((n,), -1, dtype=torch.long, device=device))

    def record(self, active, x_active, losses, broke, preds, step: int, keep_best: bool) -> None:
        self.first[active[broke & (self.first[active] < 0)]] = step
        update = _better(broke, losses, self.broke[active], self.loss[active]) if keep_best else \
            torch.ones_like(broke)
        chosen = active[update]
        self.x[chosen] = x_active[update]
        self.loss[chosen], self.broke[chosen], self.pred[chosen] = losses[update], broke[update], preds[update]

    def result(self, spent: int, copy: bool = True, snapshots: dict | None = None) -> AttackResult:
        pick = (lambda t: t.clone()) if copy else (lambda t: t)
        return AttackResult(x_adv=pick(self.x), success=pick(self.broke), first_success=pick(self.first),
                            loss=pick(self.loss), adv_pred=pick(self.pred), forward_backward=spent,
                            snapshots=snapshots or {})


def _ascend(grad, active, x, current, velocity, *, momentum, step_size, eps, bounds, constrain,
            norm: str = "Linf") -> None:
    """One step of the active samples, signed (L∞; MIM: momentum on the L1-normalised gradient) or along the
    L2-normalised gradient (L2), projected around the clean input and onto the box (and the valid values, for
    packed multi-input samples)."""
    if momentum:
        grad = grad / grad.abs().sum(dim=tuple(range(1, grad.ndim)), keepdim=True).clamp_min(1e-12)
        velocity[active] = momentum * velocity[active] + grad
        grad = velocity[active]
    direction = grad.sign() if norm == "Linf" else l2_step(grad)
    stepped = PROJECTIONS[norm](current[active] + _at(step_size, active, x.ndim) * direction, x[active],
                                _at(eps, active, x.ndim), bounds)
    current[active] = stepped if constrain is None else constrain(stepped, x[active])


def pgd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor, *, eps: Budget,
        steps: int, step_size: Budget, start: torch.Tensor | None = None, random_start: bool = True,
        momentum: float = 0.0, keep_best: bool = True, early_stop: bool = True, eot: int = 1,
        loss: str = "ce", generator: torch.Generator | None = None, bounds: tuple[Budget, Budget] = (0, 1),
        snapshots: tuple[int, ...] = (), constrain: Callable | None = None,
        nest: EpsRows | None = None, bucket_bits: int = DETERMINISTIC_BITS, norm: str = "Linf") -> AttackResult:
    """Sign-gradient ascent on ``loss`` (ce | margin) within ‖δ‖∞ ≤ ε and x + δ ∈ [0, 1] (L2: PGDL2's steps).

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
    ``eps`` and ``step_size`` may also be per-row tensors shaped ``(N, 1, …)``; ``nest`` then says
    which rows are one sample at several ε, and a broken row retires its sample's rows at larger ε.
    With ``early_stop`` the shrinking batch is padded to :func:`batch_bucket` sizes of ``bucket_bits``
    leading bits (never past N).
    """
    x = x.detach()
    n, loss_fn = len(x), LOSSES[loss]
    if start is None:
        start = uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
    current = PROJECTIONS[norm](x + start.to(x), x, eps, bounds)
    if constrain is not None:
        current = constrain(current, x)
    best = _Best.at(current)
    velocity = torch.zeros_like(x) if momentum else None
    active = torch.arange(n, device=x.device)
    spent, taken = 0, {}
    for step in range(steps + 1):
        x_active, m = current[active], len(active)
        size = padded_size(m, n, bucket_bits) if early_stop else m
        losses, logits, grad, _ = eot_loss_grad(forward, _padded(x_active, size), _padded(y[active], size),
                                             loss=loss_fn, samples=eot, grad=step < steps)
        if size > m:
            losses, logits, grad = losses[:m], logits[:m], None if grad is None else grad[:m]
        preds = logits.argmax(1)
        broke = preds != y[active]
        best.record(active, x_active, losses, broke, preds, step, keep_best)
        if step in snapshots:
            taken[step] = best.result(spent)
        if step == steps:
            break
        spent += len(active) * max(1, eot)
        keep = ~broke if early_stop else torch.ones_like(broke)
        if nest is not None and early_stop and broke.any():
            keep &= ~nest.retired(best.broke)[active]
        active, grad = active[keep], grad[keep]
        _ascend(grad, active, x, current, velocity, momentum=momentum, step_size=step_size, eps=eps, bounds=bounds,
                constrain=constrain, norm=norm)
        if len(active) == 0:
            break
    for k in snapshots:  # steps after an early exit of every sample change nothing
        taken.setdefault(k, best.result(spent))
    return best.result(spent, copy=False, snapshots=taken)


def _merge(total: AttackResult, trial: AttackResult, rows: torch.Tensor) -> None:
    """Keep, per sample, the better of two restarts (adversarial first, then higher loss)."""
    take = _better(trial.success, trial.loss, total.success[rows], total.loss[rows])
    chosen = rows[take]
    total.x_adv[chosen], total.loss[chosen] = trial.x_adv[take], trial.loss[take]
    total.success[chosen], total.adv_pred[chosen] = trial.success[take], trial.adv_pred[take]
    total.first_success[chosen] = trial.first_success[take]
    total.forward_backward += trial.forward_backward


def run_pgd(forward, x, y, *, spec: AttackSpec, eps: float | EpsRows, start=None, seed: int = 0,
            threat: ThreatModel | None = None) -> AttackResult:
    """Registry entry point for PGD, BIM and MIM: the spec's fields become the loop's options.

    With ``restarts`` > 1, ``start`` holds one start per restart (shape ``(restarts, *x.shape)``);
    a restart only attacks the samples no earlier restart broke. ``x`` (and ``start``) may be a
    mapping of named inputs: the loop then runs on their :class:`Packing` under ``threat``
    (default: every input attacked with the run's ε), and the result's examples are mappings.
    ``eps`` may be an :class:`EpsRows` (a single tensor ``x`` of one row per sample and ε): each
    row gets its level's ε and α, and a broken row retires its sample's rows at larger ε.
    """
    if isinstance(eps, EpsRows):
        if isinstance(x, Mapping):
            raise TypeError("several ε in one batch take a single tensor")
        return _run_flat(forward, x, y, spec=spec, eps=eps.column(eps.eps, x), start=start, seed=seed,
                         step_size=eps.column([spec.step_size(e) for e in eps.eps], x), nest=eps)
    if isinstance(x, Mapping):
        return _run_packed(forward, x, y, spec=spec, eps=eps, start=start, seed=seed,
                           threat=threat or ThreatModel.joint(x))
    return _run_flat(forward, x, y, spec=spec, eps=eps, start=start, seed=seed)


def _run_packed(forward, x, y, *, spec, eps, start, seed, threat) -> AttackResult:
    if spec.norm != "Linf":
        raise UserError(f"{spec.name}: multi-input models are attacked in L∞ only; drop norm={spec.norm.lower()}")
    packing = Packing(x, threat, eps)
    flat_start = None if start is None else packing.pack(start)
    result = _run_flat(packing.forward(forward), packing.pack(x), y, spec=spec, eps=packing.eps, start=flat_start,
                       seed=seed, bounds=(packing.low, packing.high),
                       constrain=packing.constrain if packing.constrained else None)
    for outcome in (result, *result.snapshots.values()):
        outcome.x_adv = packing.unpack(outcome.x_adv)
    return result


def _run_flat(forward, x, y, *, spec: AttackSpec, eps: Budget, start, seed: int,
              bounds: tuple[Budget, Budget] = (0, 1), constrain: Callable | None = None,
              step_size: Budget | None = None, nest: EpsRows | None = None) -> AttackResult:
    """The loop over restarts; a restart attacks only the rows no earlier restart broke (nor retired)."""
    starts = start if start is not None and start.ndim == x.ndim + 1 else [start]
    step_size = spec.step_size(eps) if step_size is None else step_size
    options = dict(steps=spec.steps, random_start=spec.random_start,
                   momentum=spec.momentum, keep_best=spec.keep_best, early_stop=spec.early_stop,
                   eot=max(1, spec.eot), loss=spec.loss, generator=torch.Generator().manual_seed(seed),
                   bounds=bounds, snapshots=tuple(spec.sweep), constrain=constrain,
                   bucket_bits=padding_bits(spec), norm=spec.norm)
    total = pgd(forward, x, y, start=starts[0], eps=eps, step_size=step_size, nest=nest, **options)
    for restart_start in starts[1:]:
        open_rows = ~total.success if nest is None else ~total.success & ~nest.retired(total.success)
        rows = torch.nonzero(open_rows).flatten()
        if len(rows) == 0:
            break
        trial = pgd(forward, x[rows], y[rows], start=restart_start[rows], eps=_at(eps, rows, x.ndim),
                    step_size=_at(step_size, rows, x.ndim), nest=None if nest is None else nest.take(rows),
                    **options)
        _merge(total, trial, rows)
    return total


def padding_bits(spec: AttackSpec) -> int:
    """The padded grid a run uses: the randomized one when the harness resolved the spec as randomized."""
    return RANDOMIZED_BITS if spec.extra.get("randomized") else DETERMINISTIC_BITS


def _pgd_alpha(eps: float, steps: int) -> float:
    return 2.5 * eps / steps


FAMILIES.register("pgd", AttackFamily(
    name="pgd",
    description="PGD, uniform random start, sign steps (L2: normalised-gradient steps), best iterate kept "
                "(Madry et al. 2018)",
    run=run_pgd,
    default_steps=10,
    alpha=_pgd_alpha,
    alpha_rule="2.5*eps/steps",
    randomized_eot=20,
    restartable=True,
    prefix_sweep=True,
    warm_start=True,
    mapping_inputs=True,
    eps_rows=True,
    norms=("Linf", "L2"),
))
