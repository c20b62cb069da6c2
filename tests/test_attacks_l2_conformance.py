"""L2 AutoAttack against pyautoattack's: aa:canonical with norm=l2 flags what AutoAttack(norm='L2') flags, and
the fast aa with norm=l2 breaks every sample it breaks, on the 10-class conformance model at small budgets."""
import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from conftest import TinyCNN
from robustmed.attacks import autoattack, parse_attack
from robustmed.attacks.autoattack import run_autoattack

SEED, STEPS, QUERIES = 123, 10, 200


def _ten_class_batch(n: int):
    """A seeded 10-class model with varied predictions; labels = clean predictions (all attackable)."""
    model = TinyCNN(classes=10, seed=0).eval()
    with torch.no_grad():
        model.net[-1].weight.mul_(20)
        model.net[-1].bias.zero_()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _reference(model, x, y, eps: float):
    """pyautoattack's standard L2 cascade, its kernels rebuilt with norm='L2' at the small budgets."""
    aa = AutoAttack(model, norm="L2", eps=eps, seed=SEED, version="standard")
    aa.apgd = APGDAttack(model, n_restarts=1, n_iter=STEPS, eps=eps, norm="L2", eot_iter=1, rho=.75, seed=SEED,
                         device="cpu", logger=aa.logger)
    aa.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=STEPS, eps=eps, norm="L2", eot_iter=1,
                                           rho=.75, seed=SEED, device="cpu", logger=aa.logger)
    aa.fab = FABAttack_PT(model, n_restarts=1, n_iter=STEPS, eps=eps, seed=SEED, norm="L2", device="cpu",
                          n_target_classes=9)
    aa.square = SquareAttack(model, p_init=.8, n_queries=QUERIES, eps=eps, norm="L2", n_restarts=1, seed=SEED,
                             device="cpu", resc_schedule=False)
    return aa.run_standard_evaluation(x, y, batch_size=250)


def _in_ball(result, x, eps):
    delta = (result.x_adv - x).flatten(1).norm(dim=1)
    assert delta.max() <= eps * (1 + 1e-6) + 1e-6 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_canonical_l2_matches_pyautoattack(monkeypatch, eps):
    """Per-sample flags identical to AutoAttack(norm='L2', version='standard'), and x_adv where broken."""
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", QUERIES)
    model, x, y = _ten_class_batch(12)
    x_ref, y_ref = _reference(model, x, y, eps)
    ours = run_autoattack(model, x, y, spec=parse_attack(f"aa{STEPS}:canonical,norm=l2"), eps=eps, seed=SEED)
    assert torch.equal(ours.success, y_ref != y)
    assert torch.equal(ours.x_adv[ours.success], x_ref[ours.success])
    _in_ball(ours, x, eps)
    assert 0 < int(ours.success.sum()) < len(y)  # the budgets leave both broken and robust samples


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fast_l2_at_least_as_strong_as_pyautoattack(monkeypatch, eps):
    """The early-exit L2 cascade breaks every sample pyautoattack's L2 AutoAttack breaks."""
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", QUERIES)
    model, x, y = _ten_class_batch(12)
    _, y_ref = _reference(model, x, y, eps)
    ours = run_autoattack(model, x, y, spec=parse_attack(f"aa{STEPS}:norm=l2"), eps=eps, seed=SEED)
    assert not ((y_ref != y) & ~ours.success).any()
    _in_ball(ours, x, eps)
