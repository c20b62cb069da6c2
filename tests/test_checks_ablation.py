"""The defense-removed model (B11, D3) per registered defense, and the ablation checks on clean and broken bases."""
import pytest
import torch

from broken_models import NoisyLinear
from robustmed.checks.removal import remove_defense
from robustmed.defenses import DEFENSES
from robustmed.defenses.rpan import MANNoise, SIGMA_N
from robustmed.factory import build
from robustmed.randomness import is_randomized
from test_checks import evaluate

SMALL = {"widths": (16, 32), "depths": (1, 1)}  # every module kind, at a fraction of the cost
REMOVED = {  # defense → the components bypassed in its removed model
    "none": set(), "pgd-at": set(), "cap": set(),
    "dbn-clean": {"DualBatchNorm2d"}, "dbn-adv": {"DualBatchNorm2d"},
    "pni": {"NoisyWeight"}, "l2p": {"PerturbationInjection"}, "rpf": {"RandomProjectionConv"},
    "ctrw": {"TrainableRandomWeight"}, "rpan": {"RandomProjectionConv", "MANNoise"},
    "rpan-code": {"MANNoise", "SeededDropout"},
}


def _model(name: str):
    torch.manual_seed(0)
    model = build("mail-rn18-mini", name, (2,), config=SMALL).eval()
    model(torch.rand(2, 1, 16, 16))  # materialises lazily shaped noise maps (L2P σ, CTRW μ/σ)
    return model


def test_every_registered_defense_has_a_stated_removal():
    assert set(REMOVED) == set(DEFENSES.names())


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_removed_model_is_deterministic_and_the_deployed_one_untouched(name):
    model = _model(name)
    removed = remove_defense(model)
    assert set(removed.components) == REMOVED[name] and removed.leftover == []
    assert not is_randomized(removed.model)
    assert is_randomized(model) == DEFENSES.get(name).randomized  # a copy was changed, not the deployed model
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(removed.model(x), removed.model(x))


def test_removal_replaces_noise_by_its_mean():
    model = _model("rpan")
    man = next(m for m in model.modules() if isinstance(m, MANNoise))
    replaced = remove_defense(model).model.get_submodule(
        next(n for n, m in model.named_modules() if m is man))
    t = torch.randn(2, man.delta.numel(), 4, 4)
    expected = t * (man.delta.detach() * SIGMA_N ** 2).view(1, -1, 1, 1)  # E[δ(n + n²)] = δσ_n²
    assert torch.allclose(replaced(t), expected)


def test_dbn_without_its_defense_is_the_clean_route():
    model = _model("dbn-clean")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(remove_defense(model).model(x), model(x))  # deployed through BN_clean already


def test_removable_defense_on_a_breakable_base_passes_b11_and_d3(pneumonia):
    x, y = pneumonia.split("test")
    findings = evaluate(NoisyLinear().eval(), x[:24], y[:24], "pgd3", "full")
    assert not findings["B11"].fired and not findings["D3"].fired
    assert findings["D3"].details["robust_removed_large"] == 0.0  # the attack breaks the base at 16/255
