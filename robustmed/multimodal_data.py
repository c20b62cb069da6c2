"""Data of the multi-input presets, all real MedMNIST files from the data root.

* ``volume-shapes`` (MMCAF-Net): AdrenalMNIST3D volumes and, as the tabular record, their shape features
  (:mod:`robustmed.tabular`) standardised with training-split statistics.
* ``paired`` (IIMGF-Net): two 2D sets paired by index, as the MAIL authors' code pairs unrelated data sets
  (the MAIL authors' code): the longer split is cut to the shorter one; one binary label per set.
"""
from __future__ import annotations

import hashlib
import zipfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robustmed import data as data_mod
from robustmed import tabular
from robustmed.errors import UserError
from robustmed.multilabel import Criterion, parse_criterion, view_labels
from robustmed.steps import augment
from robustmed.tensors import take


@dataclass
class MultimodalData:
    """A data set as the harness sees it: ``split`` gives named inputs and the criterion's class labels."""

    key: str
    files: tuple[Path, ...]
    inputs: tuple[str, ...]
    labels: tuple[str, ...]
    loader: Callable[[str], tuple[dict, torch.Tensor]] = field(repr=False)
    statistics: tabular.Standardiser | None = None
    image_size: int = 28
    sources: tuple = field(default=(), repr=False)  # the underlying 2D sets (paired), for re-pairing in training
    criterion: Criterion | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.criterion = self.criterion or parse_criterion(None, self.labels)

    @property
    def path(self) -> Path:
        return self.files[0]

    @property
    def sha256(self) -> str:
        """The file's SHA-256; for paired sets, the SHA-256 of both files' digests joined by '+'."""
        if "sha256" not in self._cache:
            digests = [data_mod.sha256_file(f) for f in self.files]
            self._cache["sha256"] = digests[0] if len(digests) == 1 else \
                hashlib.sha256("+".join(digests).encode()).hexdigest()
        return self._cache["sha256"]

    @property
    def task(self) -> str:
        return "binary-class" if len(self.labels) == 1 else f"multi-label, binary-class ({len(self.labels)} labels)"

    @property
    def num_classes(self) -> int:
        return self.criterion.num_classes

    @property
    def multilabel(self) -> bool:
        """Labels come as a matrix judged through a criterion (always, for the multi-input presets)."""
        return True

    def label_matrix(self, split: str) -> tuple[dict, torch.Tensor]:
        """Named inputs and the (N, L) binary labels of one split (cached)."""
        if split not in data_mod.SPLITS:
            raise UserError(f"unknown split {split!r}; choices: {', '.join(data_mod.SPLITS)}")
        if split not in self._cache:
            self._cache[split] = self.loader(split)
        return self._cache[split]

    def epoch(self, generator: torch.Generator, limit: int | None = None) -> tuple[dict, torch.Tensor]:
        """(inputs, (N, L) labels) of one training epoch: a fresh random index pairing for paired sets."""
        if not self.sources:
            x, y = self.label_matrix("train")
        else:
            (x1, y1), (x2, y2) = (s.split("train") for s in self.sources)
            n = min(len(y1), len(y2))
            first, second = (torch.randperm(len(t), generator=generator)[:n] for t in (y1, y2))
            x, y = dict(zip(self.inputs, (x1[first], x2[second]))), torch.stack([y1[first], y2[second]], 1)
        return (x, y) if limit is None else (take(x, slice(0, limit)), y[:limit])

    def augmented(self, batch: dict, generator: torch.Generator) -> dict:
        """Volumes flipped along random axes (their shape features are flip-invariant); images shifted."""
        if self.statistics is not None:
            name = self.inputs[0]
            return {**batch, name: _flip(batch[name], generator)}
        return {name: augment(x, generator) for name, x in batch.items()}

    def training_record(self) -> dict:
        """What a checkpoint trained on this set records about its tabular features."""
        if self.statistics is None:
            return {}
        stats = self.statistics
        return {"tabular_features": {
            "primitives": [{**asdict(f), "train_mean": float(m), "train_std": float(s)}
                           for f, m, s in zip(tabular.PRIMITIVES, stats.mean, stats.std)],
            "derived": [asdict(f) for f in tabular.DERIVED]}}

    def split(self, split: str = "test") -> tuple[dict, torch.Tensor]:
        inputs, labels = self.label_matrix(split)
        return inputs, view_labels(labels, self.criterion)


def _volumes(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UserError(f"malformed npz {path}: {exc}") from None
    for split in data_mod.SPLITS:
        images = arrays.get(f"{split}_images")
        if images is None or f"{split}_labels" not in arrays:
            raise UserError(f"malformed npz {path}: missing {split}_images or {split}_labels")
        if images.dtype != np.uint8 or images.ndim != 4 or len(set(images.shape[1:])) != 1:
            raise UserError(f"{path.name} is not a 3D MedMNIST file: {split}_images must be uint8 cubes (N,D,D,D), "
                            f"got {images.dtype} {images.shape}")
    return arrays


@lru_cache(maxsize=2)
def _shape_features(path: str, sha256: str) -> tuple[dict, dict, dict]:
    """(volumes, raw primitives, labels) per split; cached by content, as the features take seconds."""
    arrays = _volumes(Path(path))
    splits = data_mod.SPLITS
    return ({s: arrays[f"{s}_images"] for s in splits}, {s: tabular.primitives(arrays[f"{s}_images"]) for s in splits},
            {s: data_mod.labels_to_tensor(arrays[f"{s}_labels"]) for s in splits})


def _positive_label(name: str) -> str:
    info = data_mod.medmnist_info().get(name, {}).get("label", {})
    return info.get("1", "positive").split(",")[0].strip().replace(" ", "-")


def volume_shapes(name: str, root=None, inputs: tuple[str, str] = ("volume", "shape")) -> MultimodalData:
    """A 3D MedMNIST binary set (default AdrenalMNIST3D): volumes in [0, 1] and standardised shape features."""
    path = data_mod.resolve(name, root)
    volumes, raw, labels = _shape_features(str(path), data_mod.sha256_file(path))
    stats = tabular.Standardiser.fit(raw["train"])
    stem = path.stem.split("_")[0].lower()
    if labels["train"].max() > 1:
        raise UserError(f"{path.name}: MMCAF-Net's head is binary, the labels are not")

    def load(split: str):
        volume = torch.from_numpy(volumes[split]).unsqueeze(1).float().div_(255.0)
        return {inputs[0]: volume, inputs[1]: torch.from_numpy(stats.transform(raw[split]))}, labels[split][:, None]

    size = int(volumes["train"].shape[1])
    key = stem if size == 28 else f"{stem}_{size}"
    return MultimodalData(key, (path,), tuple(inputs), (_positive_label(stem),), load, statistics=stats,
                          image_size=size)


def paired(name: str, root=None, inputs: tuple[str, str] = ("xray", "ultrasound")) -> MultimodalData:
    """``first+second`` (2D MedMNIST names or paths), paired by index; labels are named after the sets."""
    parts = name.split("+")
    if len(parts) != 2:
        raise UserError(f"bad paired dataset {name!r}: give two sets joined by '+', e.g. pneumoniamnist+breastmnist")
    first, second = (data_mod.load(p, root) for p in parts)
    if first.image_size != second.image_size:
        raise UserError(f"paired sets need one image size: {first.key} is {first.image_size} px, "
                        f"{second.key} is {second.image_size} px")

    def load(split: str):
        return data_mod.paired_split(first, second, split, names=inputs)

    return MultimodalData(f"{first.key}+{second.key}", (first.path, second.path), tuple(inputs),
                          (first.key, second.key), load, image_size=first.image_size, sources=(first, second))


def load(preset, name: str | None = None, root=None) -> MultimodalData:
    """The preset's data: its tabular modality decides the binding (shape features) or else two paired images."""
    names = tuple(m.name for m in preset.modalities)
    kinds = tuple(m.kind for m in preset.modalities)
    if kinds == ("image", "tabular"):
        return volume_shapes(name or preset.default_dataset, root, names)
    return paired(name or preset.default_dataset, root, names)


def _flip(volume: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    axes = [2 + a for a in range(3) if torch.rand((), generator=generator) < 0.5]
    return volume.flip(axes) if axes else volume
