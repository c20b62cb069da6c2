"""Bring-your-own model: ``FILE.py:FACTORY`` → an ``nn.Module`` taking [0, 1] images, returning logits."""
from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from robustmed.data import sha256_file
from robustmed.errors import UserError


@contextmanager
def _beside(path: Path):
    """The model file's folder is importable while it loads, as when a user runs it as a script there."""
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def load_model_file(spec: str) -> tuple[nn.Module, dict]:
    path_text, sep, factory_name = spec.rpartition(":")
    if not sep or not path_text.endswith(".py") or not factory_name:
        raise UserError(f"bad --model-file {spec!r}: expected FILE.py:FACTORY")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    with _beside(path):
        module_spec = importlib.util.spec_from_file_location(f"robustmed_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            raise UserError(f"model file {path} failed to import: {type(exc).__name__}: {exc}") from None
        factory = getattr(module, factory_name, None)
        if not callable(factory):
            raise UserError(f"model file {path} has no callable {factory_name!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # a factory that initialises at random gives the same model on every load
            model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"{factory_name}() in {path} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), {"model_file": str(path), "factory": factory_name, "sha256": sha256_file(path)}
