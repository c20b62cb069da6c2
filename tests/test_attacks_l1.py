"""L1 where the kernels allow it: aa:canonical over pyautoattack's L1 kernels (APGD on the 3ε → 2ε → ε schedule,
5 APGD-CE starts, 5 APGD-T targets, FAB-T, Square) flags what AutoAttack(norm='L1') flags; Square and the null
baseline run in L1; rows store ‖δ‖₁ and B1 holds them to it; attacks without an L1 step refuse it in one line."""
import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from robustmed.attacks import autoattack, parse_attack
from robustmed.attacks.autoattack import run_autoattack
from robustmed.errors import UserError
from robustmed.harness import benchmark
from robustmed.judging import InvariantError, check_budget
from test_attacks_autoattack import SEED, _ten_class_batch

STEPS, QUERIES = 10, 200


def _reference_l1(model, x, y, eps: float):
    """pyautoattack's standard L1 cascade with its L1 settings, its kernels at the small budgets."""
    aa = AutoAttack(model, norm="L1", eps=eps, seed=SEED, version="standard")
    aa.apgd = APGDAttack(model, n_restarts=5, n_iter=STEPS, eps=eps, norm="L1", eot_iter=1, rho=.75, seed=SEED,
                         device="cpu", logger=aa.logger, use_largereps=True)
    aa.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=STEPS, eps=eps, norm="L1", eot_iter=1,
                                           rho=.75, seed=SEED, device="cpu", logger=aa.logger, n_target_classes=5,
                                           use_largereps=True)
    aa.fab = FABAttack_PT(model, n_restarts=1, n_iter=STEPS, eps=eps, seed=SEED, norm="L1", device="cpu",
                          n_target_classes=9)
    aa.square = SquareAttack(model, p_init=.8, n_queries=QUERIES, eps=eps, norm="L1", n_restarts=1, seed=SEED,
                             device="cpu", resc_schedule=False)
    return aa.run_standard_evaluation(x, y, batch_size=250)


def _in_ball(x_adv, x, eps):
    assert (x_adv - x).flatten(1).abs().sum(1).max() <= eps * (1 + 1e-6) + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("eps", [0.25, 0.5])
def test_canonical_l1_matches_pyautoattack(monkeypatch, eps):
    """Per-sample flags identical to AutoAttack(norm='L1', version='standard'), and x_adv where broken."""
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", QUERIES)
    model, x, y = _ten_class_batch(12)
    x_ref, y_ref = _reference_l1(model, x, y, eps)
    spec = parse_attack(f"aa{STEPS}:canonical,norm=l1")
    ours = run_autoattack(model, x, y, spec=spec, eps=eps, seed=SEED)
    assert torch.equal(ours.success, y_ref != y)
    assert torch.equal(ours.x_adv[ours.success], x_ref[ours.success])
    _in_ball(ours.x_adv, x, eps)
    assert 0 < int(ours.success.sum()) < len(y)  # the budgets leave both broken and robust samples


def test_l1_rows_store_their_size_and_hold_to_the_budget(monkeypatch):
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", QUERIES)
    model, x, y = _ten_class_batch(12)
    rows = benchmark(model, x, y, attack=["aa5:canonical,norm=l1", "square100:norm=l1"], eps=1.0, seed=SEED)
    assert set(rows.norm) == {"L1"} and (rows.l1 <= 1.0 + 1e-5).all() and rows.success.any()
    assert (rows.l1 >= rows.l2 - 1e-6).all() and (rows.l2 >= rows.linf - 1e-6).all()
    extra = parse_attack("aa:canonical,norm=l1")
    adapted = autoattack.FAMILIES.get("aa").adapt(extra, 10).extra
    assert adapted["restarts"] == {"apgd-ce": 5} and adapted["apgd_target_classes"] == 5 and adapted["largereps"]


@pytest.mark.parametrize("text, hint", [("aa:norm=l1", "aa:canonical"), ("aa-rand:norm=l1", "aa-rand:canonical"),
                                        ("pgd20:norm=l1", "aa:canonical or square for L1")])
def test_attacks_without_an_l1_step_refuse_it_naming_the_fix(text, hint):
    with pytest.raises(UserError, match=hint):
        parse_attack(text)


def test_b1_refuses_a_candidate_outside_the_l1_ball():
    """Broken fixture: a change of 0.1 on 20 pixels has ‖δ‖₁ = 2, inside the L∞ and L2 balls of the same ε = 1."""
    x = torch.full((1, 1, 8, 8), 0.5)
    x_adv = x.clone()
    x_adv.view(-1)[:20] += 0.1
    assert check_budget(x_adv, x, 1.0, norm="Linf") <= 1.0 and check_budget(x_adv, x, 1.0, norm="L2") <= 1.0
    with pytest.raises(InvariantError, match="‖δ‖₁"):
        check_budget(x_adv, x, 1.0, norm="L1")


def test_only_the_standard_cascade_takes_autoattacks_l1_setting():
    """pyautoattack's rand version keeps one APGD start without the 3ε → ε schedule under L1; its standard version
    takes 5 starts, 5 targets and the schedule, which needs at least 5 steps to give every phase one."""
    family = autoattack.FAMILIES.get("aa-rand")
    rand = family.adapt(parse_attack("aa-rand:canonical,norm=l1"), 2).extra
    assert rand["restarts"] == {"apgd-ce": 2} and "largereps" not in rand  # C = 2: its own two CE starts
    assert "largereps" not in family.adapt(parse_attack("aa-rand:canonical,norm=l1"), 10).extra
    assert autoattack.FAMILIES.get("aa").adapt(parse_attack("aa:canonical,norm=l1"), 2).extra["largereps"]
    with pytest.raises(UserError, match="at least 5"):
        autoattack.FAMILIES.get("aa").adapt(parse_attack("aa4:canonical,norm=l1"), 10)


def test_a10_reads_the_values_of_every_input_of_a_multi_input_model():
    """A10's whole-image limits count every input's values; an L∞ run of a two-input model passes, not 'could not
    run' (a mapping has no sample 0)."""
    from robustmed.checks.context import CheckContext
    from robustmed.checks.preflight import budget_sanity

    x = {"image": torch.rand(4, 1, 8, 8), "table": torch.rand(4, 3)}
    ctx = CheckContext(model=torch.nn.Identity(), x=x, y=torch.zeros(4, dtype=torch.long), eps=[4 / 255],
                       specs=[parse_attack("pgd10")], num_classes=2)
    assert ctx.values_per_sample == 67
    finding = budget_sanity(ctx)
    assert not finding.fired and finding.reason.startswith("ε ≤ 16/255")
