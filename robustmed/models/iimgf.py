"""IIMGF-Net (Wu et al., "Indepth Integration of Multi-granularity Features from Dual-modal for Disease
Classification"), as the authors' code (github.com/seuzjj/IIMGF-Net, ``models/IIMGF.py``) builds it:
a shared VMamba backbone over both images, CMIGF cross-modal Mamba fusion at each of L = 3 granularities,
MGC coarse-to-fine and fine-to-coarse collaboration, and GAP ‖ GAP ‖ GAP into one linear head.

Selective scans are plain PyTorch (:mod:`robustmed.models.ssm`), not ``mamba_ssm``'s CUDA kernel.
Deviations: no ImageNet-pretrained VMamba (trained from scratch); the CPU preset reads native 28 px
greyscale images (stem 3×3/2, widths 16-32-64-128, one block per stage, 49/16/4 tokens per level)
instead of 224 px RGB with VMamba-tiny; MGC's fine-to-coarse max-pool is adaptive to the coarser
token count (identical to the code's window of 4 when the counts divide, as at 224 px). The head is
one logit per label (multi-label, sigmoid per label) instead of the code's eight softmax heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.models.ssm import SS2D, CrossModalMamba


@dataclass(frozen=True)
class IIMGFConfig:
    """Size of an IIMGF-Net; presets in :mod:`robustmed.models.multimodal`."""

    in_channels: int = 1
    input_size: int | None = None  # resize inside the model (paper: 224); None keeps the native size
    stem_width: int = 16  # C0 (VMamba-tiny: 96)
    stem_kernel: int = 3  # VMamba: 4×4 patches, stride 4
    stem_stride: int = 2
    depths: tuple[int, ...] = (1, 1, 1)  # VSS blocks per encoder, L = len(depths) (VMamba-tiny: 2, 2, 8)
    fusion_depths: tuple[int, ...] = (1, 1, 1)  # CMIGF blocks per granularity (code: 1, 1, 2)
    d_state: int = 4  # SS2D state size (VMamba-tiny s1l8: 1)
    cmm_state: int = 4  # CMM state size (code: 4)
    mlp_ratio: float = 2.0  # VMamba: 4
    num_labels: int = 2
    input_names: tuple[str, str] = ("xray", "ultrasound")


class VSSBlock(nn.Module):
    """VMamba block (channel-last): x + SS2D(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, d_state: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.ss2d = nn.LayerNorm(dim), SS2D(dim, d_state)
        hidden = int(dim * mlp_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ss2d(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2×2 neighbours concatenated (odd sizes padded), LN, linear 4C → 2C: half the resolution, twice the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm, self.reduce = nn.LayerNorm(4 * dim), nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduce(self.norm(x))


class CMIGFBlock(nn.Module):
    """CMIGF (Eq. 2): per-modality linear, a shared depth-wise conv + SiLU, CMM, linear back, residual."""

    def __init__(self, dim: int, cmm_state: int):
        super().__init__()
        self.in_proj = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(2))
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.cmm = CrossModalMamba(dim, cmm_state)
        self.out_proj = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, d = x.shape
        tokens = [F.silu(self.conv(proj(t).permute(0, 3, 1, 2))).flatten(2).transpose(1, 2)
                  for proj, t in zip(self.in_proj, (x, y))]
        fx, fy = self.cmm(*tokens)
        return (x + self.out_proj[0](fx.view(b, h, w, d)), y + self.out_proj[1](fy.view(b, h, w, d)))


class MGC(nn.Module):
    """Multi-granularity collaboration (Eqs. 4–5): coarse-to-fine CMMs, then fine-to-coarse CMMs with residuals.

    Only each CMM's first output is used (K_l = CMM(Z_l, Ẑ_{l+1}), as in the code), so the second scan is
    skipped and its Δ projection and output norm receive no gradient.
    """

    def __init__(self, dims: list[int], tokens: list[int], cmm_state: int):
        super().__init__()
        pairs = range(len(dims) - 1)
        self.enlarge = nn.ModuleList(nn.Linear(tokens[j + 1], tokens[j]) for j in pairs)
        self.c2f_conv = nn.ModuleList(nn.Conv1d(2 * dims[j + 1], 2 * dims[j], 1) for j in pairs)
        self.c2f = nn.ModuleList(CrossModalMamba(2 * dims[j], cmm_state) for j in pairs)
        self.shrink = nn.ModuleList(nn.AdaptiveMaxPool1d(tokens[j + 1]) for j in pairs)
        self.f2c_conv = nn.ModuleList(nn.Conv1d(2 * dims[j], 2 * dims[j + 1], 1) for j in pairs)
        self.f2c = nn.ModuleList(CrossModalMamba(2 * dims[j + 1], cmm_state) for j in pairs)
        self.last = len(dims) - 2

    def _cmm(self, cmm: CrossModalMamba, fine: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return cmm(fine.transpose(1, 2), other.transpose(1, 2), first_only=True).transpose(1, 2)

    def forward(self, z: list[torch.Tensor]) -> torch.Tensor:
        """Z_l as (b, 2·C_l, N_l), fine to coarse → R_L (b, 2·C_L, N_L)."""
        z = list(z)
        for j in range(len(z) - 1):  # C2F: K_j = CMM(Z_j, Conv(Linear(Z_{j+1}))); the code has no final ReLU last
            enlarged = self.c2f_conv[j](F.relu(self.enlarge[j](z[j + 1])))
            z[j] = self._cmm(self.c2f[j], z[j], F.relu(enlarged) if j < self.last else enlarged)
        for k in range(1, len(z)):  # F2C: R_k = CMM(K_k, Conv(MaxPool(K_{k−1}))) + K_k
            shrunk = self.f2c_conv[k - 1](self.shrink[k - 1](z[k - 1]))
            z[k] = self._cmm(self.f2c[k - 1], z[k], F.relu(shrunk) if k - 1 < self.last else shrunk) + z[k]
        return z[-1]


class IIMGFNet(nn.Module):
    """Inputs ``{xray: (N, 1, H, W), ultrasound: (N, 1, H, W)}`` in [0, 1] → one logit per label (N, labels)."""

    def __init__(self, cfg: IIMGFConfig = IIMGFConfig(), image_size: int = 28):
        super().__init__()
        self.cfg = cfg
        size = cfg.input_size or image_size
        self.stem = nn.Conv2d(3 if cfg.input_size else cfg.in_channels, cfg.stem_width, cfg.stem_kernel,
                              cfg.stem_stride, padding=(cfg.stem_kernel - 1) // 2 if cfg.stem_kernel % 2 else 0)
        side = (size + 2 * self.stem.padding[0] - cfg.stem_kernel) // cfg.stem_stride + 1
        self.pos_embed = nn.Parameter(torch.zeros(1, side, side, cfg.stem_width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        dims, sides, width = [], [], cfg.stem_width
        self.stages, self.down = nn.ModuleList(), nn.ModuleList()
        for depth in cfg.depths:
            self.stages.append(nn.Sequential(*[VSSBlock(width, cfg.d_state, cfg.mlp_ratio) for _ in range(depth)]))
            self.down.append(PatchMerging(width))
            width, side = 2 * width, (side + 1) // 2
            dims.append(width), sides.append(side)
        self.fusion = nn.ModuleList(nn.ModuleList(CMIGFBlock(d, cfg.cmm_state) for _ in range(n))
                                    for d, n in zip(dims, cfg.fusion_depths))
        self.carry = nn.ModuleList(nn.ModuleList(PatchMerging(d) for _ in range(2)) for d in dims[:-1])
        self.mgc = MGC(dims, [s * s for s in sides], cfg.cmm_state)
        self.head = nn.Linear(4 * dims[-1], cfg.num_labels)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.input_size:
            x = F.interpolate(x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x, size=(self.cfg.input_size,) * 2,
                              mode="bilinear", align_corners=False)
        return F.relu(self.stem(x)).permute(0, 2, 3, 1) + self.pos_embed

    def forward(self, inputs) -> torch.Tensor:
        hx, hy = (self._prepare(inputs[name]) for name in self.cfg.input_names)
        z, fx, fy = [], None, None
        for level, (stage, down, blocks) in enumerate(zip(self.stages, self.down, self.fusion)):
            hx, hy = down(stage(hx)), down(stage(hy))  # the backbone is shared by both modalities
            fx, fy = (hx, hy) if fx is None else (hx + self.carry[level - 1][0](fx), hy + self.carry[level - 1][1](fy))
            for block in blocks:
                fx, fy = block(fx, fy)
            z.append(torch.cat([fx, fy], -1).flatten(1, 2).transpose(1, 2))
        pooled = [(hx + fx).mean(dim=(1, 2)), (hy + fy).mean(dim=(1, 2)), self.mgc(z).mean(-1)]
        return self.head(torch.cat(pooled, 1))
