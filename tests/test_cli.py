"""The CLI: listings, bench/train end to end, and every error path (one line, exit 2, nothing written)."""
import json
import subprocess
import sys

import pandas as pd
import pytest

from robustmed.cli import main
from robustmed.factory import shipped_checkpoint


def run_cli(*args):
    """In a subprocess, as a user would: exit status, stdout, stderr."""
    proc = subprocess.run([sys.executable, "-m", "robustmed.cli", *args], capture_output=True, text=True)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("what", ["models", "defenses", "attacks", "datasets"])
def test_list_json(what, capsys):
    assert main(["list", what, "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert entries and all("name" in e for e in entries)


def test_list_defenses_names_none(capsys):
    main(["list", "defenses", "--json"])
    assert "none" in [e["name"] for e in json.loads(capsys.readouterr().out)]


ERROR_CASES = [
    (["bench", "--defense", "no-such-defense"], "unknown defense 'no-such-defense'"),
    (["bench", "--attack", "fgsm"], "unknown attack 'fgsm'"),
    (["bench", "--eps", "4/0"], "bad number '4/0'"),
    (["bench", "--eps", "2"], "bad ε list"),
    (["bench", "--dataset", "nosuchmnist"], "unknown dataset 'nosuchmnist'"),
    (["bench", "--dataset", "missing/file.npz"], "dataset file not found"),
    (["bench", "--checkpoint", "missing.pt"], "checkpoint not found"),
    (["bench", "--model-file", "nofile.py:make"], "model file not found"),
    (["bench", "--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["bench", "--device", "tpu"], "unknown device"),
    (["bench", "--n", "0"], "--n must be positive"),
    (["bench", "--bogus-flag"], "unrecognized arguments"),
    (["train", "--defense", "nothing"], "unknown defense 'nothing'"),
    (["list", "things"], "invalid choice"),
]


@pytest.mark.parametrize("args,needle", ERROR_CASES, ids=[" ".join(a) for a, _ in ERROR_CASES])
def test_error_paths_one_line_exit_2_nothing_written(args, needle, tmp_path, capsys):
    out = tmp_path / "out"
    full = [*args, "--out", str(out)] if args[0] == "bench" and "--bogus-flag" not in args else args
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(full))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and err.startswith("robustmed: error:")
    assert not out.exists()


def test_malformed_npz_via_cli(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    assert main(["bench", "--dataset", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "malformed npz" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bench_json_on_shipped_default(tmp_path, data_root):
    code, out, err = run_cli("bench", "--defense", "none", "--attack", "pgd10", "--n", "40", "--seed", "1",
                             "--out", str(tmp_path), "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in ("defense", "attack", "model", "dataset", "n", "eps", "clean_accuracy", "robust_accuracy", "results"):
        assert key in report
    assert report["n"] == 40 and report["defense"] == "none" and report["dataset"] == "pneumoniamnist"
    rows = pd.read_parquet(report["results"])
    assert len(rows) == 40 and rows.robust.mean() == pytest.approx(report["robust_accuracy"])
    manifest = json.loads(open(report["manifest"]).read())
    assert manifest["checkpoint"]["sha256"] and manifest["dataset_sha256"] and manifest["packages"]["torch"]
    assert manifest["sample_ids"] == sorted(rows.sample_id.tolist())


def test_bench_eps_list_gives_mapping(tmp_path, data_root, capsys):
    assert main(["bench", "--attack", "pgd5", "--eps", "8/255,2/255", "--n", "16", "--out", str(tmp_path),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["robust_accuracy"]) == [str(2 / 255), str(8 / 255)]


def test_bench_model_file(tmp_path, data_root, capsys):
    user = tmp_path / "mine.py"
    user.write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 2))\n"
    )
    assert main(["bench", "--model-file", f"{user}:make", "--attack", "pgd3", "--n", "20", "--out", str(tmp_path / "r"),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "file:mine.py" and report["n"] == 20


def test_bench_model_file_wrong_class_count(tmp_path, data_root, capsys):
    user = tmp_path / "three.py"
    user.write_text("import torch\ndef make():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3))\n")
    assert main(["bench", "--model-file", f"{user}:make", "--out", str(tmp_path / "r")]) == 2
    assert "predicts 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_train_json_then_bench_checkpoint(tmp_path, data_root, capsys):
    """Training on another MedMNIST file (BreastMNIST) just works, and bench reads the checkpoint back."""
    ckpt = tmp_path / "breast.pt"
    assert main(["train", "--dataset", "breastmnist", "--epochs", "1", "--out", str(ckpt), "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["checkpoint"] == str(ckpt) and 0 <= trained["val_accuracy"] <= 1
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    assert meta["dataset"] == "breastmnist" and meta["epochs"] == 1 and meta["packages"]["torch"]
    assert main(["bench", "--checkpoint", str(ckpt), "--attack", "pgd2", "--n", "8", "--out", str(tmp_path / "r"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "breastmnist"


def test_unknown_defense_lists_choices(capsys):
    assert main(["bench", "--defense", "rpn"]) == 2
    err = capsys.readouterr().err
    assert "choices:" in err and "none" in err


def test_shipped_default_exists():
    assert shipped_checkpoint("none", None, None).is_file()


def test_attack_lists_keep_options_with_their_attack():
    from robustmed.run.config import split_attacks

    assert split_attacks("pgd10:alpha=1/255,restarts=2,bim10, aa:protocol=paper") == [
        "pgd10:alpha=1/255,restarts=2", "bim10", "aa:protocol=paper"]


def test_train_from_the_clean_model(tmp_path, data_root, capsys):
    """--init copies every matching weight (all of them for pgd-at, which adds no parameter) and records it;
    a checkpoint of another data set is refused before any training."""
    import torch

    from robustmed.factory import build
    from robustmed.training import _initialize

    clean = shipped_checkpoint("none", None, "pneumoniamnist")
    model = build(model="mail-rn18-mini", defense="pgd-at", num_classes=[2])
    model(torch.zeros(2, 1, 28, 28))  # materialize lazy layers as training does
    record = _initialize(model, str(clean), "pneumoniamnist")
    source = json.loads(clean.with_suffix(".json").read_text())
    assert record["checkpoint_sha256"] == source["sha256"] and record["copied"] == record["of"]
    state = torch.load(clean, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert main(["train", "--dataset", "breastmnist", "--epochs", "1", "--init", str(clean),
                 "--out", str(tmp_path / "b.pt")]) == 2
    assert "was trained on 'pneumoniamnist', not 'breastmnist'" in capsys.readouterr().err
