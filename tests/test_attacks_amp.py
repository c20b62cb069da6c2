"""Mixed precision is opt-in and checked against fp32."""
import json

import pytest
import torch
from torch import nn

from conftest import TinyCNN
from robustmed.attacks import parse_attack
from robustmed.attacks.amp import autocast_forward, resolve_amp
from robustmed.precision import compare_amp
from robustmed.errors import UserError
from robustmed.harness import benchmark

EPS = 2 / 255


class Centered(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = TinyCNN(classes=2, seed=3)

    def forward(self, x):
        return self.body(x - x.mean(dim=(1, 2, 3), keepdim=True))


@pytest.fixture
def batch(pneumonia):
    x, y = pneumonia.split("test")
    return x[:96], y[:96]


def test_amp_is_opt_in_and_resolved_per_device():
    assert parse_attack("pgd10").amp == "" and "amp" not in json.loads(parse_attack("pgd10").to_json(EPS))
    assert resolve_amp(parse_attack("pgd10:amp=true"), "cpu").amp == "bf16"
    assert resolve_amp(parse_attack("pgd10:amp=true"), "cuda").amp == "fp16"
    assert resolve_amp(parse_attack("pgd10:amp=bf16"), "cuda").amp == "bf16"
    with pytest.raises(UserError, match="amp"):
        parse_attack("aa:amp=true")  # FAB stays fp32
    with pytest.raises(UserError):
        parse_attack("pgd10:amp=fp8")


def test_autocast_forward_runs_in_bfloat16_and_returns_float32(batch):
    x, _ = batch
    model = Centered().eval()
    seen = []
    model.body.net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    logits = autocast_forward(model, "bf16", "cpu")(x[:4])
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    assert autocast_forward(model, "", "cpu") is model


def test_amp_rows_are_judged_in_fp32(batch):
    x, y = batch
    model = Centered().eval()
    rows = benchmark(model, x, y, attack="pgd10:amp=true", eps=EPS, seed=0)
    assert json.loads(rows.spec.iloc[0])["amp"] == "bf16"
    ids = torch.as_tensor(rows.sample_id[rows.robust].tolist())
    with torch.no_grad():
        fp32 = model(x[ids]).argmax(1)
    assert len(ids) > 0 and torch.equal(fp32, y[ids])  # the rows' clean judgement is fp32
    assert ((rows.first_success_step >= 0) == rows.success).all()  # no silent success left by the re-judgement


def test_compare_amp_reports_the_difference_and_flags_a_gap(batch):
    x, y = batch
    report = compare_amp(Centered().eval(), x, y, "pgd10", EPS, n=96)
    assert report["amp"] == "bf16" and report["n"] == 96
    assert report["difference"] == pytest.approx(report["amp_robust_accuracy"] - report["fp32_robust_accuracy"])
    assert (round(96 * report["fp32_robust_accuracy"]), round(96 * report["amp_robust_accuracy"])) == (14, 19)
    assert report["flag"] and report["disagreements"] == 5  # bf16 gradients lose points fp32 breaks: FLAG


def test_fp32_attacks_run_without_tf32_and_restore_the_setting():
    from robustmed.attacks.amp import strict_fp32

    torch.backends.cudnn.allow_tf32 = True
    with strict_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32
