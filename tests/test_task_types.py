"""MedMNIST task types from the CLI: multi-class (RGB and greyscale, 28 and 64 pixels) and ordinal regression
train and bench; small MedMNIST-format files stand in for the official ones (the task comes from the name)."""
import json

import numpy as np
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
