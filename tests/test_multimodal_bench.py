"""`bench` and `train` on the multi-input presets: shipped checkpoints, threats, criteria, refusals, suites, tables."""
import json

import pandas as pd
import pytest
import torch

from robustmed import checkpoints, multimodal_data
from robustmed.cli import main
from robustmed.reports.evidence import evaluations
from robustmed.factory import from_checkpoint
from robustmed.models.zoo import MODELS
from robustmed.suites import load_suite
from robustmed.reports.tables import render
from robustmed.multilabel import label_logits

SHIPPED = {"mmcaf-net": "adrenalmnist3d", "iimgf-net": "pneumoniamnist+breastmnist"}


def _bench(capsys, *args) -> dict:
    assert main(["bench", "--attack", "pgd2", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model", sorted(SHIPPED))
def test_shipped_checkpoint_beats_every_majority_rate_and_bench_reproduces_it(model, data_root):
    path = checkpoints.shipped(model, SHIPPED[model], "none")
    net, meta = from_checkpoint(path)
    assert path.stat().st_size < 5 * 2**20 and meta["dataset"] == SHIPPED[model]
    assert {"recipe", "epochs", "seed", "training_time_s", "val_accuracy", "test_accuracy", "sha256"} <= set(meta)
    data = multimodal_data.load(MODELS.get(model), None, data_root)
    x, labels = data.label_matrix("test")
    predicted = (label_logits(net, x) > net.thresholds).long()
    hits = predicted == labels
    assert hits.all(1).float().mean().item() == pytest.approx(meta["test_accuracy"], abs=1e-6)
    for k, name in enumerate(data.labels):
        rate = labels[:, k].float().mean().item()
        recorded = meta["test_label_accuracy"][name]["accuracy"]
        assert hits[:, k].float().mean().item() == pytest.approx(recorded, abs=1e-6)
        assert meta["test_label_accuracy"][name]["accuracy"] > max(rate, 1 - rate)
    assert torch.equal(net.thresholds, torch.tensor(meta["thresholds"]))


def test_bench_mmcaf_per_modality_and_joint(capsys, data_root):
    out = _bench(capsys, "--model", "mmcaf-net", "--threat", "image,tabular,joint", "--n", "12")
    assert set(out["per_attack"]) == {"pgd2[image]", "pgd2[tabular]", "pgd2[joint]"}
    assert out["robust_accuracy"] <= min(out["per_attack"].values())  # the per-sample worst case over threats
    facts = out["multimodal"]
    assert facts["labels"] == ["hyperplasia"] and facts["threats"]["tabular"]["inputs"]["volume"]["attackable"] is False
    assert not [f for f in out["findings"] if f["severity"] == "ERROR"]
    rows = pd.read_parquet(out["results"])
    assert (rows[rows.threat == "image"].linf_shape == 0).all()
    assert (rows[rows.threat == "tabular"].linf_volume == 0).all()


def test_bench_iimgf_images_alone_and_a_target_label(capsys, data_root):
    out = _bench(capsys, "--model", "iimgf-net", "--threat", "xray,ultrasound", "--n", "8",
                 "--criterion", "label:breastmnist")
    assert set(out["per_attack"]) == {"pgd2[xray]", "pgd2[ultrasound]"}
    per_label = out["multimodal"]["per_label"][str(4 / 255)]
    assert set(per_label["pgd2[xray]"]) == {"breastmnist"}
    found = {f["id"]: f for f in json.load(open(out["manifest"]))["findings"]}
    assert not found["A8"]["fired"] and "breastmnist" in found["A8"]["reason"]


@pytest.mark.parametrize("args, message", [
    (["--threat", "image"], "--threat applies to multi-input models only"),
    (["--model", "iimgf-net", "--threat", "tabular"], "threat 'tabular' attacks no input of this model"),
    (["--model", "mmcaf-net", "--defense", "pgd-at"], "is shipped and trained without a defense"),
    (["--model", "mmcaf-net", "--checks", "full"], "--checks full re-attacks single-input models only"),
    (["--model", "iimgf-net", "--criterion", "label:liver"], "bad success criterion 'label:liver'"),
])
def test_refusals_are_one_line_and_exit_2(args, message, capsys, tmp_path, data_root):
    assert main(["bench", "--attack", "pgd2", "--n", "4", "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


def test_train_writes_the_metadata_sidecar_and_thresholds(tmp_path, data_root):
    from robustmed.training import TrainConfig, train

    meta = train(TrainConfig(model="iimgf-net", dataset=None, epochs=1, limit=24, out=str(tmp_path / "m.pt"),
                             progress=False))
    stored = json.loads((tmp_path / "m.json").read_text())
    assert stored["sha256"] == meta["sha256"] and stored["labels"] == ["pneumoniamnist", "breastmnist"]
    assert stored["recipe"]["name"] == "cpu-iimgf" and stored["epochs"] == 1 and stored["seed"] == 0
    assert set(stored["test_accuracy_by_criterion"]) == {"any", "label:pneumoniamnist", "label:breastmnist"}
    net, _ = from_checkpoint(tmp_path / "m.pt")
    assert net.thresholds.tolist() == stored["thresholds"]


def test_suite_models_and_table_rows_per_model(tmp_path):
    suite_file = tmp_path / "s.toml"
    suite_file.write_text('name = "mm"\ndefenses = ["none"]\nattacks = ["pgd20"]\n'
                          '[[models]]\nmodel = "mail-rn18-mini"\ndatasets = ["pneumoniamnist"]\n'
                          '[[models]]\nmodel = "mmcaf-net"\nthreat = "image,joint"\n')
    configs = [c for _, c in load_suite(suite_file).configs(set())]
    assert [(c.model, c.dataset, c.threat) for c in configs] == [("mail-rn18-mini", "pneumoniamnist", None),
                                                                 ("mmcaf-net", None, "image,joint")]
    eps = 4 / 255
    rows = lambda attack, robust, dataset: pd.DataFrame({  # noqa: E731
        "sample_id": range(4), "robust": robust, "clean_correct": True, "eps": eps, "attack": attack,
        "protocol": "adaptive", "dataset": dataset})
    runs = [(rows("pgd20", [1, 1, 0, 0], "pneumoniamnist"),
             {"run_id": "a", "defense": "none", "model": "mail-rn18-mini", "dataset": "pneumoniamnist"}),
            (pd.concat([rows("pgd20[image]", [1, 1, 1, 0], "adrenalmnist3d"),
                        rows("pgd20[joint]", [1, 0, 0, 0], "adrenalmnist3d")]),
             {"run_id": "b", "defense": "none", "model": "mmcaf-net", "dataset": "adrenalmnist3d"})]
    lines = render(evaluations(runs), ["none"], ["pgd20"], eps).splitlines()
    assert "adrenalmnist3d pgd20[image] | adrenalmnist3d pgd20[joint] | adrenalmnist3d worst case" in lines[2]
    assert [line.split("|")[1].strip() for line in lines[4:]] == ["none · mail-rn18-mini", "none · mmcaf-net"]
    assert "**75.0**" in lines[5] and "**25.0**" in lines[5]
