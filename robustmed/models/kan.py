"""Kolmogorov–Arnold network layer (Liu et al., "KAN", arXiv 2404.19756) in plain PyTorch.

MMCAF-Net encodes its tabular record with one ``KANLayer(in_dim, out_dim)`` of pykan. This is the
same function: every input–output edge carries φ(x) = w_b·SiLU(x) + w_s·Σ_c c_c·B_c(x), a residual
SiLU plus a cubic B-spline on a uniform grid, summed over inputs. No compiled extension is used.

Deviation: pykan adapts its grid to the data during training (``update_grid_from_samples``); here
the grid is fixed over ±3 (the inputs are standardised features), so the layer stays a plain
differentiable module that attacks can differentiate through.

>>> layer = KANLayer(3, 4)
>>> layer(torch.randn(5, 3)).shape
torch.Size([5, 4])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor recursion: (N, in) inputs, (in, G + 2k + 1) knots → (N, in, G + k) basis values."""
    x = x.unsqueeze(-1)
    basis = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - grid[:, :-(k + 1)]) / (grid[:, k:-1] - grid[:, :-(k + 1)]) * basis[..., :-1]
        right = (grid[:, k + 1:] - x) / (grid[:, k + 1:] - grid[:, 1:-k]) * basis[..., 1:]
        basis = left + right
    return basis


class KANLayer(nn.Module):
    """y_j = Σ_i w_b[j,i]·SiLU(x_i) + w_s[j,i]·Σ_c c[j,i,c]·B_c(x_i) (pykan's residual B-spline edge)."""

    def __init__(self, in_dim: int, out_dim: int, grid_size: int = 5, order: int = 3,
                 grid_range: tuple[float, float] = (-3.0, 3.0), noise_scale: float = 0.1):
        super().__init__()
        self.in_dim, self.out_dim, self.order = in_dim, out_dim, order
        step = (grid_range[1] - grid_range[0]) / grid_size
        knots = torch.arange(-order, grid_size + order + 1, dtype=torch.float32) * step + grid_range[0]
        self.register_buffer("grid", knots.expand(in_dim, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.spline_scale = nn.Parameter(torch.ones(out_dim, in_dim))
        self.coefficients = nn.Parameter(torch.randn(out_dim, in_dim, grid_size + order) * noise_scale / grid_size)
        nn.init.kaiming_uniform_(self.base_weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        basis = bspline_basis(x, self.grid, self.order).flatten(1)
        weights = (self.coefficients * self.spline_scale.unsqueeze(-1)).flatten(1)
        return base + F.linear(basis, weights)
