"""MedMNIST task types from the CLI: multi-class (RGB and greyscale, 28 and 64 pixels), ordinal regression and
multi-label train and bench; small MedMNIST-format files stand in for the official ones (the task comes from the
name)."""
import json

import numpy as np
import pandas as pd
import pytest

from robustmed.cli import main


def _medmnist_file(path, shape, classes, n=48, seed=0):
    """A MedMNIST-format npz whose class is written into the image, so one epoch can learn something."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        labels = rng.integers(0, classes, (count, 1))
        images = rng.integers(0, 64, (count, *shape)).astype(np.uint8)
        brightness = (labels[:, 0] * (191 // max(classes - 1, 1))).astype(np.uint8)
        images[:, :4] += brightness.reshape(count, *([1] * len(shape)))  # the top rows tell the class
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.uint8)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name, shape, classes, task", [
    ("bloodmnist.npz", (28, 28, 3), 8, "multi-class"),
    ("octmnist_64.npz", (64, 64), 4, "multi-class"),
    ("retinamnist.npz", (28, 28, 3), 5, "ordinal-regression"),
])
def test_task_type_trains_and_benches(tmp_path, capsys, name, shape, classes, task):
    data = _medmnist_file(tmp_path / name, shape, classes)
    checkpoint = tmp_path / "model.pt"
    assert main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(checkpoint), "--no-progress",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["dataset"] == name.removesuffix(".npz")
    assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd2", "--n", "12",
                 "--out", str(tmp_path / "r"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 12 and len(report["clean_per_class_recall"]) <= classes
    manifest = json.loads(open(report["manifest"]).read())
    a8 = next(f for f in manifest["findings"] if f["id"] == "A8")
    assert not a8["fired"] and task in a8["reason"]


def test_a_checkpoint_trained_on_a_file_says_how_to_find_its_data(tmp_path, capsys):
    data = _medmnist_file(tmp_path / "bloodmnist.npz", (28, 28, 3), 8)
    checkpoint = tmp_path / "model.pt"
    assert main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(checkpoint), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["bench", "--checkpoint", str(checkpoint), "--attack", "pgd2", "--n", "4",
                 "--data-root", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "r")]) == 2
    assert "was trained on 'bloodmnist': pass --dataset with that file" in capsys.readouterr().err


def _multilabel_file(path, labels=14, n=48, seed=0):
    """A ChestMNIST-format npz: (N, L) binary labels, label k written into image row k, both values in every split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        y = (rng.random((count, labels)) < 0.4).astype(np.uint8)
        y[0], y[1] = 0, 1
        images = rng.integers(0, 64, (count, 28, 28)).astype(np.uint8)
        images[:, :labels, :8] += (y * 160).astype(np.uint8)[:, :, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, y
    np.savez(path, **arrays)
    return path


def test_multilabel_task_trains_and_benches_under_each_criterion(tmp_path, capsys):
    data = _multilabel_file(tmp_path / "chestmnist.npz")
    checkpoint = tmp_path / "model.pt"
    assert main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(checkpoint), "--no-progress",
                 "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert len(trained["thresholds"]) == 14 and 0 <= trained["val_mean_auroc"] <= 1
    for criterion, classes in ((None, 2 ** 14), ("label:effusion", 2)):
        extra = ["--criterion", criterion] if criterion else []
        assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd2",
                     "--n", "12", "--out", str(tmp_path / "r"), "--json", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        manifest = json.loads(open(report["manifest"]).read())
        a8 = next(f for f in manifest["findings"] if f["id"] == "A8")
        assert not a8["fired"] and "multi-label" in a8["reason"]
        flips = report["multilabel"]["per_label"]
        assert len(next(iter(next(iter(flips.values())).values()))) == (14 if criterion is None else 1)
        assert report["multilabel"]["criterion"] == (criterion or "any")
        assert int(manifest["config"]["n"]) == 12 and len(report["multilabel"]["thresholds"]) == 14


def test_a_user_model_with_one_logit_per_label_benches_on_a_multilabel_task(tmp_path, capsys):
    data = _multilabel_file(tmp_path / "chestmnist.npz")
    model_file = tmp_path / "net.py"
    model_file.write_text("import torch\nfrom torch import nn\n\n"
                          "def build_model():\n    torch.manual_seed(0)\n"
                          "    return nn.Sequential(nn.Flatten(), nn.Linear(784, 14))\n")
    assert main(["bench", "--model-file", f"{model_file}:build_model", "--dataset", str(data), "--attack", "pgd2",
                 "--n", "8", "--out", str(tmp_path / "r"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["multilabel"]["thresholds"] == [0.0] * 14


def test_criterion_on_a_single_label_task_is_refused(tmp_path, capsys):
    data = _medmnist_file(tmp_path / "bloodmnist.npz", (28, 28, 3), 8)
    checkpoint = tmp_path / "model.pt"
    assert main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(checkpoint), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd2", "--n", "4",
                 "--criterion", "any", "--out", str(tmp_path / "r")]) == 2
    assert "--criterion applies to multi-label tasks" in capsys.readouterr().err


def test_the_grade_view_flips_exactly_when_the_grade_moves_k_grades():
    import torch

    from robustmed.ordinal import GradeView

    logits = torch.randn(500, 5, generator=torch.Generator().manual_seed(0))
    for center in range(5):
        for k in (1, 2, 3):
            view = GradeView(lambda x: x, center, k, 5)(logits)
            far = (logits.argmax(1) - center).abs() >= k
            assert torch.equal(view.argmax(1) == 1, far)


def test_an_ordinal_task_benches_under_grade_k(tmp_path, capsys):
    data = _medmnist_file(tmp_path / "retinamnist.npz", (28, 28, 3), 5)
    checkpoint = tmp_path / "model.pt"
    assert main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(checkpoint), "--no-progress"]) == 0
    capsys.readouterr()
    reports = {}
    for criterion in ("grade:1", "grade:2"):
        assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd3", "--n", "12",
                     "--criterion", criterion, "--out", str(tmp_path / "r"), "--json"]) == 0
        reports[criterion] = json.loads(capsys.readouterr().out)
        manifest = json.loads(open(reports[criterion]["manifest"]).read())
        a8 = next(f for f in manifest["findings"] if f["id"] == "A8")
        assert not a8["fired"] and f"at least {criterion[-1]} grade" in a8["reason"]
        rows = pd.read_parquet(reports[criterion]["results"])
        assert set(rows.label) <= set(range(5)) and rows.adv_pred.isin([-1, *range(5)]).all()
        assert (rows.adv_pred[rows.robust] == rows.label[rows.robust]).all()  # robust: still within K grades
    # clean judging is exact: a prediction within 1 grade of the label is within 2
    assert reports["grade:2"]["clean_accuracy"] >= reports["grade:1"]["clean_accuracy"]
    assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd3", "--n", "4",
                 "--criterion", "grade:5", "--out", str(tmp_path / "r")]) == 2
    assert "K must be between 1 and 4" in capsys.readouterr().err
    assert main(["bench", "--checkpoint", str(checkpoint), "--dataset", str(data), "--attack", "pgd3", "--n", "4",
                 "--criterion", "grade:2", "--checks", "full", "--out", str(tmp_path / "r")]) == 2
    assert "under --criterion grade:K use --checks cheap" in capsys.readouterr().err
