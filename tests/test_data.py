"""Data loader on the real MedMNIST files, malformed files, name resolution and MD5-checked fetch."""
import shutil

import numpy as np
import pytest
import torch

from robustmed import data
from robustmed.errors import UserError

PNEUMONIA_SHA256 = "fe71b26262a21a74803c6eb814db9a8bc3f580051585d7f3c23b229a7cce6088"


def test_pneumonia_splits_and_ranges(pneumonia):
    x, y = pneumonia.split("test")
    assert x.shape == (624, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.bincount().tolist() == [234, 390]
    assert [len(pneumonia.split(s)[0]) for s in data.SPLITS] == [4708, 524, 624]
    assert pneumonia.num_classes == 2 and pneumonia.channels == 1 and pneumonia.key == "pneumoniamnist"
    assert pneumonia.sha256 == PNEUMONIA_SHA256
    assert pneumonia.label_names == ["normal", "pneumonia"]


def test_public_load_dataset(data_root):
    x, y = data.load_dataset("breastmnist", split="val", root=data_root)
    assert x.shape == (78, 1, 28, 28) and y.shape == (78,)


def test_resolution_order(tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("ROBUSTMED_DATA", str(data_root))
    assert data.resolve("pneumoniamnist") == data_root / "pneumoniamnist.npz"
    assert data.resolve("pneumoniamnist", data_root) == data_root / "pneumoniamnist.npz"
    monkeypatch.delenv("ROBUSTMED_DATA")
    assert data.data_root() == data.Path.home() / ".medmnist"
    assert data.file_name("pneumoniamnist", 64) == "pneumoniamnist_64.npz"
    assert data.split_name("breastmnist_128") == ("breastmnist", 128)


def test_missing_file_names_where_it_looked(tmp_path):
    with pytest.raises(UserError) as err:
        data.load("pneumoniamnist_64", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "pneumoniamnist_64.npz") in message and "robustmed data fetch" in message
    assert "\n" not in message


def test_unknown_name_lists_choices():
    with pytest.raises(UserError, match="unknown dataset 'lungmnist'.*pneumoniamnist"):
        data.load("lungmnist")


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _valid_arrays(n=4, shape=(28, 28)):
    arrays = {}
    for split in data.SPLITS:
        arrays[f"{split}_images"] = np.zeros((n, *shape), np.uint8)
        arrays[f"{split}_labels"] = np.zeros((n, 1), np.uint8)
    return arrays


def test_rgb_and_other_sizes_load(tmp_path):
    arrays = _valid_arrays(shape=(32, 32, 3))
    arrays["train_labels"][:] = 4
    loaded = data.load(str(_write_npz(tmp_path / "custom.npz", **arrays)))
    x, _ = loaded.split("train")
    assert x.shape == (4, 3, 32, 32) and loaded.channels == 3 and loaded.num_classes == 5


@pytest.mark.parametrize("breakage", ["missing_key", "wrong_dtype", "length_mismatch", "not_a_zip"])
def test_malformed_npz_is_one_line_user_error(tmp_path, breakage):
    path = tmp_path / "bad.npz"
    arrays = _valid_arrays()
    if breakage == "missing_key":
        del arrays["val_labels"]
    elif breakage == "wrong_dtype":
        arrays["test_images"] = arrays["test_images"].astype(np.float32)
    elif breakage == "length_mismatch":
        arrays["train_labels"] = arrays["train_labels"][:2]
    if breakage == "not_a_zip":
        path.write_bytes(b"this is not an npz file")
    else:
        _write_npz(path, **arrays)
    with pytest.raises(UserError, match="malformed npz") as err:
        data.load(str(path))
    assert "\n" not in str(err.value)


def test_fetch_verifies_md5_on_local_files(tmp_path, data_root):
    """breastmnist.npz is byte-identical to the official release: its MD5 must match INFO."""
    source = data_root / "breastmnist.npz"
    target = data.fetch("breastmnist", tmp_path / "root", url=source.as_uri())
    assert target.read_bytes() == source.read_bytes()
    assert data.fetch("breastmnist", tmp_path / "root", if_missing=True, url="file:///nonexistent") == target


def test_fetch_refuses_corrupt_download_and_leaves_nothing(tmp_path, data_root):
    corrupt = tmp_path / "corrupt.npz"
    shutil.copy(data_root / "breastmnist.npz", corrupt)
    with open(corrupt, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    root = tmp_path / "root"
    with pytest.raises(UserError, match="MD5 mismatch"):
        data.fetch("breastmnist", root, url=corrupt.as_uri())
    assert list(root.iterdir()) == []


def test_paired_mode_pairs_by_index(pneumonia, data_root):
    breast = data.load("breastmnist", data_root)
    inputs, labels = data.paired_split(pneumonia, breast, "test")
    assert set(inputs) == {"image", "image2"} and labels.shape == (156, 2)
    x2, y2 = breast.split("test")
    assert torch.equal(inputs["image2"], x2) and torch.equal(labels[:, 1], y2)
    shuffled, shuffled_labels = data.paired_split(pneumonia, breast, "test", seed=1)
    assert torch.equal(shuffled["image"], inputs["image"]) and not torch.equal(shuffled["image2"], x2)
    again, _ = data.paired_split(pneumonia, breast, "test", seed=1)
    assert torch.equal(again["image2"], shuffled["image2"])


def test_paired_inputs_feed_a_two_head_mail(pneumonia, data_root):
    from robustmed.factory import build

    inputs, labels = data.paired_split(pneumonia, data.load("breastmnist", data_root), "val")
    model = build("mail-rn18-mini", "none", (2, 2), mode="paired", input_names=("image", "image2")).eval()
    model.head = None
    out = model({k: v[:5] for k, v in inputs.items()})
    assert len(out) == 2 and out[0].shape == (5, 2) and out[1].shape == (5, 2)


def test_every_kind_of_data_set_keeps_the_one_dataset_protocol(data_root):
    from robustmed import multimodal_data
    from robustmed.data import Dataset, load
    from robustmed.models.zoo import MODELS

    assert isinstance(load("pneumoniamnist"), Dataset)
    paired = multimodal_data.load(MODELS.get("iimgf-net"), None, None)
    assert isinstance(paired, Dataset) and paired.multilabel
