"""Computing one work unit in any process: the run's Target loaded once per process (checked against the
planned checkpoint), the unit's rows from the harness, written to the store with their digest."""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from contextlib import nullcontext
from functools import lru_cache

import numpy as np
import pandas as pd

from robustmed import store
from robustmed.attacks import parse_attack, parse_eps_list
from robustmed.checks.bpda import bpda
from robustmed.errors import UserError
from robustmed.kernels import process_fingerprint
from robustmed.ordinal import criterion_of, judged_rows
from robustmed.provenance import git_commit, resolve_device
from robustmed.run.config import BenchConfig
from robustmed.run.plan import Unit
from robustmed.run.target import resolve
from robustmed.run.threats import bench_threats
from robustmed.tensors import take


CACHED_MODELS = 2  # models kept loaded per process (a worker runs many units of the same run)



_LOADED: OrderedDict = OrderedDict()



_CLEAN: dict = {}  # model key → (sample ids, prediction, loss, correct draws): a clean pass shared with the units



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
    key = _model_key(job, str(device))
    if key not in _LOADED:
        cfg = BenchConfig(**job["config"])
        target = resolve(cfg, device)
        if target.checkpoint_sha256 != job["checkpoint_sha256"]:
            raise UserError(f"checkpoint changed since the run was planned ({target.checkpoint_sha256} "
                            f"≠ {job['checkpoint_sha256']})")
        remember(key, (target.model, *target.dataset.split(cfg.split)))
    _LOADED.move_to_end(key)
    return _LOADED[key]



def compute(unit: Unit, device) -> pd.DataFrame:
    """The unit's per-sample rows (harness output, one row per sample × ε)."""
    config = unit.job["config"]
    model, x_all, y_all = _load(unit.job, device)
    ids = np.asarray(unit.sample_ids)
    with bpda(model) if unit.job["bpda"] else nullcontext():
        return judged_rows(model, take(x_all, ids), y_all[ids], ids, [parse_attack(unit.attack, config.get("spec_version"))],
                           parse_eps_list(config["eps"], None), criterion_of(config.get("criterion"), model, x_all, device),
                           seed=config["seed"], batch_size=config["batch_size"], device=device, progress=False,
                           randomized=unit.job["randomized"], threat=bench_threats(model, config),
                           clean_pass=_shared_clean(unit.job, device, ids),
                           corruption_set=unit.job.get("corruption_set"))



@lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The commit this process's code came from, read once: a worker runs many units, `git status` is not free,
    and the tree may move on while they compute."""
    return git_commit()



def preload(spec: dict, device_name: str | None = None) -> None:
    """Load a run's model and split into this process's cache (checked against the planned checkpoint), and
    look up the commit and kernels units record, before its first unit arrives. ``spec`` is a :func:`load_spec` or a job;
    what a unit computes does not depend on whether its model was preloaded."""
    device = resolve_device(device_name or spec["config"]["device"])
    _load(spec, device)
    source_commit()
    process_fingerprint(device)



def run(unit: Unit, device_name: str | None = None) -> dict:
    """Compute and store one unit unless a verified copy exists; returns its ``unit.json`` content.

    This is the body of every executor's task: it needs only the unit and the shared store.
    """
    stored = store.read_unit(unit.run_dir, unit.unit_id)
    if stored is not None:
        return stored[1]
    device = resolve_device(device_name or unit.job["config"]["device"])
    started = time.perf_counter()
    rows = compute(unit, device)
    meta = {"run_id": unit.run_id, "index": unit.index, "attack": unit.attack, "sample_ids": list(unit.sample_ids),
            "wall_time_s": round(time.perf_counter() - started, 3), "device": str(device),
            "git_commit": source_commit(), "kernels": process_fingerprint(device)}
    store.write_unit(unit.run_dir, unit.unit_id, rows, meta)
    return store.read_unit(unit.run_dir, unit.unit_id)[1]
