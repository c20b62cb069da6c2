"""Randomized (C1–C4) and non-differentiable/dynamic (D1, D4) defenses (docs/checks.md, C and D).

D2 (attack surface) runs before the attack (:mod:`robustmed.checks.surface`); D3 needs the
defense-removed model (:mod:`robustmed.checks.ablation`).
"""
from __future__ import annotations

import json

import pandas as pd

from robustmed import expected
from robustmed.checks.bpda import bpda, switches
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import ERROR, FLAG, FULL, INFO, Finding, register
from robustmed.checks.subset import Subset, attack_robust, gradient_spec, subset
from robustmed.randomness import frozen, random_modules

C1 = register("C1", "EOT profile on randomized models", FLAG)
C2 = register("C2", "final decision over draws", ERROR)
C4 = register("C4", "clean accuracy over draws", INFO)
C5 = register("C5", "attacks beat the null attack", FLAG)
D4 = register("D4", "adaptive evaluation required", FLAG)
C3 = register("C3", "fixed-randomness attack succeeds", FLAG, FULL)
D1 = register("D1", "BPDA not stronger than the plain attack", FLAG, FULL)

MIN_EOT = 20
GAP_TOL = 0.02  # 2 points


def _specs(rows: pd.DataFrame) -> dict[str, dict]:
    return {name: json.loads(text) for name, text in rows.groupby("attack").spec.first().items()}


@C1.guard
def eot_profile(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """C1: every gradient attack on a randomized model averages at least 20 EOT samples."""
    if not ctx.randomized:
        return C1.passed("deterministic model: no EOT needed")
    weak = {name: s["eot"] for name, s in _specs(rows).items()  # gradient-free: square, null (no attack)
            if s["family"] not in ("square", "null") and s["eot"] < MIN_EOT}
    return C1.outcome(bool(weak), "randomized model attacked with too few EOT samples: " +
                      ", ".join(f"{k} (eot={v})" for k, v in weak.items()) + f" < {MIN_EOT}" if weak else
                      f"every gradient attack uses EOT ≥ {MIN_EOT}", weak=weak)


@C2.guard
def draws(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """C2: a randomized model's sample is robust only if correct in every one of R > 1 draws."""
    if not ctx.randomized:
        return C2.passed("deterministic model: one forward pass decides")
    single = sorted(rows[rows.draws < 2].attack.unique())
    if not single:
        return C2.passed(f"robust only if correct in all {int(rows.draws.min())} draws (worst case)")
    paper = rows[rows.draws < 2].protocol.eq("paper").all()
    return C2.fired(f"{', '.join(single)} judged on a single draw" + (" (labelled paper protocol)" if paper else ""),
                    FLAG if paper else ERROR, single_draw=single)


@C4.guard
def clean_over_draws(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """C4: clean accuracy of a randomized model, as the mean over draws and correct-in-every-draw."""
    if not ctx.randomized:
        return C4.passed("deterministic model: one clean pass")
    first = rows.groupby("sample_id").first()
    r = int(first.draws.max())
    mean = float(first.clean_correct_draws.sum() / (r * len(first)))
    every = float(first.clean_correct.mean())
    return C4.fired(f"clean accuracy {100 * mean:.1f}% averaged over {r} draws, {100 * every:.1f}% correct in "
                    "every draw", mean=mean, all_draws=every, number_forward_passes=r)


@C3.guard
def fixed_randomness(ctx: CheckContext, rows: pd.DataFrame, sub: Subset) -> Finding:
    """C3: with the noise frozen the model is deterministic, and the attack must do at least as well."""
    if not random_modules(ctx.model):
        return C3.passed("no freezable random modules")
    spec = gradient_spec(ctx)
    with frozen(ctx.model):
        fixed = attack_robust(ctx, sub, f"{spec.family}{spec.steps}:eot=1,draws=1")
    run = rows[(rows.eps == sub.eps) & rows.sample_id.isin(sub.ids)].groupby("sample_id").robust.all()
    gap = float(fixed.mean() - run.mean())
    return C3.outcome(gap > GAP_TOL, f"with the noise frozen {100 * fixed.mean():.1f}% stay robust vs "
                      f"{100 * run.mean():.1f}% under the randomized evaluation", frozen=float(fixed.mean()),
                      randomized=float(run.mean()))


@D1.guard
def bpda_gap(ctx: CheckContext, rows: pd.DataFrame, sub: Subset) -> Finding:
    """D1: the straight-through (BPDA) attack must not beat the plain one, else gradients are obfuscated."""
    if not switches(ctx.model):
        return D1.passed("no straight-through switches: nothing to compare")
    spec = gradient_spec(ctx)
    attack = f"{spec.family}{spec.steps}"
    with bpda(ctx.model, False):
        plain = attack_robust(ctx, sub, attack)
    with bpda(ctx.model, True):
        straight = attack_robust(ctx, sub, attack)
    gap = float(plain.mean() - straight.mean())
    return D1.outcome(gap > 1 / len(sub.ids), f"plain {attack} {100 * plain.mean():.1f}% vs BPDA "
                      f"{100 * straight.mean():.1f}% robust: the non-differentiable ops mask gradients"
                      if gap > 0 else f"plain {attack} {100 * plain.mean():.1f}% vs BPDA {100 * straight.mean():.1f}%",
                      plain=float(plain.mean()), bpda=float(straight.mean()))


@D4.guard
def adaptive_required(findings: list[Finding]) -> Finding:
    """D4: test-time optimization (A5) or a stronger BPDA attack (D1) calls for an adaptive evaluation."""
    causes = [f.id for f in findings if f.fired and f.id in ("A5", "D1")]
    return D4.outcome(bool(causes), f"{' and '.join(causes)} fired: the result needs an adaptive evaluation"
                      if causes else "no sign that an adaptive evaluation is needed", causes=causes)


@C5.guard
def null_baseline(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """C5: each attack column must lower expected accuracy below the null attack (the clean image judged
    the same way): judging over fresh draws and taking a worst case lowers it with no attack at all.
    The gap is paired per sample, its 95% interval resampling samples and draws."""
    if not ctx.randomized or "draw_mask" not in rows or not rows.attack.eq("null").any():
        return C5.passed("no null-attack baseline to compare with (deterministic model, or rows without draws)")
    level, gaps = [], {}
    for eps, group in rows.groupby("eps"):
        verdicts = expected.judgements(group)
        for attack in (a for a in verdicts if a not in (expected.CLEAN, "null")):
            gap, (low, high) = expected.gap_to_baseline(verdicts, attack, "null")
            gaps[f"{attack} ε={eps:.4g}"] = {"gap": gap, "ci": [low, high]}
            if low <= 0:
                level.append(f"{attack} at ε={eps:.4g} ({100 * gap:+.1f} pts, 95% CI [{100 * low:.1f}, {100 * high:.1f}])")
    return C5.outcome(bool(level), "not distinguishable from presenting the clean image: " + "; ".join(level)
                      + " — attack harder (more steps, restarts, EOT samples)" if level else
                      "every attack column lowers expected accuracy below the null attack", gaps=gaps)


ROW_CHECKS = (eot_profile, draws, clean_over_draws, null_baseline)
FULL_CHECKS = (fixed_randomness, bpda_gap)


def run_randomized(ctx: CheckContext, rows: pd.DataFrame, full: bool = False) -> list[Finding]:
    findings = [check(ctx, rows) for check in ROW_CHECKS]
    if full:
        sub = subset(ctx, rows)
        findings += [check(ctx, rows, sub) for check in FULL_CHECKS]
    return findings
