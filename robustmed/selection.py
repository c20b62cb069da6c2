"""Which epoch `train` keeps: validation scores (clean, and robust under EOT-PGD for adversarially trained
defenses; expectations over draws for randomized models), the selection rule, and the test figure recorded."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from robustmed.attacks.pgd import project, uniform_start
from robustmed.judging import clean_draws
from robustmed.randomness import is_randomized, seed_model
from robustmed.recipes import Recipe
from robustmed.tensors import predict, take


def accuracy(model, x, y, device) -> float:
    model.eval()
    labels = y if y.ndim == 1 else y[:, 0]
    return (predict(model, x, device=device) == labels).float().mean().item()



def balanced_accuracy(model, x, y, device) -> float:
    """Mean per-class recall (check F1): the clean criterion for imbalanced medical data."""
    model.eval()
    labels = y if y.ndim == 1 else y[:, 0]
    hits = predict(model, x, device=device) == labels
    return torch.stack([hits[labels == c].float().mean() for c in labels.unique()]).mean().item()



def eot_pgd(model, x, y, *, eps: float, steps: int, step_size: float, eot: int,
            generator: torch.Generator) -> torch.Tensor:
    """PGD whose gradient is the mean over ``eot`` separate forward/backward passes (fresh draws each).

    Batch-shared randomness (PNI, L2P, RPF, CTRW) needs separate passes, not batch replication.
    """
    x_adv = project(x + uniform_start(x, eps, generator), x, eps)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad = sum(torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)[0]
                   for _ in range(eot))
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()



def robust_accuracy(model, x, y, recipe: Recipe, generator: torch.Generator, device,
                    batch: int = 128) -> tuple[float, float]:
    """(accuracy, balanced accuracy) of single draws on EOT-PGD examples (EOT only for randomized models).

    Selection uses the balanced figure: a model that collapsed to the majority class keeps a robust
    accuracy equal to the majority rate (nothing to attack), but its robust balanced accuracy is at most 0.5.
    """
    model.eval()
    labels = y if y.ndim == 1 else y[:, 0]
    eot = recipe.val_eot if is_randomized(model) else 1
    hits = []
    for start in range(0, len(labels), batch):
        xb, yb = take(x, slice(start, start + batch)).to(device), labels[start:start + batch].to(device)
        x_adv = eot_pgd(model, xb, yb, eps=recipe.train_eps, steps=recipe.val_attack_steps,
                        step_size=2.5 * recipe.train_eps / recipe.val_attack_steps, eot=eot, generator=generator)
        with torch.no_grad():
            hits.append((model(x_adv).argmax(1) == yb).cpu())
    hits = torch.cat(hits)
    labels = labels.cpu()
    balanced = torch.stack([hits[labels == c].float().mean() for c in labels.unique()]).mean().item()
    return hits.float().mean().item(), balanced



TEST_DRAWS = 10



def test_accuracy(model, x, y, device, draws: int = TEST_DRAWS) -> tuple[float, int]:
    """Clean test accuracy as `bench` reports it: for a randomized model the mean over ``draws``
    inference draws (check C4), so the recorded figure is an expectation, not one lucky draw."""
    if not is_randomized(model.eval()):
        return accuracy(model, x, y, device), 1
    seed_model(model, 0)
    _, _, hits = clean_draws(model, x, y, 256, device, draws)
    return (hits.float() / draws).mean().item(), draws



# Clean validation draws of a randomized model (check C4): one draw makes selection follow the noise of the
# draw rather than the weights (docs/models.md, Training).
VAL_DRAWS = 10


def clean_scores(model, x, y, device) -> dict:
    """Clean (accuracy, balanced accuracy); for a randomized model the expectation over VAL_DRAWS draws."""
    if not is_randomized(model.eval()):
        return {"val_accuracy": accuracy(model, x, y, device),
                "val_balanced_accuracy": balanced_accuracy(model, x, y, device)}
    labels = y if y.ndim == 1 else y[:, 0]
    _, _, hits = clean_draws(model, x, labels, 256, device, VAL_DRAWS)
    rate = hits.float() / VAL_DRAWS
    return {"val_accuracy": rate.mean().item(), "val_draws": VAL_DRAWS,
            "val_balanced_accuracy": torch.stack([rate[labels == c].mean() for c in labels.unique()]).mean().item()}



def validation_scores(model, x_val, y_val, robust_subset, recipe, select: str, generator, device) -> dict:
    scores = clean_scores(model, x_val, y_val, device)
    if select == "robust":
        xr, yr = robust_subset
        scores["robust_val_accuracy"], scores["robust_val_balanced_accuracy"] = robust_accuracy(
            model, xr, yr, recipe, generator, device)
    return scores



# Clean balanced validation accuracy above which an epoch counts as a classifier: one standard error above
# the 0.6 a shipped checkpoint must reach on the test split, since a near-constant epoch always wins on
# "robust" balanced accuracy (the measurements that set it: docs/models.md, Training).
LEARNED = 0.65



def selection_key(scores: dict) -> tuple[bool, float, float]:
    """Robust balanced accuracy first when measured (Rice et al.; balanced, check F1), clean balanced
    accuracy breaks ties. An epoch that has not left chance (a constant predictor scores 0.5 clean
    and 0.5 "robust" balanced accuracy, more than any real classifier under attack on a small,
    hard data set such as BreastMNIST) ranks below every epoch that has."""
    clean = scores["val_balanced_accuracy"]
    return clean > LEARNED, scores.get("robust_val_balanced_accuracy", 0.0), clean



def selection_warnings(scores: dict, num_classes: int) -> list[str]:
    """A warning when even the selected epoch has not left chance: its accuracy is the label mix's."""
    balanced = scores.get("val_balanced_accuracy")
    if balanced is None or balanced > LEARNED:
        return []
    return [f"the selected epoch's balanced validation accuracy is {balanced:.3f} (chance {1 / num_classes:.3f}, "
            f"a classifier scores above {LEARNED}): it has not learnt to tell the classes apart; "
            "train for more epochs (--epochs) or start from a clean model (--init)"]
