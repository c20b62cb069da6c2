"""Building and loading registered models: preset → defense attached → (weights)."""
from __future__ import annotations

from pathlib import Path

import torch

from robustmed import checkpoints
from robustmed.data import DEFAULT_DATASET
from robustmed.defenses import DEFENSES
from robustmed.errors import UserError
from robustmed.models.adapter import RobustModel
from robustmed.models.multimodal import MultiLabelClassifier
from robustmed.models.zoo import DEFAULT_MODEL, MODELS
from robustmed.randomness import seed_model


def build(model: str, defense: str, num_classes: tuple[int, ...], mode: str = "replicated",
          input_names: tuple[str, ...] = ("image",), config: dict | None = None,
          defense_options: dict | None = None, labels: list[str] | None = None) -> RobustModel:
    """A fresh (untrained) model; ``config`` overrides MAILConfig fields. With ``labels`` (a multi-label
    task: one logit per label) the defended network answers through per-label thresholds and the
    declared success criterion (:class:`MultiLabelClassifier`)."""
    preset, info = MODELS.get(model), DEFENSES.get(defense)
    network = preset.build(tuple(num_classes), mode, tuple(input_names), **(config or {}))
    defended = info.attach(network, **{**info.options, **(defense_options or {})})
    seed_model(defended, 0)  # distinct noise streams per random module (all share seed 0 otherwise)
    return MultiLabelClassifier(defended, (), tuple(labels)) if labels else defended


def from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[RobustModel, dict]:
    """Rebuild the model a checkpoint's metadata describes and load its verified weights."""
    state, meta = checkpoints.load_state(path)
    spec = meta.get("build")
    if not spec:
        raise UserError(f"checkpoint {path} metadata lacks the 'build' section")
    model = build(**spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not match its declared model: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), meta


def shipped_checkpoint(defense: str, model: str | None, dataset_key: str | None) -> Path:
    model, dataset_key = model or DEFAULT_MODEL, dataset_key or DEFAULT_DATASET
    DEFENSES.get(defense)
    MODELS.get(model)
    path = checkpoints.shipped(model, dataset_key, defense)
    if not path.is_file():
        raise UserError(
            f"no shipped checkpoint for defense {defense!r}, model {model!r} on {dataset_key!r}; "
            f"train one with `robustmed train --defense {defense} --model {model} --dataset {dataset_key}` "
            "and pass it with --checkpoint"
        )
    return path


def load_model(defense: str = "none", model: str | None = None, dataset: str | None = None,
               checkpoint: str | Path | None = None, device: str = "cpu") -> RobustModel:
    """Public API: a registered, trained model in eval mode (inputs in [0, 1], returns logits)."""
    path = checkpoint or shipped_checkpoint(defense, model, dataset)
    return from_checkpoint(path, device)[0]
