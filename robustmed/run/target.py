"""What a run attacks, resolved once from its config: the model (shipped entry, checkpoint file, a user's model
file, or a multi-input preset), its data, the defense's registry facts and the provenance a manifest records.

The coordinator resolves the :class:`Target` to run the pre-flight checks and plan; every worker resolves the
same config to the same Target (its checkpoint digest is checked against the planned one).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustmed import checkpoints, data as data_mod, multimodal_data
from robustmed.checks import CheckContext
from robustmed.contracts import adapt_head, as_multilabel
from robustmed.defenses import DEFENSES
from robustmed.errors import UserError
from robustmed.factory import from_checkpoint, shipped_checkpoint
from robustmed.seeds import select_subset
from robustmed.models.zoo import MODELS
from robustmed.ordinal import GradeCriterion
from robustmed.provenance import resolve_device, weights_sha256
from robustmed.run.config import BenchConfig
from robustmed.run.threats import declare_criterion, for_checks, threat_models
from robustmed.tensors import batch_size, take, to_device
from robustmed.usermodel import load_model_file


@dataclass(frozen=True)
class Target:
    """A resolved run target: ``provenance`` holds the model's name, the defense and the checkpoint record."""

    model: nn.Module
    dataset: object
    provenance: dict

    @property
    def defense(self) -> str:
        return self.provenance["defense"]

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.provenance["checkpoint"].get("sha256")


def resolve(cfg: BenchConfig, device) -> Target:
    """The Target of a shipped entry, a checkpoint file, a user's model file or a multi-input preset."""
    if cfg.model_file:
        return _model_file(cfg, device)
    preset = preset_of(cfg)
    if preset is not None:  # MMCAF-Net, IIMGF-Net: named inputs, their own data
        return _multi_input(cfg, preset, device)
    if cfg.model:
        MODELS.get(cfg.model)
    DEFENSES.get(cfg.defense)
    path = cfg.checkpoint
    if path is None:
        dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
        path = shipped_checkpoint(cfg.defense, cfg.model, dataset.key)
        model, meta = from_checkpoint(path, device)
    else:
        model, meta = from_checkpoint(path, device)
        dataset = _checkpoint_data(cfg, path, meta)
        # a config's defense "none" is also its default, so only the CLI can tell an explicit one (cli.py)
        checkpoints.refuse_mismatch(path, meta, dataset=dataset.key if cfg.dataset else None, model=cfg.model,
                                    defense=None if cfg.defense == "none" else cfg.defense)
    declare_criterion(model, dataset, cfg.criterion)
    prov = {"path": portable_path(path), "sha256": meta["sha256"], "weights_sha256": weights_sha256(model),
            "val_accuracy": meta.get("val_accuracy"), "test_accuracy": _test_accuracy(model, meta),
            "trained_on": meta.get("dataset")}
    return Target(model, dataset, {"model": meta["model"], "defense": meta["defense"], "checkpoint": prov})


def _model_file(cfg: BenchConfig, device) -> Target:
    model, prov = load_model_file(cfg.model_file)
    dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
    x_all, _ = dataset.split(cfg.split)
    sample = to_device(take(x_all, slice(0, 1)), device)
    if dataset.multilabel:  # one logit per label, positive above 0 (sigmoid 0.5) unless the model says otherwise
        model = as_multilabel(model.to(device), sample, dataset.labels)
    else:
        model, head = adapt_head(model.to(device), sample, dataset.num_classes)
        prov = {**prov, **({"head": head} if head else {})}
    declare_criterion(model, dataset, cfg.criterion)
    return Target(model.to(device), dataset, {"model": f"file:{Path(prov['model_file']).name}", "defense": "custom",
                                              "checkpoint": _pinned_by_weights(prov, model)})


def preset_of(cfg: BenchConfig):
    """The multi-input preset a bench config names (``--model`` or the checkpoint's metadata), else None."""
    name = cfg.model
    if name is None and cfg.checkpoint and not cfg.model_file:
        name = checkpoints.read_metadata(cfg.checkpoint).get("model")
    preset = MODELS.get(name) if name else None
    if getattr(preset, "multimodal", False):
        return preset
    if cfg.threat:
        raise UserError("--threat applies to multi-input models only (mmcaf-net, iimgf-net)")
    return None


def _multi_input(cfg: BenchConfig, preset, device) -> Target:
    if cfg.defense != "none":
        raise UserError(f"{preset.name} is shipped and trained without a defense; use --defense none")
    if cfg.checks == "full":
        raise UserError("--checks full re-attacks single-input models only; multi-input runs take --checks cheap")
    dataset = multimodal_data.load(preset, cfg.dataset, cfg.data_root)
    path = cfg.checkpoint or shipped_checkpoint(cfg.defense, preset.name, dataset.key)
    model, meta = from_checkpoint(path, device)
    _statistics_match(model, dataset)
    declare_criterion(model, dataset, cfg.criterion)
    threat_models(model, cfg.threat)  # a bad --threat fails here, before a run is planned or written
    prov = {"path": portable_path(path), "sha256": meta["sha256"], "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": _test_accuracy(model, meta), "trained_on": meta.get("dataset")}
    return Target(model, dataset, {"model": meta["model"], "defense": meta["defense"], "checkpoint": prov})


def _statistics_match(model: nn.Module, dataset) -> None:
    features = getattr(model.network, "features", None)
    if features is None or dataset.statistics is None:
        return
    ours, theirs = features.statistics(), dataset.statistics
    if any(not torch.allclose(torch.as_tensor(getattr(ours, f)), torch.as_tensor(getattr(theirs, f)), rtol=1e-9)
           for f in ("mean", "std", "derived_mean", "derived_std")):
        raise UserError(f"the checkpoint standardises its shape features with other training statistics than "
                        f"{dataset.key}'s: it was trained on another data set")


def portable_path(path) -> str:
    """Shipped checkpoints as ``zoo/<model>/<dataset>/<defense>.pt``; other paths as the user gave them."""
    resolved = Path(path).resolve()
    try:
        return "zoo/" + resolved.relative_to(checkpoints.ZOO.resolve()).as_posix()
    except ValueError:
        return str(path)


def _test_accuracy(model, meta: dict) -> float | None:
    """The checkpoint's recorded test accuracy under the run's success criterion (check A9 compares)."""
    criterion = getattr(model, "criterion", None)
    if criterion is not None:
        return meta.get("test_accuracy_by_criterion", {}).get(criterion.name)
    return meta.get("test_accuracy")


def _checkpoint_data(cfg: BenchConfig, path, meta: dict):
    """``--dataset``, else the data set the checkpoint was trained on; a name that does not resolve (a model
    trained on a file elsewhere) says how to point at it."""
    if cfg.dataset:
        return data_mod.load(cfg.dataset, cfg.data_root)
    trained_on = meta.get("dataset", data_mod.DEFAULT_DATASET)
    try:
        return data_mod.load(trained_on, cfg.data_root)
    except UserError as exc:
        raise UserError(f"{exc}; checkpoint {path} was trained on {trained_on!r}: pass --dataset with that "
                        "file") from None


def _pinned_by_weights(prov: dict, model) -> dict:
    """A model file's identity is its code and the weights its factory loaded: the file alone does not
    pin them (retrained weights behind the same file must not read back the old run)."""
    weights = weights_sha256(model)
    combined = hashlib.sha256(f"{prov['sha256']}:{weights}".encode()).hexdigest()
    return {**prov, "file_sha256": prov["sha256"], "weights_sha256": weights, "sha256": combined}


def _check_classes(model, x, dataset, device) -> None:
    with torch.no_grad():
        width = model(to_device(take(x, slice(0, 1)), device)).shape[-1]
    if width != dataset.num_classes:
        raise UserError(f"the model predicts {width} classes but {dataset.key} has {dataset.num_classes}: return "
                        "one logit per class (or one logit for a binary task, read with the sigmoid convention)")


def check_context(cfg: BenchConfig, target: Target, split: tuple, ids: np.ndarray, device) -> CheckContext:
    """What the checks need to know about this run's samples ``ids`` of ``split`` (A9 compares with the
    checkpoint's test accuracy); a multi-input model's context is its packed view."""
    x_all, y_all = split
    _check_classes(target.model, x_all, target.dataset, device)
    info = DEFENSES.get(target.defense) if target.defense in DEFENSES else None
    ckpt = target.provenance["checkpoint"]
    same_data = cfg.split == "test" and ckpt.get("trained_on") == target.dataset.key
    ctx = CheckContext(target.model, take(x_all, ids), y_all[ids], cfg.eps_values(), cfg.specs(),
                       target.dataset.num_classes, task=target.dataset.task,
                       declared_randomized=bool(info and info.randomized),
                       nondiff_ops=tuple(info.nondiff_ops) if info else (),
                       adversarially_trained=info.train_step != "standard" if info else None,
                       registry_accuracy=ckpt.get("test_accuracy") if same_data else None,
                       full_split=len(ids) == batch_size(x_all), device=device, seed=cfg.seed,
                       batch_size=cfg.batch_size, sample_ids=ids)
    if isinstance(getattr(target.dataset, "name", None), str):  # its MedMNIST-C corruption set (corruptions)
        ctx.extras["corruption_set"] = target.dataset.name
    if isinstance(target.dataset.criterion, GradeCriterion):  # ordinal: success is a move of K grades
        ctx.extras["success_criterion"] = target.dataset.criterion.description
        ctx.extras["grade"] = target.dataset.criterion
    return for_checks(ctx)


def prepare(cfg: BenchConfig) -> tuple[CheckContext, Target]:
    """The run's Target resolved and its seeded subset drawn, as the checks see it."""
    device = resolve_device(cfg.device)
    target = resolve(cfg, device)
    split = target.dataset.split(cfg.split)
    ids = select_subset(batch_size(split[0]), cfg.n, cfg.seed)
    return check_context(cfg, target, split, ids, device), target
