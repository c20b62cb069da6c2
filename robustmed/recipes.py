"""The one table of training recipes (optimiser, schedule, budgets), looked up by name; every trained
checkpoint records the recipe it used."""
from __future__ import annotations

from dataclasses import dataclass, replace

from robustmed.registry import Registry


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule (the paper's presets; ``cpu`` trains the mini model in minutes)."""

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
    # adversarial training and robust model selection (the paper's defaults)
    train_eps: float = 4 / 255
    train_attack_steps: int = 10
    train_attack_step: float = 1 / 255
    batches_per_epoch: int | None = None  # None: the whole training split every epoch
    val_attack_steps: int = 10
    val_eot: int = 4  # gradient samples per step on randomized models
    val_robust_images: int | None = None  # None: the whole validation split
    # "balanced": CE weighted by inverse class frequency, since MedMNIST's test splits are less skewed than
    # their training splits and an unweighted model learns the training prior (docs/models.md, Training)
    class_weights: str = "none"
    warmup_epochs: int = 0  # clean epochs over the whole split before the defense's step (CPU budget only)
    note: str = ""


RECIPES: Registry[Recipe] = Registry("recipe")
RECIPES.register("cpu", Recipe("cpu", "adam", 2e-3, 8, 128, 1e-4, "cosine", class_weights="balanced"))
RECIPES.register("cpu-at", Recipe(
    "cpu-at", "adam", 2e-3, 6, 128, 1e-4, "cosine", train_attack_steps=3, train_attack_step=2 / 255,
    batches_per_epoch=12, val_robust_images=96, warmup_epochs=2, class_weights="balanced",
    note="CPU budget, not the spec recipe: two clean warm-up epochs over the whole split (the mini model needs "
         "two epochs to leave the majority class), then PGD-3 (step 2/255) instead of PGD-10 (step 1/255) on "
         "12 random batches of 128 per epoch, 6 epochs in all; class-balanced CE as in the cpu recipe; "
         "selection on robust balanced accuracy (EOT-PGD-10, N = 4 on randomized models) on 96 validation images",
))
RECIPES.register("cpu-at-small", replace(
    RECIPES.get("cpu-at"), name="cpu-at-small", batches_per_epoch=None, warmup_epochs=40,
    note="cpu-at for splits of a few hundred images (BreastMNIST: 546, 5 batches an epoch): 40 clean warm-up "
         "epochs (200 steps; cpu-at's two give 10, too few for a model whose weight or feature noise starts at "
         "full strength to learn around it), then every batch of the split in each adversarial epoch",
))
RECIPES.register("paper", Recipe("paper", "sgd", 1e-3, 200, 32, 5e-4, "plateau", min_lr=1e-6, patience=10))
RECIPES.register("code", Recipe("code", "adam", 1e-4, 200, 32, 0.0, "plateau", min_lr=1e-5, patience=70))
RECIPES.register("cpu-mmcaf", Recipe(
    "cpu-mmcaf", "adam", 2e-3, 30, 32, 1e-4, "cosine", class_weights="balanced",
    note="CPU budget for mmcaf-net (the paper: SGD, lr 1e-4, weight decay 0.01, batch 4, 50 epochs, pretrained "
         "PENet): Adam from scratch, batch 32, cosine schedule; random flips of the volume (the shape features are "
         "flip-invariant, so both modalities stay consistent); class-balanced BCE"))
RECIPES.register("cpu-iimgf", Recipe(
    "cpu-iimgf", "adam", 2e-3, 40, 32, 1e-4, "cosine", class_weights="balanced",
    note="CPU budget for iimgf-net (the paper: AdamW, lr 1e-4, weight decay 1e-4, batch 32, pretrained VMamba): "
         "Adam from scratch, cosine schedule; a fresh random index pairing of the two training sets every epoch "
         "(the MAIL authors' pairing), each image shifted by up to 2 px; class-balanced BCE per label"))


def default_recipe(model: str, defense_recipe: str) -> str:
    """The recipe ``train`` uses when none is given: a multi-input preset's own CPU budget, the defense's CPU
    recipe for ``-mini`` models, else the paper's."""
    if model in MODEL_RECIPES:
        return MODEL_RECIPES[model]
    return defense_recipe if model.endswith("-mini") else "paper"


MODEL_RECIPES = {"mmcaf-net": "cpu-mmcaf", "iimgf-net": "cpu-iimgf"}
