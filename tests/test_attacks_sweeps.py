"""Cheap sweeps: one fixed-α run gives every k ≤ T; ε ascending, warm-started."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TinyCNN
from robustmed import passes
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import run_pgd
from robustmed.checks.invariants import monotone
from robustmed.errors import UserError
from robustmed.harness import benchmark
from robustmed.seeds import seed_digest

EPS = 4 / 255
EPS_LIST = [0.5 / 255, 1 / 255, 1.5 / 255, 2 / 255, 3 / 255, 4 / 255]


class Centered(nn.Module):
    """TinyCNN on per-image centred inputs: varied predictions, broken within a few /255."""

    def __init__(self, seed: int = 3):
        super().__init__()
        self.body = TinyCNN(classes=2, seed=seed)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.body(x - x.mean(dim=(1, 2, 3), keepdim=True))


@pytest.fixture
def batch(pneumonia):
    x, y = pneumonia.split("test")
    return x[:96], y[:96]


@pytest.fixture
def model():
    return Centered().eval()


def test_sweep_option_parses_and_refuses_what_it_cannot_do():
    spec = parse_attack("pgd100:sweep=50+10+20")
    assert spec.sweep == (10, 20, 50, 100)  # sorted, the long run's own steps added
    assert json.loads(spec.to_json(EPS))["sweep"] == [10, 20, 50, 100]
    assert "sweep" not in json.loads(parse_attack("pgd100").to_json(EPS))  # earlier digests unchanged
    for text in ("pgd10:sweep=20", "aa:sweep=10", "pgd10:sweep=5,restarts=2", "pgd10:sweep=0"):
        with pytest.raises(UserError):
            parse_attack(text)


def test_snapshots_are_the_k_step_attacks_with_the_same_alpha(model, batch):
    """The first k iterates of the long run *are* the k-step run: same flags, examples and losses."""
    x, y = batch
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(1))
    alpha = 2.5 * EPS / 20
    long = run_pgd(model, x, y, spec=parse_attack("pgd20:sweep=3+8"), eps=EPS, start=start)
    for k in (3, 8):
        short = run_pgd(model, x, y, spec=parse_attack(f"pgd{k}:alpha={alpha}"), eps=EPS, start=start)
        snap = long.snapshots[k]
        assert torch.equal(snap.success, short.success) and torch.equal(snap.first_success, short.first_success)
        assert torch.equal(snap.x_adv, short.x_adv) and torch.equal(snap.loss, short.loss)
    assert long.snapshots[20].success.sum() == long.success.sum()


def test_iteration_sweep_rows_match_independent_fixed_alpha_runs(model, batch):
    x, y = batch
    rows = benchmark(model, x, y, attack="pgd12:sweep=2+5", eps=1 / 255, seed=3)
    assert sorted(rows.attack.unique()) == ["pgd12:sweep=2+5", "pgd2@pgd12:sweep=2+5", "pgd5@pgd12:sweep=2+5"]
    long = rows[rows.attack == "pgd12:sweep=2+5"]
    for k in (2, 5):
        derived = rows[rows.attack == f"pgd{k}@pgd12:sweep=2+5"]
        spec = json.loads(derived.spec.iloc[0])
        assert spec["steps"] == k and spec["alpha"] == pytest.approx(2.5 / 255 / 12) and "sweep" not in spec
        assert spec["derived_from"] == f"pgd12:sweep=2+5#{long.spec_hash.iloc[0]}"
        first = long.first_success_step.to_numpy()
        expected = long.clean_correct.to_numpy() & ((first < 0) | (first > k))
        assert np.array_equal(derived.robust.to_numpy(), expected)  # robust at k ⟺ not broken within k steps
        assert (derived.robust.to_numpy() >= long.robust.to_numpy()).all()
    assert (rows.linf <= rows.eps + 1e-6).all()
    assert rows.groupby("attack").robust.mean().to_dict() == pytest.approx(
        {"pgd2@pgd12:sweep=2+5": 31 / 96, "pgd5@pgd12:sweep=2+5": 27 / 96, "pgd12:sweep=2+5": 25 / 96})


def test_eps_sweep_is_monotone_and_never_above_independent_runs(model, batch):
    x, y = batch
    sweep = benchmark(model, x, y, attack="pgd10", eps=EPS_LIST, seed=0)
    independent = benchmark(model, x, y, attack="pgd10:eps_mode=independent", eps=EPS_LIST, seed=0)
    assert {json.loads(s)["eps_mode"] for s in sweep.spec} == {"sweep"}  # the multi-ε default, stored
    assert {json.loads(s)["eps_mode"] for s in independent.spec} == {"independent"}
    assert seed_digest(parse_attack("pgd10:eps_mode=independent"), EPS) == seed_digest(parse_attack("pgd10"), EPS)
    robust = sweep.pivot_table(index="sample_id", columns="eps", values="robust", aggfunc="first").to_numpy()
    assert (robust[:, 1:] <= robust[:, :-1]).all()  # robust at a larger ε ⇒ robust at every smaller one
    assert not monotone(None, sweep).fired  # B5
    # same seeded starts as the independent run: on this model (batch-independent numerics) a sample
    # robust in the sweep is robust there too
    assert not (sweep.robust.to_numpy() & ~independent.robust.to_numpy()).any()
    acc = sweep.groupby("eps").robust.mean().to_numpy()
    assert (acc <= independent.groupby("eps").robust.mean().to_numpy()).all()
    assert (96 * acc).round().tolist() == [30, 25, 22, 14, 4, 1]
    carried = sweep[sweep.source_eps < sweep.eps]
    assert len(carried) > 0 and carried.success.all()  # broken at a smaller ε: broken at every larger one
    assert (sweep.linf <= sweep.source_eps + 1e-6).all()


def test_warm_started_sweep_is_opt_in_because_it_can_be_weaker(model, batch):
    x, y = batch
    warm = benchmark(model, x, y, attack="pgd10:eps_mode=warm", eps=EPS_LIST, seed=0)
    independent = benchmark(model, x, y, attack="pgd10:eps_mode=independent", eps=EPS_LIST, seed=0)
    assert (96 * warm.groupby("eps").robust.mean()).round().tolist() == [30, 25, 22, 15, 4, 1]
    assert (96 * independent.groupby("eps").robust.mean()).round().tolist() == [30, 25, 22, 14, 4, 1]
    assert not monotone(None, warm).fired


def test_eps_sweep_attacks_only_samples_still_robust(model, batch):
    x, y = batch
    benchmark(model, x, y, attack="pgd5", eps=[1 / 255, 4 / 255], seed=0)
    swept = sum(model.calls)
    model.calls.clear()
    benchmark(model, x, y, attack="pgd5:eps_mode=independent", eps=[1 / 255, 4 / 255], seed=0)
    assert swept < sum(model.calls)


def test_iteration_sweep_with_several_eps_runs_them_independently(model, batch):
    x, y = batch
    rows = benchmark(model, x[:16], y[:16], attack="pgd4:sweep=2", eps=[2 / 255, 4 / 255])
    assert {json.loads(s)["eps_mode"] for s in rows.spec} == {"independent"}
    with pytest.raises(UserError, match="independently"):
        benchmark(model, x[:16], y[:16], attack="pgd4:sweep=2,eps_mode=sweep", eps=[2 / 255, 4 / 255])
    assert "eps_mode" not in json.loads(benchmark(model, x[:8], y[:8], attack="pgd2", eps=EPS).spec.iloc[0])


@pytest.mark.parametrize("attack", ["pgd10", "mim6:restarts=2,random_start=1", "bim5"])
def test_eps_sweep_in_groups_equals_the_eps_by_eps_sweep(model, batch, attack, monkeypatch, batch_invariant_kernels):
    """Several ε per loop while (samples × ε) fits in a batch: the same rows as one ε at a time, fewer calls."""
    from robustmed import sweep

    x, y = batch
    assert [sweep.eps_group(a, 6, 256) for a in (96, 40, 128, 200, 0)] == [2, 6, 2, 1, 6]
    grouped = benchmark(model, x, y, attack=attack, eps=EPS_LIST, seed=0)
    calls_grouped = len(model.calls)
    model.calls.clear()
    monkeypatch.setattr(harness, "eps_group", lambda attacked, remaining, batch_size: 1)
    by_eps = benchmark(model, x, y, attack=attack, eps=EPS_LIST, seed=0)
    assert calls_grouped < len(model.calls) / 2
    cost = ("attack_time_s", *passes.COLUMNS)  # a loop's time and passes, split evenly over its ε
    columns = [c for c in grouped.columns if c not in cost]
    assert grouped[columns].equals(by_eps[columns])
    assert (grouped.linf <= grouped.source_eps + 1e-6).all() and (grouped.source_eps < grouped.eps).any()
