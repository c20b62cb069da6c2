"""Randomized models judged right: one candidate per (sample, attack), judged once over fresh draws;
nested ε; expected accuracy with intervals over samples and draws; the null-attack baseline (C5).

Each of the engine's earlier faults has a deliberately broken fixture here that the earlier engine
failed: a cascade that dropped a sample on one set of draws while another set decided its row, Square
judging the clean image, an ε sweep that re-attacked from scratch, and a 2-class AutoAttack whose
targeted stage retraced APGD-CE.
"""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from pyautoattack.autopgd_base import APGDAttack
from torch import nn

from conftest import TinyCNN
from robustmed import expected
from robustmed.attacks import FAMILIES, autoattack, parse_attack
from robustmed.attacks.autoattack import run_autoattack
from robustmed.checks.context import CheckContext
from robustmed.checks.randomized import null_baseline
from robustmed.harness import benchmark
from robustmed.judging import judge_draws
from robustmed.resolve import resolve_spec
from robustmed.seeds import sample_seed, seed_digest
from robustmed.summary import summarize
from robustmed.randomness import RandomModule, seed_model

EPS = 0.03


class ShiftCoin(RandomModule):
    """A randomized 2-class toy whose verdict depends only on how far the image mean moved from 0.5:
    below ``weak`` always right, between ``weak`` and ``strong`` right in about half the draws,
    beyond ``strong`` always wrong. Label 0 throughout."""

    def __init__(self, weak: float = 0.004, strong: float = 0.02):
        super().__init__()
        self.weak, self.strong = weak, strong

    def forward(self, x):
        self.maybe_resample()
        shift = (x.flatten(1).mean(1) - 0.5).abs()
        coin = self.uniform((len(x),), like=x) < 0.5
        wrong = (shift > self.strong) | ((shift > self.weak) & coin)
        return torch.stack([(~wrong).float(), wrong.float()], 1) * 4 + 0 * x.flatten(1)[:, :1]


class Coin(RandomModule):
    """Right in about half the draws whatever the input: no attack can change its verdicts."""

    def __init__(self):
        super().__init__()
        self.body = TinyCNN(classes=2, seed=0)

    def forward(self, x):
        self.maybe_resample()
        logits = self.body(x)
        return torch.stack([logits[:, 0] * 0, logits[:, 1] * 0 + 8 * (self.uniform((len(x),), like=x) - 0.5)], 1)


class NoisyTiny(nn.Module):
    """A tiny classifier behind weak input noise: randomized, and breakable by a gradient attack."""

    def __init__(self):
        super().__init__()
        from robustmed.randomness import InputNoise
        self.noise = InputNoise((1, 8, 8), 0.02)
        self.body = TinyCNN(classes=2, seed=8)
        with torch.no_grad():
            self.body.net[-1].weight.mul_(20)
            self.body.net[-1].bias.zero_()

    def forward(self, x):
        return self.body(self.noise(x))


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _stage(delta: float):
    """A fake cascade stage moving every pixel by ``delta`` (a candidate the ShiftCoin judges by its size)."""
    return lambda forward, eps, spec, seed, device: (lambda x, y: (x + delta).clamp(0, 1))


def test_a_weak_stage_does_not_end_the_cascade_that_a_later_stage_would_win(monkeypatch):
    """Broken fixture 1 (drop, then re-judge): the first stage's candidate is wrong in about half the
    draws, so one set of 10 draws nearly always catches a wrong one. The earlier cascade dropped the
    sample there and the harness judged that weak candidate on fresh draws (expected correctness about
    0.5); the sample stays in the cascade now, and the later stage's always-wrong candidate is returned."""
    monkeypatch.setitem(autoattack.STAGES, "weak", _stage(0.01))
    monkeypatch.setitem(autoattack.STAGES, "strong", _stage(0.025))
    model = ShiftCoin()
    seed_model(model, 0)
    x, y = torch.full((32, 1, 8, 8), 0.5), torch.zeros(32, dtype=torch.long)
    spec = parse_attack("aa-rand:canonical")  # the fake stages stand in for pyautoattack kernels
    spec = spec.__class__(**{**spec.__dict__, "draws": 10,
                             "extra": {"randomized": True, "cascade": ["weak", "strong"]}})
    result = run_autoattack(model, x, y, spec=spec, eps=EPS)
    hits, _, _ = judge_draws(model, result.x_adv, y, 10)
    assert torch.allclose(result.x_adv, x + 0.025) and (hits == 0).all()
    assert (result.first_success == 1).all()


def test_survivors_keep_their_strongest_candidate_not_the_clean_image(monkeypatch):
    """Where no stage breaks a sample, its row is judged on the best candidate the cascade produced."""
    monkeypatch.setitem(autoattack.STAGES, "weak", _stage(0.01))
    model = ShiftCoin(weak=0.004, strong=1.0)
    seed_model(model, 0)
    x, y = torch.full((8, 1, 8, 8), 0.5), torch.zeros(8, dtype=torch.long)
    spec = parse_attack("aa-rand:canonical")  # the fake stages stand in for pyautoattack kernels
    spec = spec.__class__(**{**spec.__dict__, "draws": 10, "extra": {"randomized": True, "cascade": ["weak"]}})
    result = run_autoattack(model, x, y, spec=spec, eps=EPS)
    assert torch.allclose(result.x_adv, x + 0.01)


def test_square_returns_its_best_point_on_a_randomized_model():
    """Broken fixture 2 (Square judged the clean image): pyautoattack's ``perturb`` hands back the clean
    image wherever its one-draw check finds the sample correct; every attacked row now holds Square's
    candidate, at the full budget (Square's L∞ proposals sit on the ball's surface)."""
    model = NoisyTiny().eval()
    x = _images(24)
    with torch.no_grad():
        y = model.body(x).argmax(1)
    rows = benchmark(model, x, y, attack="square50", eps=EPS, seed=1)
    attacked = rows[(rows.attack == "square50") & (rows.clean_correct_draws > 0)]
    assert len(attacked) > 10 and (attacked.linf > 0.99 * EPS).all()


def test_a_randomized_eps_sweep_is_nested_per_sample():
    """Broken fixture 3 (the sweep re-attacked from scratch): on a model right in about half the draws
    whatever the input, independent judgements at each ε rise and fall at random; a candidate found at a
    smaller ε is a valid one at a larger ε, so correct draws never rise with ε."""
    model = Coin()
    x = _images(40)
    y = torch.zeros(40, dtype=torch.long)
    rows = benchmark(model, x, y, attack="pgd2", eps=[0.01, 0.02, 0.04, 0.08], seed=0)
    pgd = rows[rows.attack == "pgd2"].pivot(index="sample_id", columns="eps", values="correct_draws")
    assert (pgd.diff(axis=1).iloc[:, 1:] <= 0).all().all()
    assert (pgd.diff(axis=1).iloc[:, 1:] < 0).any().any()  # the fixture does move between judgements
    carried = rows[(rows.attack == "pgd2") & (rows.source_eps < rows.eps)]
    assert len(carried) > 0 and (carried.linf <= carried.source_eps + 1e-6).all()
    null = rows[rows.attack == "null"].pivot(index="sample_id", columns="eps", values="correct_draws")
    assert (null.nunique(axis=1) == 1).all()  # the clean image is judged once, at every ε the same


def test_two_class_aa_spends_the_targeted_budget_on_apgd_restarts():
    """Broken fixture 4 (APGD-T on the margin retraced APGD-CE): with two classes CE is a monotone function
    of the margin, so the earlier cascade ran the same path twice. Its stages now have no repeated path,
    and it is at least as strong, sample for sample, as APGD-CE with five random restarts."""
    spec = FAMILIES.get("aa").adapt(parse_attack("aa"), 2)
    assert "apgd-margin" not in spec.extra["cascade"] and "apgd-t" not in spec.extra["cascade"]
    model = NoisyTiny().body.eval()
    x = _images(24, seed=5)
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = benchmark(model, x, y, attack="aa10", eps=0.03, seed=3)
    resolved = resolve_spec(parse_attack("aa10"), randomized=False, num_classes=2)
    seed = sample_seed(3, 0, seed_digest(resolved, 0.03))  # the harness's seed for a batch starting at sample 0
    reference = APGDAttack(model, n_restarts=5, n_iter=10, eps=0.03, norm="Linf", seed=seed, device="cpu", rho=.75)
    with torch.no_grad():
        broken_by_reference = model(reference.perturb(x, y)).argmax(1) != y
    robust = torch.tensor(rows.sort_values("sample_id").robust.to_numpy())
    assert 0 < broken_by_reference.sum() < len(y) and not (robust & broken_by_reference).any()


def test_expected_accuracy_is_the_headline_and_folds_in_the_clean_image():
    model = NoisyTiny().eval()
    x = _images(32, seed=2)
    with torch.no_grad():
        y = model.body(x).argmax(1)
    rows = benchmark(model, x, y, attack="pgd5", eps=EPS, seed=0)
    summary = summarize(rows)[0]
    rate = rows.correct_draws / rows.draws
    clean = (rows.clean_correct_draws / rows.draws).groupby(rows.sample_id).first()
    worst = pd.concat([clean, rate.groupby(rows.sample_id).min()], axis=1).min(axis=1)
    assert summary["expected_robust_accuracy"] == pytest.approx(worst.mean())
    assert summary["expected_clean_accuracy"] == pytest.approx(clean.mean())
    low, high = summary["expected_robust_ci"]
    assert low <= summary["expected_robust_accuracy"] <= high
    assert summary["robust_accuracy"] <= summary["expected_robust_accuracy"]  # all R draws is the stricter view
    assert set(summary["expected_per_attack"]) == {"pgd5", "null"}
    bits = expected.bits(rows.draw_mask, 10)
    assert (bits.sum(1) == rows.correct_draws).all()  # the mask holds exactly the correct draws


def test_a_shared_draw_widens_the_interval_beyond_the_binomial():
    """Verdicts that move together across samples (one draw shared by the batch) get a wider interval
    when draws are resampled too; independent verdicts of the same rate get about the binomial one."""
    rng = np.random.default_rng(0)
    n, r = 200, 10
    shared = np.repeat(rng.random((1, r)) < 0.5, n, axis=0)  # each draw right or wrong for every sample
    independent = rng.random((n, r)) < 0.5
    width = {}
    for name, verdict in (("shared", shared), ("independent", independent)):
        low, high = expected.interval(expected.bootstrap({expected.CLEAN: verdict}, lambda v: v[expected.CLEAN]))
        width[name] = high - low
    assert width["shared"] > 3 * width["independent"]


def test_c5_flags_an_attack_that_does_no_better_than_the_clean_image():
    """C5's broken fixture: an attack that cannot move the model's verdicts (the Coin model) is not
    distinguishable from the null attack; a working attack on a breakable model is."""
    for model, attack, fired in ((Coin(), "pgd2", True), (NoisyTiny().eval(), "pgd10", False)):
        x = _images(48, seed=6)
        with torch.no_grad():
            y = torch.zeros(48, dtype=torch.long) if isinstance(model, Coin) else model.body(x).argmax(1)
        rows = benchmark(model, x, y, attack=attack, eps=0.05, seed=0)
        ctx = CheckContext(model, x, y, [0.05], [parse_attack(attack)], 2, declared_randomized=True)
        finding = null_baseline(ctx, rows)
        assert finding.fired is fired, finding.reason


def test_the_fast_cascade_attacks_a_randomized_model_with_eot_and_judges_each_candidate_over_draws():
    """``aa`` on a randomized model: its APGD averages EOT gradients, each candidate is judged once over R fresh
    draws, and it leaves no more expected accuracy than the null baseline (the clean image judged the same way)."""
    model = NoisyTiny().eval()
    x = _images(12, seed=4)
    with torch.no_grad():
        y = model.body(x).argmax(1)
    rows = benchmark(model, x, y, attack="aa5", eps=0.03, seed=1, randomized=True)
    aa, null = rows[rows.attack == "aa5"], rows[rows.attack == "null"]
    spec = json.loads(aa.spec.iloc[0])
    assert spec["variant"] == "fast" and spec["eot"] == 20 and (aa.draws == 10).all() and (aa.linf <= 0.03 + 1e-6).all()
    assert aa.correct_draws.sum() < null.correct_draws.sum() and aa.success.any()


def test_the_early_exit_rand_cascade_is_as_strong_as_the_canonical_one_in_fewer_passes():
    """``aa-rand`` (robustmed's APGD: a sample leaves a run once its iterate is wrong in every draw of a step) against
    ``aa-rand:canonical`` (pyautoattack's kernels, every sample to the last step), on the same seeded samples: its
    candidates, judged over the same number of fresh draws, leave no more correct draws, in under 60% of the passes
    (samples right in some draws of every step run the full schedule in both)."""
    model = NoisyTiny().eval()
    x = _images(16, seed=5)
    with torch.no_grad():
        y = model.body(x).argmax(1)
    fast = benchmark(model, x, y, attack="aa-rand50", eps=0.06, seed=2, randomized=True)
    canonical = benchmark(model, x, y, attack="aa-rand50:canonical", eps=0.06, seed=2, randomized=True)
    fast, canonical = fast[fast.attack == "aa-rand50"], canonical[canonical.attack == "aa-rand50:canonical"]
    assert json.loads(fast.spec.iloc[0])["extra"]["cascade"] == ["apgd-ce", "apgd-ce@random"]
    assert (fast.correct_draws.sum(), canonical.correct_draws.sum(), fast.draws.sum()) == (40, 44, 160)
    assert fast.forward_passes.mean() < 0.6 * canonical.forward_passes.mean()
    assert (fast.linf <= 0.06 + 1e-6).all()
