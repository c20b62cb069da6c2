"""The regression gate: rerun a golden suite and compare per-sample robust flags.

Samples are paired by (defense, model, dataset, protocol, attack, ε, sample id); a corruption row's attack is
read as ``corruptions[NAME SEVERITY]``, so each corruption and severity is gated like an attack. A paired
exact McNemar test on the discordant samples decides whether a drop is significant; any drop
beyond an absolute tolerance fails too (check E5).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import pandas as pd

from robustmed.attacks import FAMILIES
from robustmed.attacks.base import SPEC_VERSION
from robustmed.errors import UserError
from robustmed.kernels import run_fingerprints
from robustmed.tracks import corruption_mask

KEY = ["defense", "model", "dataset", "protocol", "attack", "eps", "sample_id"]


def mcnemar_exact(worse: int, better: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts."""
    n = worse + better
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(0, min(worse, better) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class Comparison:
    group: tuple
    n: int
    baseline_accuracy: float
    candidate_accuracy: float
    flipped_down: list[int]
    flipped_up: list[int]
    p_value: float

    @property
    def drop(self) -> float:
        return self.baseline_accuracy - self.candidate_accuracy


def _frame(runs) -> pd.DataFrame:
    frames = []
    for rows, manifest in runs:
        rows = rows.copy()
        if "protocol" not in rows:
            rows["protocol"] = "adaptive"
        corrupt = corruption_mask(rows)  # each corruption and severity is its own group, as each attack is
        if corrupt.any():
            rows.loc[corrupt, "attack"] = (rows.attack[corrupt] + "[" + rows.corruption[corrupt].astype(str) + " "
                                           + rows.severity[corrupt].astype(int).astype(str) + "]")
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=[*KEY, "robust"])
    # a repeated key keeps the latest run's row (runs come oldest first)
    return pd.concat(frames, ignore_index=True).drop_duplicates(KEY, keep="last")


def stored_spec_version(manifest: dict) -> str | None:
    """The spec version to read a stored run's attack names as: the one its AutoAttack specs were stored with, when
    they predate the current grammar (``aa`` and ``aa-rand`` then named the canonical cascades); else the current
    one. A run storing one at each (made while only ``aa`` had its early-exit form) cannot be reread by one grammar:
    refused, so `regress` never compares a canonical column with an early-exit one under the same name."""
    versions = {name: spec.get("version", SPEC_VERSION) for name, spec in manifest.get("attacks", {}).items()
                if spec["family"] in FAMILIES and FAMILIES.get(spec["family"]).default_variant}
    if len(set(versions.values())) > 1:
        raise UserError(f"run {manifest.get('run_id', '?')} stores its attacks at different spec versions "
                        f"({', '.join(f'{n}: {v}' for n, v in sorted(versions.items()))}); it cannot be rerun by one "
                        "grammar: re-measure it, or compare stored runs with --candidate")
    return SPEC_VERSION if set(versions.values()) == {SPEC_VERSION} else None


def stored_config(manifest: dict):
    """The configuration a stored run was made with, its attack names read as the spec version that made it."""
    from dataclasses import fields

    from robustmed.run.bench import BenchConfig

    known = {f.name for f in fields(BenchConfig)}
    config = {k: v for k, v in manifest["config"].items() if k in known}
    config.setdefault("spec_version", stored_spec_version(manifest))
    return BenchConfig(**config)


def rerun(baseline_runs, out: str, device: str = "auto", attacks=None) -> None:
    """Run each golden run's stored configuration again, into ``out``.

    ``attacks`` keeps only those columns of a run: a unit's seeds come from (run seed, first sample
    id, attack, ε), never from the run's other attacks, so a column reruns on its own and must match
    its golden rows. That makes an hour-long randomized run checkable column by column.
    """
    from dataclasses import replace

    from robustmed.run.bench import run_bench, split_attacks

    for _, manifest in baseline_runs:
        config = stored_config(manifest)
        if attacks is not None:  # rows name the attacks under the run's --norm; its command line as given
            given = zip(split_attacks(config.attack), config.attack_names())
            config = replace(config, attack=",".join(a for a, named in given if named in attacks))
        run_bench(replace(config, out=out, progress=False, device=device))


def compare(baseline_runs, candidate_runs) -> tuple[list[Comparison], list[tuple]]:
    """Comparisons per evaluation group, and the groups the candidate lacks."""
    base, cand = _frame(baseline_runs), _frame(candidate_runs)
    merged = base[[*KEY, "robust"]].merge(cand[[*KEY, "robust"]], on=KEY, how="left", suffixes=("_base", "_cand"))
    out, missing = [], []
    for group, rows in merged.groupby(KEY[:-1], sort=True):
        if rows.robust_cand.isna().any():
            missing.append(group)
            continue
        base_flags, cand_flags = rows.robust_base.astype(bool), rows.robust_cand.astype(bool)
        down = rows.sample_id[base_flags & ~cand_flags].astype(int).tolist()
        up = rows.sample_id[~base_flags & cand_flags].astype(int).tolist()
        out.append(Comparison(group, len(rows), base_flags.mean(), cand_flags.mean(), down, up,
                              mcnemar_exact(len(down), len(up))))
    return out, missing


def verdict(comparisons: list[Comparison], missing: list, tolerance: float, alpha: float) -> list[str]:
    """Reasons to fail; empty when the candidate holds up."""
    reasons = [f"{'/'.join(map(str, g))}: missing from the rerun" for g in missing]
    for c in comparisons:
        label = "/".join(map(str, c.group))
        if len(c.flipped_down) > len(c.flipped_up) and c.p_value < alpha:
            reasons.append(f"{label}: significant drop {100 * c.drop:.1f} pt (McNemar p = {c.p_value:.3g})")
        elif c.drop > tolerance:
            reasons.append(f"{label}: drop {100 * c.drop:.1f} pt exceeds the tolerance {100 * tolerance:.1f} pt")
    return reasons


def kernel_notes(baseline_runs, candidate_runs) -> list[str]:
    """Golden runs made on kernels that round differently from every candidate run's (or that predate the record):
    there a sample near the boundary can flip from arithmetic alone, so only the paired test is meaningful."""
    here = set().union(*(run_fingerprints(m or {}) for _, m in candidate_runs)) - {None}
    notes = []
    for _, manifest in baseline_runs:
        recorded = run_fingerprints(manifest)
        if None in recorded or (here and not recorded <= here):
            known = sorted(recorded - {None})
            made_on = " and ".join([f"kernels {', '.join(known)}"] * bool(known) +
                                   ["kernels it did not record"] * (None in recorded))
            notes.append(f"{manifest.get('run_id', '?')} was made on {made_on}, the candidate on "
                         f"{', '.join(sorted(here)) or 'unrecorded ones'}: per-sample flips there can come from "
                         "rounding alone; the paired test is the gate")
    return notes
