"""Training: seeded, recipe-driven (:mod:`robustmed.recipes`), model selection on validation accuracy,
checkpoint + metadata.

Each defense's step is registered in its own file (:data:`robustmed.steps.TRAIN_STEPS`): ``standard``,
``pgd-at`` (PGD-AT with per-defense loss weights, attack mode, [A]/[I] realizations, predicted-label
targets and delays), ``dbn``, ``l2p``, ``cap``. Defenses trained adversarially are selected on robust
validation accuracy (EOT-PGD for randomized ones).
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.parameter import UninitializedParameter

from robustmed import checkpoints, data as data_mod, multilabel_fit, multimodal_data
from robustmed.defenses import DEFENSES
from robustmed.defenses.base import parameter_groups
from robustmed.errors import UserError
from robustmed.factory import build
from robustmed.models.zoo import DEFAULT_MODEL, MODELS
from robustmed.progress import progress_bar
from robustmed.provenance import git_commit, machine, package_versions
from robustmed.randomness import seed_model
from robustmed.recipes import RECIPES, Recipe, default_recipe
from robustmed.selection import selection_key, selection_warnings, test_accuracy, validation_scores
from robustmed.steps import TRAIN_STEPS, StepContext, augment, set_mode, standard_step
from robustmed.tensors import take, to_device


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised so that a balanced data set gets weight 1 everywhere."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return counts.sum() / (num_classes * counts)


def make_optimizer(model: torch.nn.Module, recipe: Recipe, options: dict | None = None):
    """The network optimiser, with per-defense groups: noise scales without weight decay,
    the trainable part of random-projection layers with its own decay (``rp_weight_decay``)."""
    options = options or {}
    decays = {"default": recipe.weight_decay, "no_decay": 0.0,
              "rp": options.get("rp_weight_decay", recipe.weight_decay)}
    groups = [{"params": params, "weight_decay": decays[name]}
              for name, params in parameter_groups(model).items() if name in decays]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)


def make_optimizers(model: torch.nn.Module, recipe: Recipe, options: dict | None = None) -> dict:
    """``main`` plus, for Learn2Perturb, ``noise_opt``: SGD (momentum 0.9, no decay) on the σ maps,
    as in the reference (an Adam step would not scale with R(σ)'s tiny gradient)."""
    optimizers = {"main": make_optimizer(model, recipe, options)}
    noise = parameter_groups(model).get("noise_opt")
    if noise:
        optimizers["noise_opt"] = torch.optim.SGD(noise, lr=recipe.lr, momentum=0.9, weight_decay=0.0)
    return optimizers


def make_scheduler(optimizer, recipe: Recipe, epochs: int):
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=recipe.min_lr)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=recipe.patience,
                                                      min_lr=recipe.min_lr)


def fit_input_statistics(model, x) -> None:
    """Modules that standardise inputs inside the model (RPF's reference normalisation) learn the
    training split's statistics once, before training, so they are saved with the weights."""
    for module in model.modules():
        if hasattr(module, "fit_input_statistics"):
            module.fit_input_statistics(x)


def _materialize(model, x) -> None:
    """Lazy defense parameters (L2P σ, CTRW μ/σ) take the input's shape; create them before the optimiser."""
    if any(isinstance(p, UninitializedParameter) for p in model.parameters()):
        model.eval()
        with torch.no_grad():
            model(x)


@dataclass(frozen=True)
class TrainConfig:
    defense: str = "none"
    model: str = DEFAULT_MODEL
    dataset: str | None = None  # default: pneumoniamnist; a multi-input preset's own data set
    data_root: str | None = None
    recipe: str | None = None
    epochs: int | None = None
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    progress: bool = True
    limit: int | None = None  # train on the first N images only (tests)
    init: str | None = None  # start from this checkpoint's matching weights (e.g. the clean model)


def provenance(device) -> dict:
    """What every checkpoint's metadata records about the code and machine that trained it."""
    return {"packages": package_versions(), "git_commit": git_commit(), "machine": machine(torch.device(device))}


def _select(x, y, limit):
    return (x, y) if limit is None else (x[:limit], y[:limit])


def _update(model, loss, optimizers: dict, ctx: StepContext) -> None:
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers.values():
        optimizer.step()
    for restore in ctx.extras.pop("after_update", []):  # e.g. CAP removes its weight perturbation
        restore()
    for module in model.modules():
        if hasattr(module, "after_update"):  # e.g. Learn2Perturb's σ ≥ 0.01 clamp
            module.after_update()


def _initialize(model: nn.Module, path: str, dataset_key: str) -> dict:
    """Copy every weight of ``path`` whose name and shape match (a defense's own parameters keep their
    initialisation). On a small data set adversarial training from scratch can stay at the majority
    class for many epochs; starting from the clean model skips that. Returns what the metadata records."""
    state, meta = checkpoints.load_state(path)
    if meta.get("dataset") != dataset_key:
        raise UserError(f"--init checkpoint {path} was trained on {meta.get('dataset')!r}, not {dataset_key!r}")
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise UserError(f"--init checkpoint {path} shares no weight with {meta.get('model')!r} + this defense")
    model.load_state_dict(matched, strict=False)
    return {"checkpoint_sha256": meta.get("sha256"), "defense": meta.get("defense"),
            "copied": len(matched), "of": len(own)}


@dataclass
class _Images:
    """A single-input training split: the same images every epoch, shifted by up to 2 px when the recipe augments."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def size(self) -> int:
        return len(self.y)

    def epoch(self, generator: torch.Generator) -> tuple:
        return self.x, self.y

    def augmented(self, batch, generator: torch.Generator):
        return augment(batch, generator)


@dataclass
class _NamedInputs:
    """A multi-input preset's training data: a fresh pairing every epoch (paired sets) and its own augmentation."""

    dataset: object
    limit: int | None
    size: int

    def epoch(self, generator: torch.Generator) -> tuple:
        return self.dataset.epoch(generator, self.limit)

    def augmented(self, batch, generator: torch.Generator):
        return self.dataset.augmented(batch, generator)


@dataclass
class _Training:
    """One training run's state, set up once by :func:`_prepare` and advanced one epoch at a time."""

    cfg: TrainConfig
    info: object
    step: str  # the training step's name in TRAIN_STEPS
    dataset: object
    recipe: Recipe
    epochs: int
    device: torch.device
    generator: torch.Generator
    source: object  # _Images or _NamedInputs
    val_split: tuple
    val_matrix: torch.Tensor | None  # multi-label tasks: the (N, L) validation labels
    build_spec: dict
    model: nn.Module
    initialized: dict | None
    optimizers: dict
    scheduler: object
    ctx: StepContext
    robust_subset: tuple | None
    val_generator: torch.Generator
    per_epoch: int
    batches: int
    best: tuple = ((False, -1.0, -1.0), -1, None, {})
    history: list = field(default_factory=list)

    @property
    def select(self) -> str:
        return self.info.train_options.get("select", "clean")


def _images(cfg: TrainConfig, device) -> tuple:
    """An image model's data, its model (defense attached, input statistics fitted, optionally initialised)
    and its step's loss weights; multi-label tasks answer through per-label thresholds."""
    dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
    x_train, y_train = _select(*dataset.split("train"), cfg.limit)
    val_split = _select(*dataset.split("val"), cfg.limit)
    val_matrix = _select(*dataset.label_matrix("val"), cfg.limit)[1] if dataset.multilabel else None
    spec = {"model": cfg.model, "defense": cfg.defense, "num_classes": [dataset.num_classes]}
    if dataset.multilabel:  # one logit per label, answered through thresholds (robustmed.multilabel_fit)
        spec = {**spec, "num_classes": [len(dataset.labels)], "labels": list(dataset.labels)}
    model = build(**spec).to(device)
    seed_model(model, cfg.seed)
    fit_input_statistics(model, x_train.to(device))
    _materialize(model, take(x_train, slice(0, 2)).to(device))
    initialized = _initialize(model, cfg.init, dataset.key) if cfg.init else None
    return dataset, _Images(x_train, y_train), val_split, val_matrix, spec, model, initialized


def _named_inputs(cfg: TrainConfig, preset) -> tuple:
    """A multi-input preset's data (its own when ``--dataset`` is not given) and network, one logit per label."""
    if cfg.defense != "none":
        raise UserError(f"{cfg.model} trains without a defense; use --defense none")
    dataset = multimodal_data.load(preset, cfg.dataset, cfg.data_root)
    spec = {"model": preset.name, "defense": "none", "num_classes": [len(dataset.labels)],
            "config": {"labels": list(dataset.labels), "image_size": dataset.image_size}}
    model = build(**spec)
    if dataset.statistics is not None:
        model.network.features.set_statistics(dataset.statistics, dataset.image_size)
    x_val, y_val = dataset.label_matrix("val")
    val_split = (x_val, y_val) if cfg.limit is None else (take(x_val, slice(0, cfg.limit)), y_val[:cfg.limit])
    first = dataset.epoch(torch.Generator().manual_seed(cfg.seed), cfg.limit)[1]  # sizes and BCE weights
    source = _NamedInputs(dataset, cfg.limit, len(first))
    return dataset, source, val_split, val_split[1], spec, model.to(cfg.device), None, first


def _loss_weights(dataset, source, recipe: Recipe, first_labels, device) -> dict:
    """Class-balanced loss weights when the recipe asks: per class for cross-entropy, per label (positives
    against negatives) for a multi-input preset's BCE; class weights over 2^L joint label vectors would mean
    nothing, so an image model's multi-label BCE is unweighted, as MedMNIST's."""
    if recipe.class_weights != "balanced":
        return {}
    if first_labels is not None:
        positives = first_labels.float().sum(0).clamp_min(1)
        return {"pos_weight": ((len(first_labels) - positives) / positives).to(device)}
    if dataset.multilabel:
        return {}
    return {"class_weight": class_weights(source.y, dataset.num_classes).to(device)}


def _prepare(cfg: TrainConfig) -> _Training:
    """Data, model, optimisers and the fixed robust-validation subset, in the order the seeded streams are
    consumed."""
    info, preset = DEFENSES.get(cfg.defense), MODELS.get(cfg.model)
    recipe = RECIPES.get(cfg.recipe or default_recipe(cfg.model, info.cpu_recipe))
    epochs, device = cfg.epochs or recipe.epochs, torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if getattr(preset, "multimodal", False):
        dataset, source, val_split, val_matrix, spec, model, initialized, first = _named_inputs(cfg, preset)
        step = "bce"
    else:
        (dataset, source, val_split, val_matrix, spec, model, initialized), first = _images(cfg, device), None
        step = info.train_step
    optimizers = make_optimizers(model, recipe, info.train_options)
    scheduler = make_scheduler(optimizers["main"], recipe, epochs)
    ctx = StepContext(0, epochs, recipe, generator, {"optimizer": optimizers["main"], "optimizers": optimizers,
                                                     "options": info.train_options,
                                                     **_loss_weights(dataset, source, recipe, first, device)})
    robust_subset, val_generator = None, torch.Generator().manual_seed(cfg.seed + 1)
    if info.train_options.get("select", "clean") == "robust":  # a fixed, seeded subset; its own generator
        x_val, y_val = val_split  # leaves the training stream alone
        count = min(recipe.val_robust_images or len(y_val), len(y_val))
        chosen = torch.randperm(len(y_val), generator=val_generator)[:count]
        robust_subset = (take(x_val, chosen), y_val[chosen])
    per_epoch = -(-source.size // recipe.batch_size)
    return _Training(cfg, info, step, dataset, recipe, epochs, device, generator, source, val_split, val_matrix,
                     spec, model, initialized, optimizers, scheduler, ctx, robust_subset, val_generator, per_epoch,
                     min(per_epoch, recipe.batches_per_epoch or per_epoch))


def _train_epoch(run: _Training, epoch: int, advance) -> float:
    """One epoch of the training step (clean steps over the whole split while warming up); the mean loss."""
    recipe, options, ctx = run.recipe, run.info.train_options, run.ctx
    ctx.epoch = epoch
    warm = epoch < recipe.warmup_epochs
    # BN freezing needs statistics learnt first, so it only follows warm-up epochs (CPU recipes)
    ctx.extras["options"] = {**options, "bn_frozen": bool(options.get("freeze_bn_after_warmup"))
                             and recipe.warmup_epochs > 0 and not warm}
    set_mode(run.model, True, ctx.extras["options"]["bn_frozen"])
    step = standard_step if warm else TRAIN_STEPS.get(run.step)
    x_train, y_train = run.source.epoch(run.generator)
    order = torch.randperm(len(y_train), generator=run.generator)[:(run.per_epoch if warm else run.batches)
                                                                  * recipe.batch_size]
    total = 0.0
    for start in range(0, len(order), recipe.batch_size):
        idx = order[start:start + recipe.batch_size]
        xb, yb = to_device(take(x_train, idx), run.device), y_train[idx].to(run.device)
        if recipe.augment:
            xb = run.source.augmented(xb, run.generator)
        loss = step(run.model, xb, yb, ctx)
        _update(run.model, loss, run.optimizers, ctx)
        total += loss.item() * len(idx)
        advance()
    return total / len(order)


def _validate_epoch(run: _Training, epoch: int, loss: float) -> dict:
    """Score the epoch on validation data, step the schedule, keep it if it is the best selectable one."""
    warm = epoch < run.recipe.warmup_epochs
    selectable = not warm or epoch == run.epochs - 1  # warm-up epochs are clean training: never selected
    if run.dataset.multilabel:
        scores = multilabel_fit.scores(run.model, run.val_split[0], run.val_matrix)
    else:
        scores = validation_scores(run.model, *run.val_split, run.robust_subset, run.recipe,
                             run.select if selectable else "clean", run.val_generator, run.device)
    run.history.append({"epoch": epoch, "loss": loss, **scores})
    if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        run.scheduler.step(-scores["val_accuracy"])
    else:
        run.scheduler.step()
    key = multilabel_fit.selection_key(scores) if run.dataset.multilabel else selection_key(scores)
    if selectable and key > run.best[0]:
        run.best = (key, epoch, copy.deepcopy(run.model.state_dict()), scores)
    return scores


def train(cfg: TrainConfig) -> dict:
    """Train ``cfg.model`` with ``cfg.defense`` (an image model, or a multi-input preset with its per-label BCE),
    keep the best validation epoch, save checkpoint + metadata; returns the metadata."""
    if cfg.epochs is not None and cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.init and getattr(MODELS.get(cfg.model), "multimodal", False):
        raise UserError("--init is for the image models; the multi-input models train from scratch")
    run = _prepare(cfg)
    started = time.perf_counter()
    with progress_bar(cfg.progress) as bar:
        warm_epochs = min(run.recipe.warmup_epochs, run.epochs)
        task = bar.add_task(f"train {cfg.defense}",
                            total=warm_epochs * run.per_epoch + (run.epochs - warm_epochs) * run.batches)
        for epoch in range(run.epochs):
            loss = _train_epoch(run, epoch, lambda: bar.advance(task))
            scores = _validate_epoch(run, epoch, loss)
            shown = " ".join(f"{k.replace('_accuracy', '')} {v:.3f}" for k, v in scores.items())
            bar.update(task, description=f"train {cfg.defense} {shown}")
    return _save(run, time.perf_counter() - started)


def _save(run: _Training, training_time: float) -> dict:
    """The kept epoch's weights tested and written with the metadata sidecar; returns the metadata."""
    cfg, dataset, model, best = run.cfg, run.dataset, run.model, run.best
    model.load_state_dict(best[2])
    if dataset.multilabel:
        tested = multilabel_fit.finish(model, run.val_split[0], run.val_matrix, *dataset.label_matrix("test"))
        warnings = multilabel_fit.warnings(best[3])
    else:
        test_acc, test_draws = test_accuracy(model, *dataset.split("test"), run.device)
        tested = {"selection": run.select, "test_accuracy": test_acc, "test_accuracy_draws": test_draws}
        warnings = selection_warnings(best[3], dataset.num_classes)
    out = checkpoints.destination(cfg.out, run.build_spec["model"], dataset.key, cfg.defense)
    metadata = {
        "model": run.build_spec["model"], "defense": cfg.defense, "defense_version": run.info.version,
        "dataset": dataset.key, "dataset_sha256": dataset.sha256, "recipe": asdict(run.recipe),
        "train_step": run.step, "train_options": run.info.train_options, "seed": cfg.seed, "epochs": run.epochs,
        "batches_per_epoch": run.batches, "best_epoch": best[1], "train_images": run.source.size,
        **({"init": run.initialized} if run.initialized else {}),
        **best[3],
        "warnings": warnings,
        **tested,
        "training_time_s": round(training_time, 1), "history": run.history, "build": run.build_spec,
        **getattr(dataset, "training_record", dict)(),
        **provenance(run.device),
    }
    metadata = checkpoints.save(model.state_dict(), out, metadata)
    metadata["checkpoint"] = str(out)
    return metadata
