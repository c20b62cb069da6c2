"""RPF — Random Projection Filters (Dong & Xu, CVPR 2023).

A conv whose output channels are part trainable, part random N(0, 1/k²) kernels with zero bias.
The random kernels are one realization per forward shared by the batch (frozen for the [A]
attack phase, fresh for the [I] update). The ``rpf`` defense makes the stem conv of every branch
75 % random (48/64 in the reference); RPAN reuses :class:`RandomProjectionConv` in its MSGDCs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.defenses._surgery import network_of
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.models.mail import ERLA, Stem
from robustmed.randomness import RandomModule


def random_channels(out_channels: int, groups: int, ratio: float) -> torch.Tensor:
    """Boolean mask of random outputs: the last ⌊ρ·F/g⌉ of every group of a grouped conv,
    the last ⌊ρ·C⌉ channels of a depthwise one (one output per group), e.g. 4 of 16 at ρ = 0.25."""
    if groups == out_channels:
        groups = 1  # depthwise: count over all channels, not per single-channel group
    per_group = out_channels // groups
    count = round(ratio * per_group)
    mask = torch.zeros(groups, per_group, dtype=torch.bool)
    if count:
        mask[:, per_group - count:] = True
    return mask.flatten()


class RandomProjectionConv(RandomModule):
    """Conv2d with trainable filters for ``~mask`` outputs and random ones for ``mask`` outputs.

    ``standardize`` applies the RPF reference's weight standardisation to the trainable filters
    (each divided by its std + 1e-5, then by k) so both kinds have comparable scale.
    """

    param_groups = {"weight": "rp", "bias": "rp"}

    def __init__(self, conv: nn.Conv2d, ratio: float, standardize: bool = False):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.kernel = conv.kernel_size[0]
        mask = random_channels(conv.out_channels, conv.groups, ratio)
        self.register_buffer("random_mask", mask, persistent=False)
        self.weight = nn.Parameter(conv.weight.detach()[~mask].clone())
        self.bias = nn.Parameter(conv.bias.detach()[~mask].clone()) if conv.bias is not None else None
        self.random_shape = (int(mask.sum()),) + tuple(conv.weight.shape[1:])
        self.standardize = standardize
        self.random_weight: torch.Tensor | None = None

    def draw(self) -> None:
        self.random_weight = self.normal(self.random_shape, self.weight, std=1.0 / self.kernel)

    def trainable_weight(self) -> torch.Tensor:
        if not self.standardize:
            return self.weight
        std = self.weight.flatten(1).std(dim=1).view(-1, *([1] * (self.weight.ndim - 1)))
        return self.weight / (std + 1e-5) / self.kernel

    def full_weight(self) -> torch.Tensor:
        weight = self.weight.new_empty((len(self.random_mask),) + self.random_shape[1:])
        weight = weight.index_put((~self.random_mask,), self.trainable_weight())
        return weight.index_put((self.random_mask,), self.random_weight)

    def full_bias(self) -> torch.Tensor | None:
        if self.bias is None:
            return None
        return self.bias.new_zeros(len(self.random_mask)).index_put((~self.random_mask,), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.maybe_resample()
        return F.conv2d(x, self.full_weight(), self.full_bias(), self.stride, self.padding, self.dilation,
                        self.groups)

    @torch.no_grad()
    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: the convolution with its random kernels replaced by their mean, 0."""
        kept = self.random_weight
        self.random_weight = torch.zeros(self.random_shape, dtype=self.weight.dtype, device=self.weight.device)
        try:
            weight, bias = self.full_weight(), self.full_bias()
        finally:
            self.random_weight = kept
        conv = nn.Conv2d(weight.shape[1] * self.groups, weight.shape[0], self.kernel, self.stride, self.padding,
                         self.dilation, self.groups, bias=bias is not None).to(weight)
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv


class InputNormalization(nn.Module):
    """Per-channel input standardisation inside the model, fitted on the training split.

    The RPF reference builds its network with ``normalize=`` (dataset mean/std) applied before the
    RP stem; MAIL itself has none. Without it every draw of random filters adds a
    draw-specific offset (input mean × filter sum) to its channels, which batch statistics remove in
    training but BN's running statistics cannot remove at test time.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit_input_statistics(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def attach(model: nn.Module, ratio: float = 0.75, standardize: bool = True, blocks: bool = False,
           normalize: bool = True) -> nn.Module:
    """RP stem in every branch (independent filters) behind the reference's input normalisation;
    ``blocks`` also converts stage 1's first ERLA."""
    for module in network_of(model).modules():
        if isinstance(module, Stem):
            if normalize:
                module.input_site = InputNormalization(module.conv.in_channels)
            module.conv = RandomProjectionConv(module.conv, ratio, standardize)
    if blocks:
        for branch in network_of(model).branch_nets:
            erla = next(m for m in branch.stages[0] if isinstance(m, ERLA))
            for emila in (erla.emila1, erla.emila2):
                for name in ("gpc", "dw3", "dw5"):
                    setattr(emila.msgdc, name, RandomProjectionConv(getattr(emila.msgdc, name), ratio, standardize))
    return model


DEFENSES.register("rpf", DefenseInfo(
    name="rpf",
    family="random projection filters + adversarial training",
    reference="Dong, Xu. Adversarial Robustness via Random Projection Filters. CVPR 2023",
    description="stem conv of each branch 75 % random N(0, 1/k²) filters (trainable part standardised) "
                "on standardised inputs, [A]/[I] realizations, PGD loss only",
    randomized=True,
    train_step="pgd-at",
    train_options={"clean_weight": 0.0, "attack_mode": "train", "realization": "ai", "rp_weight_decay": 1e-2,
                   "select": "robust", "freeze_bn_after_warmup": False},
    attach=attach,
    options={"ratio": 0.75, "standardize": True, "blocks": False, "normalize": True},
    cpu_recipe="cpu-at",
))
