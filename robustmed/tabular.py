"""Radiomic-style shape features of 3D binary masks: MMCAF-Net's tabular modality on AdrenalMNIST3D.

The project computes them itself from each volume (the data set ships no tabular record). Nine
*primitive* features are the model's tabular input, standardised with training-split statistics;
five *derived* features are computed from the primitives inside the model (:class:`ShapeFeatureLayer`),
so an attacker who perturbs the primitives can never make the derived ones inconsistent with them.

>>> import numpy as np
>>> cube = np.zeros((1, 8, 8, 8), np.uint8); cube[0, 2:5, 2:5, 2:5] = 255
>>> primitives(cube)[0, :5].tolist()  # volume, surface area, extents z/y/x
[27.0, 54.0, 3.0, 3.0, 3.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Feature:
    """One shape feature: how it is computed and which raw values are physically possible."""

    name: str
    kind: str  # "integer" (valid values on a grid of 1), "real", "categorical" (never perturbed)
    unit: str
    definition: str


PRIMITIVES = (
    Feature("volume", "integer", "voxels", "number of foreground voxels (mask > 0)"),
    Feature("surface_area", "integer", "voxel faces",
            "faces between a foreground voxel and a background voxel, 6-neighbourhood; outside the grid is background"),
    Feature("extent_z", "integer", "voxels", "bounding-box size of the foreground along depth"),
    Feature("extent_y", "integer", "voxels", "bounding-box size along height"),
    Feature("extent_x", "integer", "voxels", "bounding-box size along width"),
    Feature("major_axis", "real", "voxels",
            "4·√λ₁ with λ₁ ≥ λ₂ ≥ λ₃ the eigenvalues of the covariance of the foreground voxel coordinates "
            "(pyradiomics' MajorAxisLength)"),
    Feature("minor_axis", "real", "voxels", "4·√λ₂ (pyradiomics' MinorAxisLength)"),
    Feature("least_axis", "real", "voxels", "4·√λ₃ (pyradiomics' LeastAxisLength)"),
    Feature("components", "categorical", "count", "number of 26-connected foreground components"),
)
DERIVED = (
    Feature("sphericity", "real", "1", "(36π·volume²)^(1/3) / surface_area"),
    Feature("surface_volume_ratio", "real", "1/voxel", "surface_area / volume"),
    Feature("elongation", "real", "1", "minor_axis / major_axis (pyradiomics' Elongation)"),
    Feature("flatness", "real", "1", "least_axis / major_axis (pyradiomics' Flatness)"),
    Feature("fill_ratio", "real", "1", "volume / (extent_z · extent_y · extent_x)"),
)
NAMES = tuple(f.name for f in PRIMITIVES)
DERIVED_NAMES = tuple(f.name for f in DERIVED)
TINY = 1e-3  # floor of the denominators of derived features (raw units): keeps them finite under attack


def valid_range(size: int) -> np.ndarray:
    """(9, 2) physically possible raw values of the primitives on a ``size``³ grid."""
    axis = 4 * math.sqrt(3) * size / 2  # 4·√λ with every coordinate variance ≤ (size/2)², summed over 3 axes
    return np.array([(1, size ** 3), (6, 6 * size ** 3), (1, size), (1, size), (1, size),
                     (0, axis), (0, axis), (0, axis), (1, size ** 3)], dtype=np.float64)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Exposed faces: foreground/background changes along each axis, plus foreground on the grid's border."""
    faces = np.zeros(len(mask))
    for axis in (1, 2, 3):
        border = np.take(mask, 0, axis=axis).sum(axis=(1, 2)) + np.take(mask, -1, axis=axis).sum(axis=(1, 2))
        faces += np.diff(mask, axis=axis).sum(axis=(1, 2, 3)) + border
    return faces


def _extents(mask: np.ndarray) -> np.ndarray:
    out = []
    for axis in (1, 2, 3):
        present = mask.any(axis=tuple(a for a in (1, 2, 3) if a != axis))
        first, last = present.argmax(1), present.shape[1] - 1 - present[:, ::-1].argmax(1)
        out.append(last - first + 1)
    return np.stack(out, 1)


def _axes(mask: np.ndarray) -> np.ndarray:
    """4·√eigenvalues of the coordinate covariance, from 2D marginals (exact integer sums, one pass each)."""
    pairs = {(0, 1): mask.sum(3, dtype=np.int64), (0, 2): mask.sum(2, dtype=np.int64),
             (1, 2): mask.sum(1, dtype=np.int64)}
    coord = [np.arange(s, dtype=np.float64) for s in mask.shape[1:]]
    marginals = [pairs[(0, 1)].sum(2), pairs[(0, 1)].sum(1), pairs[(0, 2)].sum(1)]
    count = marginals[0].sum(1)
    mean = np.stack([m @ c for m, c in zip(marginals, coord)], 1) / count[:, None]
    second = np.empty((len(mask), 3, 3))
    for i in range(3):
        second[:, i, i] = marginals[i] @ coord[i] ** 2
    for (i, j), m in pairs.items():
        second[:, i, j] = second[:, j, i] = np.einsum("nab,a,b->n", m, coord[i], coord[j])
    cov = second / count[:, None, None] - mean[:, :, None] * mean[:, None, :]
    eig = np.linalg.eigvalsh(cov)[:, ::-1].clip(min=0)
    return 4 * np.sqrt(eig)


def primitives(volumes: np.ndarray) -> np.ndarray:
    """(N, D, H, W) masks (any nonzero value is foreground, ≥ 1 voxel each) → (N, 9) raw primitives."""
    mask = volumes > 0
    if not mask.reshape(len(mask), -1).any(1).all():
        raise ValueError("every volume needs at least one foreground voxel")
    from scipy import ndimage  # here, not at import: every `bench` imports this module, few compute shapes

    volume = mask.sum(axis=(1, 2, 3)).astype(np.float64)
    components = [ndimage.label(m, structure=np.ones((3, 3, 3)))[1] for m in mask]
    return np.column_stack([volume, _surface(mask), _extents(mask), _axes(mask), components]).astype(np.float64)


def derive(raw: torch.Tensor) -> torch.Tensor:
    """(N, 9) raw primitives → (N, 5) derived features (:data:`DERIVED`), differentiable."""
    volume, area, ez, ey, ex, major, minor, least, _ = raw.unbind(1)
    volume, area, major = volume.clamp_min(TINY), area.clamp_min(TINY), major.clamp_min(TINY)
    sphericity = (36 * math.pi * volume ** 2) ** (1 / 3) / area
    box = (ez * ey * ex).clamp_min(TINY)
    return torch.stack([sphericity, area / volume, minor / major, least / major, volume / box], 1)


@dataclass(frozen=True)
class Standardiser:
    """Training-split mean and standard deviation of the primitives and of the derived features."""

    mean: np.ndarray
    std: np.ndarray
    derived_mean: np.ndarray
    derived_std: np.ndarray

    @classmethod
    def fit(cls, raw_train: np.ndarray) -> "Standardiser":
        derived = derive(torch.from_numpy(raw_train)).numpy()
        return cls(raw_train.mean(0), raw_train.std(0).clip(min=1e-6), derived.mean(0), derived.std(0).clip(min=1e-6))

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.std).astype(np.float32)

    def constraints(self, size: int) -> dict:
        """The shape input's threat constraints (:class:`robustmed.attacks.threat.InputThreat` fields), in
        standardised units: integer features move on a grid of 1/σ (whole voxels or faces), categorical ones
        are frozen, every feature stays within its physically possible range on a ``size``³ grid."""
        kinds = [f.kind for f in PRIMITIVES]
        valid = (valid_range(size) - self.mean[:, None]) / self.std[:, None]
        bounds = tuple((float(lo), float(hi)) for lo, hi in valid)
        return {"element_scale": tuple(0.0 if k == "categorical" else 1.0 for k in kinds),
                "element_grid": tuple(float(1 / s) if k == "integer" else 0.0 for k, s in zip(kinds, self.std)),
                "element_bounds": bounds, "bounds": (min(b[0] for b in bounds), max(b[1] for b in bounds))}


class ShapeFeatureLayer(nn.Module):
    """Standardised primitives (N, 9) → standardised primitives ‖ standardised derived features (N, 14).

    The statistics are float64 buffers set from the training split (:meth:`set_statistics`) and saved
    with the weights, so a checkpoint carries exactly the standardisation its inputs were made with.
    """

    def __init__(self):
        super().__init__()
        for name, size in (("mean", len(NAMES)), ("std", len(NAMES)), ("derived_mean", len(DERIVED_NAMES)),
                           ("derived_std", len(DERIVED_NAMES))):
            self.register_buffer(name, torch.zeros(size, dtype=torch.float64) if "mean" in name
                                 else torch.ones(size, dtype=torch.float64))
        self.register_buffer("grid_size", torch.tensor(28.0))  # side of the volumes the features come from

    @property
    def out_features(self) -> int:
        return len(NAMES) + len(DERIVED_NAMES)

    def set_statistics(self, stats: Standardiser, size: int) -> None:
        for name in ("mean", "std", "derived_mean", "derived_std"):
            getattr(self, name).copy_(torch.as_tensor(getattr(stats, name), dtype=torch.float64))
        self.grid_size.fill_(size)

    def statistics(self) -> Standardiser:
        return Standardiser(*(getattr(self, n).cpu().numpy() for n in ("mean", "std", "derived_mean", "derived_std")))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        raw = z.double() * self.std + self.mean
        derived = (derive(raw) - self.derived_mean) / self.derived_std
        return torch.cat([z, derived.to(z.dtype)], 1)
