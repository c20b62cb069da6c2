"""Pre-flight checks A1–A10 (docs/checks.md, A), and D2, cheap probes run before every benchmark.

They look at the model and the data only; no attack has run yet. The global RNG is restored
afterwards, so a run's rows are the same with or without the checks.
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.attacks.bpda import BPDA
from robustmed.attacks.eot import margin_loss
from robustmed.checks.bpda import switches
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import ERROR, FLAG, INFO, Finding, register
from robustmed.checks.sites import measure_sites
from robustmed.checks.surface import attack_surface
from robustmed.judging import clean_draws
from robustmed.resolve import resolve_spec
from robustmed.stats import wilson

A1 = register("A1", "eval mode", ERROR)
A2 = register("A2", "input domain [0, 1], no normalization outside the model", ERROR)
A3 = register("A3", "logits, not probabilities", FLAG)
A4 = register("A4", "randomness", FLAG)
A5 = register("A5", "test-time optimization", FLAG)
A6 = register("A6", "gradient health", FLAG)
A7 = register("A7", "class-count adaptation", INFO)
A8 = register("A8", "task type has a declared success criterion", ERROR)
A9 = register("A9", "clean-accuracy parity with the registry", ERROR)
A10 = register("A10", "budget sanity", FLAG)

RANDOMNESS_PASSES = 5
RANDOMNESS_TOL = 1e-4
LARGE_EPS = 16 / 255
PARITY_TOL = 0.0005  # ±0.05 points on the full split
PARITY_Z = 3.29  # 99.9% Wilson interval on a subset or over random draws
SITE_BLOCKED_TOL = 0.01  # A6 per site: over 1% of the entries reaching a declared op get no gradient back
SITE_COSINE_MIN = 0.9  # A6 per site: the gradient an op passes back vs the straight-through one
CLEAN_PASS = "clean_pass"  # ctx.extras: A9's single-draw clean pass, (prediction, loss, correct draws) per sample


@A1.guard
def eval_mode(ctx: CheckContext) -> Finding:
    """A1: after ``eval()`` no BatchNorm may still use batch statistics; active dropout is MC dropout."""
    ctx.model.eval()
    bn = [n for n, m in ctx.model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    dropout = [n for n, m in ctx.model.named_modules()
               if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0]
    if ctx.model.training or bn:
        return A1.fired(f"{len(bn)} BatchNorm layer(s) stay in train mode after eval() (e.g. {bn[:1]}): "
                        "predictions depend on the batch", train_mode_bn=bn)
    if dropout:
        return A1.fired(f"{len(dropout)} dropout layer(s) active at inference (MC dropout): the model is "
                        "randomized", FLAG, active_dropout=dropout)
    return A1.passed("eval mode; no BatchNorm in train mode, no active dropout")


@A2.guard
def input_domain(ctx: CheckContext) -> Finding:
    """A2: inputs lie in [0, 1] (ε is stated in those units) and are not standardized."""
    low, high = ctx.x.min().item(), ctx.x.max().item()
    dims = [d for d in range(ctx.x.ndim) if d != 1]
    mean, std = ctx.x.mean(dims), ctx.x.std(dims)
    standardized = bool(((mean.abs() < 0.1) & ((std - 1).abs() < 0.1)).all())
    details = {"min": low, "max": high, "channel_mean": mean.tolist(), "channel_std": std.tolist()}
    if low < 0 or high > 1:
        return A2.fired(f"inputs span [{low:.3g}, {high:.3g}], outside [0, 1]: normalization was applied outside "
                        "the model, so ε is not in pixel units", **details)
    if standardized:
        return A2.fired("every channel has mean ≈ 0 and std ≈ 1: the inputs were standardized outside the model",
                        **details)
    return A2.passed(f"inputs within [0, 1] (min {low:.3g}, max {high:.3g}), not standardized", **details)


@A3.guard
@torch.no_grad()
def probabilities(ctx: CheckContext) -> Finding:
    """A3: rows in [0, 1] summing to 1 (softmax) or with logsumexp ≈ 0 (log-softmax) are not logits."""
    out = ctx.model(ctx.probe[0]).float()
    softmax = bool(((out >= 0) & (out <= 1)).all() and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-4))
    log_softmax = bool(torch.allclose(out.logsumexp(1), torch.zeros_like(out[:, 0]), atol=1e-4))
    if softmax or log_softmax:
        kind = "probabilities (rows sum to 1)" if softmax else "log-probabilities (logsumexp ≈ 0)"
        return A3.fired(f"the model returns {kind}, not logits: CE/margin gradients vanish or mislead")
    return A3.passed("outputs are logits")


@A4.guard
@torch.no_grad()
def randomness(ctx: CheckContext) -> Finding:
    """A4: K forward passes; an L2-normalized logit change above 1e-4 or a flipped prediction → randomized."""
    x, _ = ctx.probe
    outs = [F.normalize(ctx.model(x).float(), dim=1) for _ in range(RANDOMNESS_PASSES)]
    change = max((o - outs[0]).abs().max().item() for o in outs[1:])
    flips = int(sum((o.argmax(1) != outs[0].argmax(1)).sum().item() for o in outs[1:]))
    detected = change > RANDOMNESS_TOL or flips > 0
    ctx.extras["randomized"] = detected or ctx.declared_randomized
    details = {"max_logit_change": change, "prediction_flips": flips, "passes": RANDOMNESS_PASSES,
               "declared": ctx.declared_randomized}
    if detected or ctx.declared_randomized:
        how = "declared by the defense" if not detected else \
            f"normalized logits change by {change:.3g} over {RANDOMNESS_PASSES} passes, {flips} prediction flip(s)"
        return A4.fired(f"randomized model ({how}): attacked with EOT and judged over several draws", **details)
    return A4.passed(f"deterministic over {RANDOMNESS_PASSES} passes (max change {change:.2g})", **details)


def _grad_codes() -> set:
    import torch.autograd as autograd

    functions = [autograd.grad, autograd.backward, torch.Tensor.backward]  # entry points; not their helpers
    return {f.__code__ for f in functions if hasattr(f, "__code__")}


def count_grad_calls(model: nn.Module, x: torch.Tensor) -> int:
    """Calls of ``autograd.grad``/``backward`` made while ``model(x)`` runs (``sys.settrace``, as AutoAttack)."""
    codes, calls = _grad_codes(), 0

    def tracer(frame, event, arg):
        nonlocal calls
        calls += event == "call" and frame.f_code in codes
        return None  # no line tracing: only function entries are seen

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with torch.enable_grad():
            model(x)
    finally:
        sys.settrace(previous)
    return calls


@A5.guard
def test_time_optimization(ctx: CheckContext) -> Finding:
    """A5: a forward pass that computes gradients optimizes at test time and needs an adaptive attack."""
    calls = count_grad_calls(ctx.model, ctx.probe[0][:2])
    return A5.outcome(calls > 0, f"{calls} autograd.grad/backward call(s) inside one forward pass: test-time "
                      "optimization, an adaptive evaluation is required" if calls else
                      "no gradient computation inside forward", calls=calls)


def _input_grads(model, x, y, loss_fns) -> list[torch.Tensor] | None:
    """Input gradients of each loss from one forward pass; None when the output does not require grad."""
    x = x.detach().clone().requires_grad_(True)
    grads = []
    with torch.enable_grad():
        out = model(x)
        if not out.requires_grad:
            return None
        for i, loss_fn in enumerate(loss_fns):
            grad, = torch.autograd.grad(loss_fn(out, y).sum(), x, allow_unused=True,
                                        retain_graph=i + 1 < len(loss_fns))
            grads.append(torch.zeros_like(x) if grad is None else grad)
    return grads


def _loss_grads(ctx: CheckContext, x, y, loss_fns) -> list[torch.Tensor] | None:
    """A6's gradients: one forward pass serves every loss of a deterministic model; a randomized model
    draws a fresh pass per loss."""
    if not ctx.randomized:
        return _input_grads(ctx.model, x, y, loss_fns)
    grads = []
    for loss_fn in loss_fns:
        grad = _input_grads(ctx.model, x, y, [loss_fn])
        if grad is None:
            return None
        grads += grad
    return grads


def declared_sites(ctx: CheckContext) -> bool:
    """Non-differentiable ops to measure: declared by the defense, or wrapped in BPDA by the model itself."""
    return bool(ctx.nondiff_ops and switches(ctx.model)) or any(isinstance(m, BPDA) for m in ctx.model.modules())


def _obfuscated(sites: dict) -> dict:
    """Kinds of site whose plain gradient is blocked on over 1% of its entries or bent away from straight-through."""
    return {k: s for k, s in sites.items() if s.blocked_fraction > SITE_BLOCKED_TOL or s.cosine < SITE_COSINE_MIN}


@A6.guard
def gradient_health(ctx: CheckContext) -> Finding:
    """A6: per-sample input gradients of CE and margin loss must exist, be finite and be non-zero; at every
    declared non-differentiable op (per site) the gradient must not be blocked or shattered."""
    x, y = ctx.probe
    details = {}
    losses = {"ce": lambda o, t: F.cross_entropy(o, t, reduction="none"), "margin": margin_loss}
    grads = _loss_grads(ctx, x, y, list(losses.values()))
    if grads is None:
        return A6.fired("the output does not require grad: the model detaches its input, gradient attacks "
                        "see nothing", detached=True)
    for name, grad in zip(losses, grads):
        flat = grad.flatten(1)
        details[name] = {"zero": (flat.abs().amax(1) == 0).float().mean().item(),
                         "nonfinite": (~torch.isfinite(flat).all(1)).float().mean().item()}
    worst = max(max(d.values()) for d in details.values())
    summary = ", ".join(f"{k}: {100 * v['zero']:.0f}% zero, {100 * v['nonfinite']:.0f}% NaN/inf"
                        for k, v in details.items())
    if worst > 0:
        return A6.fired(f"unusable input gradients on {len(x)} samples ({summary}): gradient masking", **details)
    if not declared_sites(ctx):
        unswitchable = f"; the {len(ctx.nondiff_ops)} declared non-differentiable op(s) expose no straight-through " \
            "switch, so they are neither measured nor attacked with BPDA" if ctx.nondiff_ops else ""
        return A6.passed(f"input gradients finite and non-zero on {len(x)} samples{unswitchable}", **details)
    sites = measure_sites(ctx.model, x, y)
    details["sites"] = {k: s.to_json() for k, s in sites.items()}
    details["nondiff_ops"] = list(ctx.nondiff_ops)
    bad = _obfuscated(sites)
    if not bad:
        return A6.passed(f"input gradients finite and non-zero; the {len(sites)} declared non-differentiable "
                         "op(s) pass the gradient on", **details)
    where = "; ".join(f"{k} ×{s.sites} blocks {100 * s.blocked_fraction:.0f}% of the gradient reaching it "
                      f"(cosine {s.cosine:.2f} with straight-through)" for k, s in bad.items())
    return A6.fired(f"zero-gradient / obfuscated gradients at {len(bad)} declared non-differentiable op(s): {where}; "
                    "plain gradients cannot see through them, BPDA (straight-through) is required there", **details)


@A7.guard
def class_count(ctx: CheckContext) -> Finding:
    """A7: attacks adapted to the class count (no DLR for C < 3, no targeted DLR for C < 4: their budget
    goes to APGD-CE restarts and a targeted margin); recorded."""
    changes = {}
    for spec in ctx.specs:
        resolved = resolve_spec(spec, randomized=ctx.randomized, num_classes=ctx.num_classes)
        if "cascade" in resolved.extra:
            changes[spec.name] = {"cascade": resolved.extra["cascade"], "restarts": resolved.extra.get("restarts", {}),
                                  "n_target_classes": resolved.extra["n_target_classes"],
                                  **{k: resolved.extra[k] for k in ("apgd_target_classes",) if k in resolved.extra}}
    adapted = {k: v for k, v in changes.items() if ctx.num_classes < 4}
    if adapted:
        return A7.fired(f"{ctx.num_classes} classes: " + "; ".join(
            f"{k} runs " + " → ".join(f"{s}×{v['restarts'][s]}" if s in v["restarts"] else s for s in v["cascade"])
            for k, v in adapted.items()), adapted=changes)
    return A7.passed(f"{ctx.num_classes} classes: no attack needs adapting", adapted=changes)


@A8.guard
def task_type(ctx: CheckContext) -> Finding:
    """A8: the harness judges success as an argmax flip, which is only defined for single-label tasks, unless
    the run declares its criterion (``extras["success_criterion"]``: a multi-label model's criterion view)."""
    declared = ctx.extras.get("success_criterion")
    if declared:
        return A8.passed(f"task {ctx.task!r}: declared success criterion: {declared}", task=ctx.task,
                         criterion=declared)
    if ctx.task.startswith("multi-label"):
        return A8.fired(f"task {ctx.task!r}: success is judged as an argmax flip, which does not define "
                        "robustness for this task; no success criterion is declared", task=ctx.task)
    if ctx.task.startswith("ordinal"):  # MedMNIST scores ordinal sets by exact-grade accuracy (its ACC)
        return A8.passed(f"task {ctx.task!r}: a change of the predicted grade is the success criterion, as "
                         "MedMNIST's accuracy counts any wrong grade", task=ctx.task, criterion="grade flip")
    return A8.passed(f"task {ctx.task!r}: an argmax flip is the success criterion", task=ctx.task)


def _clean_accuracy(ctx: CheckContext, draws: int) -> float:
    """The harness's clean pass over the run's samples, in the run's batches; a single-draw pass is kept in
    ``ctx.extras[CLEAN_PASS]`` so the attack does not repeat it (``attack_rows(clean_pass=...)``)."""
    pred, loss, hits = clean_draws(ctx.model, ctx.x, ctx.y, ctx.batch_size, ctx.device, draws)
    if draws == 1:
        ctx.extras[CLEAN_PASS] = (pred, loss, hits)
    return int(hits.sum()) / (draws * len(ctx.x))


@A9.guard
def clean_parity(ctx: CheckContext) -> Finding:
    """A9: the harness's clean accuracy reproduces the registry's (exactly on the full split, else within CI)."""
    if ctx.registry_accuracy is None:
        return A9.passed("no registry accuracy to compare with (not a registered checkpoint on its test split)")
    draws = 3 if ctx.randomized else 1
    measured, expected = _clean_accuracy(ctx, draws), float(ctx.registry_accuracy)
    details = {"measured": measured, "registry": expected, "n": len(ctx.x), "draws": draws}
    if ctx.full_split and not ctx.randomized:
        ok, rule = abs(measured - expected) <= PARITY_TOL, "±0.05 pt on the full split"
    else:
        low, high = wilson(round(measured * len(ctx.x)), len(ctx.x), z=PARITY_Z)
        ok, rule = low <= expected <= high, f"inside the 99.9% interval [{100 * low:.1f}, {100 * high:.1f}]"
    reason = f"clean accuracy {100 * measured:.2f}% vs registry {100 * expected:.2f}% ({rule})"
    return A9.outcome(not ok, reason + ("" if ok else ": wrong weights, preprocessing or data"), **details)


@A10.guard
def budget_sanity(ctx: CheckContext) -> Finding:
    """A10: L∞ budgets above 16/255 of the [0, 1] range are not small perturbations; an L2 (L1) budget is large
    beyond the L2 (L1) size of that L∞ ball's corner, 16/255·√D (16/255·D) over the image's D values."""
    norms = {s.norm for s in ctx.specs if s.family not in ("corruptions", "null")} or {"Linf"}
    large = [e for e in ctx.eps if e > LARGE_EPS + 1e-12] if "Linf" in norms else []
    units = ["L∞ in [0, 1] pixel units"] if "Linf" in norms else []
    dims = ctx.values_per_sample
    for norm, limit in (("L2", LARGE_EPS * math.sqrt(dims)), ("L1", LARGE_EPS * dims)):
        if norm in norms:
            large += [e for e in ctx.eps if e > limit + 1e-12 and e not in large]
            units.append(f"{norm} over the whole image (large above {limit:.3g})")
    units = "; ".join(units)
    if large:
        whole = norms != {"Linf"}
        shown = ", ".join(f"{255 * e:.3g}/255" if not whole else f"{e:.3g}" for e in large)
        return A10.fired(f"ε = {shown} exceeds {'16/255' if not whole else 'the budget limit'} ({units}): "
                         "not a small perturbation", eps=list(ctx.eps), units=units)
    return A10.passed(f"ε ≤ 16/255 ({units})" if norms == {"Linf"} else f"ε within the small budgets ({units})",
                      eps=list(ctx.eps), units=units)


PREFLIGHT = (eval_mode, input_domain, probabilities, randomness, test_time_optimization, gradient_health,
             class_count, task_type, clean_parity, budget_sanity, attack_surface)


def run_preflight(ctx: CheckContext) -> list[Finding]:
    """Every pre-flight check, in ID order; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        return [check(ctx) for check in PREFLIGHT]
