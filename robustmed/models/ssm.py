"""Selective state-space scan (Mamba, Gu & Dao 2023) and the two Mamba layers IIMGF-Net uses, in plain PyTorch.

The authors' code calls ``mamba_ssm``'s CUDA ``selective_scan_fn``; here the recurrence
h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·B_t·u_t, y_t = C_t·h_t + D·u_t runs as a loop over the sequence
on tensors (no compiled extension, any device), so it is slower on long sequences but exact and
differentiable end to end. :class:`SS2D` is VMamba's four-direction 2D scan (Liu et al. 2024);
:class:`CrossModalMamba` is IIMGF-Net's CMM, whose read-out C comes from the other modality.

>>> u = torch.randn(2, 1, 3, 5); A = -torch.rand(1, 3, 4)
>>> selective_scan(u, torch.rand(2, 1, 3, 5), A, torch.randn(2, 1, 4, 5), torch.randn(2, 1, 4, 5)).shape
torch.Size([2, 1, 3, 5])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, softplus: bool = True) -> torch.Tensor:
    """The scan over ``l``: u, Δ (b, g, d, l); A (g, d, n); B, C (b, g, n, l); D, Δ bias (g, d) → y (b, g, d, l).

    ``g`` independent groups (scan directions) share the batch; A is negative (decay).
    """
    if delta_bias is not None:
        delta = delta + delta_bias[..., None]
    if softplus:
        delta = F.softplus(delta)
    # time first and unbound once: indexing a step per iteration would make every backward step
    # allocate a full-size gradient (quadratic in the length)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, :, None, :]).movedim(-2, 0)  # (l, b, g, d, n)
    drive = ((delta * u).unsqueeze(-1) * B.transpose(-1, -2).unsqueeze(2)).movedim(-2, 0)
    state = torch.zeros_like(drive[0])
    states = []
    for step_decay, step_drive in zip(decay.unbind(0), drive.unbind(0)):
        state = step_decay * state + step_drive
        states.append(state)
    y = torch.einsum("lbgdn,bgnl->bgdl", torch.stack(states), C)
    return y if D is None else y + D[..., None] * u


def dt_projection(rank: int, inner: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> nn.Linear:
    """Mamba's Δ projection: uniform weights, bias = softplus⁻¹ of log-uniform Δ in [dt_min, dt_max]."""
    proj = nn.Linear(rank, inner)
    nn.init.uniform_(proj.weight, -rank ** -0.5, rank ** -0.5)
    dt = torch.exp(torch.rand(inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
    with torch.no_grad():
        proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
    return proj


def a_log(groups: int, inner: int, state: int) -> nn.Parameter:
    """S4D-real initialisation: A = −(1, 2, …, n) per channel, stored as log(−A)."""
    return nn.Parameter(torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(groups, inner, 1))


class CrossModalMamba(nn.Module):
    """CMM (IIMGF-Net Eq. 3): each modality's scan reads its state out with C computed from the other one."""

    def __init__(self, d_model: int, d_state: int = 4):
        super().__init__()
        self.d_state, self.rank = d_state, math.ceil(d_model / 16)
        self.x_proj = nn.ModuleList(nn.Linear(d_model, self.rank + 2 * d_state, bias=False) for _ in range(2))
        self.dt_proj = nn.ModuleList(dt_projection(self.rank, d_model) for _ in range(2))
        self.A_log = a_log(2, d_model, d_state)
        self.D = nn.Parameter(torch.ones(2, d_model))
        self.out_norm = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(2))

    def _parts(self, x: torch.Tensor, which: int):
        dt, B, C = self.x_proj[which](x).split([self.rank, self.d_state, self.d_state], -1)
        delta = (dt @ self.dt_proj[which].weight.T).transpose(1, 2)  # (b, d, l); the bias enters the scan
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor, first_only: bool = False):
        """(b, l, d) token sequences of both modalities → their cross-read outputs, same shapes.

        ``first_only`` runs x's scan alone (IIMGF-Net's MGC discards the other output, as its code does).
        """
        parts = [self._parts(x, 0), self._parts(y, 1)]
        outs = []
        for which, (seq, other) in enumerate(((x, 1), (y, 0))[:1 if first_only else 2]):
            delta, B, _ = parts[which]
            C = parts[other][2]
            out = selective_scan(seq.transpose(1, 2)[:, None], delta[:, None], -self.A_log[which:which + 1].exp(),
                                 B[:, None], C[:, None], self.D[which:which + 1], self.dt_proj[which].bias[None])
            outs.append(self.out_norm[which](out[:, 0].transpose(1, 2)))
        return outs[0] if first_only else (outs[0], outs[1])


class SS2D(nn.Module):
    """VMamba's 2D selective scan: four scan orders (rows, columns, both reversed), one SSM each, summed back."""

    def __init__(self, d_model: int, d_state: int = 4, ssm_ratio: float = 1.0):
        super().__init__()
        inner = int(ssm_ratio * d_model)
        self.inner, self.d_state, self.rank = inner, d_state, math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, inner, bias=False)
        self.conv = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.x_proj_weight = nn.Parameter(torch.empty(4, self.rank + 2 * d_state, inner))
        nn.init.uniform_(self.x_proj_weight, -inner ** -0.5, inner ** -0.5)
        dts = [dt_projection(self.rank, inner) for _ in range(4)]
        self.dt_weight = nn.Parameter(torch.stack([p.weight.detach() for p in dts]))  # (4, inner, rank)
        self.dt_bias = nn.Parameter(torch.stack([p.bias.detach() for p in dts]))  # (4, inner)
        self.A_log = a_log(4, inner, d_state)
        self.D = nn.Parameter(torch.ones(4, inner))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, d_model, bias=False)

    @staticmethod
    def cross_scan(x: torch.Tensor) -> torch.Tensor:
        """(b, d, h, w) → (b, 4, d, h·w): row-major, column-major and both reversed."""
        rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
        return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], 1)

    @staticmethod
    def cross_merge(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Inverse of :meth:`cross_scan`, summing the four directions: (b, 4, d, l) → (b, d, h, w)."""
        b, _, d, _ = y.shape
        rows = y[:, 0] + y[:, 2].flip(-1)
        cols = (y[:, 1] + y[:, 3].flip(-1)).view(b, d, w, h).transpose(2, 3)
        return rows.view(b, d, h, w) + cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, h, w, c) → (b, h, w, c)."""
        b, h, w, _ = x.shape
        inner = F.silu(self.conv(self.in_proj(x).permute(0, 3, 1, 2)))
        seqs = self.cross_scan(inner)  # (b, 4, d, l)
        proj = torch.einsum("bkdl,kcd->bkcl", seqs, self.x_proj_weight)
        dt, B, C = proj.split([self.rank, self.d_state, self.d_state], 2)
        delta = torch.einsum("bkrl,kdr->bkdl", dt, self.dt_weight)
        y = selective_scan(seqs, delta, -self.A_log.exp(), B, C, self.D, self.dt_bias)
        merged = self.cross_merge(y, h, w).permute(0, 2, 3, 1)
        return self.out_proj(self.out_norm(merged))
