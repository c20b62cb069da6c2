"""Provenance recorded with every checkpoint and run (check E2)."""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from robustmed.allocator import malloc_state
from robustmed.kernels import process_fingerprint

# Bumped when the engine's per-sample results change for the same config (2: one candidate per sample
# and attack, judged once over fresh draws; nested ε on randomized models; binary AA at full strength).
# It is part of a run's id, so a stored run made by an earlier engine is never read back as this one's.
ENGINE = 2

PACKAGES = ("robustmed", "torch", "numpy", "pandas", "pyarrow", "torchattacks", "pyautoattack", "foolbox", "medmnist", "rich")


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_commit() -> str | None:
    """The robustmed source commit (with a ``+dirty`` suffix), or None outside a git checkout.

    A copy of the sources without ``.git`` (shipped to a GPU host, say) states its commit in
    ``ROBUSTMED_SOURCE_COMMIT``, so its results still name the code that produced them (E2)."""
    source = Path(__file__).resolve().parent.parent
    stated = os.environ.get("ROBUSTMED_SOURCE_COMMIT")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return stated
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return stated


# What a run's rows depend on: the engine, models, defenses and data handling. Reports and the CLI only read rows.
ROW_SOURCES = ("attacks", "defenses", "robustmed")
NOT_ROW_SOURCES = ("robustmed/reports", "robustmed/cli.py", "robustmed/cli_parser.py")


def row_source_sha256(root: Path | None = None) -> str:
    """A digest of every source file that can change a run's rows, so a regeneration interrupted under one
    version of the code is resumed only by the same version."""
    root = root or Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for top in ROW_SOURCES:
        for path in sorted((root / top).rglob("*")):
            relative = path.relative_to(root).as_posix()
            if path.is_file() and "__pycache__" not in relative and not relative.startswith(NOT_ROW_SOURCES):
                digest.update(relative.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """A hash of the parameters and buffers a model holds once loaded: new weights behind the same code
    (a retrained model read by the same ``--model-file``) name a new run."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cpu_model() -> str:
    """The CPU's model name where the system states it (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "system": platform.system(),
        "python": platform.python_version(),
        "processor": platform.machine(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "malloc": malloc_state()["malloc"],
        "kernels": process_fingerprint(device),  # where it matches, a rerun must give the stored rows bit for bit
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def resolve_device(name: str = "auto") -> torch.device:
    from robustmed.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; choices: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; choices: auto, cpu, cuda, cuda:N")
    return device
