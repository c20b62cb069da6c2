"""An attack spec as a run executes it: adapted to the class count, EOT and draws on randomized models, BPDA
over declared sites, its ε mode, AMP and threat model; the derived specs of an iteration sweep's rows; the
null baseline beside a randomized model's attacks."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from robustmed.attacks import FAMILIES, AttackSpec, parse_attack
from robustmed.attacks.amp import resolve_amp
from robustmed.errors import UserError
from robustmed.judging import DEFAULT_DRAWS
from robustmed.tracks import CORRUPTIONS


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



def prepare_spec(spec: AttackSpec, threat, n_eps: int, device) -> AttackSpec:
    family = FAMILIES.get(spec.family)
    if threat is not None and not family.mapping_inputs:
        raise UserError(f"attack {spec.name!r} takes a single tensor; multi-input models: pgd, bim, mim")
    spec = resolve_amp(resolve_eps_mode(spec, n_eps), device)
    if threat is not None:
        spec = replace(spec, extra={**spec.extra, "threat": threat.to_json()})
    return spec



def sweep_spec(spec: AttackSpec, k: int, eps: float) -> AttackSpec:
    """The stored spec of an iteration-sweep row: k steps at the long run's fixed α, derived from it."""
    if k == spec.steps:
        return spec
    return replace(spec, name=f"{spec.family}{k}@{spec.name}", steps=k, alpha=spec.step_size(eps),
                   alpha_rule=f"fixed: the α of {spec.name}", sweep=(), derived_from=f"{spec.name}#{spec.digest(eps)}")



def with_null_baseline(attacks: Sequence[str], randomized: bool) -> list[str]:
    """Randomized models: the attacks plus ``null`` (the clean image judged like a candidate), the
    baseline an attack column must beat (check C5); deterministic models, and runs of the corruption track
    alone (no attack column to compare), the attacks as given."""
    attacks = list(attacks)
    specs = [parse_attack(a) for a in attacks]
    if randomized and "null" not in {s.family for s in specs}:  # one baseline per threat model of the attacks
        norms = sorted({s.norm for s in specs if s.family != CORRUPTIONS}, key=lambda n: n != "Linf")
        attacks += ["null" if norm == "Linf" else f"null:norm={norm.lower()}" for norm in norms]
    return attacks
