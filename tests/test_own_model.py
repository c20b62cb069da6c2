"""A user's own model: fresh results for new weights, degenerate models named, the contracts users bring
(single-logit heads, 0–255 inputs, normalization, helper modules), no silent checkpoint mismatch."""
import hashlib
import json

import pytest
import torch

from robustmed import Normalized, benchmark
from robustmed.checkpoints import ZOO
from robustmed.cli import main
from robustmed.contracts import SingleLogitBinary
from robustmed.errors import UserError

LINEAR = (
    "import torch\n"
    "from pathlib import Path\n"
    "def make():\n"
    "    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))\n"
    "    model.load_state_dict(torch.load(Path(__file__).with_name('weights.pt')))\n"
    "    return model\n"
)

CONSTANT = (
    "import torch\n"
    "class Constant(torch.nn.Module):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.bias = torch.nn.Parameter(torch.tensor([0.0, 1.0]))\n"
    "        self.scale = torch.nn.Parameter(torch.zeros(1))\n"
    "    def forward(self, x):\n"
    "        return self.bias.expand(len(x), 2) + self.scale * x.flatten(1).sum(1, keepdim=True)\n"
    "def make():\n"
    "    return Constant()\n"
)


def _bench(capsys, *args):
    status = main(["bench", *args, "--json"])
    captured = capsys.readouterr()
    return status, (json.loads(captured.out) if status == 0 else None), captured.err


def _weights(folder, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))
    torch.save(model.state_dict(), folder / "weights.pt")


def test_new_weights_behind_the_same_model_file_are_a_new_run(tmp_path, data_root, capsys):
    (tmp_path / "mine.py").write_text(LINEAR)
    args = ["--model-file", f"{tmp_path / 'mine.py'}:make", "--attack", "pgd3", "--n", "24",
            "--out", str(tmp_path / "r")]
    _weights(tmp_path, 0)
    _, first, _ = _bench(capsys, *args)
    _, again, note = _bench(capsys, *args)
    assert again["run_id"] == first["run_id"] and again["reused"] and not first["reused"]
    assert f"read back stored run {first['run_id']}" in note
    _weights(tmp_path, 1)
    _, retrained, _ = _bench(capsys, *args)
    assert retrained["run_id"] != first["run_id"] and not retrained["reused"]
    _, fresh, _ = _bench(capsys, *args, "--fresh")
    assert fresh["run_id"] == retrained["run_id"] and not fresh["reused"]
    assert fresh["robust_accuracy"] == retrained["robust_accuracy"]


def test_a_constant_classifier_is_named(tmp_path, data_root, capsys):
    (tmp_path / "constant.py").write_text(CONSTANT)
    _, report, _ = _bench(capsys, "--model-file", f"{tmp_path / 'constant.py'}:make", "--attack", "pgd3", "--n", "64",
                          "--out", str(tmp_path / "r"))
    fired = {f["id"]: f for f in report["findings"]}
    assert report["unreliable"] and {"A11", "B17"} <= set(fired)
    assert "answers class 1 for 100.0% of the samples" in fired["A11"]["reason"]
    assert report["clean_balanced_accuracy"] == 0.5
    assert report["clean_accuracy"] == report["robust_accuracy"] == report["majority_class_rate"]


def test_the_default_model_is_not_called_degenerate(data_root, capsys):
    _, report, _ = _bench(capsys, "--attack", "pgd3", "--n", "64")
    assert not {"A11", "B17"} & {f["id"] for f in report["findings"]}
    assert 0.6 < report["clean_balanced_accuracy"] <= 1
    assert set(report["clean_per_class_recall"]) == {"0", "1"}


def test_a_single_logit_binary_head_benches(tmp_path, data_root, capsys):
    (tmp_path / "one.py").write_text("import torch\ndef make():\n"
                                     "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 1))\n")
    status, report, _ = _bench(capsys, "--model-file", f"{tmp_path / 'one.py'}:make", "--attack", "pgd3", "--n", "16",
                               "--out", str(tmp_path / "r"))
    assert status == 0 and report["n"] == 16
    manifest = json.loads((tmp_path / "r" / report["run_id"] / "manifest.json").read_text())
    assert "sigmoid" in manifest["checkpoint"]["head"]


def test_single_logit_head_follows_the_sigmoid_convention():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4)
    two = SingleLogitBinary(head)(x)
    assert torch.equal(two.argmax(1), (torch.sigmoid(head(x)) > 0.5).long().squeeze(1))
    assert torch.allclose(torch.softmax(two, 1)[:, 1], torch.sigmoid(head(x)).squeeze(1))


def test_pixel_values_0_to_255_are_refused_before_any_attack(pneumonia):
    x, y = pneumonia.split("test")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))
    expected = r"inputs span \[0, 231\] but robustmed attacks images in \[0, 1\]: divide 8-bit images by 255"
    with pytest.raises(UserError, match=expected):
        benchmark(model, x[:8] * 255, y[:8], attack="pgd2")


def test_normalized_keeps_eps_in_pixel_units():
    torch.manual_seed(0)
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model = Normalized(inner, mean=[0.5], std=[0.25])
    x = torch.rand(3, 1, 2, 2)
    assert torch.allclose(model(x), inner((x - 0.5) / 0.25))


def test_a_model_file_imports_its_neighbours(tmp_path, data_root, capsys):
    (tmp_path / "layers.py").write_text("import torch\nclass Head(torch.nn.Linear):\n    pass\n")
    (tmp_path / "net.py").write_text("import torch\nfrom layers import Head\n"
                                     "def make():\n    return torch.nn.Sequential(torch.nn.Flatten(), Head(784, 2))\n")
    status, report, err = _bench(capsys, "--model-file", f"{tmp_path / 'net.py'}:make", "--attack", "pgd2", "--n", "8",
                                 "--out", str(tmp_path / "r"))
    assert status == 0, err


@pytest.mark.parametrize("extra, complaint", [
    (["--defense", "none"], "is defense 'pgd-at' but --defense 'none' was given"),
    (["--dataset", "breastmnist"], "is dataset 'pneumoniamnist' but --dataset 'breastmnist' was given"),
])
def test_a_mismatched_checkpoint_is_refused(tmp_path, data_root, capsys, extra, complaint):
    checkpoint = ZOO / "mail-rn18-mini" / "pneumoniamnist" / "pgd-at.pt"
    status = main(["bench", "--checkpoint", str(checkpoint), *extra, "--attack", "pgd2", "--n", "8",
                   "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2 and complaint in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_train_leaves_the_installed_zoo_alone_and_warns_at_chance(tmp_path, data_root, capsys, monkeypatch):
    shipped = ZOO / "mail-rn18-mini" / "breastmnist" / "none.pt"
    before = hashlib.sha256(shipped.read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "breastmnist", "--epochs", "1", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == before
    assert (tmp_path / "checkpoints" / "mail-rn18-mini" / "breastmnist" / "none.pt").is_file()
    assert "balanced 0.5000" in captured.out
    assert "warning: the selected epoch's balanced validation accuracy is 0.500" in captured.err
