"""Attack-correctness invariants B1–B17 (docs/checks.md, B).

The cheap ones read the run's per-sample rows (always on); the costly ones re-attack a seeded
subset of the run's samples through the harness (``--checks full``). B11 (transfer from the
defense-removed model) lives in :mod:`robustmed.checks.ablation`, B16 (binarization test) in
:mod:`robustmed.checks.binarization`; B14 works on deterministic models.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from robustmed.attacks.pgd import pgd, uniform_start
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import ERROR, FLAG, FULL, Finding, register
from robustmed.checks.subset import Subset, attack_robust, gradient_spec, run_robust, subset
from robustmed.summary import summarize
from robustmed.judging import budget_slack
from robustmed.tracks import LINF, NORM_COLUMNS, NORM_SUBSCRIPTS, norms

B1 = register("B1", "budget and box respected", ERROR)
B2 = register("B2", "re-verification of the stored examples", ERROR)
B3 = register("B3", "clean errors count as non-robust", ERROR)
B4 = register("B4", "per-sample worst case over attacks", ERROR)
B5 = register("B5", "monotone in ε", FLAG)
B13 = register("B13", "silent success (best iterate kept)", FLAG)
B6 = register("B6", "converged in iterations (k vs 2k)", FLAG, FULL)
B7 = register("B7", "iterative ≥ single-step", FLAG, FULL)
B8 = register("B8", "white-box ≥ black-box", FLAG, FULL)
B9 = register("B9", "unbounded attack → ≈0% robust", FLAG, FULL)
B10 = register("B10", "random-noise baseline", FLAG, FULL)
B12 = register("B12", "loss diversity (CE vs margin)", FLAG, FULL)
B14 = register("B14", "incomplete optimization", FLAG, FULL)
B15 = register("B15", "step-size sensitivity", FLAG, FULL)

RATE_TOL = 0.005  # 0.5 points (B5, B7)
GAP_TOL = 0.02  # 2 points (B12, B15)
SQUARE_TOL = 0.002  # AutoAttack's 0.2 points (B8)
RISE_TOL = 0.01  # B14: relative rise of the best loss over the last 10% of the steps
ESCALATION_STEPS = 320  # the most steps B6, B14 and B15 escalate to before calling the sign the model's
NOISE_POINTS = 1000  # random corners of the ε-ball per sample left robust (B10)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


# --- always on: the stored rows -------------------------------------------------------------------

@B1.guard
def budget(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B1: the harness refuses any chunk leaving the ε-ball, [0, 1] or finite values; stored norms re-checked
    (per input against its own ε when the rows come from a multi-input threat model, check F4)."""
    pairs = [(c, f"eps_{c[5:]}") for c in rows.columns if c.startswith("linf_") and f"eps_{c[5:]}" in rows]
    kinds = set(norms(rows)) if len(rows) else set()
    norm = next(iter(kinds)) if len(kinds) == 1 else LINF  # rows come one norm at a time
    norm = norm if NORM_COLUMNS[norm] in rows else LINF  # rows stored before that norm's column existed
    pairs = pairs or [(NORM_COLUMNS[norm], "eps")]
    over = sum((rows[n] > rows[e] + budget_slack(rows[e], norm, ctx.values_per_sample)) for n, e in pairs)
    over = int((over > 0).sum()) if len(rows) else 0
    ratios = [float((rows[n] / rows[e]).where(rows[e] > 0).max()) for n, e in pairs] if len(rows) else []
    ratio = max((r for r in ratios if r == r), default=0.0)  # frozen inputs (ε = 0) have no ratio
    return B1.outcome(over > 0, f"{over} stored row(s) exceed ε" if over else
                      f"every ‖δ‖{NORM_SUBSCRIPTS[norm]} ≤ ε (largest ‖δ‖{NORM_SUBSCRIPTS[norm]}/ε = {ratio:.4f}); "
                      "box and NaN checked per chunk", max_ratio=ratio)


@B2.guard
def reverification(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B2: deterministic models are re-scored chunk by chunk by the harness (a mismatch aborts the run)."""
    if ctx.randomized:
        return B2.passed(f"randomized: success judged over {int(rows.draws.max())} fresh draws per sample (C2)")
    return B2.passed("a fresh forward pass on every returned example reproduced the attack's predictions")


@B3.guard
def clean_errors(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B3: robust implies clean-correct, row by row."""
    bad = int((rows.robust & ~rows.clean_correct).sum())
    return B3.outcome(bad > 0, f"{bad} row(s) robust although misclassified clean" if bad else
                      "no clean error counted as robust", violations=bad)


@B4.guard
def worst_case(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B4: every sample is robust at ε only if robust under every attack (min over attacks per sample)."""
    per_sample = rows.groupby(["eps", "sample_id"]).robust.all().groupby("eps").mean()
    reported = pd.Series({s["eps"]: s["robust_accuracy"] for s in summarize(rows)})
    wrong = int((reported.reindex(per_sample.index) - per_sample).abs().gt(1e-12).sum())
    per_attack_min = rows.groupby(["eps", "attack"]).robust.mean().groupby("eps").min()
    gap = float((per_attack_min - per_sample).max())
    return B4.outcome(wrong > 0, f"the summary differs from the per-sample minimum at {wrong} ε" if wrong else
                      f"robust accuracy is the per-sample minimum over {rows.attack.nunique()} attack(s) "
                      f"(the per-attack minimum would overstate it by {100 * gap:.1f} pt)", overstatement=gap)


@B5.guard
def monotone(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B5: a sample broken at ε_i must be broken at every larger ε_j (per attack)."""
    if rows.eps.nunique() < 2:
        return B5.passed("one ε: nothing to compare")
    broken = rows.pivot_table(index=["attack", "sample_id"], columns="eps", values="success", aggfunc="first")
    matrix = broken.to_numpy(dtype=bool)
    earlier = np.logical_or.accumulate(matrix, axis=1)
    violations = int((earlier & ~matrix).sum())
    rate = violations / matrix.size
    return B5.outcome(rate > RATE_TOL, f"{violations} (sample, ε) pair(s) robust at ε although broken at a "
                      f"smaller ε ({100 * rate:.2f}%)", violations=violations, rate=rate)


@B13.guard
def silent_success(ctx: CheckContext, rows: pd.DataFrame) -> Finding:
    """B13: an iterate that broke the sample must not be returned as a failure (deterministic rows)."""
    single = rows[rows.draws == 1]
    lost = int(((single.first_success_step >= 0) & ~single.success).sum())
    if len(single) == 0:
        return B13.passed("randomized rows are judged over draws (C2), not by the attack's own iterate")
    return B13.outcome(lost > 0, f"{lost} row(s) where an iterate was adversarial but a worse point was returned"
                       if lost else "every sample broken at some step was returned broken", lost=lost)


@B8.guard
def black_box_columns(rows: pd.DataFrame) -> Finding | None:
    """B8 from the run's own columns: samples its Square column broke that every white-box column left robust.

    ``None`` when the run has no Square column beside a white-box one; the full tier's re-attack (``black_box``)
    is the complete check and supersedes this one.
    """
    square = [a for a in rows.attack.unique() if a.startswith("square")]  # stored names carry threats, sweep steps
    white = [a for a in rows.attack.unique() if a not in square and not a.startswith("null")]  # null: no attack
    if not square or not white:
        return None
    flags = rows.pivot_table(index=["eps", "sample_id"], columns="attack", values="robust", aggfunc="all")
    flags = flags.astype(bool)
    only = flags[white].all(axis=1) & ~flags[square].all(axis=1)
    per_eps = only.groupby(level="eps").mean()
    worst = float(per_eps.max())
    return B8.outcome(worst > SQUARE_TOL, f"the run's Square column breaks {_pct(worst)} of the samples that every "
                      "white-box column left robust", square_only=int(only.sum()), rate=worst, source="columns")


ROW_CHECKS = (budget, reverification, clean_errors, worst_case, monotone, silent_success)


# --- full: re-attacking a seeded subset -----------------------------------------------------------

def escalated(check, measure, ctx, sub) -> Finding:
    """Run ``measure(ctx, sub, steps)`` at the run's steps, and while it fires at twice as many, up to
    :data:`ESCALATION_STEPS`; if PGD still shows the sign there, the last rung is AutoAttack (step-size free,
    with restarts). A sign that the *attack* has not converged is answered by attacking harder: only one that
    persists (AutoAttack weaker than the best PGD seen) fires. Each measurement's details carry
    ``strongest``, the lowest robust fraction it saw."""
    base = steps = gradient_spec(ctx).steps
    finding = first = measure(ctx, sub, steps)
    best = finding.details["strongest"]
    while finding.fired and 2 * steps <= ESCALATION_STEPS:
        steps *= 2
        finding = measure(ctx, sub, steps)
        best = min(best, finding.details["strongest"])
    trail = {"escalated_from": base, "escalated_to": steps, "first": first.reason, "best_pgd": best}
    if steps == base and not finding.fired:
        return finding
    if not finding.fired:
        return check.passed(f"{base} steps had not converged ({first.reason}); escalated to {steps} steps: "
                            f"{finding.reason}: evaluate with {steps} steps or more", **finding.details, **trail)
    final = "aa-rand" if ctx.randomized else "aa"
    cache = ctx.extras.setdefault("escalation_final", {})  # B6, B14 and B15 share one AutoAttack run
    key = (final, tuple(int(i) for i in sub.ids), sub.eps)
    if key not in cache:
        cache[key] = float(attack_robust(ctx, sub, final).mean())
    robust = cache[key]
    trail.update(final_attack=final, final_robust=robust)
    if robust <= best + max(RATE_TOL, 1 / len(sub.ids)):
        return check.passed(f"PGD had not converged ({first.reason}; still so at {steps} steps); escalated to "
                            f"{final}: {_pct(robust)} robust on {len(sub.ids)} samples, at most the best PGD's "
                            f"{_pct(best)}: evaluate with {final}", **trail)
    return check.fired(f"{finding.reason}; still so at {steps} steps, and {final} leaves {_pct(robust)} robust "
                       f"against the best PGD's {_pct(best)}", **finding.details, **trail)


@B6.guard
def convergence(ctx, rows, sub) -> Finding:
    """B6: doubling the steps must not break more than 0.5 pt more samples (escalated while it does)."""
    return escalated(B6, _convergence_at, ctx, sub)


def _convergence_at(ctx, sub, k: int) -> Finding:
    spec = gradient_spec(ctx)
    eps = sub.eps
    at_k, at_2k = (attack_robust(ctx, sub, f"{spec.family}{s}:loss={spec.loss}") for s in (k, 2 * k))
    gap = float(at_k.mean() - at_2k.mean())
    return B6.outcome(gap > max(RATE_TOL, 1 / len(sub.ids)), f"{spec.family}{k} {_pct(at_k.mean())} vs "
                      f"{spec.family}{2 * k} {_pct(at_2k.mean())} robust on {len(sub.ids)} samples at ε "
                      f"{255 * eps:.3g}/255", steps=k, robust_k=float(at_k.mean()), robust_2k=float(at_2k.mean()),
                      strongest=float(min(at_k.mean(), at_2k.mean())))


def _missed(ctx, rows, sub, attack: str) -> float:
    """Fraction of the subset that ``attack`` breaks although the run's attacks left it robust."""
    run = run_robust(rows, sub.ids, sub.eps)
    if not run.any():
        return 0.0
    keep = np.flatnonzero(run)  # only samples still robust can reveal a weaker-than-possible attack
    robust = attack_robust(ctx, Subset(sub.ids[keep], sub.x[keep], sub.y[keep], sub.eps), attack)
    return float((~robust).sum() / len(sub.ids))


@B7.guard
def single_step(ctx, rows, sub) -> Finding:
    """B7: FGSM must not break samples the run's attacks left robust."""
    missed = _missed(ctx, rows, sub, f"pgd1:alpha={sub.eps!r},random_start=0")
    return B7.outcome(missed > RATE_TOL, f"FGSM breaks {_pct(missed)} of {len(sub.ids)} samples the run's attacks "
                      "left robust", fgsm_only=missed)


@B8.guard
def black_box(ctx, rows, sub) -> Finding:
    """B8: Square (250 queries) must not beat the white-box attacks by more than 0.2 pt."""
    missed = _missed(ctx, rows, sub, "square250")
    return B8.outcome(missed > SQUARE_TOL, f"Square breaks {_pct(missed)} of {len(sub.ids)} samples the white-box "
                      "attacks left robust", square_only=missed)


@B9.guard
def unbounded(ctx, rows, sub) -> Finding:
    """B9: at ε = the whole input range, robust accuracy must fall to at most 1/C."""
    robust = float(attack_robust(ctx, sub, "pgd20", eps=1.0).mean())
    return B9.outcome(robust > 1 / ctx.num_classes, f"PGD-20 at ε = 1 leaves {_pct(robust)} robust "
                      f"(limit 1/C = {_pct(1 / ctx.num_classes)})", robust=robust)


@B10.guard
@torch.no_grad()
def random_noise(ctx, rows, sub) -> Finding:
    """B10: random corners of the ε-ball must not break samples the gradient attacks left robust."""
    run = run_robust(rows, sub.ids, sub.eps)
    generator, broken = torch.Generator().manual_seed(ctx.seed), 0
    for i in np.flatnonzero(run):
        x, y = sub.x[i:i + 1].to(ctx.device), sub.y[i:i + 1].to(ctx.device)
        for start in range(0, NOISE_POINTS, ctx.batch_size):
            count = min(ctx.batch_size, NOISE_POINTS - start)
            signs = torch.randint(0, 2, (count, *x.shape[1:]), generator=generator).mul_(2).sub_(1).to(x)
            if (ctx.model((x + sub.eps * signs).clamp(0, 1)).argmax(1) != y).any():
                broken += 1
                break
    rate = broken / len(sub.ids)
    return B10.outcome(broken > 0, f"{NOISE_POINTS} random points per robust sample break {broken} sample(s) the "
                       f"attacks missed", broken=broken, rate=rate, points=NOISE_POINTS)


@B12.guard
def loss_diversity(ctx, rows, sub) -> Finding:
    """B12: the margin loss must not break more than 2 pt more samples than CE."""
    spec = gradient_spec(ctx)
    ce, margin = (attack_robust(ctx, sub, f"{spec.family}{spec.steps}:loss={loss}") for loss in ("ce", "margin"))
    gap = float(ce.mean() - margin.mean())
    return B12.outcome(gap > GAP_TOL, f"CE {_pct(ce.mean())} vs margin {_pct(margin.mean())} robust: "
                       f"gap {100 * gap:.1f} pt", robust_ce=float(ce.mean()), robust_margin=float(margin.mean()))


@B14.guard
def incomplete(ctx, rows, sub) -> Finding:
    """B14: the loss of unbroken samples must not still be rising over the last 10% of the steps
    (escalated while it is)."""
    if ctx.randomized:
        return B14.passed("not measured on randomized models (the EOT loss is noisy)")
    return escalated(B14, _incomplete_at, ctx, sub)


@torch.no_grad()
def _clean_correct(ctx, x, y) -> torch.Tensor:
    return ctx.model(x).argmax(1) == y


def _incomplete_at(ctx, sub, steps: int) -> Finding:
    steps, eps = max(steps, 10), sub.eps
    x, y = sub.x.to(ctx.device), sub.y.to(ctx.device)
    start = uniform_start(x, eps, torch.Generator().manual_seed(ctx.seed))
    options = dict(eps=eps, step_size=2.5 * eps / steps, start=start, keep_best=True, early_stop=False, loss="ce")
    late, final = (pgd(ctx.model, x, y, steps=s, **options) for s in (math.ceil(0.9 * steps), steps))
    alive = ~final.success  # best-so-far loss: did the last 10% of the steps still raise it by over 1%?
    rising = float(((final.loss - late.loss) > RISE_TOL * late.loss.abs().clamp_min(1e-3))[alive].float().mean()) \
        if alive.any() else 0.0
    return B14.outcome(rising > 0.5, f"loss still rising over the last 10% of {steps} steps on "
                       f"{_pct(rising)} of the unbroken samples", rising=rising, steps=steps,
                       strongest=float((alive & _clean_correct(ctx, x, y)).float().mean()))


@B15.guard
def step_size(ctx, rows, sub) -> Finding:
    """B15: α ∈ {2.5ε/T, ε/4, ε/10} must agree within 2 pt (escalated while they do not)."""
    return escalated(B15, _step_size_at, ctx, sub)


def _step_size_at(ctx, sub, steps: int) -> Finding:
    eps = sub.eps
    alphas = {"2.5ε/T": 2.5 * eps / steps, "ε/4": eps / 4, "ε/10": eps / 10}
    robust = {k: float(attack_robust(ctx, sub, f"pgd{steps}:alpha={a!r}").mean()) for k, a in alphas.items()}
    spread = max(robust.values()) - min(robust.values())
    return B15.outcome(spread > GAP_TOL, "PGD-%d robust " % steps + ", ".join(f"α={k}: {_pct(v)}"
                       for k, v in robust.items()) + f" (spread {100 * spread:.1f} pt)", robust=robust,
                       strongest=min(robust.values()))


FULL_CHECKS = (convergence, single_step, black_box, unbounded, random_noise, loss_diversity, incomplete, step_size)


def run_invariants(ctx: CheckContext, rows: pd.DataFrame, full: bool = False) -> list[Finding]:
    findings = [check(ctx, rows) for check in ROW_CHECKS]
    columns = black_box_columns(rows)
    if not full:
        return findings if columns is None else [*findings, columns]
    sub = subset(ctx, rows)
    findings += [check(ctx, rows, sub) for check in FULL_CHECKS]
    if columns is not None and columns.fired:  # the rows' own evidence stands in for a re-attack that missed it
        findings = [columns if f.id == "B8" and not f.fired else f for f in findings]
    return findings
