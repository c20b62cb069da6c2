"""Shipped checkpoints: verified SHA-256, clean accuracy the metadata claims, tampering refused."""
import json
import shutil

import pytest
import torch

from robustmed import checkpoints
from robustmed.cli import main
from robustmed.errors import UserError
from robustmed.factory import from_checkpoint, load_model, shipped_checkpoint
from robustmed.judging import clean_pass

MAJORITY_RATE = 0.625  # PneumoniaMNIST test split: 390 of 624 are pneumonia


@pytest.fixture(scope="module")
def default_checkpoint():
    return shipped_checkpoint("none", None, None)


def test_default_checkpoint_metadata_is_complete(default_checkpoint):
    meta = checkpoints.read_metadata(default_checkpoint)
    for key in ("model", "defense", "dataset", "recipe", "seed", "epochs", "val_accuracy", "test_accuracy",
                "training_time_s", "packages", "sha256", "build"):
        assert key in meta
    assert default_checkpoint.stat().st_size < 5 * 2**20


def test_default_beats_majority_by_20_points_and_bench_reproduces_it(default_checkpoint, pneumonia):
    model, meta = from_checkpoint(default_checkpoint)
    x, y = pneumonia.split("test")
    preds, _ = clean_pass(model, x, y, 256, "cpu")
    measured = (preds == y).float().mean().item()
    assert measured >= MAJORITY_RATE + 0.20
    assert measured == pytest.approx(meta["test_accuracy"], abs=1e-6)


def test_load_model_api_returns_eval_logits(pneumonia):
    model = load_model("none")
    assert not model.training
    x, _ = pneumonia.split("test")
    out = model(x[:4])
    assert out.shape == (4, 2) and not torch.allclose(out.softmax(1).sum(1), out.sum(1))


@pytest.mark.parametrize("damage", ["tamper", "truncate"])
def test_damaged_checkpoint_is_refused(default_checkpoint, tmp_path, damage, capsys):
    copy = tmp_path / "none.pt"
    shutil.copy(default_checkpoint, copy)
    shutil.copy(checkpoints.metadata_path(default_checkpoint), checkpoints.metadata_path(copy))
    payload = bytearray(copy.read_bytes())
    if damage == "tamper":
        payload[len(payload) // 2] ^= 0xFF
    else:
        payload = payload[: len(payload) // 2]
    copy.write_bytes(bytes(payload))
    with pytest.raises(UserError, match="SHA-256"):
        from_checkpoint(copy)
    assert main(["bench", "--checkpoint", str(copy), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_checkpoint_without_metadata_is_refused(tmp_path):
    lone = tmp_path / "lone.pt"
    torch.save({}, lone)
    with pytest.raises(UserError, match="no metadata"):
        from_checkpoint(lone)


def test_save_records_sha256(tmp_path):
    meta = checkpoints.save({"w": torch.ones(3)}, tmp_path / "c.pt", {"note": "x"})
    assert json.loads((tmp_path / "c.json").read_text())["sha256"] == meta["sha256"]
    state, loaded = checkpoints.load_state(tmp_path / "c.pt")
    assert torch.equal(state["w"], torch.ones(3)) and loaded["note"] == "x"
