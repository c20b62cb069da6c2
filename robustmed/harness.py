"""The benchmark harness: clean pass, attacks per ε, invariant checks, one row per sample × attack × ε.

A sample counts as robust only if it is classified correctly clean *and* under every
attack at that ε (per-sample worst case, checks B3/B4). Randomized models (declared by
the defense, or detected by :func:`robustmed.randomness.is_randomized`) are attacked with
EOT; each attack returns one candidate per sample, judged once over R fresh inference draws
(C2). Their headline is expected accuracy (:mod:`robustmed.expected`); "correct in all R
draws" is kept as ``robust``.
"""

from __future__ import annotations

import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from robustmed import judging
from robustmed.attacks import AttackSpec, parse_attack
from robustmed.attacks.amp import strict_fp32
from robustmed.attacks.threat import ThreatModel
from robustmed.contracts import adapt_head, check_range
from robustmed.corruption_track import corruption_rows
from robustmed.errors import UserError
from robustmed.outcomes import Clean, attack_eps, frame
from robustmed.progress import Meter, progress_bar
from robustmed.randomness import is_randomized, seed_model
from robustmed.resolve import prepare_spec, resolve_spec, sweep_spec, with_bpda, with_null_baseline
from robustmed.sweep import grouped_sweep, groups_ok
from robustmed.tensors import Inputs, take, to_device
from robustmed.tracks import CORRUPTIONS


def _threats(x, threat) -> list:
    if not isinstance(x, Mapping):
        if threat is not None:
            raise UserError("a threat model needs a mapping of named inputs")
        return [None]
    if threat is None:
        return [ThreatModel.joint(list(x))]
    return [threat] if isinstance(threat, ThreatModel) else list(threat)


def _clean(model, x, y, draws: int, batch_size: int, device, clean_pass: tuple | None) -> Clean:
    """The clean verdicts every attack starts from: over ``draws`` draws, or the caller's one-draw pass."""
    if clean_pass is not None and draws == 1 and all(len(t) == len(y) for t in clean_pass):
        pred, loss, hits = clean_pass
        mask = hits.clamp(max=1)
    else:
        pred, loss, hits, mask = judging.clean_draws_masked(model, x, y, batch_size, device, draws)
    return Clean(pred, loss, hits, hits == draws, hits > 0, mask)


@strict_fp32()
def attack_rows(model, x, y, sample_ids, specs: Sequence[AttackSpec], eps_list: Sequence[float], *, seed: int = 0,
                batch_size: int = 256, device="cpu", progress: bool = False,
                randomized: bool = False, threat: ThreatModel | Sequence[ThreatModel] | None = None,
                clean_pass: tuple | None = None, corruption_set: str | None = None) -> pd.DataFrame:
    """Per-sample rows for every attack × ε; only clean-correct samples are attacked.

    ``randomized`` declares the model randomized (the defense registry's flag); randomness is
    also detected. A randomized model's clean pass and attacks are judged over R draws:
    ``clean_correct``/``robust`` mean correct in every draw, ``correct_draws``/``draws`` give the
    expected accuracy; samples correct in at least one clean draw are attacked.

    ``x`` may be a mapping of named inputs; ``threat`` then gives one threat model or several
    (e.g. :func:`robustmed.attacks.threat.modality_threats`: joint and each input alone, check F4),
    default: every input attacked within the run's ε. Several ε run as an ascending sweep unless a
    spec says otherwise (:func:`robustmed.resolve.resolve_eps_mode`; ``source_eps``: where each row's example was found).

    ``clean_pass`` is :func:`robustmed.judging.clean_draws`'s (prediction, loss, correct draws) of these samples with one draw,
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
    specs = [with_bpda(resolve_spec(s, randomized=randomized, num_classes=num_classes), model) for s in specs]
    clean = _clean(model, x, y, max(s.draws for s in specs) if randomized else 1, batch_size, device, clean_pass)
    threats = _threats(x, threat)
    frames = []
    with progress_bar(progress) as bar:
        total = len(specs) * len(threats) * len(eps_list) * int(clean.attackable.sum())
        task, meter = bar.add_task("attack", total=total), Meter(total)

        def tick(n):
            bar.advance(task, n)
            meter.commit(n)
        for spec, threat_model in ((s, t) for s in specs for t in threats):
            if spec.family == CORRUPTIONS:  # every sample, no ε, its own rows; corruption_set: a MedMNIST name
                frames.append(corruption_rows(model, spec, x, y, sample_ids, clean, seed=seed, batch_size=batch_size,
                              device=device, dataset=corruption_set, tick=tick, share=total / len(specs) / len(threats)))
                continue
            spec = prepare_spec(spec, threat_model, len(eps_list), device)
            if groups_ok(spec, threat_model, len(eps_list)):
                frames += grouped_sweep(model, spec, x, y, sample_ids, eps_list, clean, seed=seed,
                                         batch_size=batch_size, device=device, bar=bar, task=task, tick=tick,
                                         meter=meter)
                continue
            carried = None
            for eps in eps_list:
                bar.update(task, description=f"{spec.name} ε={eps:.4g}")
                started = time.perf_counter()
                outcomes = attack_eps(model, spec, x, y, sample_ids, eps, clean, seed=seed, batch_size=batch_size,
                                       device=device, threat=threat_model, carried=carried, tick=tick, meter=meter)
                seconds = time.perf_counter() - started
                frames += [frame(sweep_spec(spec, k, eps), eps, o, clean, y, sample_ids, seed, threat_model, seconds)
                           for k, o in outcomes.items()]
                carried = outcomes[spec.steps] if spec.eps_mode in ("sweep", "warm") else None
    return pd.concat(frames, ignore_index=True)


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
