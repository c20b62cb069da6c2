"""The corruption track (MedMNIST-C's corruptions at severities 1–5): the operations, their seeding, the rows, the
summary's arithmetic, bench end to end, and the views that keep it apart from the L∞ attacks."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from broken_models import NoisyLogits
from conftest import TinyCNN
from robustmed.attacks import parse_attack
from robustmed.attacks.corruption_sets import SETS, corruption_set
from robustmed.attacks.corruptions import corrupt
from robustmed.cli import main
from robustmed.corruption_summary import summarize_corruptions
from robustmed.corruption_track import check_corrupted
from robustmed.errors import UserError
from robustmed.harness import attack_rows
from robustmed.judging import InvariantError
from robustmed.stats import wilson

NOISES = ("gaussian_noise", "speckle_noise", "impulse_noise", "shot_noise", "motion_blur")  # seeded draws


@pytest.fixture(scope="module")
def breast(data_root):
    from robustmed import data

    return data.load("breastmnist", data_root).split("test")


def _every_corruption():
    """(set, corruption) for both benchmarked data sets' sets."""
    return [(name, c) for name in ("pneumoniamnist", "breastmnist") for c in SETS[name]]


@pytest.mark.parametrize("set_name,corruption", _every_corruption())
def test_outputs_in_range_seeded_and_independent_of_the_batch(pneumonia, set_name, corruption):
    x = pneumonia.split("test")[0][:12]
    seeds = list(range(100, 112))
    parameter = SETS[set_name][corruption][2]
    out = corrupt(x, corruption, parameter, seeds)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, (out * 255).round() / 255)  # on the 8-bit grid, as MedMNIST-C's images are
    assert torch.equal(out, corrupt(x, corruption, parameter, seeds))  # the same seeds, the same images
    assert torch.equal(out[3:7], corrupt(x[3:7], corruption, parameter, seeds[3:7]))  # whatever the batch
    if corruption in NOISES:
        assert not torch.equal(out, corrupt(x, corruption, parameter, [s + 1 for s in seeds]))
    check_corrupted(out, x, corrupt(x, corruption, parameter, seeds))


def _mean_change(x, corruption, parameters):
    return [float((corrupt(x, corruption, p, range(len(x))) - x).abs().mean()) for p in parameters]


@pytest.mark.parametrize("set_name,corruption", _every_corruption())
def test_strength_grows_with_severity_at_the_published_resolution(pneumonia, set_name, corruption):
    """At 224 pixels, where MedMNIST-C set its parameters, mean |x_c − x| grows strictly with the severity."""
    x = F.interpolate(pneumonia.split("test")[0][:4], size=224, mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round() / 255
    change = _mean_change(x, corruption, SETS[set_name][corruption])
    assert all(a < b for a, b in zip(change, change[1:])), change


@pytest.mark.parametrize("set_name", ["pneumoniamnist", "breastmnist"])
def test_strength_at_28_pixels(pneumonia, breast, set_name):
    """At the benchmarked 28 pixels the strength never falls with severity, with two documented exceptions:
    pixelation (Pillow's box filter loses less at the integer ratio 2 of severity 4 than at severity 3) and
    PneumoniaMNIST's Gaussian blur, which scaled to 28 pixels stays below a pixel and changes nothing."""
    x = (pneumonia.split("test")[0] if set_name == "pneumoniamnist" else breast[0])[:32]
    for corruption, parameters in SETS[set_name].items():
        change = _mean_change(x, corruption, parameters)
        if corruption == "gaussian_blur":
            assert change == [0.0] * 5
        elif corruption != "pixelate":
            assert all(a <= b for a, b in zip(change, change[1:])) and change[-1] > change[0], (corruption, change)


def test_sets_follow_medmnist_c():
    assert corruption_set("breastmnist_64")[0] == "breastmnist" and len(SETS["breastmnist"]) == 7
    assert len(SETS["pneumoniamnist"]) == 13 and all(len(p) == 5 for s in SETS.values() for p in s.values())
    assert corruption_set("dermamnist")[0] == "generic" and corruption_set(None)[1] is SETS["chestmnist"]


def test_the_invariant_refuses_bad_outputs():
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(InvariantError, match="B18"):
        check_corrupted(x * 2, x, x * 2)
    with pytest.raises(InvariantError, match="B18"):
        check_corrupted(x, x, x.flip(0))
    with pytest.raises(InvariantError, match="B18"):
        check_corrupted(x[:, :, :4], x, x[:, :, :4])


def test_rows_one_per_sample_corruption_severity_and_batch_free(breast):
    x, y = breast[0][:10], breast[1][:10]
    ids = np.arange(40, 50)
    model = TinyCNN(seed=3).eval()
    rows = attack_rows(model, x, y, ids, [parse_attack("corruptions2")], [4 / 255], corruption_set="breastmnist")
    assert len(rows) == 10 * 7 * 2 and set(rows.severity) == {1, 2} and (rows.eps == 0).all()
    assert rows.groupby(["sample_id", "corruption", "severity"]).size().eq(1).all()
    assert (rows.forward_passes == 0).all() and (rows.robust == (rows.adv_pred == rows.label)).all()
    assert json.loads(rows.spec.iloc[0])["extra"]["corruption_set"] == "breastmnist"
    again = attack_rows(model, x, y, ids, [parse_attack("corruptions2")], [4 / 255], corruption_set="breastmnist",
                        batch_size=3)
    columns = ["sample_id", "corruption", "severity", "adv_pred", "linf", "robust"]
    pd.testing.assert_frame_equal(rows[columns], again[columns])


def test_b18_checks_the_stored_rows(breast):
    from robustmed.checks.corruption import corruption_rows

    x, y = breast[0][:4], breast[1][:4]
    rows = attack_rows(TinyCNN().eval(), x, y, np.arange(4), [parse_attack("corruptions1")], [4 / 255],
                       corruption_set="breastmnist")
    assert not corruption_rows(None, rows).fired
    for broken in (pd.concat([rows, rows.iloc[:1]]), rows.iloc[1:], rows.assign(severity=2)):
        finding = corruption_rows(None, broken)
        assert finding.fired and finding.severity == "ERROR", finding.reason


def test_randomized_models_are_judged_over_draws(breast):
    x, y = breast[0][:6], breast[1][:6]
    model = NoisyLogits().eval()
    rows = attack_rows(model, x, y, np.arange(6), [parse_attack("corruptions1")], [4 / 255],
                       corruption_set="breastmnist", randomized=True)
    assert (rows.draws == 10).all() and rows.correct_draws.between(0, 10).all()
    assert (rows.robust == (rows.correct_draws == 10)).all()
    assert summarize_corruptions(rows)["draws"] == 10


def _hand_rows():
    """Six samples (four of class 0, two of class 1), two corruptions at two severities, judged by hand."""
    labels, clean = [0, 0, 0, 0, 1, 1], [1, 1, 1, 0, 1, 0]
    correct = {("a", 1): [1, 1, 0, 0, 1, 1], ("a", 2): [1, 0, 0, 0, 0, 1],
               ("b", 1): [1, 1, 1, 1, 1, 1], ("b", 2): [0, 0, 0, 0, 1, 1]}
    spec = json.dumps({"extra": {"corruption_set": "hand"}})
    return pd.concat([pd.DataFrame({
        "sample_id": range(6), "label": labels, "clean_correct": [bool(c) for c in clean],
        "clean_correct_draws": clean, "correct_draws": flags, "robust": [bool(f) for f in flags], "draws": 1,
        "corruption": name, "severity": severity, "eps": 0.0, "attack": "corruptions", "spec": spec,
        "attack_time_s": 1.0}) for (name, severity), flags in correct.items()], ignore_index=True)


def test_balanced_error_and_its_increase_by_hand():
    """Clean: recall 3/4 and 1/2, BE 0.375. a: BE 0.25 and 0.625, mean 0.4375, ΔBE +0.0625; b: BE 0 and 0.5,
    mean 0.25, ΔBE −0.125; over corruptions mBE 0.34375, mΔBE −0.03125, accuracy (1/2 + 2/3)/2."""
    s = summarize_corruptions(_hand_rows())
    assert s["clean"]["balanced_error"] == pytest.approx(0.375) and s["clean"]["accuracy"] == pytest.approx(4 / 6)
    a, b = s["per_corruption"]["a"], s["per_corruption"]["b"]
    assert a["balanced_error"] == pytest.approx([0.25, 0.625]) and b["balanced_error"] == pytest.approx([0.0, 0.5])
    assert a["mean_balanced_error"] == pytest.approx(0.4375) and a["balanced_error_increase"] == pytest.approx(0.0625)
    assert b["mean_balanced_error"] == pytest.approx(0.25) and b["balanced_error_increase"] == pytest.approx(-0.125)
    assert a["accuracy"] == pytest.approx([4 / 6, 2 / 6]) and a["mean_accuracy"] == pytest.approx(0.5)
    assert a["accuracy_ci"][0] == pytest.approx(list(wilson(4, 6)))
    mean = s["mean"]
    assert mean["balanced_error"] == pytest.approx(0.34375) and mean["balanced_error_increase"] == pytest.approx(-0.03125)
    assert mean["accuracy"] == pytest.approx((0.5 + 4 / 6) / 2)
    low, high = mean["balanced_error_ci"]
    assert low <= mean["balanced_error"] <= high and s["order"] == ["a", "b"] and s["severities"] == [1, 2]


@pytest.mark.parametrize("attack,needle", [("corruptions6", "severities 1 to 5"),
                                           ("corruptions:protocol=paper", "no attack options")])
def test_bad_corruption_specs_are_one_line_errors(attack, needle, tmp_path, capsys):
    assert main(["bench", "--attack", attack, "--n", "4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "o").exists()


def test_the_family_is_not_run_as_an_attack():
    from robustmed.attacks import FAMILIES

    with pytest.raises(UserError, match="corruption track"):
        FAMILIES.get("corruptions").run(None, None, None, spec=None, eps=0.0)
