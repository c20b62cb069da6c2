"""Work units (model, defense, shard of sample ids, attack spec, ε list): what a run expands to, and its rows
assembled back in run order.

Each unit is computed anywhere the store is shared and written atomically with a digest of its rows, so a rerun
skips the units that exist and verify. Seeds come from (run seed, sample id, attack spec) inside the harness and
a run's units are fixed by its config (shards: multiples of the batch size, aligned to the sorted sample list),
so the executor and resumption change no per-sample result.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

import pandas as pd

from robustmed import store
from robustmed.attacks import parse_eps_list


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
        return len(self.sample_ids) * len(parse_eps_list(self.job["config"]["eps"], None))

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



def load_spec(config: dict, checkpoint_sha256: str | None) -> dict:
    """What a run's units load (its model and split): the part of its job known before the pre-flight checks."""
    return {"config": config, "checkpoint_sha256": checkpoint_sha256}



def job_for(config: dict, checkpoint_sha256: str | None, randomized: bool, bpda_sites: int) -> dict:
    """The plain-data description of a run that every unit of it carries."""
    return {**load_spec(config, checkpoint_sha256), "randomized": bool(randomized), "bpda": bool(bpda_sites)}



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
