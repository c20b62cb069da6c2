"""Multi-input threat models (check F4)."""
import json

import pytest
import torch
from torch import nn

from conftest import TinyCNN
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import run_pgd
from robustmed.attacks.threat import InputThreat, ThreatModel, modality_threats
from robustmed.errors import UserError
from robustmed.harness import benchmark

EPS = 4 / 255
SMALL = 2 / 255
NAMES = ("image", "image2")


class TwoInput(nn.Module):
    """Two seeded branches (same initial weights) on per-image centred inputs, logits summed."""

    def __init__(self, seed: int = 3):
        super().__init__()
        self.a, self.b = TinyCNN(classes=2, seed=seed), TinyCNN(classes=2, seed=seed)

    def forward(self, x):
        centre = lambda t: t - t.mean(dim=(1, 2, 3), keepdim=True)  # noqa: E731
        return self.a(centre(x["image"])) + self.b(centre(x["image2"]))


@pytest.fixture
def pair(pneumonia):
    x, y = pneumonia.split("test")
    return {"image": x[:64], "image2": x[64:128]}, y[:64]


@pytest.mark.parametrize("attack", ["pgd10", "bim10", "mim10"])
def test_frozen_input_comes_back_bit_identical(pair, attack):
    x, y = pair
    threat = ThreatModel.only("image", NAMES)
    result = run_pgd(TwoInput().eval(), x, y, spec=parse_attack(attack), eps=EPS, threat=threat)
    assert torch.equal(result.x_adv["image2"], x["image2"])
    delta = (result.x_adv["image"] - x["image"]).abs()
    assert delta.max() <= EPS + 1e-7 and delta.max() > 0 and result.success.any()
    assert result.x_adv["image"].min() >= 0 and result.x_adv["image"].max() <= 1


def test_each_input_is_projected_onto_its_own_ball_and_bounds(pair):
    x, y = pair
    threat = ThreatModel({"image": InputThreat(scale=0.5), "image2": InputThreat(eps=8 / 255, bounds=(0.1, 0.9))})
    start = {"image": torch.zeros_like(x["image"]), "image2": torch.zeros_like(x["image2"])}
    result = run_pgd(TwoInput().eval(), x, y, spec=parse_attack("pgd10:early_stop=0"), eps=EPS, start=start,
                     threat=threat)
    assert (result.x_adv["image"] - x["image"]).abs().max() == pytest.approx(EPS / 2, abs=1e-7)
    inside = (x["image2"] >= 0.1) & (x["image2"] <= 0.9)  # outside the box the bounds win over the ball
    assert ((result.x_adv["image2"] - x["image2"]).abs()[inside] <= 8 / 255 + 1e-7).all()
    assert (result.x_adv["image2"] - x["image2"]).abs()[inside].max() == pytest.approx(8 / 255, abs=1e-7)
    assert result.x_adv["image2"].min() >= 0.1 and result.x_adv["image2"].max() <= 0.9


def test_tensor_packing_is_the_single_input_loop(pair):
    """One attacked input in a mapping gives exactly the single-tensor attack."""
    x, y = pair
    model = TinyCNN(classes=2, seed=3).eval()
    start = torch.empty_like(x["image"]).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(0))
    single = run_pgd(model, x["image"], y, spec=parse_attack("pgd8"), eps=EPS, start=start)
    mapped = run_pgd(lambda m: model(m["image"]), {"image": x["image"]}, y, spec=parse_attack("pgd8"), eps=EPS,
                     start={"image": start})
    assert torch.equal(single.x_adv, mapped.x_adv["image"]) and torch.equal(single.success, mapped.success)


def test_harness_rows_for_joint_and_per_modality_attacks(pair):
    """F4: joint and each-input-alone rows, per-input norms and budgets, seeded and reproducible."""
    x, y = pair
    model = TwoInput().eval()
    rows = benchmark(model, x, y, attack="pgd10", eps=SMALL, seed=1, threat=modality_threats(NAMES))
    assert sorted(rows.attack.unique()) == ["pgd10[image2]", "pgd10[image]", "pgd10[joint]"]
    alone = rows[rows.threat == "image"]
    assert (alone.linf_image2 == 0).all() and (alone.linf_image <= SMALL + 1e-7).all()
    joint = rows[rows.threat == "joint"]
    assert (joint.linf_image > 0).any() and (joint.linf_image2 > 0).any() and (joint.eps_image2 == SMALL).all()
    spec = json.loads(alone.spec.iloc[0])
    assert spec["extra"]["threat"]["inputs"]["image2"]["attackable"] is False
    accuracy = rows.groupby("threat").robust.mean()
    assert accuracy["joint"] <= min(accuracy["image"], accuracy["image2"])
    assert (64 * accuracy).round().to_dict() == {"image": 13, "image2": 13, "joint": 8}
    again = benchmark(model, x, y, attack="pgd10", eps=SMALL, seed=1, threat=modality_threats(NAMES))
    assert rows.drop(columns="attack_time_s").equals(again.drop(columns="attack_time_s"))


def test_multi_input_refusals(pair):
    x, y = pair
    with pytest.raises(UserError, match="single tensor"):
        benchmark(TwoInput().eval(), x, y, attack="square10", eps=EPS)
    with pytest.raises(UserError, match="no input is attackable"):
        ThreatModel({"image": InputThreat(attackable=False)})
    with pytest.raises(UserError, match="mapping"):
        benchmark(TinyCNN().eval(), x["image"], y, attack="pgd2", eps=EPS, threat=ThreatModel.joint(NAMES))


def test_mail_mini_paired_mode(pneumonia):
    """MAIL-mini in ``paired`` mode: joint and per-modality PGD; the frozen branch stays bit-identical."""
    from robustmed import data, factory

    model = factory.build("mail-rn18-mini", "none", (2, 2), mode="paired", input_names=NAMES).eval()
    model.head = 0
    x, labels = data.paired_split(pneumonia, pneumonia, "test")
    x = {name: tensor[:6] for name, tensor in x.items()}
    y = labels[:6, 0]
    result = run_pgd(model, x, y, spec=parse_attack("pgd2"), eps=EPS, threat=ThreatModel.only("image", NAMES))
    assert torch.equal(result.x_adv["image2"], x["image2"])
    assert 0 < (result.x_adv["image"] - x["image"]).abs().max() <= EPS + 1e-7
    rows = benchmark(model, x, y, attack="pgd2", eps=EPS, threat=modality_threats(NAMES))
    assert len(rows) == 3 * 6 and (rows[rows.threat == "image2"].linf_image == 0).all()
    assert (rows.robust <= rows.clean_correct).all()
