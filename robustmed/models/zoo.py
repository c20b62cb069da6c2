"""Registered model presets: a factory from data-set facts to a :class:`RobustModel`."""
from __future__ import annotations

from dataclasses import dataclass, replace

from robustmed.models.adapter import InputAdapter, RobustModel
from robustmed.models.mail import MAIL, MAILConfig
from robustmed.registry import Registry


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    config: MAILConfig
    input_size: int | None  # None: the data set's native size
    reference: str = "Dhar et al., Effective and Robust Multimodal Medical Image Analysis, KDD'26"

    def build(self, num_classes: tuple[int, ...], mode: str = "replicated",
              input_names: tuple[str, ...] = ("image",), **overrides) -> RobustModel:
        cfg = replace(self.config, num_classes=tuple(num_classes), **overrides)
        network = MAIL(cfg)
        adapter = InputAdapter(cfg.in_channels, cfg.branches, self.input_size, mode, input_names)
        return RobustModel(network, adapter, head=0)


MODELS: Registry[ModelPreset] = Registry("model")
DEFAULT_MODEL = "mail-rn18-mini"

MODELS.register("mail-rn18", ModelPreset(
    "mail-rn18",
    "paper size: ResNet-18 macro layout, 2 branches, 128 px input (≈11.4 M parameters)",
    MAILConfig(),
    input_size=128,
))
MODELS.register("mail-rn18-mini", ModelPreset(
    "mail-rn18-mini",
    "CPU preset: widths 16-128, one ERLA per stage, 3x3/2 stem, native input size (≈0.42 M parameters)",
    MAILConfig(widths=(16, 32, 64, 128), depths=(1, 1, 1, 1), stem_kernel=3, stem_stride=2, stem_pool=False,
               bn_momentum=0.1),
    input_size=None,
))

# The multi-input presets (MMCAF-Net, IIMGF-Net): their own wrapper and data bindings, one registry.
from robustmed.models.multimodal import PRESETS as _MULTIMODAL  # noqa: E402

for _preset in _MULTIMODAL:
    MODELS.register(_preset.name, _preset)
