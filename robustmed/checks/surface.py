"""End-to-end attack surface (check D2): the callable the attacks differentiate is the deployed pipeline.

The harness attacks ``autocast_forward(model, amp, device)`` (the model itself in fp32) with
gradients enabled, and judges clean and adversarial predictions with the same model under
``no_grad``. D2 verifies both ends before any attack runs: the fp32 attacked callable is the judged
model, and one forward pass as the attack sees it (gradients on, input requiring grad) gives the
logits of one pass as the judge sees it, under one frozen realization of the randomness and one
seed. A pipeline that sends gradient-enabled calls through a differentiable surrogate and
inference through something else (a purifier or post-processing applied only under ``no_grad``) is
an attack on a model that is never deployed (Carlini et al. 2019; Tramèr et al. 2020); every number it yields is void.
"""
from __future__ import annotations

from typing import Mapping

import torch

from robustmed.attacks.amp import autocast_forward
from robustmed.checks.context import CheckContext
from robustmed.checks.registry import ERROR, Finding, register
from robustmed.randomness import frozen

D2 = register("D2", "end-to-end attack surface", ERROR)

SURFACE_RTOL, SURFACE_ATOL = 1e-4, 1e-5


def _requiring_grad(x):
    if isinstance(x, Mapping):
        return {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    return x.detach().clone().requires_grad_(True)


def _pass(model, x, attacked: bool) -> torch.Tensor:
    """One seeded forward pass, as the attack (grad on, input requiring grad) or as the judge (no_grad) makes it."""
    torch.manual_seed(0)
    if attacked:
        with torch.enable_grad():
            return model(_requiring_grad(x)).detach().float()
    with torch.no_grad():
        return model(x).float()


@D2.guard
def attack_surface(ctx: CheckContext) -> Finding:
    """D2: the attacked callable is the judged model and computes the same logits with and without gradients."""
    attacked = autocast_forward(ctx.model, "", ctx.device)
    if attacked is not ctx.model:
        return D2.fired("the harness attacks a different callable than the model it judges with")
    x, _ = ctx.probe
    with torch.random.fork_rng(devices=[]), frozen(ctx.model):
        seen_by_attack, deployed = _pass(ctx.model, x, True), _pass(ctx.model, x, False)
    gap = (seen_by_attack - deployed).abs().max().item()
    flips = int((seen_by_attack.argmax(1) != deployed.argmax(1)).sum())
    same = flips == 0 and torch.allclose(seen_by_attack, deployed, rtol=SURFACE_RTOL, atol=SURFACE_ATOL)
    details = {"max_logit_gap": gap, "prediction_flips": flips, "n": len(deployed)}
    if same:
        return D2.passed(f"the attack differentiates the deployed pipeline (same logits with and without "
                         f"gradients, max gap {gap:.2g})", **details)
    return D2.fired(f"the pipeline the attack differentiates is not the deployed one: logits differ by up to "
                    f"{gap:.3g} between a gradient-enabled and an inference pass ({flips} of {len(deployed)} "
                    "predictions change); attacks would optimize against a surrogate", **details)
