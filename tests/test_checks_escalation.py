"""The convergence checks (B6, B14, B15) attack harder before they flag: more steps, then AutoAttack."""
import numpy as np
import pytest
import torch

from robustmed.attacks import parse_attack
from robustmed.checks import invariants
from robustmed.checks.context import CheckContext
from robustmed.checks.invariants import B15, ESCALATION_STEPS, escalated
from robustmed.checks.subset import Subset

N = 40


@pytest.fixture
def ctx_and_subset():
    x, y = torch.zeros(N, 1, 2, 2), torch.zeros(N, dtype=torch.long)
    ctx = CheckContext(torch.nn.Identity(), x, y, [4 / 255], [parse_attack("pgd20")], num_classes=2)
    return ctx, Subset(np.arange(N), x, y, 4 / 255)


def _measure(fires_until: int, strongest: dict):
    """A stand-in measurement: fires below ``fires_until`` steps; ``strongest`` maps steps to its robust fraction."""
    calls = []

    def measure(ctx, sub, steps):
        calls.append(steps)
        return B15.outcome(steps < fires_until, f"at {steps} steps", strongest=strongest.get(steps, 0.5))
    return measure, calls


def test_a_sign_that_goes_away_with_more_steps_passes_and_names_the_budget(ctx_and_subset, monkeypatch):
    monkeypatch.setattr(invariants, "attack_robust", lambda *a, **k: pytest.fail("AutoAttack not needed"))
    measure, calls = _measure(fires_until=80, strongest={})
    finding = escalated(B15, measure, *ctx_and_subset)
    assert calls == [20, 40, 80] and not finding.fired
    assert finding.details["escalated_from"] == 20 and finding.details["escalated_to"] == 80
    assert finding.reason.startswith("20 steps had not converged (at 20 steps); escalated to 80 steps")


def test_a_sign_pgd_keeps_is_settled_by_autoattack_when_it_is_at_least_as_strong(ctx_and_subset, monkeypatch):
    robust = np.zeros(N, dtype=bool)
    robust[:4] = True  # AutoAttack: 10% robust
    monkeypatch.setattr(invariants, "attack_robust", lambda ctx, sub, attack: robust)
    measure, calls = _measure(fires_until=10 ** 6, strongest={20: 0.3, 160: 0.125})
    finding = escalated(B15, measure, *ctx_and_subset)
    assert calls == [20, 40, 80, 160, 320] and calls[-1] == ESCALATION_STEPS
    assert not finding.fired and finding.details["final_attack"] == "aa" and finding.details["final_robust"] == 0.1
    assert "evaluate with aa" in finding.reason


def test_a_sign_that_autoattack_does_not_settle_fires(ctx_and_subset, monkeypatch):
    robust = np.zeros(N, dtype=bool)
    robust[:20] = True  # AutoAttack: 50% robust, far above the best PGD's 12.5%
    monkeypatch.setattr(invariants, "attack_robust", lambda ctx, sub, attack: robust)
    measure, _ = _measure(fires_until=10 ** 6, strongest={160: 0.125})
    finding = escalated(B15, measure, *ctx_and_subset)
    assert finding.fired and finding.severity == "FLAG"
    assert "still so at 320 steps, and aa leaves 50.0% robust against the best PGD's 12.5%" in finding.reason


def test_randomized_models_escalate_to_the_eot_autoattack(ctx_and_subset, monkeypatch):
    ctx, sub = ctx_and_subset
    ctx.extras["randomized"] = True
    asked = []
    monkeypatch.setattr(invariants, "attack_robust", lambda c, s, attack: asked.append(attack) or np.zeros(N, bool))
    escalated(B15, _measure(10 ** 6, {})[0], ctx, sub)
    assert asked == ["aa-rand"]


def test_the_checks_share_one_autoattack_run(ctx_and_subset, monkeypatch):
    runs = []
    monkeypatch.setattr(invariants, "attack_robust", lambda c, s, attack: runs.append(attack) or np.zeros(N, bool))
    for _ in range(3):  # B6, B14 and B15 on the same subset
        escalated(B15, _measure(10 ** 6, {})[0], *ctx_and_subset)
    assert runs == ["aa"]
