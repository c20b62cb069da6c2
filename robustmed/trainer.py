"""`robustmed train`: one entry for every registered model, the image models' loop (:mod:`robustmed.training`)
or the multi-input presets' (:mod:`robustmed.train_multimodal`), both writing the same checkpoint and metadata."""
from __future__ import annotations

from robustmed import train_multimodal, training
from robustmed.errors import UserError
from robustmed.models.zoo import MODELS
from robustmed.training import TrainConfig


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.defense``; returns the checkpoint's metadata (and its path)."""
    if cfg.epochs is not None and cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if not getattr(MODELS.get(cfg.model), "multimodal", False):
        return training.train(cfg)
    if cfg.init:
        raise UserError("--init is for the image models; the multi-input models train from scratch")
    return train_multimodal.train(cfg)
