"""MMCAF-Net (Yu, Ge et al., "Small Lesions-aware Bidirectional Multimodal Multiscale Fusion Network"),
as the authors' code (github.com/yjx1234/MMCAF-Net) builds it: a 3D feature-pyramid image encoder with
E3D-MSCA at each scale and BFPU fusion, a KAN tabular encoder, and MSCA cross-attention fusion with BSF.

Deviations, all for lack of the authors' data and CPU budgets: the image encoder is PENet's layout
(ResNeXt bottlenecks with squeeze-excitation, three pyramid stages) trained from scratch, not the
pretrained, frozen PENet-50 of the code; the CPU preset is narrow (16-32-64 channels instead of
256-512-1024) and reads 28³ volumes; the tabular record is a set of shape features computed from
the volume (:mod:`robustmed.tabular`), not clinical fields. BFPU sums its two branches as the code
does (the paper's Eq. 2 concatenates). The classifier is the code's single logit (BCE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.models.kan import KANLayer
from robustmed.tabular import ShapeFeatureLayer


@dataclass(frozen=True)
class MMCAFConfig:
    """Size of an MMCAF-Net; presets in :mod:`robustmed.models.multimodal`."""

    stem_width: int = 16
    stem_stride: int = 2
    widths: tuple[int, int, int] = (16, 32, 64)  # pyramid channels (code: 256, 512, 1024)
    blocks: tuple[int, int, int] = (1, 1, 1)  # bottlenecks per stage (PENet-50: 3, 4, 6)
    cardinality: int = 4  # grouped 3×3×3 convolutions in the bottleneck (PENet: 32)
    embed: int = 24  # shared embedding width of both modalities (code: 24)
    kan_grid: int = 5
    sab_kernel: int = 7
    scale_dropout: float = 0.3
    head_dropout: float = 0.5
    fusion_dropout: float = 0.5
    input_names: tuple[str, str] = ("volume", "shape")


def channel_shuffle_3d(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, *rest = x.shape
    return x.view(b, groups, c // groups, *rest).transpose(1, 2).reshape(b, c, *rest)


class SqueezeExcite3d(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3, 4)))[:, :, None, None, None]


class Bottleneck3d(nn.Module):
    """PENet's block: 1×1 → grouped 3×3×3 → 1×1, squeeze-excitation, residual."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int):
        super().__init__()
        mid = cout // 2
        self.body = nn.Sequential(
            nn.Conv3d(cin, mid, 1, bias=False), nn.BatchNorm3d(mid), nn.ReLU(),
            nn.Conv3d(mid, mid, 3, stride, 1, groups=math.gcd(cardinality, mid), bias=False), nn.BatchNorm3d(mid),
            nn.ReLU(), nn.Conv3d(mid, cout, 1, bias=False), nn.BatchNorm3d(cout), SqueezeExcite3d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ChannelAttention3d(nn.Module):
    """CAB_3D: σ(MLP(avg-pool) + MLP(max-pool)), ratio 16 (fewer channels: one hidden unit)."""

    def __init__(self, channels: int, ratio: int = 16):
        super().__init__()
        hidden = channels // min(ratio, channels)
        self.fc1 = nn.Conv3d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv3d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = (F.adaptive_avg_pool3d(x, 1), F.adaptive_max_pool3d(x, 1))
        return torch.sigmoid(sum(self.fc2(F.relu(self.fc1(p))) for p in pooled))


class SpatialAttention3d(nn.Module):
    """SAB_3D: σ(conv([mean over channels, max over channels]))."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv3d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))


class DCFB(nn.Module):
    """3D depth-wise convolution fusion block: expand ×2, depth-wise 1/3/5 added, shuffle, project, skip."""

    def __init__(self, channels: int, kernels: tuple[int, ...] = (1, 3, 5), expansion: int = 2):
        super().__init__()
        wide = channels * expansion
        self.expand = nn.Sequential(nn.Conv3d(channels, wide, 1, bias=False), nn.BatchNorm3d(wide), nn.ReLU6())
        self.depthwise = nn.ModuleList(nn.Sequential(
            nn.Conv3d(wide, wide, k, padding=k // 2, groups=wide, bias=False), nn.BatchNorm3d(wide), nn.ReLU6())
            for k in kernels)
        self.project = nn.Sequential(nn.Conv3d(wide, channels, 1, bias=False), nn.BatchNorm3d(channels))
        self.shuffle_groups = math.gcd(wide, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wide = self.expand(x)
        mixed = sum(conv(wide) for conv in self.depthwise)
        return x + self.project(channel_shuffle_3d(mixed, self.shuffle_groups))


class E3DMSCA(nn.Module):
    """Eq. 1: DCFB(SAB(CAB(x))); the spatial attention is shared across scales, as in the code."""

    def __init__(self, channels: int, spatial: SpatialAttention3d):
        super().__init__()
        self.cab, self.dcfb = ChannelAttention3d(channels), DCFB(channels)
        self.sab = [spatial]  # shared module, registered once by the encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cab(x) * x
        x = self.sab[0](x) * x
        return self.dcfb(x)


class UpConv3d(nn.Module):
    """UCB: ×2 trilinear up-sampling, depth-wise 3×3×3, BN-ReLU, point-wise projection to ``cout``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv3d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm3d(cin),
                                nn.ReLU())
        self.pw = nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        x = self.dw(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True))
        return F.interpolate(self.pw(x), size=size, mode="trilinear", align_corners=True)


class BFPU3d(nn.Module):
    """BFPU (Eq. 2, code form): y resampled to x; A = σ(conv(x)·conv(y)); gated sums of x, x·A, y, y·A."""

    def __init__(self, channels: int, y_channels: int):
        super().__init__()
        self.adjust = nn.Conv3d(y_channels, channels, 1)
        self.query = nn.Conv3d(channels, channels, 3, padding=1)
        self.key = nn.Conv3d(channels, channels, 3, padding=1)
        self.gamma = nn.ModuleList(nn.Conv3d(2 * channels, 2, 3, padding=1) for _ in range(2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = self.adjust(F.interpolate(y, size=x.shape[2:], mode="trilinear", align_corners=True))
        attention = torch.sigmoid(self.query(x) * self.key(y))
        out = 0
        for gamma, feat in zip(self.gamma, (x, y)):
            gated = feat * attention
            weights = gamma(torch.cat([feat, gated], 1))
            out = out + feat * weights[:, :1] + gated * weights[:, 1:]
        return out


class ImageEncoder3d(nn.Module):
    """Efficient 3D multi-scale PENet: pyramid F1–F3, E3D-MSCA top-down with UCB, two BFPUs, max-pool, FC."""

    def __init__(self, cfg: MMCAFConfig):
        super().__init__()
        w1, w2, w3 = cfg.widths
        self.stem = nn.Sequential(nn.Conv3d(1, cfg.stem_width, 3, cfg.stem_stride, 1, bias=False),
                                  nn.BatchNorm3d(cfg.stem_width), nn.ReLU())
        self.stages, cin = nn.ModuleList(), cfg.stem_width
        for index, (width, depth) in enumerate(zip(cfg.widths, cfg.blocks)):
            blocks = [Bottleneck3d(cin if j == 0 else width, width, 2 if index > 0 and j == 0 else 1,
                                   cfg.cardinality) for j in range(depth)]
            self.stages.append(nn.Sequential(*blocks))
            cin = width
        self.scale_norm = nn.ModuleList(nn.Sequential(nn.BatchNorm3d(w), nn.ReLU(), nn.Dropout(cfg.scale_dropout))
                                        for w in cfg.widths)
        self.spatial = SpatialAttention3d(cfg.sab_kernel)
        self.msca = nn.ModuleList(E3DMSCA(w, self.spatial) for w in cfg.widths)
        self.up = nn.ModuleList([UpConv3d(w2, w1), UpConv3d(w3, w2)])
        self.bfpu = nn.ModuleList([BFPU3d(w2, w1), BFPU3d(w3, w2)])
        self.fc = nn.Sequential(nn.Linear(w3, cfg.embed), nn.ReLU(), nn.Dropout(cfg.head_dropout))
        # channels-last 3D weights and activations: the CPU's depth-wise 3D convolutions run 2-3x faster
        self.to(memory_format=torch.channels_last_3d)

    def pyramid(self, volume: torch.Tensor) -> list[torch.Tensor]:
        feats, x = [], self.stem(volume.contiguous(memory_format=torch.channels_last_3d))
        for stage, norm in zip(self.stages, self.scale_norm):
            x = stage(x)
            feats.append(norm(x))
        return feats

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = self.pyramid(volume)
        d3 = self.msca[2](f3)
        d2 = self.msca[1](f2 + self.up[1](d3, f2.shape[2:]))
        d1 = self.msca[0](f1 + self.up[0](d2, f1.shape[2:]))
        fused = self.bfpu[1](d3, self.bfpu[0](d2, d1))
        return self.fc(F.adaptive_max_pool3d(fused, 1).flatten(1))


class CrossAttention(nn.Module):
    """Eqs. 4–10: multi-head attention of one modality's tokens over the other's, plus the query (residual).

    As in the code, each modality is one token, so the softmax runs over a single key: every attention
    weight is 1, the output is V(other) + query, and W_q, W_k receive no gradient. Kept for fidelity.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.heads, self.scale = heads, (dim // heads) ** -0.5

    def forward(self, query: torch.Tensor, keyval: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(query)), split(self.k(keyval)), split(self.v(keyval))
        out = torch.softmax(q @ k.transpose(-2, -1) * self.scale, -1) @ v
        return out.transpose(1, 2).reshape(query.shape) + query


class BSF(nn.Module):
    """Bidirectional scale fusion: align both scales, softmax of their product weighs the dimensions."""

    def __init__(self, dim: int):
        super().__init__()
        self.fx, self.fy = nn.Linear(dim, dim), nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self.fx(x), self.fy(y)
        attention = torch.softmax(x * y, -1)
        return x + x * attention + y + y * attention


class MSCAFusion(nn.Module):
    """MSCA: three inverted-pyramid widths (E, E/2, E/4), bidirectional cross attention per width, BSF merge."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.norm_img, self.norm_tab = nn.BatchNorm1d(dim), nn.BatchNorm1d(dim)
        self.down = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim // f), nn.ReLU(), nn.Dropout(dropout))
                                  for f in (2, 4))
        self.attend = nn.ModuleList([CrossAttention(dim, 4), CrossAttention(dim // 2, 2), CrossAttention(dim // 4, 2)])
        self.carry = nn.ModuleList(nn.ModuleList(nn.Linear(dim // f, dim // (2 * f)) for _ in range(2))
                                   for f in (1, 2))
        self.bsf = nn.ModuleList([BSF(dim // 2), BSF(dim)])

    def forward(self, img: torch.Tensor, tab: torch.Tensor) -> torch.Tensor:
        img, tab = self.norm_img(img).unsqueeze(1), self.norm_tab(tab).unsqueeze(1)
        scales = [(img, tab), *[(down(img), down(tab)) for down in self.down]]
        outs, carried = [], None
        for level, (attend, (i, t)) in enumerate(zip(self.attend, scales)):
            if carried is not None:
                i, t = i + self.carry[level - 1][0](carried[0]), t + self.carry[level - 1][1](carried[1])
            carried = (attend(i, t), attend(t, i))
            outs.append(torch.cat(carried, 1).mean(1))
        return self.bsf[1](outs[0], self.bsf[0](outs[1], outs[2]))


class MMCAFNet(nn.Module):
    """Inputs ``{volume: (N, 1, D, H, W) in [0, 1], shape: (N, 9) standardised}`` → one logit per sample (N, 1)."""

    def __init__(self, cfg: MMCAFConfig = MMCAFConfig()):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder3d(cfg)
        self.features = ShapeFeatureLayer()
        self.kan = KANLayer(self.features.out_features, cfg.embed, grid_size=cfg.kan_grid)
        self.fusion = MSCAFusion(cfg.embed, cfg.fusion_dropout)
        self.head = nn.Linear(cfg.embed, 1)

    def input_constraints(self) -> dict:
        """Threat constraints of the tabular input, from the training statistics this network carries."""
        stats = self.features.statistics()
        return {self.cfg.input_names[1]: stats.constraints(int(self.features.grid_size))}

    def forward(self, inputs) -> torch.Tensor:
        volume, shape = (inputs[name] for name in self.cfg.input_names)
        return self.head(self.fusion(self.image(volume), self.kan(self.features(shape))))
