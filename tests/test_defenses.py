"""Contract tests over the defense registry: metadata, training-step gradients, (non-)determinism."""
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from robustmed.defenses import DEFENSES
from robustmed.defenses.rpan import straight_through
from robustmed.factory import build
from robustmed.randomness import is_randomized
from robustmed.recipes import RECIPES
from robustmed.steps import TRAIN_STEPS, StepContext
from robustmed.training import make_optimizers

ALL = sorted(DEFENSES.names())  # every test below iterates the registry, so a new defense is covered unasked
RANDOMIZED = sorted(n for n in ALL if DEFENSES.get(n).randomized)
DETERMINISTIC = sorted(n for n in ALL if not DEFENSES.get(n).randomized)
TINY_RECIPE = replace(RECIPES.get("cpu-at"), train_attack_steps=1)
SMALL = {"widths": (16, 32), "depths": (1, 1)}  # two stages keep every module kind, at a fraction of the cost


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build("mail-rn18-mini", name, (2,), config=SMALL)


def _batch(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=gen), torch.tensor([0, 1] * (n // 2))


def test_registry_holds_the_papers_defenses():
    assert set(RANDOMIZED) == {"pni", "l2p", "rpf", "ctrw", "rpan", "rpan-code"}
    assert set(DETERMINISTIC) == {"none", "pgd-at", "dbn-clean", "dbn-adv", "cap"}


@pytest.mark.parametrize("name", ALL)
def test_metadata_is_complete_and_honest(name):
    info = DEFENSES.get(name)
    assert info.family and info.reference and info.description and info.forward_passes >= 1
    assert info.train_step in TRAIN_STEPS
    assert is_randomized(_model(name).eval()) == info.randomized
    assert bool(info.nondiff_ops) == (name == "rpan-code")


@pytest.mark.parametrize("name", ALL)
def test_training_step_gives_every_trainable_parameter_a_gradient(name):
    info = DEFENSES.get(name)
    model = _model(name).train()
    x, y = _batch(2)
    model(x)  # materialises lazily shaped noise maps (L2P σ, CTRW μ/σ) before the optimisers exist
    optimizers = make_optimizers(model, TINY_RECIPE, info.train_options)
    ctx = StepContext(0, 3, TINY_RECIPE, torch.Generator().manual_seed(0),
                      {"optimizers": optimizers, "optimizer": optimizers["main"], "options": info.train_options})
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    # clips (rpan-code) can zero whole gradients on a tiny batch by design; BPDA checks the wiring
    with straight_through(model) if info.nondiff_ops else nullcontext():
        loss = TRAIN_STEPS.get(info.train_step)(model, x, y, ctx)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    for restore in ctx.extras.pop("after_update", []):
        restore()


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_defenses_repeat_in_eval_mode(name):
    model, (x, _) = _model(name).eval(), _batch()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", RANDOMIZED)
def test_randomized_defenses_vary_in_eval_mode(name):
    model, (x, _) = _model(name).eval(), _batch()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # noise is never switched off by eval()


def test_undefended_mail_is_untouched_by_the_defense_modules():
    """The shipped `none` checkpoint must still load: same keys, no extra state from new Sites."""
    plain = _model("none")
    keys = set(plain.state_dict())
    assert not any("noise" in k for k in keys)
    assert _model("pgd-at").state_dict().keys() == keys
    assert _model("cap").state_dict().keys() == keys
