"""The benchmark harness: clean pass, attacks per ε, invariant checks, one row per sample × attack × ε.

A sample counts as robust only if it is classified correctly clean *and* under every
attack at that ε (per-sample worst case, checks B3/B4). Randomized models (declared by
the defense, or detected by :func:`robustmed.randomness.is_randomized`) are attacked with
EOT; each attack returns one candidate per sample, judged once over R fresh inference draws
(C2). Their headline is expected accuracy (:mod:`robustmed.expected`); "correct in all R
draws" is kept as ``robust``.
"""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from robustmed import expected
from robustmed.balance import class_balance, per_sample
from robustmed.contracts import adapt_head, check_range
from robustmed.attacks import FAMILIES, AttackSpec, parse_attack
from robustmed.attacks.amp import autocast_forward, resolve_amp, strict_fp32
from robustmed.attacks.pgd import EpsRows
from robustmed.attacks.threat import ThreatModel
from robustmed.errors import UserError
from robustmed.progress import Meter, progress_bar
from robustmed.randomness import is_randomized, seed_model
from robustmed.stats import wilson
from robustmed.tensors import Inputs, take, to_device

BUDGET_TOL = 1e-6
DEFAULT_DRAWS = 10  # R of defenses.md §3.3: inference draws judging a randomized model
MAX_DRAWS = 62  # per-draw verdicts are stored as the bits of one int64


class InvariantError(RuntimeError):
    """An attack broke a hard invariant (check B1/B2): the run is refused, nothing is stored."""


def sample_seed(seed: int, sample_id: int, digest: str) -> int:
    """Seed derived from (run seed, sample id, attack spec): sharding and resuming change nothing."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}:{digest}".encode()).digest()[:8], "little") >> 1


def seeded_starts(x: Inputs, sample_ids: Sequence[int], eps, seed: int, digest: str) -> Inputs:
    """Uniform random starts in the ε-ball, one generator per sample.

    For a mapping of inputs ``eps`` maps each name to its budget (0: frozen, start 0); the
    inputs draw in that order from the sample's one generator.
    """
    if not isinstance(x, Mapping):
        return _mapping_starts({"x": x}, sample_ids, {"x": eps}, seed, digest)["x"]
    return _mapping_starts(x, sample_ids, eps, seed, digest)


def _mapping_starts(x, sample_ids, budgets: dict, seed, digest) -> dict:
    starts = {name: torch.zeros_like(x[name], device="cpu") for name in budgets}
    for row, sid in enumerate(sample_ids):
        gen = torch.Generator().manual_seed(sample_seed(seed, int(sid), digest))
        for name, eps in budgets.items():
            if eps:
                starts[name][row] = torch.rand(x[name].shape[1:], generator=gen).mul_(2 * eps).sub_(eps)
    return starts


def select_subset(total: int, n: int | None, seed: int) -> np.ndarray:
    """A seeded evaluation subset of sample ids (sorted); all ids when n is None or ≥ total."""
    if n is None or n >= total:
        return np.arange(total)
    order = np.random.default_rng(seed).permutation(total)
    return np.sort(order[:n])


def check_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: tuple[float, float] = (0.0, 1.0)) -> float:
    """B1: ‖x_adv − x‖∞ ≤ ε, x_adv within the bounds ([0, 1]), no NaN — on every run. Returns the largest norm."""
    if not torch.isfinite(x_adv).all():
        raise InvariantError("B1: adversarial examples contain NaN or inf")
    low, high = bounds
    if len(x_adv) and (x_adv.min() < low or x_adv.max() > high):
        raise InvariantError(f"B1: adversarial examples leave [{low:g}, {high:g}] "
                             f"(min {x_adv.min():.4g}, max {x_adv.max():.4g})")
    norm = (x_adv - x).abs().amax().item() if len(x) else 0.0
    if norm > eps * (1 + BUDGET_TOL) + BUDGET_TOL:
        raise InvariantError(f"B1: ‖δ‖∞ = {norm:.6g} exceeds ε = {eps:.6g}")
    return norm


def check_threat_budget(x_adv: Mapping, x: Mapping, threat: ThreatModel, eps: float) -> None:
    """B1 per input: each attacked input within its own ball and bounds; frozen inputs bit-identical."""
    for name, budget in threat.budgets(eps).items():
        if not threat.inputs[name].attackable:
            if not torch.equal(x_adv[name], x[name]):
                raise InvariantError(f"B1: frozen input {name!r} was changed by the attack")
            continue
        check_budget(x_adv[name], x[name], budget, threat.inputs[name].bounds)


def resolve_spec(spec: AttackSpec, *, randomized: bool, num_classes: int) -> AttackSpec:
    """The spec as run on this model: EOT samples, inference draws, early exit and the class-count
    adaptation (A7) resolved and stored, so every row states what was actually done (E1).

    On a randomized model a spec without ``eot=`` gets the family's EOT default (20 for PGD,
    BIM, MIM), ``draws`` defaults to R = 10, and early exit is off (one lucky draw must not end
    the attack); ``protocol=paper`` keeps the single-draw, non-EOT protocol and says so.
    """
    family = FAMILIES.get(spec.family)
    adaptive = randomized and spec.protocol != "paper"
    spec = replace(spec, eot=spec.eot or (family.randomized_eot if randomized else 1),
                   draws=spec.draws or (DEFAULT_DRAWS if randomized else 1),
                   early_stop=spec.early_stop and not adaptive,
                   extra={**spec.extra, "randomized": randomized, "num_classes": num_classes})
    return family.adapt(spec, num_classes) if family.adapt else spec


def with_bpda(spec: AttackSpec, model) -> AttackSpec:
    """E1: the number of non-differentiable ops the attack sees through straight-through (BPDA, check D1),
    stored as ``extra["bpda_sites"]`` only when there are some, so every other spec keeps its digest."""
    from robustmed.checks.bpda import active_sites  # robustmed.checks imports this module

    sites = active_sites(model)
    return replace(spec, extra={**spec.extra, "bpda_sites": sites}) if sites else spec


def resolve_eps_mode(spec: AttackSpec, n_eps: int) -> AttackSpec:
    """The mode of a multi-ε run, stored as ``eps_mode`` (one ε stores none); default ``sweep``.

    ``sweep``: ascending, only samples still robust at the previous ε are attacked, from the
    same seeded starts as an independent run (:func:`seed_digest`), so where the model's
    numerics do not depend on the batch a sample robust in the sweep is robust in the
    independent run too. ``warm``: also warm-started from the previous ε's example (no such
    guarantee, opt-in). An iteration sweep (``sweep=``) always runs each ε independently.
    """
    if n_eps < 2:
        return replace(spec, eps_mode="")
    if spec.sweep:
        if spec.eps_mode not in ("", "independent"):
            raise UserError(f"attack {spec.name!r}: an iteration sweep runs every ε independently "
                            f"(eps_mode={spec.eps_mode} would carry rows across ε)")
        return replace(spec, eps_mode="independent")
    return replace(spec, eps_mode=spec.eps_mode or "sweep")


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


def _stack(starts: list) -> Inputs:
    if isinstance(starts[0], Mapping):
        return {name: torch.stack([s[name] for s in starts]) for name in starts[0]}
    return torch.stack(starts)


def _starts(spec: AttackSpec, x, ids, eps, seed, digest, threat: ThreatModel | None = None) -> Inputs:
    """Seeded starts; one per restart (stacked) when the spec has several."""
    if not spec.random_start:
        return {k: torch.zeros_like(v) for k, v in x.items()} if isinstance(x, Mapping) else torch.zeros_like(x)
    budget = threat.budgets(eps) if threat is not None else eps
    if spec.restarts == 1:
        return seeded_starts(x, ids, budget, seed, digest)
    return _stack([seeded_starts(x, ids, budget, seed, digest if r == 0 else f"{digest}/restart{r}")
                   for r in range(spec.restarts)])


def _warm(start: Inputs, previous: Inputs, x: Inputs, eps: float, threat: ThreatModel | None) -> Inputs:
    """The previous ε's example, projected into the new ball: it replaces the (first) start."""
    if isinstance(x, Mapping):
        budgets = threat.budgets(eps)
        delta = {n: torch.clamp(previous[n] - x[n], -budgets[n], budgets[n]) for n in x}
        return {n: _replace_first(start[n], delta[n], x[n]) for n in x}
    return _replace_first(start, torch.clamp(previous - x, -eps, eps), x)


def _replace_first(start: torch.Tensor, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if start.ndim == x.ndim + 1:  # restarts: the warm start is the first
        return torch.cat([delta[None], start[1:]])
    return delta


@dataclass
class Outcome:
    """Per-sample state of one (attack, ε) over all N samples; the ε sweep carries it to the next ε."""

    adv_pred: torch.Tensor
    success: torch.Tensor
    first: torch.Tensor
    loss: torch.Tensor
    linf: torch.Tensor
    hits: torch.Tensor
    source_eps: torch.Tensor
    x_adv: Inputs
    norms: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None  # which of the judgement's draws were correct (bits)

    @classmethod
    def clean(cls, x, clean_pred, clean_loss, correct, eps: float, names=()) -> "Outcome":
        n = len(correct)
        return cls(clean_pred.clone(), ~correct, torch.where(correct, -1, 0), clean_loss.clone(), torch.zeros(n),
                   torch.zeros(n, dtype=torch.long), torch.full((n,), eps, dtype=torch.float64),
                   {k: v.clone() for k, v in x.items()} if isinstance(x, Mapping) else x.clone(),
                   {name: torch.zeros(n) for name in names}, torch.zeros(n, dtype=torch.long))

    def copy_from(self, other: "Outcome", rows: torch.Tensor) -> None:
        """Rows broken at a smaller ε stay broken (nested balls): their example and judgement carry over.

        On a randomized model the same holds for a candidate judged wrong in more draws at a smaller
        ε (or in fewer steps): it is a valid candidate here, so the weaker result never replaces it."""
        for key in ("adv_pred", "success", "first", "loss", "linf", "hits", "source_eps", "mask"):
            getattr(self, key)[rows] = getattr(other, key)[rows]
        for name in self.norms:
            self.norms[name][rows] = other.norms[name][rows]
        _put(self.x_adv, rows, take(other.x_adv, rows))


def _put(target: Inputs, rows, values: Inputs) -> None:
    if isinstance(target, Mapping):
        for name in target:
            target[name][rows] = values[name]
    else:
        target[rows] = values


def _norms(x_adv: Inputs, x: Inputs) -> tuple[torch.Tensor, dict]:
    """Per-sample ‖δ‖∞ (largest over inputs) and, for mappings, per input."""
    if not isinstance(x, Mapping):
        return (x_adv - x).abs().flatten(1).amax(1), {}
    per_input = {n: (x_adv[n] - x[n]).abs().flatten(1).amax(1) for n in x}
    return torch.stack(list(per_input.values())).amax(0), per_input


def seed_digest(spec: AttackSpec, eps: float) -> str:
    """The digest seeding starts: the spec's without its ε mode (option and field), which changes
    which samples run, never their seeds — so ``eps_mode=sweep`` reuses the independent run's starts."""
    name = re.sub(r"(?<=[:,])eps_mode=[a-z]+,?", "", spec.name).rstrip(",:")
    return replace(spec, name=name, eps_mode="").digest(eps)


def _changed(x_adv: Inputs, reference: Inputs) -> torch.Tensor:
    """Rows whose example differs from the reference's (an iteration-sweep snapshot vs the final example)."""
    if isinstance(x_adv, Mapping):
        return torch.stack([_changed(x_adv[n], reference[n]) for n in x_adv]).any(0)
    return (x_adv != reference).flatten(1).any(1)


def _judge(model, spec: AttackSpec, result, x, labels, eps, threat, reference=None):
    """B1 always; B2 on deterministic models (with the attack's own forward), R draws (C2) otherwise.

    Under AMP the attack's predictions are re-verified with its autocast forward, then every
    example is judged in float32, the deployed precision. ``reference`` (a judged final result)
    spares re-scoring sweep snapshots whose example is the final one. Returns (result, hits).
    """
    x_adv = {k: v.detach() for k, v in result.x_adv.items()} if isinstance(x, Mapping) else result.x_adv.detach()
    if threat is not None:
        check_threat_budget(x_adv, x, threat, eps)
    else:
        check_budget(x_adv, x, eps)
    result.x_adv = x_adv
    if spec.extra.get("randomized"):  # B2 is only a FLAG here: the candidate is judged once, over R fresh draws
        hits, result.adv_pred, result.loss, mask = judge_draws_masked(model, x_adv, labels, spec.draws)
        result.success = hits < spec.draws
        return result, hits, mask
    rows = torch.arange(len(labels), device=labels.device)
    if reference is not None and not spec.amp:
        same = ~_changed(x_adv, reference.x_adv)
        if not torch.equal(result.adv_pred[same], reference.adv_pred[same]):
            raise InvariantError("B2: a sweep snapshot disagrees with the final example it equals")
        rows = rows[~same]
    if not spec.amp:
        with torch.no_grad():  # B2: a fresh forward pass on the returned examples must agree
            verified = model(take(x_adv, rows)).argmax(1) if len(rows) else result.adv_pred[rows]
        if not torch.equal(verified, result.adv_pred[rows]):
            raise InvariantError("B2: re-scoring the adversarial examples disagrees with the attack's own predictions")
    else:  # judged in float32 only: half-precision kernels round differently with the batch's
        # shape (cuDNN picks per shape), so the attack's own fp16 predictions cannot be re-verified
        # bit for bit; the fp32 judgement is the result, and compare_amp checks AMP against fp32
        _, result.adv_pred, result.loss = judge_draws(model, x_adv, labels, 1)
        result.success = result.adv_pred != labels
        result.first_success = torch.where(result.success, result.first_success, -1)
    hits = (~result.success).long() * spec.draws
    return result, hits, hits.clamp(max=1)


def _run_attack(model, spec: AttackSpec, x, y, ids, eps, seed, device, threat=None, warm=None, on_pass=None):
    """Attack one chunk and judge it (every sweep step's snapshot too).

    Returns ``{steps: (result, hits)}``: the run's own steps, plus each k of an iteration sweep.
    ``warm`` (ε sweep) is the previous ε's example, replacing the first start.
    """
    digest = seed_digest(spec, eps)
    family = FAMILIES.get(spec.family)
    chunk_seed = sample_seed(seed, int(ids[0]), digest)
    if spec.extra.get("randomized"):
        seed_model(model, chunk_seed)
    start = _starts(spec, x, ids, eps, seed, digest, threat)
    if warm is not None and family.warm_start:
        start = _warm(start, warm, x, eps, threat)
    x_dev, labels = to_device(x, device), y.to(device)
    forward = autocast_forward(model, spec.amp, device)
    if on_pass is not None:
        forward = _counted(forward, on_pass)
    options = {"threat": threat} if threat is not None else {}
    result = family.run(forward, x_dev, labels, spec=spec, eps=eps, start=to_device(start, device), seed=chunk_seed,
                        **options)
    judged = {spec.steps: _judge(model, spec, result, x_dev, labels, eps, threat)}
    for k, snapshot in result.snapshots.items():
        if k != spec.steps:
            judged[k] = _judge(model, spec, snapshot, x_dev, labels, eps, threat, reference=result)
    return judged


def _counted(forward, on_pass):
    def counted(inputs):
        on_pass()
        return forward(inputs)
    return counted


STEPPED = ("pgd", "bim", "mim")  # families whose passes per chunk are known in advance: (steps + 1) × EOT × restarts


def _pass_reporter(spec: AttackSpec, samples: int, meter: Meter | None):
    """A callback advancing ``meter`` by one pass's share of the chunk, for attacks whose pass count is known."""
    if meter is None or meter.listener is None or spec.family not in STEPPED:
        return None
    passes = (spec.steps + 1) * max(spec.eot, 1) * max(spec.restarts, 1)
    return lambda: meter.provisional(samples / passes, samples)


def sweep_spec(spec: AttackSpec, k: int, eps: float) -> AttackSpec:
    """The stored spec of an iteration-sweep row: k steps at the long run's fixed α, derived from it."""
    if k == spec.steps:
        return spec
    return replace(spec, name=f"{spec.family}{k}@{spec.name}", steps=k, alpha=spec.step_size(eps),
                   alpha_rule=f"fixed: the α of {spec.name}", sweep=(), derived_from=f"{spec.name}#{spec.digest(eps)}")


def _chunks(mask: torch.Tensor, size: int) -> tuple:
    """Indices where ``mask`` is set, in chunks of ``size``; none when it is empty (every sample broken)."""
    todo = torch.nonzero(mask).flatten()
    return todo.split(size) if len(todo) else ()


def _attack_eps(model, spec, x, y, ids, eps, clean, *, seed, batch_size, device, threat, carried, tick, meter=None):
    """Every outcome of one attack at one ε: ``{steps: Outcome}`` (one per sweep k).

    ``carried`` (ε sweep): the previous ε's outcome; only samples it left correct in some draw
    are attacked (``warm``: from its examples), and the rest carry its judgement over.
    """
    names = list(threat.inputs) if threat is not None else []
    outcomes = {k: Outcome.clean(x, clean.pred, clean.loss, clean.correct, eps, names) for k in spec.sweep or
                (spec.steps,)}
    todo_mask = clean.attackable if carried is None else clean.attackable & (carried.hits > 0)
    if carried is not None and not FAMILIES.get(spec.family).uses_eps:  # same candidate at every ε: judged once
        todo_mask = torch.zeros_like(todo_mask)
    if carried is not None:
        done = torch.nonzero(clean.attackable & ~todo_mask).flatten()
        for outcome in outcomes.values():
            outcome.copy_from(carried, done)
    for chunk in _chunks(todo_mask, batch_size):
        warm = take(carried.x_adv, chunk) if carried is not None and spec.eps_mode == "warm" else None
        judged = _run_attack(model, spec, take(x, chunk), y[chunk], ids[chunk.numpy()], eps, seed, device,
                             threat, warm, on_pass=_pass_reporter(spec, len(chunk), meter))
        for k, (result, hits, mask) in judged.items():
            _store(outcomes[k], chunk, result, hits, take(x, chunk), clean.correct[chunk], eps, mask)
        tick(len(chunk))
    if spec.extra.get("randomized"):
        _nest(outcomes, carried, todo_mask)
    return outcomes


def _nest(outcomes: dict, carried: "Outcome | None", attacked: torch.Tensor) -> None:
    """Randomized models: a sample's result never gets weaker with more steps or a larger ε (checks B5).

    Each candidate was judged once over fresh draws; where a shorter run's (or a smaller ε's)
    candidate was correct in fewer draws than this run's, it is the stronger valid candidate, and
    its example and judgement carry over (``source_eps`` names the ε it was found at).
    """
    previous = carried
    for k in sorted(outcomes):
        outcome = outcomes[k]
        if previous is not None:
            outcome.copy_from(previous, torch.nonzero(attacked & (previous.hits < outcome.hits)).flatten())
        previous = outcome


def _groups_ok(spec: AttackSpec, threat, n_eps: int) -> bool:
    """Whether a multi-ε run may attack several ε in one batch (:func:`_sweep_together`): the default
    ``sweep`` mode of a family taking :class:`EpsRows`, on a deterministic model, single tensor, fp32."""
    return (n_eps > 1 and spec.eps_mode == "sweep" and FAMILIES.get(spec.family).eps_rows and threat is None
            and not spec.amp and not spec.sweep and not spec.extra.get("randomized"))


def eps_group(attacked: int, remaining: int, batch_size: int) -> int:
    """How many of the next ε one loop attacks together: as many as fit in a batch, (attacked samples ×
    ε) ≤ ``batch_size``, at least one. With a batch already half full or more this is one ε at a time:
    the ε-by-ε order never attacks a sample above an ε where it broke, so it spends the fewest sample
    passes; smaller batches are dominated by the per-call cost, which a group pays once per step."""
    return max(1, min(remaining, batch_size // max(1, attacked)))


def _sweep_together(model, spec, x, y, ids, eps_list, clean, *, seed, batch_size, device, carried, tick) -> list[dict]:
    """Several ε of the ascending sweep in one loop: one ``{steps: Outcome}`` per ε.

    Only samples ``carried`` (the previous ε's outcome) left correct are attacked, the rest carry it
    over. Each (sample, ε) pair is a row with the independent run's seeded start, its ε and its α; a
    row that breaks retires its sample's rows at larger ε. Each ε then gets exactly the ε-by-ε
    sweep's outcome (where the model's numerics do not depend on the batch): a sample broken at some
    ε′ ≤ ε carries the example and judgement of the smallest such ε′ (``source_eps``), any other
    sample its own row's, whose trajectory is the independent run's.
    """
    levels = len(eps_list)
    family = FAMILIES.get(spec.family)
    outcomes = [{spec.steps: Outcome.clean(x, clean.pred, clean.loss, clean.correct, eps)} for eps in eps_list]
    todo_mask = clean.attackable if carried is None else clean.attackable & (carried.hits > 0)
    if carried is not None:
        done = torch.nonzero(clean.attackable & ~todo_mask).flatten()
        for outcome in outcomes:
            outcome[spec.steps].copy_from(carried, done)
    source = torch.tensor(eps_list, dtype=torch.float64)
    for chunk in _chunks(todo_mask, max(1, batch_size // levels)):
        m, chunk_ids = len(chunk), ids[chunk.numpy()]
        x_chunk, labels = to_device(take(x, chunk), device), y[chunk].to(device)
        digests = [seed_digest(spec, eps) for eps in eps_list]
        starts = [_starts(spec, take(x, chunk), chunk_ids, eps, seed, d) for eps, d in zip(eps_list, digests)]
        start = torch.cat(starts, dim=1 if spec.restarts > 1 else 0)
        level = torch.arange(levels, device=device).repeat_interleave(m)
        group = torch.arange(m, device=device).repeat(levels)
        rows = EpsRows(tuple(eps_list), level, group)
        result = family.run(model, x_chunk[group], labels[group], spec=spec, eps=rows, start=to_device(start, device),
                            seed=sample_seed(seed, int(chunk_ids[0]), digests[0]))
        x_adv = result.x_adv.detach()
        for j, eps in enumerate(eps_list):  # B1 per row at its own ε
            check_budget(x_adv[j * m:(j + 1) * m], x_chunk, eps)
        broke = result.success.view(levels, m)
        first_broken = torch.where(broke.any(0), broke.long().argmax(0), levels)
        src = torch.minimum(first_broken[None, :], torch.arange(levels, device=device)[:, None])  # (levels, m)
        picked = src * m + torch.arange(m, device=device)
        used = torch.unique(picked)
        with torch.no_grad():  # B2 on every row whose result is reported
            verified = model(x_adv[used]).argmax(1)
        if not torch.equal(verified, result.adv_pred[used]):
            raise InvariantError("B2: re-scoring the adversarial examples disagrees with the attack's own predictions")
        for j, eps in enumerate(eps_list):
            r = picked[j]
            own = replace(result, x_adv=x_adv[r], success=result.success[r], first_success=result.first_success[r],
                          loss=result.loss[r], adv_pred=result.adv_pred[r], snapshots={})
            outcome = outcomes[j][spec.steps]
            hits = (~own.success).long() * spec.draws
            _store(outcome, chunk, own, hits, take(x, chunk), clean.correct[chunk], eps, hits.clamp(max=1))
            outcome.source_eps[chunk] = source[src[j].cpu()]
        tick(m * levels)
    return outcomes


def _store(outcome: Outcome, chunk, result, hits, x_chunk, correct, eps, mask) -> None:
    linf, per_input = _norms(to_device(result.x_adv, "cpu"), x_chunk)
    outcome.adv_pred[chunk], outcome.success[chunk] = result.adv_pred.cpu(), result.success.cpu() | ~correct
    outcome.first[chunk], outcome.loss[chunk], outcome.linf[chunk] = result.first_success.cpu(), result.loss.cpu(), linf
    outcome.hits[chunk], outcome.source_eps[chunk], outcome.mask[chunk] = hits.cpu(), eps, mask.cpu()
    for name, norm in per_input.items():
        outcome.norms[name][chunk] = norm
    _put(outcome.x_adv, chunk, to_device(result.x_adv, "cpu"))


@dataclass
class _Clean:
    pred: torch.Tensor
    loss: torch.Tensor
    hits: torch.Tensor
    correct: torch.Tensor
    attackable: torch.Tensor
    mask: torch.Tensor


def _frame(spec: AttackSpec, eps: float, outcome: Outcome, clean: _Clean, y, sample_ids, seed, threat,
           seconds: float) -> pd.DataFrame:
    frame = pd.DataFrame({
        "sample_id": sample_ids, "label": y.numpy(), "clean_pred": clean.pred.numpy(),
        "clean_correct": clean.correct.numpy(), "adv_pred": outcome.adv_pred.numpy(), "success": outcome.success.numpy(),
        "robust": (clean.correct & ~outcome.success).numpy(), "first_success_step": outcome.first.numpy(),
        "final_loss": outcome.loss.numpy(), "linf": outcome.linf.numpy(), "eps": eps,
        "attack": spec.name if threat is None else f"{spec.name}[{threat.name}]",
        "spec": spec.to_json(eps), "spec_hash": spec.digest(eps), "seed": seed,
        "clean_correct_draws": clean.hits.numpy(), "correct_draws": outcome.hits.numpy(),
        "clean_draw_mask": clean.mask.numpy(), "draw_mask": outcome.mask.numpy(), "draws": spec.draws, "protocol": spec.protocol, "source_eps": outcome.source_eps.numpy(),
        "attack_time_s": seconds,
    })
    if threat is not None:
        frame.insert(frame.columns.get_loc("linf") + 1, "threat", threat.name)
        for name, budget in threat.budgets(eps).items():
            frame[f"linf_{name}"], frame[f"eps_{name}"] = outcome.norms[name].numpy(), budget
    return frame


def _threats(x, threat) -> list:
    if not isinstance(x, Mapping):
        if threat is not None:
            raise UserError("a threat model needs a mapping of named inputs")
        return [None]
    if threat is None:
        return [ThreatModel.joint(list(x))]
    return [threat] if isinstance(threat, ThreatModel) else list(threat)


def _prepare_spec(spec: AttackSpec, threat, n_eps: int, device) -> AttackSpec:
    family = FAMILIES.get(spec.family)
    if threat is not None and not family.mapping_inputs:
        raise UserError(f"attack {spec.name!r} takes a single tensor; multi-input models: pgd, bim, mim")
    spec = resolve_amp(resolve_eps_mode(spec, n_eps), device)
    if threat is not None:
        spec = replace(spec, extra={**spec.extra, "threat": threat.to_json()})
    return spec


@strict_fp32()
def attack_rows(model, x, y, sample_ids, specs: Sequence[AttackSpec], eps_list: Sequence[float], *, seed: int = 0,
                batch_size: int = 256, device="cpu", progress: bool = False,
                randomized: bool = False, threat: ThreatModel | Sequence[ThreatModel] | None = None,
                clean_pass: tuple | None = None) -> pd.DataFrame:
    """Per-sample rows for every attack × ε; only clean-correct samples are attacked.

    ``randomized`` declares the model randomized (the defense registry's flag); randomness is
    also detected. A randomized model's clean pass and attacks are judged over R draws:
    ``clean_correct``/``robust`` mean correct in every draw, ``correct_draws``/``draws`` give the
    expected accuracy; samples correct in at least one clean draw are attacked.

    ``x`` may be a mapping of named inputs; ``threat`` then gives one threat model or several
    (e.g. :func:`robustmed.attacks.threat.modality_threats`: joint and each input alone, check F4),
    default: every input attacked within the run's ε. Several ε run as an ascending sweep unless a
    spec says otherwise (:func:`resolve_eps_mode`; ``source_eps``: where each row's example was found).

    ``clean_pass`` is :func:`clean_draws`'s (prediction, loss, correct draws) of these samples with one draw,
    in these batches, already made (check A9's): a deterministic model's clean pass is not repeated.
    """
    model.eval()
    randomized = bool(randomized or is_randomized(model))
    sample_ids = np.asarray(sample_ids)
    eps_list = sorted(eps_list)
    if randomized:
        seed_model(model, seed)
    with torch.no_grad():
        num_classes = model(to_device(take(x, slice(0, 1)), device)).shape[-1]
    specs = [resolve_spec(s, randomized=randomized, num_classes=num_classes) for s in specs]
    specs = [with_bpda(s, model) for s in specs]
    n_clean = max(s.draws for s in specs) if randomized else 1
    if clean_pass is not None and n_clean == 1 and all(len(t) == len(y) for t in clean_pass):
        pred, loss, hits = clean_pass
        mask = hits.clamp(max=1)
    else:
        pred, loss, hits, mask = clean_draws_masked(model, x, y, batch_size, device, n_clean)
    clean = _Clean(pred, loss, hits, hits == n_clean, hits > 0, mask)
    threats = _threats(x, threat)
    frames = []
    with progress_bar(progress) as bar:
        total = len(specs) * len(threats) * len(eps_list) * int(clean.attackable.sum())
        task, meter = bar.add_task("attack", total=total), Meter(total)

        def tick(n):
            bar.advance(task, n)
            meter.commit(n)
        for spec, threat_model in ((s, t) for s in specs for t in threats):
            spec = _prepare_spec(spec, threat_model, len(eps_list), device)
            if _groups_ok(spec, threat_model, len(eps_list)):
                frames += _grouped_sweep(model, spec, x, y, sample_ids, eps_list, clean, seed=seed,
                                         batch_size=batch_size, device=device, bar=bar, task=task, tick=tick,
                                         meter=meter)
                continue
            carried = None
            for eps in eps_list:
                bar.update(task, description=f"{spec.name} ε={eps:.4g}")
                started = time.perf_counter()
                outcomes = _attack_eps(model, spec, x, y, sample_ids, eps, clean, seed=seed, batch_size=batch_size,
                                       device=device, threat=threat_model, carried=carried, tick=tick, meter=meter)
                seconds = time.perf_counter() - started
                frames += [_frame(sweep_spec(spec, k, eps), eps, o, clean, y, sample_ids, seed, threat_model, seconds)
                           for k, o in outcomes.items()]
                carried = outcomes[spec.steps] if spec.eps_mode in ("sweep", "warm") else None
    return pd.concat(frames, ignore_index=True)


def _grouped_sweep(model, spec, x, y, sample_ids, eps_list, clean, *, seed, batch_size, device, bar, task, tick,
                   meter) -> list:
    """The default ε sweep in groups of ε (:func:`eps_group`), one loop per group; a group's time is
    split evenly over its ε (``attack_time_s``)."""
    frames, carried, j = [], None, 0
    while j < len(eps_list):
        attacked = int((clean.attackable if carried is None else clean.attackable & (carried.hits > 0)).sum())
        group = eps_list[j:j + eps_group(attacked, len(eps_list) - j, batch_size)]
        bar.update(task, description=f"{spec.name} ε={group[0]:.4g}" + (f"…{group[-1]:.4g}" if len(group) > 1 else ""))
        started = time.perf_counter()
        if len(group) == 1:
            outcomes = [_attack_eps(model, spec, x, y, sample_ids, group[0], clean, seed=seed, batch_size=batch_size,
                                    device=device, threat=None, carried=carried, tick=tick, meter=meter)]
        else:
            outcomes = _sweep_together(model, spec, x, y, sample_ids, group, clean, seed=seed, batch_size=batch_size,
                                       device=device, carried=carried, tick=tick)
        seconds = (time.perf_counter() - started) / len(group)
        frames += [_frame(spec, eps, o[spec.steps], clean, y, sample_ids, seed, None, seconds)
                   for eps, o in zip(group, outcomes)]
        carried, j = outcomes[-1][spec.steps], j + len(group)
    return frames


def summarize(rows: pd.DataFrame) -> list[dict]:
    """Per ε: clean accuracy and per-sample worst-case robust accuracy over all attacks, with Wilson CIs."""
    out = []
    for eps, group in rows.groupby("eps", sort=True):
        per_sample = group.groupby("sample_id").agg(clean=("clean_correct", "first"), robust=("robust", "all"))
        n, clean, robust = len(per_sample), int(per_sample.clean.sum()), int(per_sample.robust.sum())
        out.append({
            "eps": float(eps), "n": n,
            "clean_accuracy": clean / n, "clean_ci": wilson(clean, n),
            "robust_accuracy": robust / n, "robust_ci": wilson(robust, n),
            "per_attack": {a: float(g.robust.mean()) for a, g in group.groupby("attack")},
            **_balance(group),
            **expected.summary(group),
            "attack_time_s": float(group.groupby("attack").attack_time_s.first().sum()),
        })
    return out


def _balance(group: pd.DataFrame) -> dict:
    """Clean and worst-case robust balanced accuracy with per-class recall, beside the majority-class rate.

    Randomized models count a sample by its fraction of correct draws (their headline is expected accuracy)."""
    if "label" not in group:  # rows assembled by hand, without labels: nothing to balance over
        return {}
    samples = per_sample(group)
    clean, robust = class_balance(samples.label, samples.clean), class_balance(samples.label, samples.robust)
    return {"clean_balanced_accuracy": clean["balanced_accuracy"], "clean_per_class_recall": clean["per_class_recall"],
            "robust_balanced_accuracy": robust["balanced_accuracy"],
            "robust_per_class_recall": robust["per_class_recall"], "majority_class_rate": clean["majority_class_rate"]}


def with_null_baseline(attacks: Sequence[str], randomized: bool) -> list[str]:
    """Randomized models: the attacks plus ``null`` (the clean image judged like a candidate), the
    baseline an attack column must beat (check C5); deterministic models: the attacks as given."""
    attacks = list(attacks)
    if randomized and not any(parse_attack(a).family == "null" for a in attacks):
        attacks.append("null")
    return attacks


def benchmark(model: torch.nn.Module, x: Inputs, y: torch.Tensor, attack: str | Sequence[str] = "pgd100",
              eps: float | Sequence[float] = 4 / 255, *, seed: int = 0, batch_size: int = 256, device="cpu",
              sample_ids: Sequence[int] | None = None, progress: bool = False,
              randomized: bool = False, threat: ThreatModel | Sequence[ThreatModel] | None = None) -> pd.DataFrame:
    """Public API: run the harness on any ``nn.Module`` (inputs in [0, 1], returns logits).

    ``x`` may be a mapping of named inputs (multi-input models) with ``threat`` saying how each
    input is attacked. Several ε run as an ascending sweep (``eps_mode=`` in a spec).

    >>> rows = benchmark(model, x, y, attack="pgd10", eps=4/255)  # doctest: +SKIP
    >>> rows.robust.mean()  # doctest: +SKIP
    """
    attacks = [attack] if isinstance(attack, str) else list(attack)
    check_range(x)
    model, _ = adapt_head(model.to(device), to_device(take(x, slice(0, 1)), device), None)
    attacks = with_null_baseline(attacks, randomized or is_randomized(model))
    eps_list = sorted({float(eps)} if isinstance(eps, (int, float)) else {float(e) for e in eps})
    specs = [parse_attack(a) for a in attacks]
    ids = np.arange(len(y)) if sample_ids is None else np.asarray(sample_ids)
    return attack_rows(model, x, y, ids, specs, eps_list, seed=seed, batch_size=batch_size, device=device,
                       progress=progress, randomized=randomized, threat=threat)
