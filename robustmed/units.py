"""Work units (evaluation spec §7.8): (model, defense, shard of sample ids, attack spec, ε list).

A run expands to units; each unit is computed anywhere the store is shared and written
atomically with a digest of its rows, so a rerun skips the units that exist and verify.
Seeds come from (run seed, sample id, attack spec) inside the harness and a run's units are fixed
by its config (shards: multiples of the batch size, aligned to the sorted sample list), so the
executor and resumption change no per-sample result.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from robustmed import store

CACHED_MODELS = 2  # models kept loaded per process (a worker runs many units of the same run)
_LOADED: OrderedDict = OrderedDict()
_CLEAN: dict = {}  # model key → (sample ids, prediction, loss, correct draws): a clean pass shared with the units


@dataclass(frozen=True)
class Unit:
    """One task: everything a worker needs, as plain data (it crosses process boundaries).

    ``job`` holds the run's config with absolute paths, the checkpoint digest the run was planned
    with, and the run-level facts the coordinator established (randomized model, BPDA sites).
    """

    run_id: str
    run_dir: str
    index: int
    attack: str
    sample_ids: tuple[int, ...]
    job: dict

    @property
    def unit_id(self) -> str:
        key = json.dumps([self.run_id, self.attack, self.job["config"]["eps"], list(self.sample_ids)])
        return f"{self.index:04d}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"

    @property
    def size(self) -> int:
        """Sample × ε pairs: the progress a unit stands for."""
        from robustmed.attacks import parse_eps_list

        return len(self.sample_ids) * len(parse_eps_list(self.job["config"]["eps"]))

    def done(self) -> bool:
        return store.read_unit(self.run_dir, self.unit_id) is not None


def shards(sample_ids: Sequence[int], shard_size: int) -> list[tuple[int, ...]]:
    """Consecutive slices of the run's sample list; ``shard_size`` is a multiple of the batch size."""
    ids = [int(i) for i in sample_ids]
    return [tuple(ids[start:start + shard_size]) for start in range(0, len(ids), shard_size)]


def plan(run_id: str, run_dir: str, attacks: Sequence[str], sample_ids: Sequence[int], shard_size: int,
         job: dict) -> list[Unit]:
    """Attack-major, shard-minor: the order rows are assembled in."""
    pieces = [(attack, shard) for attack in attacks for shard in shards(sample_ids, shard_size)]
    return [Unit(run_id, str(run_dir), index, attack, shard, job) for index, (attack, shard) in enumerate(pieces)]


def remember(key: str, loaded) -> None:
    """Keep a loaded (model, x, y) for later units of the same job in this process."""
    _LOADED[key] = loaded
    _LOADED.move_to_end(key)
    while len(_LOADED) > CACHED_MODELS:
        _CLEAN.pop(_LOADED.popitem(last=False)[0], None)


def _model_key(job: dict, device: str) -> str:
    """What a job's units load depends on its config and checkpoint alone (not on the facts the pre-flight
    checks add), so a :func:`load_spec` known before those checks names the same cache entry as the job."""
    key = [job["config"], job["checkpoint_sha256"], device]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def share(job: dict, device, model, x_all, y_all, sample_ids=None, clean_pass=None) -> None:
    """Give the units of ``job`` computed in this process the model and split the caller loaded (the local
    executor: the planning process), so they are not loaded again; ``clean_pass`` is the (prediction, loss,
    correct draws) of ``sample_ids`` from one clean pass in the run's batches (check A9's), which spares the
    units theirs. The caller vouches that ``model`` is the planned checkpoint's and deterministic."""
    key = _model_key(job, str(device))
    _CLEAN.pop(key, None)
    remember(key, (model, x_all, y_all))
    if clean_pass is not None:
        _CLEAN[key] = (np.asarray(sample_ids), *clean_pass)


def _shared_clean(job: dict, device, sample_ids: np.ndarray):
    """The shared clean pass of a unit's samples when they are a batch-aligned slice of the passed ones."""
    stored = _CLEAN.get(_model_key(job, str(device)))
    if stored is None or not len(sample_ids):
        return None
    passed, *clean = stored
    start = np.flatnonzero(passed == sample_ids[0])
    if len(start) != 1 or start[0] % job["config"]["batch_size"]:
        return None
    rows = slice(int(start[0]), int(start[0]) + len(sample_ids))
    if not np.array_equal(passed[rows], sample_ids):
        return None
    return tuple(t[rows] for t in clean)


def _load(job: dict, device):
    """(model, x_all, y_all) of the run's split, cached per process; the checkpoint must be the planned one."""
    from robustmed.errors import UserError
    from robustmed.runner import BenchConfig, resolve_model

    key = _model_key(job, str(device))
    if key not in _LOADED:
        cfg = BenchConfig(**job["config"])
        model, dataset, prov = resolve_model(cfg, device)
        if prov["checkpoint"].get("sha256") != job["checkpoint_sha256"]:
            raise UserError(f"checkpoint changed since the run was planned ({prov['checkpoint'].get('sha256')} "
                            f"≠ {job['checkpoint_sha256']})")
        remember(key, (model, *dataset.split(cfg.split)))
    _LOADED.move_to_end(key)
    return _LOADED[key]


def compute(unit: Unit, device) -> pd.DataFrame:
    """The unit's per-sample rows (harness output, one row per sample × ε)."""
    from robustmed.attacks import parse_attack, parse_eps_list
    from robustmed.checks.bpda import bpda
    from robustmed.harness import attack_rows
    from robustmed.multimodal_bench import bench_threats
    from robustmed.tensors import take

    config = unit.job["config"]
    model, x_all, y_all = _load(unit.job, device)
    ids = np.asarray(unit.sample_ids)
    with bpda(model) if unit.job["bpda"] else nullcontext():
        return attack_rows(model, take(x_all, ids), y_all[ids], ids, [parse_attack(unit.attack)],
                           parse_eps_list(config["eps"]), seed=config["seed"], batch_size=config["batch_size"],
                           device=device, progress=False, randomized=unit.job["randomized"],
                           threat=bench_threats(model, config), clean_pass=_shared_clean(unit.job, device, ids))


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """Once per process: a worker runs many units, and `git status` is not free."""
    from robustmed.provenance import git_commit

    return git_commit()


def warm_up() -> None:
    """Import what computing a unit needs: a fresh worker process pays it before its first unit, not in it."""
    import robustmed.runner  # noqa: F401  (the model loader; it imports torch, the harness, attacks and checks)


def preload(spec: dict, device_name: str | None = None) -> None:
    """Load a run's model and split into this process's cache (checked against the planned checkpoint), and
    look up the commit units record, before its first unit arrives. ``spec`` is a :func:`load_spec` or a job;
    what a unit computes does not depend on whether its model was preloaded."""
    from robustmed.provenance import resolve_device

    warm_up()
    _load(spec, resolve_device(device_name or spec["config"]["device"]))
    _git_commit()


def run(unit: Unit, device_name: str | None = None) -> dict:
    """Compute and store one unit unless a verified copy exists; returns its ``unit.json`` content.

    This is the body of every executor's task: it needs only the unit and the shared store.
    """
    from robustmed.provenance import resolve_device

    stored = store.read_unit(unit.run_dir, unit.unit_id)
    if stored is not None:
        return stored[1]
    device = resolve_device(device_name or unit.job["config"]["device"])
    started = time.perf_counter()
    rows = compute(unit, device)
    meta = {"run_id": unit.run_id, "index": unit.index, "attack": unit.attack, "sample_ids": list(unit.sample_ids),
            "wall_time_s": round(time.perf_counter() - started, 3), "device": str(device),
            "git_commit": _git_commit()}
    store.write_unit(unit.run_dir, unit.unit_id, rows, meta)
    return store.read_unit(unit.run_dir, unit.unit_id)[1]


def assemble(units: Sequence[Unit]) -> tuple[pd.DataFrame, list[dict]]:
    """All units' rows in run order (attack, ε, sweep step, sample), each (attack, ε)'s time summed over its shards."""
    frames, metas, times = [], [], {}
    attack_order = {a: i for i, a in enumerate(dict.fromkeys(u.attack for u in units))}
    for unit in units:
        stored = store.read_unit(unit.run_dir, unit.unit_id)
        if stored is None:
            raise RuntimeError(f"unit {unit.unit_id} of run {unit.run_id} is missing or fails its digest")
        rows, meta = stored
        for eps, seconds in rows.groupby("eps", sort=False).attack_time_s.first().items():
            times[(attack_order[unit.attack], eps)] = times.get((attack_order[unit.attack], eps), 0.0) + seconds
        blocks = rows.groupby(["eps", "attack"], sort=False).ngroup()  # the harness's frame order, per shard
        frames.append(rows.assign(_attack=attack_order[unit.attack], _block=blocks))
        metas.append(meta)
    rows = pd.concat(frames, ignore_index=True)
    rows["attack_time_s"] = [times[key] for key in zip(rows["_attack"], rows["eps"])]
    rows = rows.sort_values(["_attack", "_block", "sample_id"], kind="stable").drop(columns=["_attack", "_block"])
    return rows.reset_index(drop=True), metas


def load_spec(config: dict, checkpoint_sha256: str | None) -> dict:
    """What a run's units load (its model and split): the part of its job known before the pre-flight checks."""
    return {"config": config, "checkpoint_sha256": checkpoint_sha256}


def job_for(config: dict, checkpoint_sha256: str | None, randomized: bool, bpda_sites: int) -> dict:
    """The plain-data description of a run that every unit of it carries."""
    return {**load_spec(config, checkpoint_sha256), "randomized": bool(randomized), "bpda": bool(bpda_sites)}


def absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path
