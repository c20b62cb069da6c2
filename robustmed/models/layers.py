"""Building blocks shared by MAIL's modules (Dhar et al., KDD'26)."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

# Keras defaults the authors' code runs with: BN momentum 0.99 → 0.01 here, ε 1e-3.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def batch_norm(channels: int, momentum: float = BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=momentum)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def global_min(x: torch.Tensor) -> torch.Tensor:
    return x.amin(dim=(2, 3))


def global_max(x: torch.Tensor) -> torch.Tensor:
    return x.amax(dim=(2, 3))


def global_mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3))


@lru_cache(maxsize=None)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    mat = torch.cos(math.pi / n * (i + 0.5) * k) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat.float()


def dct_channels(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the channel axis at every pixel (the code's MFIFA domain)."""
    mat = _dct_matrix_cpu(x.shape[1]).to(device=x.device, dtype=x.dtype)
    return torch.einsum("kc,bchw->bkhw", mat, x)


class Site(nn.Identity):
    """A named insertion point (identity in plain MAIL).

    Defenses replace sites with noise or random-weight modules (MAN, L2P, CTRW)
    instead of forking the blocks; ``forward(x)`` must return a tensor of x's shape.
    """


def glorot_init(module: nn.Module) -> None:
    """Glorot-uniform kernels and zero biases, as Keras initialises the authors' model."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
