"""Attack families, the spec grammar and the result every attack returns (check E1: full spec per row)."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from typing import Callable

import torch

from robustmed.errors import UserError
from robustmed.registry import Registry

SPEC_VERSION = "2"  # 2: eot/draws resolved per model, protocol, adapted cascades
_SPEC_RE = re.compile(r"^(?P<family>[a-z][a-z-]*?)(?P<steps>\d+)?(?::(?P<options>.*))?$")


def parse_number(text: str) -> float:
    """``4/255`` or ``0.0157`` → float; anything else is a UserError naming the text."""
    try:
        value = float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f"bad number {text!r}: use a decimal (0.0157) or a fraction (4/255)") from None
    return value


def parse_eps_list(text: str, largest: float | None = 1.0) -> tuple[float, ...]:
    """``2/255,4/255,8/255`` → sorted, de-duplicated budgets in (0, largest]; ``largest=None``: any finite
    positive budget (an L2 or L1 ball over the whole image may reach beyond 1)."""
    values = sorted({parse_number(part) for part in text.split(",") if part.strip()})
    if largest is None:
        if not values or any(not 0 < v < float("inf") for v in values):
            raise UserError(f"bad ε list {text!r}: give positive budgets, e.g. 0.25,0.5,1.5 (L2) or 5,10 (L1)")
        return tuple(values)
    if not values or any(not 0 < v <= largest for v in values):
        raise UserError(f"bad ε list {text!r}: give values in (0, 1], e.g. 2/255,4/255,8/255 "
                        "(L2 and L1 budgets may exceed 1: --norm l2, --norm l1)")
    return tuple(values)


@dataclass(frozen=True)
class AttackSpec:
    """A fully expanded attack: everything needed to rerun it, stored with every row."""

    name: str  # what the user typed, e.g. "pgd100"
    family: str
    steps: int
    alpha: float | None = None  # absolute step; None: the family's rule of ε and steps
    alpha_rule: str = ""
    random_start: bool = True
    restarts: int = 1
    loss: str = "ce"
    momentum: float = 0.0
    norm: str = "Linf"
    eot: int = 0  # gradient samples per step; 0: resolved by the harness (1 deterministic, family default randomized)
    draws: int = 0  # inference draws judging each sample (C2); 0: resolved (1 deterministic, 10 randomized)
    protocol: str = "adaptive"  # "paper": the single-draw, non-EOT protocol of the defense papers (labelled)
    keep_best: bool = True
    early_stop: bool = True
    impl: str = "robustmed"
    version: str = SPEC_VERSION
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    # Fields added after version 2 are stored only when set, so earlier specs keep their digests.
    sweep: tuple[int, ...] = ()  # iteration sweep: rows for each k from one fixed-α run of ``steps``
    derived_from: str = ""  # "name#digest" of the long run a sweep row was read from
    eps_mode: str = ""  # multi-ε runs: "sweep" (default: ascending, still-robust only), "warm", "independent"
    amp: str = ""  # "" fp32; "auto" (resolved per device), "bf16" or "fp16": autocast during the attack
    variant: str = ""  # "" the family's canonical form; "fast": AutoAttack's early-exit cascade (spec version 3)

    def step_size(self, eps: float) -> float:
        return self.alpha if self.alpha is not None else FAMILIES.get(self.family).alpha(eps, self.steps)

    def expanded(self, eps: float) -> dict:
        spec = asdict(self)
        for key, default in _LATER_DEFAULTS.items():
            if spec[key] == default:
                del spec[key]
        if "sweep" in spec:
            spec["sweep"] = list(spec["sweep"])
        spec.update(eps=eps, alpha=self.step_size(eps))
        return spec

    def to_json(self, eps: float) -> str:
        return json.dumps(self.expanded(eps), sort_keys=True)

    def digest(self, eps: float) -> str:
        return hashlib.sha256(self.to_json(eps).encode()).hexdigest()[:16]


_LATER_DEFAULTS = {"sweep": (), "derived_from": "", "eps_mode": "", "amp": "", "variant": ""}


@dataclass
class AttackResult:
    """Per-sample outcome: the returned (best) iterate and when each sample first broke."""

    x_adv: torch.Tensor
    success: torch.Tensor  # bool (N,)
    first_success: torch.Tensor  # long (N,), step index of the first adversarial iterate, -1 if none
    loss: torch.Tensor  # loss at x_adv (N,)
    adv_pred: torch.Tensor  # prediction at x_adv (N,)
    forward_backward: int = 0  # sample-level forward+backward passes spent (cost accounting)
    snapshots: dict = field(default_factory=dict)  # iteration sweep: {k: AttackResult after k steps}


@dataclass(frozen=True)
class AttackFamily:
    """A registered attack: defaults for the spec and the function that runs it.

    ``run(forward, x, y, *, spec, eps, start, seed)`` → :class:`AttackResult`; ``start`` is the
    per-sample seeded initial perturbation (zeros when the spec has no random start) and
    ``seed`` seeds kernels that draw their own randomness (APGD, Square).
    """

    name: str
    description: str
    run: Callable[..., AttackResult]
    default_steps: int
    alpha: Callable[[float, int], float]
    alpha_rule: str
    defaults: dict = field(default_factory=dict)
    randomized_eot: int = 1  # EOT samples used on randomized models when the user gave no ``eot=``
    restartable: bool = False  # runs ``restarts`` > 1 from further seeded random starts
    adapt: Callable[[AttackSpec, int], AttackSpec] | None = None  # per class count (check A7)
    prefix_sweep: bool = False  # fixed-step loop: its first k iterates are the k-step attack (``sweep=``)
    warm_start: bool = False  # takes ``start`` as its initial perturbation (ε sweep warm starts)
    mapping_inputs: bool = False  # accepts a mapping of named inputs and a ``threat`` model
    eps_rows: bool = False  # takes ``eps`` as an ``EpsRows``: several ε in one batch (the default ε sweep)
    amp: bool = True  # may run under autocast (FAB's constants overflow fp16: the AA cascade stays fp32)
    uses_eps: bool = True  # False: the same result at every ε (null), so an ε sweep judges it once
    reports_stages: bool = False  # takes ``on_stage(fraction)``: a cascade says how many of its stages are done
    default_variant: str = ""  # what the bare name means from spec version 3 on (``NAME:canonical``: the "" form)
    norms: tuple[str, ...] = ("Linf",)  # threat models it attacks in (``norm=l2``)
    # variant → revision, bumped when what a variant computes changes under the same name: a run's id includes it,
    # so a run stored by the earlier form is never read back as this one's
    revisions: dict = field(default_factory=dict)


FAMILIES: Registry[AttackFamily] = Registry("attack")

def _protocol(value: str) -> str:
    if value not in PROTOCOLS:
        raise ValueError(value)
    return value


def _loss(value: str) -> str:
    if value not in LOSS_NAMES:
        raise ValueError(value)
    return value


def _sweep(value: str) -> tuple[int, ...]:
    steps = sorted({int(part) for part in value.split("+") if part.strip()})
    if not steps or steps[0] < 1:
        raise ValueError(value)
    return tuple(steps)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in allowed:
            raise ValueError(value)
        return value
    return parse


NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _norm(value: str) -> str:
    if value not in NORMS:
        raise ValueError(value)
    return NORMS[value]


def _amp(value: str) -> str:
    value = {"1": "auto", "true": "auto", "yes": "auto", "0": "", "false": "", "no": ""}.get(value, value)
    return _choice("", "auto", "bf16", "fp16")(value)


PROTOCOLS = ("adaptive", "paper")
LOSS_NAMES = ("ce", "margin")
EPS_MODES = ("sweep", "warm", "independent")
_OPTION_TYPES = {"alpha": parse_number, "restarts": int, "eot": int, "draws": int, "protocol": _protocol,
                 "loss": _loss, "momentum": float,
                 "random_start": lambda v: v.lower() in ("1", "true", "yes"),
                 "keep_best": lambda v: v.lower() in ("1", "true", "yes"),
                 "early_stop": lambda v: v.lower() in ("1", "true", "yes"),
                 "sweep": _sweep, "eps_mode": _choice(*EPS_MODES), "amp": _amp, "norm": _norm}


VARIANT_VERSION = "3"  # the spec version from which a family's bare name means its default variant


def parse_attack(text: str, as_of: str | None = None) -> AttackSpec:
    """``pgd100`` or ``pgd100:alpha=1/255,restarts=2`` → an :class:`AttackSpec`.

    ``as_of`` reads the name as the spec version a stored run was made with: under version 2, ``aa``
    is the canonical cascade, as it was then (``aa:canonical`` names it from version 3 on).
    """
    match = _SPEC_RE.match(text.strip().lower())
    if not match or match["family"] not in FAMILIES:
        raise UserError(f"unknown attack {text!r}; choices: {', '.join(f'{n}N' for n in FAMILIES.names())} "
                        "(e.g. pgd100, pgd10:alpha=1/255)")
    family = FAMILIES.get(match["family"])
    steps = int(match["steps"]) if match["steps"] else family.default_steps
    if steps < 1:
        raise UserError(f"attack {text!r}: the number of steps must be at least 1")
    spec = AttackSpec(name=text.strip().lower(), family=family.name, steps=steps,
                      alpha_rule=family.alpha_rule, **family.defaults)
    if family.default_variant and (as_of or VARIANT_VERSION) >= VARIANT_VERSION:
        spec = replace(spec, variant=family.default_variant, version=VARIANT_VERSION)
    for item in filter(None, (match["options"] or "").split(",")):
        if item == "canonical" and family.default_variant:
            spec = replace(spec, variant="", version=SPEC_VERSION)
            continue
        key, _, value = item.partition("=")
        if key not in _OPTION_TYPES or not value:
            named = ", canonical" if family.default_variant else ""
            raise UserError(f"attack {text!r}: bad option {item!r}; options: {', '.join(_OPTION_TYPES)}{named}")
        try:
            spec = replace(spec, **{key: _OPTION_TYPES[key](value)})
        except ValueError:
            raise UserError(f"attack {text!r}: bad value in {item!r}") from None
        if key == "alpha":
            spec = replace(spec, alpha_rule="given")
    if spec.protocol == "paper":  # the defense papers' single-draw, non-EOT attack, never a default; its
        spec = replace(spec, eot=1)  # candidate is judged over the same R draws as the adaptive one
    if spec.restarts > 1 and not (family.restartable and spec.random_start):
        raise UserError(f"attack {text!r}: restarts need a family with seeded random starts (pgd), "
                        "and random_start=1")
    if spec.eot < 0 or spec.draws < 0 or spec.restarts < 1:
        raise UserError(f"attack {text!r}: eot and draws must be ≥ 1 (or left out), restarts ≥ 1")
    return _check_sweep_and_amp(spec, family, text)


def _check_sweep_and_amp(spec: AttackSpec, family: AttackFamily, text: str) -> AttackSpec:
    """An iteration sweep needs a fixed-step loop, one start and k ≤ steps; its long run's row always comes.
    The family must attack in the spec's norm."""
    if spec.norm not in family.norms:
        raise UserError(f"attack {text!r}: {family.name} attacks in {', '.join(family.norms)} only, not "
                        f"{spec.norm}; use pgd, bim, aa or square for L2, aa:canonical or square for L1")
    if spec.norm == "L1" and spec.variant:
        raise UserError(f"attack {text!r}: the early-exit {family.name} has no L1 step; use {family.name}:canonical "
                        "(pyautoattack's L1 kernels) for L1")
    if spec.amp and not family.amp:
        raise UserError(f"attack {text!r}: amp is not available for {family.name} (it stays fp32)")
    if not spec.sweep:
        return spec
    if not family.prefix_sweep or spec.restarts > 1:
        raise UserError(f"attack {text!r}: sweep= needs a fixed-step loop (pgd, bim, mim) without restarts")
    if spec.sweep[-1] > spec.steps:
        raise UserError(f"attack {text!r}: sweep steps must not exceed the run's {spec.steps} steps")
    return replace(spec, sweep=tuple(sorted({*spec.sweep, spec.steps})))
