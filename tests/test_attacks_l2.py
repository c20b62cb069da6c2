"""The L2 threat model: PGD against torchattacks' PGDL2 from the same start, the budget check in L2, rows that
carry the candidate's L2 and L∞ sizes, and AutoAttack in L2 through the harness."""
import pytest
import torch
import torchattacks

from conftest import TinyCNN
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import run_pgd
from robustmed.errors import UserError
from robustmed.harness import benchmark
from robustmed.judging import InvariantError, check_budget

EPS = 0.5


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(11)
    return torch.rand(8, 1, 28, 28, generator=gen), torch.randint(0, 2, (8,), generator=gen)


def test_l2_pgd_matches_torchattacks_pgdl2_given_the_same_start(tiny_model, batch):
    from dataclasses import replace

    x, y = batch
    torch.manual_seed(5)
    reference = torchattacks.PGDL2(tiny_model, eps=EPS, alpha=0.1, steps=10, random_start=True)(x, y)
    torch.manual_seed(5)
    delta = torch.empty_like(x).normal_()  # the start torchattacks drew: a direction at a uniform radius
    norms = delta.view(len(x), -1).norm(p=2, dim=1).view(-1, 1, 1, 1)
    delta *= torch.zeros_like(norms).uniform_(0, 1) / norms * EPS
    spec = replace(parse_attack("pgd10:alpha=0.1,norm=l2"), keep_best=False, early_stop=False, eot=1)
    ours = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=delta).x_adv
    assert (ours - reference).abs().max().item() <= 1e-5
    assert (ours - x).flatten(1).norm(dim=1).max().item() > EPS / 2  # the attack moved


def test_the_budget_check_reads_the_attacks_norm(batch):
    x, _ = batch
    direction = torch.randn_like(x)
    inside = (x + 0.9 * EPS * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).clamp(0, 1)
    assert check_budget(inside, x, EPS, norm="L2") <= EPS
    with pytest.raises(InvariantError, match="‖δ‖₂"):
        check_budget(x + 2 * EPS * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1), x, EPS,
                     bounds=(-9, 9), norm="L2")
    with pytest.raises(InvariantError, match="‖δ‖∞"):
        check_budget(inside, x, 1e-4)  # an L2-bounded step is far outside a tiny L∞ ball


def test_l2_rows_carry_both_sizes_and_aa_is_at_least_as_strong_as_pgd():
    model = TinyCNN(classes=2, seed=1).eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = benchmark(model, x, y, attack=["pgd20:norm=l2", "aa10:norm=l2"], eps=EPS, seed=0)
    assert set(rows.norm) == {"L2"} and (rows.l2 <= EPS + 1e-5).all() and (rows.linf <= rows.l2 + 1e-6).all()
    pgd, aa = (rows[rows.attack == a].sort_values("sample_id") for a in ("pgd20:norm=l2", "aa10:norm=l2"))
    assert pgd.success.any() and not (pgd.success.to_numpy() & ~aa.success.to_numpy()).any()


def test_a_family_without_an_l2_form_is_refused():
    with pytest.raises(UserError, match="mim attacks in Linf only"):
        parse_attack("mim10:norm=l2")
    assert parse_attack("pgd10:norm=l2").norm == "L2" and parse_attack("pgd10").norm == "Linf"
