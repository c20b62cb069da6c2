"""Checkpoints with a metadata sidecar and a SHA-256 that loading verifies."""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch

from robustmed.data import sha256_file
from robustmed.errors import UserError

ZOO = Path(__file__).parent / "zoo"


def metadata_path(checkpoint: str | os.PathLike) -> Path:
    return Path(checkpoint).with_suffix(".json")


def shipped(model: str, dataset_key: str, defense: str) -> Path:
    return ZOO / model / dataset_key / f"{defense}.pt"


INTO_ZOO = "zoo"  # `train --out zoo`: replace the shipped checkpoint, only when asked in so many words
TRAINED = Path("checkpoints")  # `train` without --out writes here, below the current folder


def destination(out: str | None, model: str, dataset_key: str, defense: str) -> Path:
    """Where `train` writes: ``--out`` as given; ``zoo`` for the shipped location; by default a
    ``checkpoints/`` folder of the user's own, so that training never overwrites a shipped checkpoint."""
    if out == INTO_ZOO:
        return shipped(model, dataset_key, defense)
    return Path(out) if out else TRAINED / model / dataset_key / f"{defense}.pt"


def _atomic_write(path: Path, payload: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, path)


def save(state: dict, path: str | os.PathLike, metadata: dict) -> dict:
    """Write weights and metadata (with the weights' SHA-256) atomically; returns the metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    _atomic_write(path, buffer.getvalue())
    metadata = {**metadata, "sha256": sha256_file(path), "size_bytes": path.stat().st_size}
    _atomic_write(metadata_path(path), json.dumps(metadata, indent=2, sort_keys=True).encode())
    return metadata


def read_metadata(path: str | os.PathLike) -> dict:
    meta_file = metadata_path(path)
    if not Path(path).is_file():
        raise UserError(f"checkpoint not found: {path}")
    if not meta_file.is_file():
        raise UserError(f"checkpoint {path} has no metadata file {meta_file.name}")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"checkpoint metadata {meta_file} is not valid JSON: {exc}") from None


def load_state(path: str | os.PathLike) -> tuple[dict, dict]:
    """Verify the SHA-256 recorded in the metadata, then load the weights (tensors only)."""
    metadata = read_metadata(path)
    actual = sha256_file(path)
    if actual != metadata.get("sha256"):
        raise UserError(
            f"checkpoint {path} fails its SHA-256 check (expected {metadata.get('sha256')}, got {actual}); "
            "the file is tampered with or truncated"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a verified file should load; anything else is corruption
        raise UserError(f"checkpoint {path} cannot be read: {exc}") from None
    return state, metadata


def refuse_mismatch(path: str | os.PathLike, meta: dict, **given: str | None) -> None:
    """A checkpoint is what its metadata says: an explicit ``--dataset``/``--model``/``--defense`` that
    disagrees is refused rather than run under the wrong name (None: not given)."""
    for option, value in given.items():
        recorded = meta.get(option)
        if value is not None and recorded is not None and value != recorded:
            raise UserError(f"checkpoint {path} is {option} {recorded!r} but --{option} {value!r} was given; "
                            f"drop --{option} or pass a checkpoint trained for {value!r}")
