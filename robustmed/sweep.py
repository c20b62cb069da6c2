"""The default ascending ε sweep on a deterministic model, several ε attacked in one batch where they fit."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from robustmed.attacks import FAMILIES, AttackSpec
from robustmed.attacks.pgd import EpsRows
from robustmed.judging import InvariantError, check_budget
from robustmed.outcomes import Outcome, attack_eps, chunks, frame, record
from robustmed.passes import PassCounter
from robustmed.seeds import sample_seed, seed_digest, starts
from robustmed.tensors import take, to_device


def groups_ok(spec: AttackSpec, threat, n_eps: int) -> bool:
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
    sample its own row's, whose trajectory is the independent run's. The loop's model passes are
    split evenly over its ε and attacked samples, as its time is.
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
    for chunk in chunks(todo_mask, max(1, batch_size // levels)):
        m, chunk_ids = len(chunk), ids[chunk.numpy()]
        x_chunk, labels = to_device(take(x, chunk), device), y[chunk].to(device)
        digests = [seed_digest(spec, eps) for eps in eps_list]
        per_eps = [starts(spec, take(x, chunk), chunk_ids, eps, seed, d) for eps, d in zip(eps_list, digests)]
        start = torch.cat(per_eps, dim=1 if spec.restarts > 1 else 0)
        level = torch.arange(levels, device=device).repeat_interleave(m)
        group = torch.arange(m, device=device).repeat(levels)
        rows, counter = EpsRows(tuple(eps_list), level, group), PassCounter()
        result = family.run(counter.wrap(model), x_chunk[group], labels[group], spec=spec, eps=rows,
                            start=to_device(start, device), seed=sample_seed(seed, int(chunk_ids[0]), digests[0]))
        x_adv = result.x_adv.detach()
        for j, eps in enumerate(eps_list):  # B1 per row at its own ε
            check_budget(x_adv[j * m:(j + 1) * m], x_chunk, eps, norm=spec.norm)
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
            record(outcome, chunk, own, hits, take(x, chunk), clean.correct[chunk], eps, hits.clamp(max=1),
                   counter.per_sample(m * levels))
            outcome.source_eps[chunk] = source[src[j].cpu()]
        tick(m * levels)
    return outcomes



def grouped_sweep(model, spec, x, y, sample_ids, eps_list, clean, *, seed, batch_size, device, bar, task, tick,
                   meter) -> list:
    """The default ε sweep in groups of ε (:func:`eps_group`), one loop per group; a group's time is
    split evenly over its ε (``attack_time_s``), and so are its passes (``forward_passes``, ``backward_passes``)."""
    frames, carried, j = [], None, 0
    while j < len(eps_list):
        attacked = int((clean.attackable if carried is None else clean.attackable & (carried.hits > 0)).sum())
        group = eps_list[j:j + eps_group(attacked, len(eps_list) - j, batch_size)]
        bar.update(task, description=f"{spec.name} ε={group[0]:.4g}" + (f"…{group[-1]:.4g}" if len(group) > 1 else ""))
        started = time.perf_counter()
        if len(group) == 1:
            outcomes = [attack_eps(model, spec, x, y, sample_ids, group[0], clean, seed=seed, batch_size=batch_size,
                                    device=device, threat=None, carried=carried, tick=tick, meter=meter)]
        else:
            outcomes = _sweep_together(model, spec, x, y, sample_ids, group, clean, seed=seed, batch_size=batch_size,
                                       device=device, carried=carried, tick=tick)
        seconds = (time.perf_counter() - started) / len(group)
        frames += [frame(spec, eps, o[spec.steps], clean, y, sample_ids, seed, None, seconds)
                   for eps, o in zip(group, outcomes)]
        carried, j = outcomes[-1][spec.steps], j + len(group)
    return frames
