"""Training of the multi-input presets: seeded, per-label BCE (class-balanced), the epoch with the best mean
validation AUROC kept, decision thresholds then fixed on validation data (:mod:`robustmed.multilabel`).

Writes the same checkpoint and metadata sidecar as :func:`robustmed.training.train` (recipe, epochs, seed,
training time, clean validation/test accuracy, SHA-256), plus per-label test accuracy beside each label's
majority rate, the thresholds, and the accuracy under each success criterion (A9 compares with it).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from robustmed import checkpoints, multilabel, multilabel_fit, multimodal_data, tabular
from robustmed.errors import UserError
from robustmed.factory import build
from robustmed.models.zoo import MODELS
from robustmed.progress import progress_bar
from robustmed.recipes import RECIPES, Recipe, default_recipe
from robustmed.tensors import take
from robustmed.training import TrainConfig, augment, make_optimizer, make_scheduler, provenance


def _flip(volume: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    axes = [2 + a for a in range(3) if torch.rand((), generator=generator) < 0.5]
    return volume.flip(axes) if axes else volume


def _augmented(batch: dict, dataset, generator: torch.Generator) -> dict:
    if dataset.statistics is not None:  # volume + shape features: flips change no feature
        name = dataset.inputs[0]
        return {**batch, name: _flip(batch[name], generator)}
    return {name: augment(x, generator) for name, x in batch.items()}


def _epoch_data(dataset, limit: int | None, generator: torch.Generator):
    """(inputs, (N, L) labels) of one epoch: a fresh random index pairing for paired sets."""
    if not dataset.sources:
        x, y = dataset.label_matrix("train")
    else:
        (x1, y1), (x2, y2) = (s.split("train") for s in dataset.sources)
        n = min(len(y1), len(y2))
        first, second = (torch.randperm(len(t), generator=generator)[:n] for t in (y1, y2))
        x, y = dict(zip(dataset.inputs, (x1[first], x2[second]))), torch.stack([y1[first], y2[second]], 1)
    return (x, y) if limit is None else (take(x, slice(0, limit)), y[:limit])


def _pos_weight(labels: torch.Tensor, recipe: Recipe) -> torch.Tensor | None:
    if recipe.class_weights != "balanced":
        return None
    positives = labels.float().sum(0).clamp_min(1)
    return (len(labels) - positives) / positives


def _build(cfg: TrainConfig, preset, dataset):
    spec = {"model": preset.name, "defense": "none", "num_classes": [len(dataset.labels)],
            "config": {"labels": list(dataset.labels), "image_size": dataset.image_size}}
    torch.manual_seed(cfg.seed)
    model = build(**spec)
    if dataset.statistics is not None:
        model.network.features.set_statistics(dataset.statistics, dataset.image_size)
    return spec, model.to(cfg.device)


def _train_epoch(model, optimizer, dataset, recipe, cfg, generator, weight, bar, task) -> float:
    model.train()
    x, y = _epoch_data(dataset, cfg.limit, generator)
    order, total = torch.randperm(len(y), generator=generator), 0.0
    for start in range(0, len(order), recipe.batch_size):
        idx = order[start:start + recipe.batch_size]
        batch = take(x, idx)
        if recipe.augment:
            batch = _augmented(batch, dataset, generator)
        logits = model.network({k: v.to(cfg.device) for k, v in batch.items()})
        loss = F.binary_cross_entropy_with_logits(logits, y[idx].float().to(cfg.device), pos_weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(idx)
        bar.advance(task)
    return total / len(order)


def _features_record(dataset) -> dict:
    if dataset.statistics is None:
        return {}
    stats = dataset.statistics
    return {"tabular_features": {
        "primitives": [{**asdict(f), "train_mean": float(m), "train_std": float(s)}
                       for f, m, s in zip(tabular.PRIMITIVES, stats.mean, stats.std)],
        "derived": [asdict(f) for f in tabular.DERIVED]}}


def train(cfg: TrainConfig) -> dict:
    """Train a multi-input preset, fix its thresholds on validation data, save checkpoint + metadata."""
    preset = MODELS.get(cfg.model)
    if cfg.defense != "none":
        raise UserError(f"{cfg.model} trains without a defense; use --defense none")
    dataset = multimodal_data.load(preset, cfg.dataset, cfg.data_root)
    recipe = RECIPES.get(cfg.recipe or default_recipe(preset.name, "paper"))
    epochs = cfg.epochs or recipe.epochs
    generator = torch.Generator().manual_seed(cfg.seed)
    spec, model = _build(cfg, preset, dataset)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, epochs)
    x_val, y_val = dataset.label_matrix("val")
    if cfg.limit is not None:
        x_val, y_val = take(x_val, slice(0, cfg.limit)), y_val[:cfg.limit]
    first_epoch = _epoch_data(dataset, cfg.limit, torch.Generator().manual_seed(cfg.seed))[1]
    weight = _pos_weight(first_epoch, recipe)
    weight = None if weight is None else weight.to(cfg.device)
    best, history, started = (-1.0, -1, None), [], time.perf_counter()
    per_epoch = -(-len(first_epoch) // recipe.batch_size)
    with progress_bar(cfg.progress) as bar:
        task = bar.add_task(f"train {preset.name}", total=epochs * per_epoch)
        for epoch in range(epochs):
            loss = _train_epoch(model, optimizer, dataset, recipe, cfg, generator, weight, bar, task)
            scheduler.step()
            auroc = multilabel.mean_auroc(multilabel.label_logits(model, x_val).cpu(), y_val)
            history.append({"epoch": epoch, "loss": loss, "val_mean_auroc": auroc})
            if auroc > best[0]:
                best = (auroc, epoch, copy.deepcopy(model.state_dict()))
            bar.update(task, description=f"train {preset.name} loss {loss:.3f} val AUROC {auroc:.3f}")
    training_time = time.perf_counter() - started
    model.load_state_dict(best[2])
    return _finish(cfg, preset, dataset, recipe, spec, model, best, history, training_time, epochs, x_val, y_val,
                   len(first_epoch))


def _finish(cfg, preset, dataset, recipe, spec, model, best, history, training_time, epochs, x_val, y_val,
            per_epoch_images: int) -> dict:
    tested = multilabel_fit.finish(model, x_val, y_val, *dataset.label_matrix("test"))
    val_pred = (multilabel.label_logits(model, x_val) > model.thresholds.cpu()).long()
    out = checkpoints.destination(cfg.out, preset.name, dataset.key, "none")
    metadata = {
        "model": preset.name, "defense": "none", "defense_version": "1", "dataset": dataset.key,
        "dataset_sha256": dataset.sha256, "recipe": asdict(recipe), "train_step": "bce (per label)",
        "seed": cfg.seed, "epochs": epochs, "best_epoch": best[1], "train_images": per_epoch_images,
        "val_mean_auroc": best[0],
        "val_accuracy": multilabel.criteria_accuracy(val_pred, y_val, dataset.labels)[multilabel.ANY],
        **tested,
        "training_time_s": round(training_time, 1), "history": history, "build": spec,
        **_features_record(dataset),
        **provenance(cfg.device),
    }
    metadata = checkpoints.save(model.state_dict(), out, metadata)
    metadata["checkpoint"] = str(out)
    return metadata
