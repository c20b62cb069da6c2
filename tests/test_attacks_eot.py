"""EOT gradients and multi-draw judgement of randomized models (checks C2, E1)."""
import json

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import TinyCNN
from robustmed.attacks.eot import LOSSES, eot_loss_grad, margin_loss
from robustmed.harness import benchmark
from robustmed.summary import summarize
from robustmed.randomness import InputNoise, frozen, is_randomized, seed_model




class NoisyTiny(nn.Module):
    def __init__(self, std: float = 0.3, classes: int = 2, seed: int = 0):
        super().__init__()
        self.noise = InputNoise((1, 28, 28), std)
        self.body = TinyCNN(classes=classes, seed=seed)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(len(x))
        return self.body(self.noise(x))


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(21)
    return torch.rand(16, 1, 28, 28, generator=gen), torch.randint(0, 2, (16,), generator=gen)


def test_eot_gradient_is_the_mean_of_separate_passes(batch):
    x, y = batch
    model = NoisyTiny().eval()
    seed_model(model, 3)
    model.calls.clear()
    loss, logits, grad, wrong = eot_loss_grad(model, x, y, loss=LOSSES["ce"], samples=5)
    assert model.calls == [16] * 5  # five forward passes of the unreplicated batch
    seed_model(model, 3)
    grads, losses, verdicts = [], [], []
    for _ in range(5):
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        per_sample = nn.functional.cross_entropy(out, y, reduction="none")
        grads.append(torch.autograd.grad(per_sample.sum(), xr)[0]), losses.append(per_sample.detach())
        verdicts.append(out.argmax(1) != y)
    torch.testing.assert_close(grad, torch.stack(grads).mean(0), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(loss, torch.stack(losses).mean(0), rtol=1e-6, atol=1e-8)
    assert not torch.allclose(grads[0], grads[1])  # each pass drew a fresh realization
    assert wrong.tolist() == torch.stack(verdicts).sum(0).tolist()  # counted per draw, not read off the mean logits


def test_eot_on_a_frozen_realization_equals_one_pass(batch):
    x, y = batch
    model = NoisyTiny().eval()
    with frozen(model):
        one = eot_loss_grad(model, x, y, loss=LOSSES["ce"], samples=1).grad
        four = eot_loss_grad(model, x, y, loss=LOSSES["ce"], samples=4).grad
    torch.testing.assert_close(one, four, rtol=1e-6, atol=1e-9)


def test_margin_loss_is_binary_safe():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    assert margin_loss(logits, torch.tensor([0, 0])).tolist() == [-3.0, 2.5]
    three = torch.tensor([[1.0, 0.0, 4.0]])
    assert margin_loss(three, torch.tensor([1])).tolist() == [4.0]


def test_randomized_model_gets_eot_and_multi_draw_judgement(batch):
    x, y = batch
    model = NoisyTiny().eval()
    assert is_randomized(model)
    rows = benchmark(model, x, y, attack="pgd2", eps=8 / 255, seed=1)
    spec = json.loads(rows.spec.iloc[0])
    assert (spec["eot"], spec["draws"], spec["early_stop"], spec["protocol"]) == (20, 10, False, "adaptive")
    assert spec["extra"]["randomized"] is True
    assert (rows.draws == 10).all() and rows.correct_draws.between(0, 10).all()
    assert (rows.robust == (rows.clean_correct & (rows.correct_draws == 10))).all()  # C2: all R draws
    assert (rows.clean_correct == (rows.clean_correct_draws == 10)).all()
    assert set(rows.attack) == {"pgd2", "null"}  # the null attack stands beside every randomized run (C5)
    (summary,) = summarize(rows)
    assert summary["draws"] == 10
    per_sample = pd.concat([(rows.clean_correct_draws / 10).groupby(rows.sample_id).first(),
                            (rows.correct_draws / 10).groupby(rows.sample_id).min()], axis=1).min(axis=1)
    assert summary["expected_robust_accuracy"] == pytest.approx(per_sample.mean())  # worst case incl. the clean image
    assert summary["expected_robust_accuracy"] >= summary["robust_accuracy"]
    again = benchmark(model, x, y, attack="pgd2", eps=8 / 255, seed=1)
    assert again.correct_draws.tolist() == rows.correct_draws.tolist()  # seeded draws reproduce


def test_paper_protocol_is_single_draw_and_labelled(batch):
    x, y = batch
    model = NoisyTiny().eval()
    rows = benchmark(model, x, y, attack=["pgd2:protocol=paper", "pgd2:eot=3,draws=4"], eps=8 / 255, seed=1)
    paper = json.loads(rows[rows.attack == "pgd2:protocol=paper"].spec.iloc[0])
    assert (paper["eot"], paper["draws"], paper["protocol"]) == (1, 10, "paper")  # one-draw attack, R-draw judgement
    custom = json.loads(rows[rows.attack == "pgd2:eot=3,draws=4"].spec.iloc[0])
    assert (custom["eot"], custom["draws"]) == (3, 4)
    assert set(rows.protocol) == {"paper", "adaptive"}


def test_deterministic_model_keeps_the_plain_protocol(tiny_model, batch):
    x, y = batch
    rows = benchmark(tiny_model, x, y, attack="mim3", eps=4 / 255)
    spec = json.loads(rows.spec.iloc[0])
    assert (spec["eot"], spec["draws"], spec["early_stop"], spec["extra"]["randomized"]) == (1, 1, True, False)
    assert (rows.correct_draws == rows.robust.astype(int)).all()
    assert "expected_robust_accuracy" not in summarize(rows)[0]


def test_declared_randomized_flag_switches_eot_on(tiny_model, batch):
    x, y = batch
    rows = benchmark(tiny_model, x, y, attack="bim2", eps=4 / 255, randomized=True)
    spec = json.loads(rows.spec.iloc[0])
    assert (spec["eot"], spec["draws"]) == (20, 10)
