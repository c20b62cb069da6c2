"""The registry's multi-input presets: MMCAF-Net (3D image + tabular) and IIMGF-Net (two images, multi-label).

Both are wrapped in a :class:`MultiLabelClassifier`: per-label logits minus thresholds fixed on
validation data, returned as the logits of the declared success criterion (:mod:`robustmed.multilabel`),
so the harness attacks and judges them like any classifier. A binary task is the one-label case.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import nn

from robustmed import multilabel
from robustmed.models.iimgf import IIMGFConfig, IIMGFNet
from robustmed.models.mmcaf import MMCAFConfig, MMCAFNet


@dataclass(frozen=True)
class Modality:
    """One named input: ``image`` (pixels in [0, 1]) or ``tabular`` (standardised features)."""

    name: str
    kind: str


class MultiLabelClassifier(nn.Module):
    """``network(x)`` → per-label logits z (N, L); ``forward`` → the criterion's logits of z − thresholds.
    ``modalities`` names a multi-input network's inputs; a single-input network (one image tensor) has none."""

    def __init__(self, network: nn.Module, modalities: tuple[Modality, ...], labels: tuple[str, ...]):
        super().__init__()
        self.network, self.modalities, self.labels = network, tuple(modalities), tuple(labels)
        self.register_buffer("thresholds", torch.zeros(len(labels)))
        self.criterion = multilabel.parse_criterion(None, self.labels)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def set_criterion(self, text: str | None) -> None:
        self.criterion = multilabel.parse_criterion(text, self.labels)

    def input_constraints(self) -> dict:
        """Per tabular input, its threat constraints (element ε scales, bounds, grid); images have none."""
        hook = getattr(self.network, "input_constraints", None)
        return hook() if hook else {}

    def margins(self, x) -> torch.Tensor:
        return self.network(x) - self.thresholds

    def forward(self, x) -> torch.Tensor:
        return multilabel.view_logits(self.margins(x), self.criterion)


@dataclass(frozen=True)
class MultimodalPreset:
    """A registered multi-input model: its network factory, inputs, default data set and reference."""

    name: str
    description: str
    make: Callable[..., nn.Module]
    config: object
    modalities: tuple[Modality, ...]
    default_dataset: str
    reference: str
    input_size: int | None = None
    multimodal: bool = True

    def build(self, num_classes: tuple[int, ...], mode: str = "paired", input_names: tuple[str, ...] = (),
              labels: tuple[str, ...] | None = None, image_size: int = 28, **overrides) -> MultiLabelClassifier:
        """``num_classes`` is the number of labels here (one logit each, named ``labels``, default label0, …);
        ``overrides`` replace config fields."""
        labels = tuple(labels) if labels is not None else tuple(f"label{i}" for i in range(num_classes[0]))
        if len(labels) != num_classes[0]:
            raise ValueError(f"{self.name}: {num_classes[0]} labels but names {labels}")
        network = self.make(replace(self.config, **overrides), image_size)
        return MultiLabelClassifier(network, self.modalities, tuple(labels))


def _mmcaf(cfg: MMCAFConfig, image_size: int) -> MMCAFNet:
    return MMCAFNet(cfg)  # size-agnostic: adaptive pooling after the pyramid


def _iimgf(cfg: IIMGFConfig, image_size: int) -> IIMGFNet:
    return IIMGFNet(cfg, image_size)  # the positional embedding has the stem's output size


MMCAF_REFERENCE = "Yu, Ge et al., MMCAF-Net: small lesions-aware bidirectional multimodal multiscale fusion network"
IIMGF_REFERENCE = "Wu et al., IIMGF-Net: indepth integration of multi-granularity features from dual-modal images"
MMCAF_INPUTS = (Modality("volume", "image"), Modality("shape", "tabular"))
IIMGF_INPUTS = (Modality("xray", "image"), Modality("ultrasound", "image"))

PRESETS = (
    MultimodalPreset(
        "mmcaf-net", "CPU preset: 3D pyramid 8-16-32 channels on 28³ volumes + KAN over 9 shape features "
        "(≈0.12 M parameters)", _mmcaf, MMCAFConfig(stem_width=8, widths=(8, 16, 32)), MMCAF_INPUTS,
        "adrenalmnist3d", MMCAF_REFERENCE),
    MultimodalPreset(
        "mmcaf-net-paper", "paper size: PENet-50 layout, pyramid 256-512-1024, E = 24 (≈89 M parameters)",
        _mmcaf, MMCAFConfig(stem_width=64, widths=(256, 512, 1024), blocks=(3, 4, 6), cardinality=32),
        MMCAF_INPUTS, "adrenalmnist3d_64", MMCAF_REFERENCE),
    MultimodalPreset(
        "iimgf-net", "CPU preset: shared VSS backbone 16-128 on 28 px, CMIGF + MGC, multi-label head "
        "(≈0.40 M parameters)", _iimgf, IIMGFConfig(), IIMGF_INPUTS, "pneumoniamnist+breastmnist", IIMGF_REFERENCE),
    MultimodalPreset(
        "iimgf-net-paper", "paper size: VMamba-tiny layout (96-768, depths 2-2-8) at 224 px RGB (≈28 M parameters)",
        _iimgf, IIMGFConfig(input_size=224, stem_width=96, stem_kernel=4, stem_stride=4, depths=(2, 2, 8),
                              fusion_depths=(1, 1, 2), d_state=1, mlp_ratio=4.0),
        IIMGF_INPUTS, "pneumoniamnist+breastmnist", IIMGF_REFERENCE, input_size=224),
)
