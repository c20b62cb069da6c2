"""Expected accuracy of randomized models, from the per-draw verdicts stored with every row.

Each row of a randomized model holds one judgement: its candidate (or the clean image) classified
in R fresh draws, stored as a bit mask. A sample's expected correctness under an attack is its
fraction of correct draws; the per-sample worst case takes the minimum over the attacks and the
clean image (an attacker can always present it). "Correct in all R draws" is the secondary view.

Intervals resample samples *and* draws (a two-way bootstrap, percentiles re-centred on the estimate):
defenses that draw one noise realization per batch make a draw's verdicts move together across
samples, so a binomial interval over samples alone is too narrow.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

REPLICATES = 2000
LEVEL = 0.95
CLEAN = "clean"


def bits(masks, draws: int) -> np.ndarray:
    """Stored int64 masks → (N, draws) booleans."""
    masks = np.asarray(masks, dtype=np.int64)
    return (masks[:, None] >> np.arange(draws)) & 1 == 1


def has_draws(rows: pd.DataFrame) -> bool:
    """Whether rows carry per-draw verdicts: a randomized model's rows made since the masks were stored (rows
    read beside newer runs get the column, empty)."""
    return "draw_mask" in rows and rows.draw_mask.notna().all() and not (rows.draws <= 1).all()


def judgements(group: pd.DataFrame) -> dict[str, np.ndarray] | None:
    """``{"clean": (N, R), attack: (N, R), …}`` per-draw verdicts of one ε, samples in sorted order;
    None for rows made before per-draw masks were stored, or single-draw (deterministic) rows."""
    if not has_draws(group):
        return None
    draws = int(group.draws.max())
    first = group.sort_values("sample_id").groupby("sample_id", sort=True).first()
    out = {CLEAN: bits(first.clean_draw_mask, draws)}
    for attack, rows in group.groupby("attack"):
        rows = rows.sort_values("sample_id")
        out[attack] = bits(rows.draw_mask, int(rows.draws.max()))
    return out


def folded(rates: dict[str, np.ndarray], attacks) -> np.ndarray:
    """Per sample, the minimum of the clean rate and each attack's rate (the worst case over them)."""
    return np.minimum.reduce([rates[CLEAN], *(rates[a] for a in attacks)])


def bootstrap(verdicts: dict[str, np.ndarray], per_sample: Callable[[dict], np.ndarray], *,
              replicates: int = REPLICATES, seed: int = 0) -> np.ndarray:
    """``replicates`` values of mean_i per_sample(rates)_i, resampling the samples and, independently
    for each judgement, its draws (seeded: the same rows give the same interval).

    Resampling draws adds noise to every per-sample rate, and a worst case over several noisy rates
    falls with that noise alone; the replicates are therefore re-centred on the estimate (their median
    moved onto it), so the interval shows the spread without the resampling's own downward bias."""
    rng = np.random.default_rng(seed)
    rates = {}
    for name, verdict in verdicts.items():
        picks = rng.integers(0, verdict.shape[1], size=(replicates, verdict.shape[1]))
        rates[name] = verdict[:, picks].mean(-1).T  # (replicates, N)
    n = len(next(iter(verdicts.values())))
    weights = rng.multinomial(n, np.full(n, 1 / n), size=replicates)
    values = (per_sample(rates) * weights).sum(1) / n
    point = per_sample(rates_of(verdicts)).mean()
    low = 0.0 if values.min() >= 0 else -1.0  # accuracies stay in [0, 1], gaps in [-1, 1]
    return np.clip(values + (point - np.median(values)), low, 1.0)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def rates_of(verdicts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: verdict.mean(1) for name, verdict in verdicts.items()}


def worst_case(verdicts: dict[str, np.ndarray], attacks) -> tuple[float, tuple[float, float]]:
    """Expected accuracy under the per-sample worst case over ``attacks`` and the clean image, and its
    interval (resampling only the judgements it uses)."""
    used = {k: verdicts[k] for k in (CLEAN, *attacks)}
    return float(folded(rates_of(used), attacks).mean()), interval(bootstrap(used, lambda r: folded(r, attacks)))


def single_draw(verdicts: dict[str, np.ndarray], attacks) -> float:
    """The defense papers' reading: correct on draw 0 of the clean image and of every attack."""
    return float(np.logical_and.reduce([verdicts[k][:, 0] for k in (CLEAN, *attacks)]).mean())


def summary(group: pd.DataFrame) -> dict:
    """Expected clean and robust accuracy of one ε (per attack and per-sample worst case), with
    two-way bootstrap intervals, and the paper's single-draw reading (draw 0 of clean and attack)."""
    verdicts = judgements(group)
    if verdicts is None:
        return {}
    attacks = [a for a in verdicts if a != CLEAN]
    robust, robust_ci = worst_case(verdicts, attacks)
    per_attack = {a: worst_case(verdicts, [a]) for a in attacks}
    return {
        "expected_clean_accuracy": float(verdicts[CLEAN].mean(1).mean()),
        "expected_clean_ci": interval(bootstrap({CLEAN: verdicts[CLEAN]}, lambda r: r[CLEAN])),
        "expected_robust_accuracy": robust,
        "expected_robust_ci": robust_ci,
        "expected_per_attack": {a: value for a, (value, _) in per_attack.items()},
        "expected_per_attack_ci": {a: ci for a, (_, ci) in per_attack.items()},
        "single_draw_robust_accuracy": single_draw(verdicts, attacks),
        "draws": int(group.draws.max()),
    }


def gap_to_baseline(verdicts: dict[str, np.ndarray], attack: str, baseline: str) -> tuple[float, tuple[float, float]]:
    """How far ``attack`` lowers expected accuracy below ``baseline`` (both folded with the clean
    judgement), paired per sample: (mean gap, its bootstrap interval)."""
    def gap(rates):
        return folded(rates, [baseline]) - folded(rates, [attack])
    pair = {k: verdicts[k] for k in (CLEAN, attack, baseline)}
    return float(gap(rates_of(pair)).mean()), interval(bootstrap(pair, gap))
