"""Shared fixtures: the real data in ../shared/data (or $ROBUSTMED_DATA) and tiny seeded models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def _data_root() -> Path | None:
    root = os.environ.get("ROBUSTMED_DATA")
    if root and Path(root).is_dir():
        return Path(root)
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = _data_root()
    if root is None or not (root / "pneumoniamnist.npz").is_file():
        pytest.skip("real MedMNIST data not available (set ROBUSTMED_DATA)")
    return root


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    """Every test reads the shared data and writes results into its own temporary folder."""
    root = _data_root()
    if root is not None:
        monkeypatch.setenv("ROBUSTMED_DATA", str(root))
    monkeypatch.setenv("ROBUSTMED_RESULTS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def pneumonia(data_root):
    from robustmed import data

    return data.load("pneumoniamnist", data_root)


class TinyCNN(nn.Module):
    """A small seeded classifier for fast, exact attack tests."""

    def __init__(self, channels: int = 1, classes: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(channels, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes),
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture
def tiny_model():
    return TinyCNN().eval()


def untrained_checkpoint(tmp_path, defense: str, model: str = "mail-rn18-mini"):
    """A verified checkpoint of an untrained defended model: exercises loading and bench without training."""
    from robustmed import checkpoints
    from robustmed.factory import build

    path = tmp_path / f"{defense}.pt"
    build_spec = {"model": model, "defense": defense, "num_classes": [2]}
    checkpoints.save(build(**build_spec).state_dict(), path,
                     {"build": build_spec, "model": model, "defense": defense, "dataset": "pneumoniamnist"})
    return path


@pytest.fixture(scope="session")
def batch_invariant_kernels(pneumonia):
    """Skips a test whose exact equality needs this CPU's kernels to give a sample the same logits whatever
    batch it sits in (the property the committed rows were made under: rows regenerate, grouped ε sweeps and
    Ray shards equal local runs). Some CPUs' fp32 convolution kernels round differently per batch size;
    there the test cannot hold and says so instead of failing on arithmetic."""
    from robustmed.factory import load_model

    model = load_model("none")
    x, _ = pneumonia.split("test")
    with torch.no_grad():
        alone, in_batch = model(x[:1]), model(x[:96])[:1]
    if not torch.equal(alone, in_batch):
        pytest.skip(f"this CPU's kernels round a sample differently by batch size (logits differ by up to "
                    f"{(alone - in_batch).abs().max().item():.2g}): exact row equality cannot hold here")
