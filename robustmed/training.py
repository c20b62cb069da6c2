"""Training: seeded, recipe-driven, model selection on validation accuracy, checkpoint + metadata."""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from robustmed import checkpoints, data as data_mod
from robustmed.defenses import DEFENSES
from robustmed.factory import build
from robustmed.models.zoo import DEFAULT_MODEL
from robustmed.progress import progress_bar
from robustmed.provenance import git_commit, machine, package_versions
from robustmed.registry import Registry
from robustmed.tensors import predict, take


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule (spec §4.7 presets; ``cpu`` trains the mini model in minutes)."""

    name: str
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    schedule: str  # "cosine" or "plateau"
    min_lr: float = 0.0
    patience: int = 10
    augment: bool = True


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("cpu", Recipe("cpu", "adam", 2e-3, 12, 128, 1e-4, "cosine"))
RECIPES.register("paper", Recipe("paper", "sgd", 1e-3, 200, 32, 5e-4, "plateau", min_lr=1e-6, patience=10))
RECIPES.register("code", Recipe("code", "adam", 1e-4, 200, 32, 0.0, "plateau", min_lr=1e-5, patience=70))


@dataclass
class StepContext:
    """What a training step may need beyond the batch."""

    epoch: int
    epochs: int
    recipe: Recipe
    generator: torch.Generator
    extras: dict = field(default_factory=dict)


def task_loss(logits, labels: torch.Tensor) -> torch.Tensor:
    """CE for one head; the mean of per-head CEs in paired mode (the code's 0.5·CE₁ + 0.5·CE₂)."""
    if isinstance(logits, tuple):
        return sum(F.cross_entropy(out, labels[:, i]) for i, out in enumerate(logits)) / len(logits)
    return F.cross_entropy(logits, labels)


def standard_step(model, x, y, ctx: StepContext) -> torch.Tensor:
    return task_loss(model(x), y)


TRAIN_STEPS: Registry[Callable] = Registry("training step")
TRAIN_STEPS.register("standard", standard_step)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px (replicate padding): cheap, label-preserving for these images."""
    pad = 2
    padded = F.pad(x, (pad,) * 4, mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    return padded[..., dy:dy + x.shape[-2], dx:dx + x.shape[-1]]


def make_optimizer(model: torch.nn.Module, recipe: Recipe):
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    return optimizer


def make_scheduler(optimizer, recipe: Recipe, epochs: int):
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=recipe.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=recipe.patience,
                                                      min_lr=recipe.min_lr)


def accuracy(model, x, y, device) -> float:
    model.eval()
    labels = y if y.ndim == 1 else y[:, 0]
    return (predict(model, x, device=device) == labels).float().mean().item()


@dataclass(frozen=True)
class TrainConfig:
    defense: str = "none"
    model: str = DEFAULT_MODEL
    dataset: str = data_mod.DEFAULT_DATASET
    data_root: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    progress: bool = True
    limit: int | None = None  # train on the first N images only (tests)


def _select(x, y, limit):
    return (x, y) if limit is None else (x[:limit], y[:limit])


def train(cfg: TrainConfig) -> dict:
    """Train, keep the best validation epoch, save checkpoint + metadata; returns the metadata."""
    info = DEFENSES.get(cfg.defense)
    dataset = data_mod.load(cfg.dataset, cfg.data_root)
    recipe = RECIPES.get(cfg.recipe or ("cpu" if cfg.model.endswith("-mini") else "paper"))
    epochs = cfg.epochs or recipe.epochs
    step = TRAIN_STEPS.get(info.train_step)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)

    x_train, y_train = _select(*dataset.split("train"), cfg.limit)
    x_val, y_val = _select(*dataset.split("val"), cfg.limit)
    x_test, y_test = dataset.split("test")
    build_spec = {"model": cfg.model, "defense": cfg.defense, "num_classes": [dataset.num_classes]}
    model = build(**build_spec).to(device)
    optimizer = make_optimizer(model, recipe)
    scheduler = make_scheduler(optimizer, recipe, epochs)
    ctx = StepContext(0, epochs, recipe, generator, {"optimizer": optimizer})

    best = (-1.0, -1, None)
    history = []
    started = time.perf_counter()
    batches = -(-len(x_train) // recipe.batch_size)
    with progress_bar(cfg.progress) as bar:
        task = bar.add_task(f"train {cfg.defense}", total=epochs * batches)
        for epoch in range(epochs):
            ctx.epoch = epoch
            model.train()
            order = torch.randperm(len(x_train), generator=generator)
            total = 0.0
            for start in range(0, len(order), recipe.batch_size):
                idx = order[start:start + recipe.batch_size]
                xb, yb = take(x_train, idx).to(device), y_train[idx].to(device)
                if recipe.augment:
                    xb = augment(xb, generator)
                loss = step(model, xb, yb, ctx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                bar.advance(task)
            val_acc = accuracy(model, x_val, y_val, device)
            history.append({"epoch": epoch, "loss": total / len(x_train), "val_accuracy": val_acc})
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(-val_acc)
            else:
                scheduler.step()
            if val_acc > best[0]:
                best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
            bar.update(task, description=f"train {cfg.defense} val {val_acc:.3f}")
    training_time = time.perf_counter() - started

    model.load_state_dict(best[2])
    test_acc = accuracy(model, x_test, y_test, device)
    out = cfg.out or checkpoints.shipped(cfg.model, dataset.key, cfg.defense)
    metadata = {
        "model": cfg.model,
        "defense": cfg.defense,
        "defense_version": info.version,
        "dataset": dataset.key,
        "dataset_sha256": dataset.sha256,
        "recipe": asdict(recipe),
        "train_step": info.train_step,
        "seed": cfg.seed,
        "epochs": epochs,
        "best_epoch": best[1],
        "train_images": len(x_train),
        "val_accuracy": best[0],
        "test_accuracy": test_acc,
        "training_time_s": round(training_time, 1),
        "history": history,
        "build": build_spec,
        "packages": package_versions(),
        "git_commit": git_commit(),
        "machine": machine(device),
    }
    metadata = checkpoints.save(model.state_dict(), out, metadata)
    metadata["checkpoint"] = str(out)
    return metadata
