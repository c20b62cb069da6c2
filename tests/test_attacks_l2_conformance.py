"""L2 AutoAttack against pyautoattack's: aa:canonical with norm=l2 flags what AutoAttack(norm='L2') flags, and
the fast aa with norm=l2 breaks every sample it breaks, on the 10-class conformance model at small budgets."""
import pytest
import torch
from robustmed.attacks import autoattack, parse_attack
from robustmed.attacks.autoattack import run_autoattack
from test_attacks_autoattack import SEED, _reference, _ten_class_batch

STEPS, QUERIES = 10, 200


def _in_ball(result, x, eps):
    delta = (result.x_adv - x).flatten(1).norm(dim=1)
    assert delta.max() <= eps * (1 + 1e-6) + 1e-6 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1


def _against_reference(monkeypatch, eps: float, attack: str):
    """The conformance batch, pyautoattack's L2 AutoAttack on it and ``attack`` run by robustmed, same budgets."""
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", QUERIES)
    model, x, y = _ten_class_batch(12)
    x_ref, y_ref = _reference(model, x, y, n_iter=STEPS, queries=QUERIES, eps=eps, norm="L2")
    ours = run_autoattack(model, x, y, spec=parse_attack(attack), eps=eps, seed=SEED)
    return x, y, x_ref, y_ref, ours


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_canonical_l2_matches_pyautoattack(monkeypatch, eps):
    """Per-sample flags identical to AutoAttack(norm='L2', version='standard'), and x_adv where broken."""
    x, y, x_ref, y_ref, ours = _against_reference(monkeypatch, eps, f"aa{STEPS}:canonical,norm=l2")
    assert torch.equal(ours.success, y_ref != y)
    assert torch.equal(ours.x_adv[ours.success], x_ref[ours.success])
    _in_ball(ours, x, eps)
    assert 0 < int(ours.success.sum()) < len(y)  # the budgets leave both broken and robust samples


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fast_l2_at_least_as_strong_as_pyautoattack(monkeypatch, eps):
    """The early-exit L2 cascade breaks every sample pyautoattack's L2 AutoAttack breaks."""
    x, y, _, y_ref, ours = _against_reference(monkeypatch, eps, f"aa{STEPS}:norm=l2")
    assert not ((y_ref != y) & ~ours.success).any()
    _in_ball(ours, x, eps)
