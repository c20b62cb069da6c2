"""MedMNIST npz data: name resolution, validated loading, fetching with MD5 checks.

Files are never shipped with robustmed; they are read from a data root
(``--data-root``, else ``$ROBUSTMED_DATA``, else MedMNIST's own ``~/.medmnist``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from robustmed.errors import UserError
from robustmed.multilabel import Criterion, parse_criterion, view_labels

DEFAULT_DATASET = "pneumoniamnist"
SPLITS = ("train", "val", "test")
_NAME_RE = re.compile(r"^(?P<name>[a-z0-9]+?)(?:_(?P<size>28|64|128|224))?$")


@lru_cache(maxsize=1)
def medmnist_info() -> dict:
    """MedMNIST's metadata table (task, labels, channels, URLs, MD5s).

    Read from ``medmnist/info.py`` alone: importing the package runs its ``__init__``, which loads
    scikit-learn and SciPy (about 2 s, paid again by every fresh worker process).
    """
    if "medmnist.info" in sys.modules:
        return sys.modules["medmnist.info"].INFO
    package = importlib.util.find_spec("medmnist")
    if package is None:
        raise UserError("robustmed needs the medmnist package: pip install medmnist")
    spec = importlib.util.spec_from_file_location("_medmnist_info", Path(package.origin).with_name("info.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INFO


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The folder names are resolved in: argument, then $ROBUSTMED_DATA, then ~/.medmnist."""
    root = explicit or os.environ.get("ROBUSTMED_DATA") or Path.home() / ".medmnist"
    return Path(root).expanduser()


def split_name(name: str) -> tuple[str, int]:
    """``pneumoniamnist_64`` → (``pneumoniamnist``, 64); bare names are 28 px."""
    match = _NAME_RE.match(name.lower())
    if not match or match["name"] not in medmnist_info():
        choices = ", ".join(sorted(k for k in medmnist_info() if not k.endswith("3d")))
        raise UserError(f"unknown dataset {name!r}; give a MedMNIST name ({choices}) or a path to an .npz file")
    return match["name"], int(match["size"] or 28)


def file_name(name: str, size: int) -> str:
    return f"{name}.npz" if size == 28 else f"{name}_{size}.npz"


def _looks_like_path(value: str) -> bool:
    return value.endswith(".npz") or os.sep in value or value.startswith(".")


def resolve(name_or_path: str, root: str | os.PathLike | None = None) -> Path:
    """Find the npz file for a dataset name or path; a missing file is a one-line UserError."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise UserError(f"dataset file not found: {path}")
        return path
    name, size = split_name(name_or_path)
    path = data_root(root) / file_name(name, size)
    if not path.is_file():
        raise UserError(
            f"dataset {name_or_path!r} not found at {path}; obtain it with "
            f"`robustmed data fetch {name_or_path}` (or `python -m medmnist download`), "
            f"or point --data-root / ROBUSTMED_DATA at a folder holding {path.name}"
        )
    return path


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB blocks (data sets and checkpoints can be large)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | os.PathLike) -> str:
    return file_digest(path, "md5")


@runtime_checkable
class Dataset(Protocol):
    """What a run and ``train`` read from a data set, whatever its files: a MedMNIST npz (:class:`MedMNISTData`),
    two paired npz files or volumes with tabular features (:class:`robustmed.multimodal_data.MultimodalData`)."""

    key: str  # names checkpoints and results

    @property
    def sha256(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def num_classes(self) -> int: ...  # classes as judged (a multi-label task: its criterion's)

    @property
    def multilabel(self) -> bool: ...

    def label_matrix(self, split: str) -> tuple: ...  # inputs and the labels as stored

    def split(self, split: str) -> tuple: ...  # inputs and the labels as judged


@dataclass
class MedMNISTData:
    """One npz file, validated on load; splits are converted to tensors on demand."""

    path: Path
    name: str
    arrays: dict[str, np.ndarray] = field(repr=False)
    criterion: Criterion | None = None  # multi-label tasks: how a label vector becomes one class (any, label:NAME)

    @property
    def info(self) -> dict:
        return medmnist_info().get(self.name, {})

    @cached_property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def task(self) -> str:
        return self.info.get("task", "multi-class")

    @property
    def multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def labels(self) -> tuple[str, ...]:
        """A multi-label task's label names, one per column of its label matrix."""
        names = self.info.get("label")
        if names:
            return tuple(names[str(i)] for i in range(len(names)))
        return tuple(f"label{i}" for i in range(self.arrays["train_labels"].shape[1]))

    @property
    def num_classes(self) -> int:
        """Classes as the harness judges them: a multi-label task's are its criterion's (2^L joint label
        vectors for any-label flips, 2 for a target label)."""
        if self.multilabel:
            return (self.criterion or parse_criterion(None, self.labels)).num_classes
        if "label" in self.info:
            return len(self.info["label"])
        return int(max(self.arrays[f"{s}_labels"].max() for s in SPLITS)) + 1

    @property
    def channels(self) -> int:
        images = self.arrays["train_images"]
        return 3 if images.ndim == 4 and images.shape[-1] == 3 else 1

    @property
    def image_size(self) -> int:
        return int(self.arrays["train_images"].shape[1])

    @property
    def label_names(self) -> list[str]:
        labels = self.info.get("label")
        return [labels[str(i)] for i in range(len(labels))] if labels else [str(i) for i in range(self.num_classes)]

    @property
    def key(self) -> str:
        """Name used for checkpoints and results: ``pneumoniamnist`` or ``pneumoniamnist_64``."""
        return self.name if self.image_size == 28 else f"{self.name}_{self.image_size}"

    def label_matrix(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] as (N, C, H, W) and the labels as stored: (N,) or, multi-label, (N, L)."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; choices: {', '.join(SPLITS)}")
        return to_tensor(self.arrays[f"{split}_images"]), labels_to_tensor(self.arrays[f"{split}_labels"])

    def split(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] as (N, C, H, W) and integer class labels (N,); a multi-label task's label
        vectors become its criterion's classes."""
        x, y = self.label_matrix(split)
        if self.multilabel:
            y = view_labels(y, self.criterion or parse_criterion(None, self.labels))
        return x, y


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N,H,W) or (N,H,W,3) → float32 (N,C,H,W) in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(255.0).contiguous()


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    return torch.from_numpy(labels.astype(np.int64))


def _validate(arrays: dict[str, np.ndarray], path: Path) -> None:
    missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
    if missing:
        raise UserError(f"malformed npz {path}: missing keys {', '.join(missing)}")
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
            raise UserError(
                f"malformed npz {path}: {split}_images must be uint8 (N,H,W) or (N,H,W,3) 2D images, "
                f"got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise UserError(f"malformed npz {path}: {split} has {len(images)} images but {len(labels)} labels")


def load(name_or_path: str = DEFAULT_DATASET, root: str | os.PathLike | None = None) -> MedMNISTData:
    """Load and validate a MedMNIST-format npz file by name or path."""
    path = resolve(name_or_path, root)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise UserError(f"malformed npz {path}: {exc}") from None
    _validate(arrays, path)
    stem = path.stem.split("_")[0].lower()
    return MedMNISTData(path=path, name=stem, arrays=arrays)


def load_dataset(name_or_path: str = DEFAULT_DATASET, split: str = "test", root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Public API: ``(x, y)`` tensors of one split, images in [0, 1]."""
    return load(name_or_path, root).split(split)


def official_md5(name: str, size: int) -> str:
    info = medmnist_info()[name]
    return info["MD5"] if size == 28 else info[f"MD5_{size}"]


def verify_md5(path: str | os.PathLike, expected: str) -> None:
    actual = md5_file(path)
    if actual != expected:
        raise UserError(f"MD5 mismatch for {path}: expected {expected}, got {actual}; the download is corrupt")


def fetch(name: str, root=None, if_missing: bool = False, url: str | None = None) -> Path:
    """Download the official file into the data root, verifying MedMNIST's MD5 before it lands.

    ``url`` overrides the official address (tests use a local ``file://`` URL).
    """
    base, size = split_name(name)
    target = data_root(root) / file_name(base, size)
    if target.is_file() and if_missing:
        return target
    info = medmnist_info()[base]
    source = url or (info["url"] if size == 28 else info[f"url_{size}"])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(source) as response:  # noqa: S310 (official https URL)
                shutil.copyfileobj(response, tmp)
            tmp.close()
            verify_md5(tmp.name, official_md5(base, size))
            os.replace(tmp.name, target)
        except Exception as exc:
            os.unlink(tmp.name)
            if isinstance(exc, UserError):
                raise
            raise UserError(f"could not download {name} from {source}: {exc}") from None
    return target


def paired_split(primary: MedMNISTData, secondary: MedMNISTData, split: str = "test",
                 names: tuple[str, str] = ("image", "image2"), seed: int | None = None):
    """``paired`` feeding mode (the MAIL authors' code): two data sets paired by index, one head each.

    The authors' code pairs unrelated data sets this way; ``seed`` draws a fresh random
    pairing (per epoch in training), ``None`` pairs index i with index i. The longer set is
    cut to the shorter one's length. Returns ``({name: images}, labels (N, 2))``.
    """
    x1, y1 = primary.split(split)
    x2, y2 = secondary.split(split)
    n = min(len(x1), len(x2))
    second = torch.randperm(len(x2), generator=torch.Generator().manual_seed(seed))[:n] if seed is not None \
        else torch.arange(n)
    return {names[0]: x1[:n], names[1]: x2[second]}, torch.stack([y1[:n], y2[second]], dim=1)
