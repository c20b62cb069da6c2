"""MAIL: multi-branch ERLA network with EMCAM fusion (Dhar et al., KDD'26), as the authors' code builds it.

Defaults follow the authors' released code where it differs from the paper (docs/models.md); paper variants are flags on :class:`MAILConfig`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.models.layers import (
    Site,
    batch_norm,
    channel_shuffle,
    dct_channels,
    global_max,
    global_mean,
    global_min,
    glorot_init,
)


@dataclass(frozen=True)
class MAILConfig:
    """Size and behaviour of a MAIL network; presets live in :mod:`robustmed.models.zoo`."""

    num_classes: tuple[int, ...] = (2,)  # one head per task; replicated mode has one
    in_channels: int = 3
    branches: int = 2
    widths: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True
    groups: int = 16
    ca_reduction: int = 4
    dropout: float = 0.25
    inference_dropout: bool = False  # the authors' always-on dropout; makes MAIL randomized
    ca_sum_pool: bool = True  # code: CA descriptor 2·GMP + GSP; paper: 2·GMP
    code_faithful_m2: bool = True  # code's sequential EMSCA pairing for m = 2
    # Keras' 0.99 running-average momentum (0.01 here) needs the code's long schedule; the CPU preset's
    # few hundred steps leave running statistics far from the batch statistics, so it uses 0.1.
    bn_momentum: float = 0.01
    extra: dict = field(default_factory=dict, hash=False, compare=False)


class MSGDC(nn.Module):
    """EMILA's multi-scale grouped/depthwise conv: GPC ‖ DW3 ‖ DW5 → shuffle → 2-group fuse → BN."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: MAILConfig):
        super().__init__()
        groups = cfg.groups
        self.gpc = nn.Conv2d(cin, cout, 1, stride, groups=groups)
        self.dw3 = nn.Conv2d(cin, cin, 3, stride, padding=1, groups=cin)
        self.dw5 = nn.Conv2d(cin, cin, 5, stride, padding=2, groups=cin)
        self.shuffle_groups = groups
        self.fuse = nn.Conv2d(cout + 2 * cin, cout, 1, groups=2)
        self.bn = batch_norm(cout, cfg.bn_momentum)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.gpc(x), self.dw3(x), self.dw5(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = channel_shuffle(torch.cat(self.branches(x), dim=1), self.shuffle_groups)
        return self.bn(self.fuse(mixed))


class ChannelAttention(nn.Module):
    """Channel attention: A_c = σ(θ · Dense(ReLU(Dense(d)))), d = 2·GMP (+ GSP in the code)."""

    def __init__(self, channels: int, reduction: int, sum_pool: bool):
        super().__init__()
        self.down = nn.Linear(channels, channels // reduction)
        self.up = nn.Linear(channels // reduction, channels)
        self.theta = nn.Parameter(torch.randn(()) * 2.0**0.5)  # one scalar, He-normal (fan-in 1)
        self.sum_pool = sum_pool
        self.noise = Site()  # RPAN's MAN on the modulated pre-sigmoid term

    def logits(self, u: torch.Tensor) -> torch.Tensor:
        descriptor = 2 * global_max(u)
        if self.sum_pool:
            descriptor = descriptor + u.sum(dim=(2, 3))
        return self.up(F.relu(self.down(descriptor)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.noise(self.theta * self.logits(u)))[:, :, None, None]


class EMILA(nn.Module):
    """EMILA (code form): ReLU(BN(proj(x)) + MSGDC(x) ⊙ CA); the projection is always applied."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: MAILConfig):
        super().__init__()
        self.msgdc = MSGDC(cin, cout, stride, cfg)
        self.ca = ChannelAttention(cout, cfg.ca_reduction, cfg.ca_sum_pool)
        self.proj = nn.Conv2d(cin, cout, 1, stride)
        self.proj_bn = batch_norm(cout, cfg.bn_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.msgdc(x)
        return F.relu(self.proj_bn(self.proj(x)) + u * self.ca(u))


class ERLA(nn.Module):
    """ERLA (Eq. 1): EMILA → BN-ReLU → EMILA → BN(1×1) + shortcut → ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: MAILConfig):
        super().__init__()
        self.emila1 = EMILA(cin, cout, stride, cfg)
        self.bn1 = batch_norm(cout, cfg.bn_momentum)
        self.emila2 = EMILA(cout, cout, 1, cfg)
        self.pointwise = nn.Conv2d(cout, cout, 1)
        self.bn2 = batch_norm(cout, cfg.bn_momentum)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride), batch_norm(cout, cfg.bn_momentum))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.post_add = Site()  # Learn2Perturb injects after the residual addition

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.emila1(x)))
        y = self.bn2(self.pointwise(self.emila2(y)))
        return F.relu(self.post_add(y + self.shortcut(x)))


class EMSCAConv(nn.Module):
    """EMSCA's MSGDC_E: grouped 1×1 ‖ DW3 ‖ DW5 (no bias) → full 1×1, no BN or shuffle."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.gpc = nn.Conv2d(channels, channels, 1, groups=groups, bias=False)
        self.dw3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.dw5 = nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False)
        self.fuse = nn.Conv2d(3 * channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.gpc(x), self.dw3(x), self.dw5(x)], dim=1))


class EMCAM(nn.Module):
    """EMCAM = MFIFA (DCT bands) + EMSCA (multi-scale spatial/channel), one A_m gating every branch."""

    def __init__(self, channels: int, branches: int, cfg: MAILConfig):
        super().__init__()
        self.band_dense = nn.Linear(channels, channels)  # the shared sigmoid Dense `f`
        self.band_scales = nn.Parameter(torch.ones(3))  # s_high, s_low, s_mean, shared across modalities
        self.msgdc = EMSCAConv(channels, cfg.groups)
        self.vartheta = nn.Parameter(torch.ones(branches, channels))
        self.fusion_gain = nn.Parameter(torch.ones(()))
        self.branch_scale = nn.Parameter(torch.ones(branches, channels))
        self.code_faithful_m2 = cfg.code_faithful_m2
        self.noise_high, self.noise_low, self.noise_mean = Site(), Site(), Site()
        self.noise_spatial, self.noise_fused = Site(), Site()
        self.noise_terms = nn.ModuleList(Site() for _ in range(branches))  # RPAN: one MAN draw per ϑ_i ⊙ ℓ_i

    def _bands(self, x: torch.Tensor) -> torch.Tensor:
        d = dct_channels(x)
        f = lambda v: torch.sigmoid(self.band_dense(v))[:, :, None, None]  # noqa: E731
        h1, l1, l2 = f(global_max(d)), f(global_mean(d)), f(global_min(d))
        high = h1 + (h1 - l1) + (d - l2)
        low = l1 + l2
        s_high, s_low, s_mean = self.band_scales
        return (
            self.noise_high(s_high * high) + self.noise_low(s_low * low) + self.noise_mean(s_mean * (high - low))
        )

    def frequency_attention(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(sum(self._bands(x) for x in xs))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        y = self.msgdc(x)
        return (global_mean(y) + global_max(y))[:, :, None, None]

    def spatial_attention(self, xs: list[torch.Tensor]) -> torch.Tensor:
        single = [self._pool(x) for x in xs]
        hierarchical = [self._pool(s) for s in single]
        m = len(xs)
        if m == 2 and self.code_faithful_m2:
            first = single[0] + hierarchical[0] + single[1]
            terms = [first, single[1] + hierarchical[1] + first]
        else:
            terms = [single[i] + single[m - 1 - i] + hierarchical[i] for i in range(m)]
        weighted = sum(self.noise_terms[i](self.vartheta[i][None, :, None, None] * t) for i, t in enumerate(terms))
        return torch.sigmoid(self.noise_spatial(weighted))

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        a_f = self.frequency_attention(xs)
        a_s = self.spatial_attention(xs)
        fused = self.fusion_gain * a_f + self.vartheta[0][None, :, None, None] * a_s
        a_m = torch.sigmoid(self.noise_fused(fused))
        return [x * a_m * self.branch_scale[i][None, :, None, None] for i, x in enumerate(xs)]


class Stem(nn.Module):
    def __init__(self, cfg: MAILConfig):
        super().__init__()
        width, k = cfg.widths[0], cfg.stem_kernel
        self.input_site = Site()  # CTRW's random input weight
        self.conv = nn.Conv2d(cfg.in_channels, width, k, cfg.stem_stride, padding=k // 2)
        self.bn = batch_norm(width, cfg.bn_momentum)
        self.post_bn = Site()  # Learn2Perturb injects after the stem BN, before ReLU
        self.pool = nn.MaxPool2d(3, 2, padding=1) if cfg.stem_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.post_bn(self.bn(self.conv(self.input_site(x))))))


class Branch(nn.Module):
    """One modality's stem and ERLA stages; EMCAM fusion between stages is owned by :class:`MAIL`."""

    def __init__(self, cfg: MAILConfig):
        super().__init__()
        self.stem = Stem(cfg)
        self.stages = nn.ModuleList()
        cin = cfg.widths[0]
        for index, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if index > 0 and j == 0 else 1
                blocks.append(ERLA(cin, width, stride, cfg))
                cin = width
                if index > 0 and j == 0:
                    blocks.append(nn.Dropout(cfg.dropout))
            self.stages.append(nn.Sequential(*blocks))


class MAIL(nn.Module):
    """MAIL over ``branches`` inputs; returns logits (one tensor per head when there are several)."""

    def __init__(self, cfg: MAILConfig):
        super().__init__()
        self.cfg = cfg
        self.branch_nets = nn.ModuleList(Branch(cfg) for _ in range(cfg.branches))
        self.fusions = nn.ModuleList(EMCAM(w, cfg.branches, cfg) for w in cfg.widths)
        features = cfg.widths[-1] * cfg.branches
        self.heads = nn.ModuleList(nn.Linear(features, n) for n in cfg.num_classes)
        glorot_init(self)

    def forward(self, xs: list[torch.Tensor] | tuple[torch.Tensor, ...]):
        if len(xs) != self.cfg.branches:
            raise ValueError(f"MAIL expects {self.cfg.branches} inputs, got {len(xs)}")
        feats = [net.stem(x) for net, x in zip(self.branch_nets, xs)]
        for stage, fusion in enumerate(self.fusions):
            feats = [net.stages[stage](f) for net, f in zip(self.branch_nets, feats)]
            feats = fusion(feats)
        pooled = torch.cat([global_mean(f) for f in feats], dim=1)
        logits = [head(pooled) for head in self.heads]
        return logits[0] if len(logits) == 1 else tuple(logits)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.inference_dropout:  # the authors' dropout is called with training forced on
            for module in self.modules():
                if isinstance(module, nn.Dropout):
                    module.train(True)
        return self
