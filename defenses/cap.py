"""CAP — Contour Attention Preserving defense (Xiang et al., AAAI 2023), spec §4.5.

No architectural change. Training (``cap`` step in :mod:`robustmed.training`) combines a
TRADES-KL inner attack, attention-only adversarial weight perturbation (AWP) steered by a
contour-preserving augmentation, and a squared-error hybrid loss. Deterministic at inference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.defenses._surgery import network_of
from robustmed.defenses.base import DEFENSES, DefenseInfo, no_change
from robustmed.models.mail import EMCAM, ChannelAttention


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
