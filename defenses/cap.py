"""CAP — Contour Attention Preserving defense (Xiang et al., AAAI 2023).

No architectural change. Training (the ``cap`` step below) combines a
TRADES-KL inner attack, attention-only adversarial weight perturbation (AWP) steered by a
contour-preserving augmentation, and a squared-error hybrid loss. Deterministic at inference.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.attacks.pgd import project
from robustmed.defenses._surgery import network_of
from robustmed.defenses.base import DEFENSES, DefenseInfo, no_change
from robustmed.models.mail import EMCAM, ChannelAttention
from robustmed.steps import TRAIN_STEPS, StepContext, delay_epochs


def attention_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """MAIL's attention weights: ≥ 2-D parameters of CA (both Dense) and EMCAM (band Dense, EMSCA convs).

    Scalar and vector modulation parameters (θ, band scales, ϑ, gains) are excluded, as the
    reference's name filter excludes them.
    """
    found = []
    for prefix, module in network_of(model).named_modules():
        if isinstance(module, (ChannelAttention, EMCAM)):
            found += [(f"{prefix}.{n}", p) for n, p in module.named_parameters() if p.ndim >= 2 and p.requires_grad]
    return found


def _box(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def guided_filter(image: torch.Tensor, radius: int = 2, eps: float = 3e-3, subsample: float = 0.5) -> torch.Tensor:
    """Fast self-guided filter (guide = input) on (B, 1, H, W): smooths texture, keeps edges."""
    small = F.interpolate(image, scale_factor=subsample, mode="bilinear", align_corners=False) \
        if subsample != 1 else image
    r = max(1, round(radius * subsample))
    mean = _box(small, r)
    var = _box(small * small, r) - mean * mean
    a = var / (var + eps)
    b = mean - a * mean
    a, b = _box(a, r), _box(b, r)
    if subsample != 1:
        a = F.interpolate(a, size=image.shape[-2:], mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return a * image + b


def otsu_threshold(grey: torch.Tensor) -> torch.Tensor:
    """Per-image Otsu threshold on 8-bit grey levels (B, 1, H, W) → (B, 1, 1, 1)."""
    levels = torch.arange(256, dtype=grey.dtype, device=grey.device)
    hist = torch.stack([torch.bincount(g.flatten().long(), minlength=256) for g in grey]).to(grey.dtype)
    prob = hist / hist.sum(1, keepdim=True)
    omega, mu = prob.cumsum(1), (prob * levels).cumsum(1)
    between = (mu[:, -1:] * omega - mu) ** 2 / (omega * (1 - omega)).clamp_min(1e-12)
    return between.argmax(1).to(grey.dtype).view(-1, 1, 1, 1)


@torch.no_grad()
def contour_augment(x: torch.Tensor, threshold: float | str = 127, radius: int = 2, eps: float = 3e-3,
                    subsample: float = 0.5) -> torch.Tensor:
    """Keep the bright region (8-bit grey > threshold) exactly; guided-filter the dark region.

    ``threshold="otsu"`` picks it per image (the honest choice for non-CT modalities).
    """
    grey = x.mean(1, keepdim=True)
    grey8 = (grey * 255).round()
    thr = otsu_threshold(grey8) if threshold == "otsu" else torch.as_tensor(float(threshold))
    smooth = guided_filter(grey, radius, eps, subsample).clamp(0, 1).expand_as(x)
    return torch.where(grey8 > thr, x, smooth)


DEFENSES.register("cap", DefenseInfo(
    name="cap",
    family="adversarial training + attention weight perturbation",
    reference="Xiang et al. Toward Robust Diagnosis: A Contour Attention Preserving Adversarial Defense "
              "for COVID-19 Detection. AAAI 2023",
    description="TRADES-KL attack, AWP on CA/EMCAM weights steered by contour-preserving augmentation, "
                "squared-error hybrid loss; deterministic",
    train_step="cap",
    train_options={"beta": 3.0, "gamma": 1e-4, "awp_delay": 20 / 200, "threshold": 127, "proxy_lr": 1e-2,
                   "select": "robust"},
    attach=no_change,
    cpu_recipe="cpu-at",
))


def trades_examples(model, x, ctx: StepContext) -> torch.Tensor:
    """CAP's inner maximisation: sign ascent on KL(f(x) ‖ f(x_adv)) from x + 0.001·N(0, I), eval mode."""
    recipe, eps = ctx.recipe, ctx.recipe.train_eps
    was_training = model.training
    model.eval()
    with torch.no_grad():
        target = F.softmax(model(x), 1)
    x_adv = project(x + 0.001 * torch.randn(x.shape, generator=ctx.generator).to(x), x, eps)
    for _ in range(recipe.train_attack_steps):
        x_adv.requires_grad_(True)
        kl = F.kl_div(F.log_softmax(model(x_adv), 1), target, reduction="sum")
        grad, = torch.autograd.grad(kl, x_adv)
        x_adv = project(x_adv.detach() + recipe.train_attack_step * grad.sign(), x, eps)
    model.train(was_training)
    return x_adv.detach()


def attention_weight_perturbation(model, x, y, x_aug, options: dict) -> Callable[[], None]:
    """CAP's AWP restricted to attention weights; returns the function that removes it after the update.

    A proxy takes one SGD step on −CE(x) + β·KL(f(x) ‖ f(x_aug)); each attention layer's change is
    rescaled to that layer's weight norm and added with weight γ.
    """
    proxy = copy.deepcopy(model).train()
    proxy_params = dict(attention_parameters(proxy))
    optimizer = torch.optim.SGD(proxy_params.values(), lr=options.get("proxy_lr", 1e-2))
    out, out_aug = proxy(x), proxy(x_aug)
    labels = y if y.ndim == 1 else y[:, 0]
    loss = -F.cross_entropy(out, labels) + options.get("beta", 3.0) * F.kl_div(
        F.log_softmax(out_aug, 1), F.softmax(out, 1), reduction="batchmean")
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    applied = []
    with torch.no_grad():
        for name, param in attention_parameters(model):
            diff = proxy_params[name] - param
            step = options.get("gamma", 1e-4) * diff / (diff.norm() + 1e-20) * param.norm()
            param.add_(step)
            applied.append((param, step))

    def restore() -> None:
        with torch.no_grad():
            for param, step in applied:
                param.sub_(step)

    return restore


@TRAIN_STEPS.decorator("cap")
def cap_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    """mean‖p(x) − y_s‖² + β·mean‖p(x_adv) − p(x)‖², y_s = ε·p(x_aug) + (1 − ε)·onehot(y) (not detached)."""
    options = ctx.extras["options"]
    labels = y if y.ndim == 1 else y[:, 0]
    x_aug = contour_augment(x, options.get("threshold", 127))
    x_adv = trades_examples(model, x, ctx)
    if ctx.epoch >= delay_epochs(options.get("awp_delay", 0.0), ctx.epochs):
        ctx.extras.setdefault("after_update", []).append(
            attention_weight_perturbation(model, x, y, x_aug, options))
    probs = F.softmax(model(x), 1)
    smooth = ctx.recipe.train_eps
    soft_target = smooth * F.softmax(model(x_aug), 1) + (1 - smooth) * F.one_hot(labels, probs.shape[1])
    natural = (probs - soft_target).pow(2).sum(1).mean()
    robust = (F.softmax(model(x_adv), 1) - probs).pow(2).sum(1).mean()
    return natural + options.get("beta", 3.0) * robust
