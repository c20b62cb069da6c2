"""The results store: one directory per run, per-sample Parquet rows + a provenance manifest.

A run directory is assembled under a temporary name and renamed into place, so a
crash or a bad argument never leaves a run that a later query would read as valid.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

SCHEMA_VERSION = 1
ROWS_FILE = "rows.parquet"
MANIFEST_FILE = "manifest.json"


def default_root() -> Path:
    return Path(os.environ.get("ROBUSTMED_RESULTS", "results/runs"))


def write_run(rows: pd.DataFrame, manifest: dict, root: str | os.PathLike | None = None) -> Path:
    """Write ``rows`` and ``manifest`` as ``<root>/<run_id>/``; returns the run directory."""
    root = Path(root) if root else default_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / manifest["run_id"]
    if final.exists():
        raise FileExistsError(f"run directory {final} already exists")
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        rows.to_parquet(staging / ROWS_FILE, index=False)
        manifest = {**manifest, "schema_version": SCHEMA_VERSION, "rows": len(rows)}
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    run_dir = Path(run_dir)
    return pd.read_parquet(run_dir / ROWS_FILE), json.loads((run_dir / MANIFEST_FILE).read_text())


def list_runs(root: str | os.PathLike | None = None) -> list[Path]:
    """Complete runs only: staging directories (leading dot) are never listed."""
    root = Path(root) if root else default_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())


def load_runs(root: str | os.PathLike) -> list[tuple[pd.DataFrame, dict]]:
    """Every complete run under ``root`` (searched recursively), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [read_run(m.parent) for m in root.rglob(MANIFEST_FILE) if not any(p.startswith(".") for p in m.parts)]
    return sorted(runs, key=lambda run: run[1].get("created", ""))
