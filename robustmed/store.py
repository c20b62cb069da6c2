"""The results store: one directory per run, per-sample Parquet rows + a provenance manifest.

Every file and unit directory is written under a temporary name and renamed into place, so a
crash or a bad argument never leaves a run (or a unit of one) that a later query would read as
valid. A run in progress holds ``plan.json`` and ``units/<unit_id>/``; its ``manifest.json`` is
written last, so only complete runs are ever listed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from robustmed.errors import UserError

SCHEMA_VERSION = 1
ROWS_FILE = "rows.parquet"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
UNITS_DIR = "units"
UNIT_FILE = "unit.json"


def default_root() -> Path:
    return Path(os.environ.get("ROBUSTMED_RESULTS", "results/runs"))


def _nearest_existing(path: Path) -> Path:
    """``path`` or the closest of its ancestors that exists: where creating ``path`` would start."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable(root: str | os.PathLike) -> Path:
    """``root`` as an absolute path, or a :class:`UserError` naming the folder and the fix when results cannot be
    written there; checked before any work starts and without writing anything, so a refusal leaves no trace."""
    root = Path(root).expanduser().absolute()
    start = _nearest_existing(root)
    if not start.is_dir():
        raise UserError(f"results folder {root} cannot be created: {start} is a file, not a folder; "
                        "pass --out with a folder you can write to")
    if not os.access(start, os.W_OK | os.X_OK):
        raise UserError(f"results folder {root} cannot be written: {start} is read-only for this user; "
                        "pass --out with a folder you can write to, or make it writable")
    return root


@contextmanager
def _writing(folder: Path):
    """An OS error while writing results (disk full, permissions changed mid-run) ends as one line naming the
    folder; the staged files are removed by the writer, so nothing half-written stays behind."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot write results in {folder}: {reason}; free space there or pass --out with a "
                        "folder you can write to") from None


def write_run(rows: pd.DataFrame, manifest: dict, root: str | os.PathLike | None = None) -> Path:
    """Write ``rows`` and ``manifest`` as ``<root>/<run_id>/``; returns the run directory."""
    root = Path(root) if root else default_root()
    final = root / manifest["run_id"]
    if final.exists():
        raise FileExistsError(f"run directory {final} already exists")
    with _writing(root):
        return _write_run(rows, manifest, root, final)


def _write_run(rows: pd.DataFrame, manifest: dict, root: Path, final: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        rows.to_parquet(staging / ROWS_FILE, index=False)
        manifest = _sealed(manifest, rows, staging / ROWS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _sealed(manifest: dict, rows: pd.DataFrame, rows_file: Path) -> dict:
    """The manifest as stored: schema version, row count and the SHA-256 of the rows file it vouches for."""
    return {**manifest, "schema_version": SCHEMA_VERSION, "rows": len(rows), "rows_sha256": sha256_bytes(rows_file)}


def read_run(run_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict]:
    """A complete run's (rows, manifest); a rows file that is not the one its manifest sealed is refused.

    Runs written before the manifest carried ``rows_sha256`` are checked on their row count alone.
    """
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
    digest = manifest.get("rows_sha256")
    if digest is not None and sha256_bytes(run_dir / ROWS_FILE) != digest:
        raise UserError(f"{run_dir / ROWS_FILE}: SHA-256 differs from its manifest's (edited or damaged); "
                        "rerun it or restore the file")
    rows = pd.read_parquet(run_dir / ROWS_FILE)
    if "rows" in manifest and len(rows) != manifest["rows"]:
        raise UserError(f"{run_dir / ROWS_FILE}: {len(rows)} rows, its manifest says {manifest['rows']}")
    return rows, manifest


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


def sha256_bytes(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _staged_file(path: Path, write) -> None:
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the whole new one."""
    with _writing(path.parent):
        _stage(path, write)


def _stage(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: dict) -> None:
    _staged_file(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str)))


def write_unit(run_dir: str | os.PathLike, unit_id: str, rows: pd.DataFrame, meta: dict) -> Path:
    """Write one unit's rows as ``<run_dir>/units/<unit_id>/`` with the rows' SHA-256 in ``unit.json``.

    A unit that another writer completed first (a duplicate task) is kept and this copy dropped.
    """
    with _writing(Path(run_dir)):
        return _write_unit(run_dir, unit_id, rows, meta)


def _write_unit(run_dir: str | os.PathLike, unit_id: str, rows: pd.DataFrame, meta: dict) -> Path:
    units = Path(run_dir) / UNITS_DIR
    units.mkdir(parents=True, exist_ok=True)
    final = units / unit_id
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=units))
    try:
        rows.to_parquet(staging / ROWS_FILE, index=False)
        meta = {**meta, "unit_id": unit_id, "rows": len(rows), "rows_sha256": sha256_bytes(staging / ROWS_FILE)}
        (staging / UNIT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        if final.exists() and read_unit(run_dir, unit_id) is None:
            shutil.rmtree(final)  # a corrupt unit (e.g. edited by hand) is replaced
        try:
            os.replace(staging, final)
        except OSError:
            if read_unit(run_dir, unit_id) is None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def read_unit(run_dir: str | os.PathLike, unit_id: str) -> tuple[pd.DataFrame, dict] | None:
    """A unit's (rows, meta) if it is complete and its rows match the recorded digest, else None."""
    unit_dir = Path(run_dir) / UNITS_DIR / unit_id
    try:
        meta = json.loads((unit_dir / UNIT_FILE).read_text())
        if meta.get("unit_id") != unit_id or sha256_bytes(unit_dir / ROWS_FILE) != meta.get("rows_sha256"):
            return None
        rows = pd.read_parquet(unit_dir / ROWS_FILE)
    except (OSError, ValueError):
        return None
    return (rows, meta) if len(rows) == meta.get("rows") else None


def saved_units(run_dir: str | os.PathLike) -> tuple[int, int]:
    """(stored, planned) units of a run in progress, from its ``plan.json`` and ``units/``; a unit's folder
    appears by one rename once it is whole, so its presence means it was saved."""
    run_dir = Path(run_dir)
    try:
        planned = json.loads((run_dir / PLAN_FILE).read_text())["units"]
    except (OSError, ValueError, KeyError):
        return 0, 0
    return sum((run_dir / UNITS_DIR / unit_id / UNIT_FILE).is_file() for unit_id in planned), len(planned)


def finish_run(run_dir: str | os.PathLike, rows: pd.DataFrame, manifest: dict) -> Path:
    """Complete a run in place: the assembled rows first, the manifest (which makes it a run) last."""
    run_dir = Path(run_dir)
    _staged_file(run_dir / ROWS_FILE, lambda tmp: rows.to_parquet(tmp, index=False))
    write_json(run_dir / MANIFEST_FILE, _sealed(manifest, rows, run_dir / ROWS_FILE))
    for leftover in [*run_dir.glob(".tmp-*"), *(run_dir / UNITS_DIR).glob(".tmp-*")]:  # from killed writers
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return run_dir
