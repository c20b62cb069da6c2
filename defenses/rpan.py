"""RPAN / Robust-MAIL (Dhar et al., KDD'26): two presets.

``rpan`` (spec's ``rpan_paper``, the default): random projection filters (ρ = 0.25) in every
EMILA and EMSCA MSGDC, multiplicative modulated attention noise (MAN, Eq. 22) on CA, the MFIFA
bands, the EMSCA terms and the fused A_m, PGD-AT with [A]/[I] realizations.
``rpan-code`` reproduces the released notebook: additive MAN + clip to [0, 1], power fusion
(u·s³·A_c³, Ã⁵·A_m), always-on dropout (masks from a seeded generator, like every random module),
clean training; its clips need BPDA.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.defenses._surgery import Scale, Shift, network_of, replace_modules, swap_class
from robustmed.defenses.base import DEFENSES, DefenseInfo
from robustmed.defenses.rpf import RandomProjectionConv
from robustmed.models.layers import batch_norm
from robustmed.models.mail import EMCAM, EMILA, MSGDC, ChannelAttention, EMSCAConv
from robustmed.randomness import RandomModule, SeededDropout

SIGMA_N = 0.6  # the authors' code


class MANNoise(RandomModule):
    """Eq. 22's generator η′ = δ ⊙ (n + n ⊙ n), n ~ N(0, σ_n²) per sample and element.

    ``mode="multiply"`` (rpan): returns T ⊙ η′ with δ channel-wise (dim 1), learnable, not decayed.
    ``mode="add_clip"`` (rpan-code): returns clip(T + η′, 0, 1) with a scalar δ, learnable or frozen.
    E[n + n²] = σ_n², so the mean factor is 0.36·δ at σ_n = 0.6. Draws are keyed by call order
    within one network forward, so a frozen realization gives every call site its own fixed noise.
    """

    def __init__(self, channels: int | None, mode: str = "multiply", sigma_n: float = SIGMA_N,
                 trainable: bool = True):
        super().__init__()
        self.mode, self.sigma_n = mode, sigma_n
        self.straight_through = False  # BPDA for the clip (add_clip mode)
        delta = torch.ones(() if channels is None else (channels,))
        if trainable:
            self.delta = nn.Parameter(delta)
        else:
            self.register_buffer("delta", delta)
        self.calls = 0

    param_groups = {"delta": "no_decay"}

    def factor(self, like: torch.Tensor) -> torch.Tensor:
        n = self.normal(like.shape, like, std=self.sigma_n, key=("man", self.calls))
        self.calls += 1
        delta = self.delta.view(1, -1, *([1] * (like.ndim - 2))) if self.delta.ndim else self.delta
        return delta * (n + n * n)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        self.maybe_resample()
        if self.mode == "multiply":
            return t * self.factor(t)
        noisy = t + self.factor(t)
        clipped = noisy.clamp(0, 1)
        return noisy + (clipped - noisy).detach() if self.straight_through else clipped

    def defense_removed(self) -> nn.Module:
        """Checks B11/D3: the noise's mean δσ_n² (E[δ(n + n²)]), multiplied or added without the clip."""
        mean = self.delta.detach() * self.sigma_n ** 2
        if self.mode == "multiply":
            return Scale(mean, channelwise=mean.ndim == 1)
        return Shift(mean)


def _reset_calls(network: nn.Module, _inputs) -> None:
    for module in network.modules():
        if isinstance(module, MANNoise):
            module.calls = 0


@contextmanager
def straight_through(model: nn.Module, enabled: bool = True):
    """BPDA: treat every MAN clip as the identity in the backward pass."""
    sites = [m for m in model.modules() if isinstance(m, MANNoise)]
    previous = [m.straight_through for m in sites]
    for module in sites:
        module.straight_through = enabled
    try:
        yield model
    finally:
        for module, flag in zip(sites, previous):
            module.straight_through = flag


# --- rpan (paper-reconciled) ------------------------------------------------------------------

class RPANMSGDC(MSGDC):
    """MSGDC with a BN after each branch (the authors' Robust-MAIL code), absorbing the RP scale."""

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [bn(conv(x)) for bn, conv in zip(self.branch_bns, (self.gpc, self.dw3, self.dw5))]


def _rp_convs(module: nn.Module, ratio: float) -> None:
    for name in ("gpc", "dw3", "dw5"):
        setattr(module, name, RandomProjectionConv(getattr(module, name), ratio))


def _rpan_msgdc(msgdc: MSGDC, ratio: float, momentum: float) -> None:
    channels = (msgdc.gpc.out_channels, msgdc.dw3.out_channels, msgdc.dw5.out_channels)
    _rp_convs(msgdc, ratio)
    swap_class(msgdc, RPANMSGDC)
    msgdc.branch_bns = nn.ModuleList(batch_norm(c, momentum) for c in channels)


def attach_paper(model: nn.Module, ratio: float = 0.25, sigma_n: float = SIGMA_N) -> nn.Module:
    network = network_of(model)
    momentum = network.cfg.bn_momentum
    for module in list(network.modules()):
        if isinstance(module, MSGDC):
            _rpan_msgdc(module, ratio, momentum)
        elif isinstance(module, EMSCAConv):
            _rp_convs(module, ratio)
        elif isinstance(module, ChannelAttention):
            module.noise = MANNoise(module.up.out_features, sigma_n=sigma_n)
        elif isinstance(module, EMCAM):
            channels = module.band_dense.out_features
            for name in ("noise_high", "noise_low", "noise_mean", "noise_fused"):
                setattr(module, name, MANNoise(channels, sigma_n=sigma_n))
            module.noise_terms = nn.ModuleList(MANNoise(channels, sigma_n=sigma_n) for _ in module.noise_terms)
    network.register_forward_pre_hook(_reset_calls)
    return model


# --- rpan-code (released notebook) ------------------------------------------------------------

class CodeChannelAttention(ChannelAttention):
    """CA logits + MAN, clipped to [0, 1], then θ and sigmoid (noise before θ, unlike MAIL's Site)."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.theta * self.noise(self.logits(u)))[:, :, None, None]


class CodeEMILA(EMILA):
    """s = clip(ReLU(BN(proj x) + u ⊙ A_c) + MAN, 0, 1); the block returns u ⊙ s³ ⊙ A_c³."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.msgdc(x)
        attention = self.ca(u)
        s = self.spatial_noise(F.relu(self.proj_bn(self.proj(x)) + u * attention))
        return u * s ** 3 * attention ** 3


class CodeEMCAM(EMCAM):
    """Ã = clip(A_m + MAN, 0, 1) and A_m ← Ã⁵ ⊙ A_m before gating every branch."""

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = self.fusion_gain * self.frequency_attention(xs) + \
            self.vartheta[0][None, :, None, None] * self.spatial_attention(xs)
        a_m = torch.sigmoid(fused)
        a_m = self.fused_man(a_m) ** 5 * a_m
        return [x * a_m * self.branch_scale[i][None, :, None, None] for i, x in enumerate(xs)]


def attach_code(model: nn.Module, ratio: float = 0.0, sigma_n: float = SIGMA_N,
                inference_dropout: bool = True) -> nn.Module:
    network = network_of(model)
    for module in list(network.modules()):
        if isinstance(module, EMILA):
            swap_class(module, CodeEMILA)
            module.spatial_noise = MANNoise(None, "add_clip", sigma_n, trainable=False)
            if ratio:
                _rp_convs(module.msgdc, ratio)  # generation-1 cell's RPF option
        elif isinstance(module, ChannelAttention):
            swap_class(module, CodeChannelAttention)
            module.noise = MANNoise(None, "add_clip", sigma_n, trainable=False)
        elif isinstance(module, EMCAM):
            swap_class(module, CodeEMCAM)
            module.fused_man = MANNoise(None, "add_clip", sigma_n, trainable=True)
    # the authors' dropout, drawing its masks from a seeded generator instead of torch's global one
    replace_modules(network, lambda m: type(m) is nn.Dropout, lambda m: SeededDropout(m.p, m.inplace))
    network.cfg = replace(network.cfg, inference_dropout=inference_dropout)
    network.train(network.training)
    network.register_forward_pre_hook(_reset_calls)
    return model


DEFENSES.register("rpan", DefenseInfo(
    name="rpan",
    family="random projection + attention noise + adversarial training",
    reference="Dhar, Zaidi, Haghighat. Effective and Robust Multimodal Medical Image Analysis. KDD 2026 "
              "(Robust-MAIL, paper-reconciled preset rpan_paper)",
    description="RPF ρ 0.25 in EMILA/EMSCA MSGDCs, multiplicative MAN on CA, MFIFA bands, EMSCA and A_m; "
                "PGD-AT with [A]/[I] realizations, PGD loss only",
    randomized=True,
    train_step="pgd-at",
    train_options={"clean_weight": 0.0, "attack_mode": "eval", "realization": "ai", "rp_weight_decay": 1e-2,
                   "select": "robust"},
    attach=attach_paper,
    options={"ratio": 0.25, "sigma_n": SIGMA_N},
    cpu_recipe="cpu-at",
))

DEFENSES.register("rpan-code", DefenseInfo(
    name="rpan-code",
    family="attention noise (released code, no adversarial training)",
    reference="Dhar et al. KDD 2026, released Robust-MAIL notebook (preset rpan_code)",
    description="additive MAN + clip in CA logits, EMILA map and A_m, u·s³·A_c³ and Ã⁵·A_m, always-on "
                "dropout, clean training",
    randomized=True,
    nondiff_ops=("clip(0, 1) after MAN on CA logits", "clip(0, 1) after MAN on the EMILA output map",
                 "clip(0, 1) after MAN on the fused attention A_m"),
    train_step="standard",
    train_options={"select": "clean"},
    attach=attach_code,
    options={"ratio": 0.0, "sigma_n": SIGMA_N, "inference_dropout": True},
    cpu_recipe="cpu",
))
