"""One attack at one ε over the run's samples: chunks attacked from their seeded starts, every candidate judged,
the per-sample :class:`Outcome` kept (nested across steps and ε on randomized models), and its rows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd
import torch

from robustmed.attacks import FAMILIES, AttackSpec
from robustmed.attacks.amp import autocast_forward
from robustmed.judging import InvariantError, check_budget, check_threat_budget, judge_draws, judge_draws_masked
from robustmed.passes import PassCounter
from robustmed.progress import Meter
from robustmed.randomness import seed_model
from robustmed.seeds import sample_seed, seed_digest, starts, warm_start
from robustmed.tensors import Inputs, take, to_device


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
    passes: torch.Tensor | None = None  # (N, 2): forward and backward passes spent at this ε, per sample
    l2: torch.Tensor | None = None  # ‖δ‖₂ per sample (a mapping's inputs together)
    l1: torch.Tensor | None = None  # ‖δ‖₁ per sample (a mapping's inputs together)

    @classmethod
    def clean(cls, x, clean_pred, clean_loss, correct, eps: float, names=()) -> "Outcome":
        n = len(correct)
        return cls(clean_pred.clone(), ~correct, torch.where(correct, -1, 0), clean_loss.clone(), torch.zeros(n),
                   torch.zeros(n, dtype=torch.long), torch.full((n,), eps, dtype=torch.float64),
                   {k: v.clone() for k, v in x.items()} if isinstance(x, Mapping) else x.clone(),
                   {name: torch.zeros(n) for name in names}, torch.zeros(n, dtype=torch.long),
                   torch.zeros(n, 2, dtype=torch.float64), torch.zeros(n), torch.zeros(n))

    def copy_from(self, other: "Outcome", rows: torch.Tensor) -> None:
        """Rows broken at a smaller ε stay broken (nested balls): their example and judgement carry over.

        On a randomized model the same holds for a candidate judged wrong in more draws at a smaller
        ε (or in fewer steps): it is a valid candidate here, so the weaker result never replaces it.
        Passes are not carried: they are what this ε spent on the row (none for a row not attacked here)."""
        for key in ("adv_pred", "success", "first", "loss", "linf", "l2", "l1", "hits", "source_eps", "mask"):
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


def _norms(x_adv: Inputs, x: Inputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Per-sample ‖δ‖∞ (largest over inputs), ‖δ‖₂ and ‖δ‖₁ (over all inputs) and, for mappings, ‖δ‖∞ per input."""
    if not isinstance(x, Mapping):
        delta = (x_adv - x).flatten(1)
        return delta.abs().amax(1), delta.norm(p=2, dim=1), delta.abs().sum(1), {}
    per_input = {n: (x_adv[n] - x[n]).abs().flatten(1).amax(1) for n in x}
    l2 = torch.stack([(x_adv[n] - x[n]).flatten(1).pow(2).sum(1) for n in x]).sum(0).sqrt()
    l1 = torch.stack([(x_adv[n] - x[n]).flatten(1).abs().sum(1) for n in x]).sum(0)
    return torch.stack(list(per_input.values())).amax(0), l2, l1, per_input


def _changed(x_adv: Inputs, reference: Inputs) -> torch.Tensor:
    """Rows whose example differs from the reference's (an iteration-sweep snapshot vs the final example)."""
    if isinstance(x_adv, Mapping):
        return torch.stack([_changed(x_adv[n], reference[n]) for n in x_adv]).any(0)
    return (x_adv != reference).flatten(1).any(1)


def judge(model, spec: AttackSpec, result, x, labels, eps, threat, reference=None):
    """B1 always; B2 on deterministic models (with the attack's own forward), R draws (C2) otherwise.

    Under AMP the attack's predictions are re-verified with its autocast forward, then every
    example is judged in float32, the deployed precision. ``reference`` (a judged final result)
    spares re-scoring sweep snapshots whose example is the final one. Returns (result, hits).
    """
    x_adv = {k: v.detach() for k, v in result.x_adv.items()} if isinstance(x, Mapping) else result.x_adv.detach()
    if threat is not None:
        check_threat_budget(x_adv, x, threat, eps)
    else:
        check_budget(x_adv, x, eps, norm=spec.norm)
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


def run_attack(model, spec: AttackSpec, x, y, ids, eps, seed, device, threat=None, warm=None, on_pass=None,
               on_stage=None, counter: PassCounter | None = None):
    """Attack one chunk and judge it (every sweep step's snapshot too).

    Returns ``{steps: (result, hits)}``: the run's own steps, plus each k of an iteration sweep.
    ``warm`` (ε sweep) is the previous ε's example, replacing the first start. ``counter`` counts the
    attack's own model passes (the judgement's are not the attack's).
    """
    digest = seed_digest(spec, eps)
    family = FAMILIES.get(spec.family)
    chunk_seed = sample_seed(seed, int(ids[0]), digest)
    if spec.extra.get("randomized"):
        seed_model(model, chunk_seed)
    start = starts(spec, x, ids, eps, seed, digest, threat)
    if warm is not None and family.warm_start:
        start = warm_start(start, warm, x, eps, threat, spec.norm)
    x_dev, labels = to_device(x, device), y.to(device)
    forward = autocast_forward(model, spec.amp, device)
    if counter is not None:
        forward = counter.wrap(forward)
    if on_pass is not None:
        forward = _counted(forward, on_pass)
    options = {"threat": threat} if threat is not None else {}
    if on_stage is not None and family.reports_stages:
        options["on_stage"] = on_stage
    result = family.run(forward, x_dev, labels, spec=spec, eps=eps, start=to_device(start, device), seed=chunk_seed,
                        **options)
    judged = {spec.steps: judge(model, spec, result, x_dev, labels, eps, threat)}
    for k, snapshot in result.snapshots.items():
        if k != spec.steps:
            judged[k] = judge(model, spec, snapshot, x_dev, labels, eps, threat, reference=result)
    return judged


def _counted(forward, on_pass):
    def counted(inputs):
        on_pass()
        return forward(inputs)
    return counted


STEPPED = ("pgd", "bim", "mim")


def expected_passes(spec: AttackSpec) -> int | None:
    """Model passes one chunk costs when no sample leaves early, for attacks whose count is fixed in advance:
    iterative attacks (steps + 1) × EOT × restarts; Square one averaged query per step plus its final scoring.
    None for the AutoAttack cascades, whose later stages run only on the samples earlier ones leave."""
    if spec.family in STEPPED:
        return (spec.steps + 1) * max(spec.eot, 1) * max(spec.restarts, 1)
    if spec.family == "square":
        return (spec.steps + 1) * max(spec.eot, 1) + 1
    return None


def _pass_reporter(spec: AttackSpec, samples: int, meter: Meter | None):
    """A callback advancing ``meter`` by one pass's share of the chunk, for attacks whose pass count is known;
    a chunk that ends early is committed whole, so the bar never overstates the work done."""
    passes = expected_passes(spec)
    if meter is None or meter.listener is None or passes is None:
        return None
    return lambda: meter.provisional(samples / passes, samples)


def _stage_reporter(spec: AttackSpec, samples: int, meter: Meter | None):
    """A callback advancing ``meter`` to a cascade's share of stages done, for attacks that report stages."""
    if meter is None or meter.listener is None or not FAMILIES.get(spec.family).reports_stages:
        return None
    reported = [0.0]

    def report(fraction: float) -> None:
        meter.provisional(samples * (fraction - reported[0]), samples)
        reported[0] = fraction
    return report


def chunks(mask: torch.Tensor, size: int) -> tuple:
    """Indices where ``mask`` is set, in chunks of ``size``; none when it is empty (every sample broken)."""
    todo = torch.nonzero(mask).flatten()
    return todo.split(size) if len(todo) else ()


def attack_eps(model, spec, x, y, ids, eps, clean, *, seed, batch_size, device, threat, carried, tick, meter=None):
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
    for chunk in chunks(todo_mask, batch_size):
        warm = take(carried.x_adv, chunk) if carried is not None and spec.eps_mode == "warm" else None
        counter = PassCounter()
        judged = run_attack(model, spec, take(x, chunk), y[chunk], ids[chunk.numpy()], eps, seed, device,
                             threat, warm, on_pass=_pass_reporter(spec, len(chunk), meter),
                             on_stage=_stage_reporter(spec, len(chunk), meter), counter=counter)
        for k, (result, hits, mask) in judged.items():  # a sweep's snapshots carry the long run's passes
            record(outcomes[k], chunk, result, hits, take(x, chunk), clean.correct[chunk], eps, mask,
                   counter.per_sample(len(chunk)))
        tick(len(chunk))
    if spec.extra.get("randomized"):
        nest(outcomes, carried, todo_mask)
    return outcomes


def nest(outcomes: dict, carried: "Outcome | None", attacked: torch.Tensor) -> None:
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


def record(outcome: Outcome, chunk, result, hits, x_chunk, correct, eps, mask, passes: tuple[float, float]) -> None:
    """One chunk's judged result into the outcome; ``passes``: the chunk's mean forward and backward passes."""
    linf, l2, l1, per_input = _norms(to_device(result.x_adv, "cpu"), x_chunk)
    outcome.l2[chunk], outcome.l1[chunk] = l2, l1
    outcome.adv_pred[chunk], outcome.success[chunk] = result.adv_pred.cpu(), result.success.cpu() | ~correct
    outcome.first[chunk], outcome.loss[chunk], outcome.linf[chunk] = result.first_success.cpu(), result.loss.cpu(), linf
    outcome.hits[chunk], outcome.source_eps[chunk], outcome.mask[chunk] = hits.cpu(), eps, mask.cpu()
    outcome.passes[chunk] = torch.tensor(passes, dtype=torch.float64)
    for name, norm in per_input.items():
        outcome.norms[name][chunk] = norm
    _put(outcome.x_adv, chunk, to_device(result.x_adv, "cpu"))


@dataclass
class Clean:
    pred: torch.Tensor
    loss: torch.Tensor
    hits: torch.Tensor
    correct: torch.Tensor
    attackable: torch.Tensor
    mask: torch.Tensor


def frame(spec: AttackSpec, eps: float, outcome: Outcome, clean: Clean, y, sample_ids, seed, threat,
           seconds: float) -> pd.DataFrame:
    frame = pd.DataFrame({
        "sample_id": sample_ids, "label": y.numpy(), "clean_pred": clean.pred.numpy(),
        "clean_correct": clean.correct.numpy(), "adv_pred": outcome.adv_pred.numpy(), "success": outcome.success.numpy(),
        "robust": (clean.correct & ~outcome.success).numpy(), "first_success_step": outcome.first.numpy(),
        "final_loss": outcome.loss.numpy(), "linf": outcome.linf.numpy(), "l2": outcome.l2.numpy(),
        "l1": outcome.l1.numpy(), "eps": eps,
        "norm": spec.norm,
        "attack": spec.name if threat is None else f"{spec.name}[{threat.name}]",
        "spec": spec.to_json(eps), "spec_hash": spec.digest(eps), "seed": seed,
        "clean_correct_draws": clean.hits.numpy(), "correct_draws": outcome.hits.numpy(),
        "clean_draw_mask": clean.mask.numpy(), "draw_mask": outcome.mask.numpy(), "draws": spec.draws, "protocol": spec.protocol, "source_eps": outcome.source_eps.numpy(),
        "attack_time_s": seconds,
        "forward_passes": outcome.passes[:, 0].numpy(), "backward_passes": outcome.passes[:, 1].numpy(),
    })
    if threat is not None:
        frame.insert(frame.columns.get_loc("linf") + 1, "threat", threat.name)
        for name, budget in threat.budgets(eps).items():
            frame[f"linf_{name}"], frame[f"eps_{name}"] = outcome.norms[name].numpy(), budget
    return frame
