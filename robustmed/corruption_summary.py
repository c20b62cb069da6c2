"""The corruption track's figures from its rows: accuracy per corruption and severity, and MedMNIST-C's balanced
error and its increase over clean, per corruption and as the mean over corruptions.

With BA the balanced accuracy (mean per-class recall; a randomized model's fraction of correct draws per sample):

- balanced error at one corruption c and severity s: BE(c, s) = 1 − BA(c, s); clean: BE_clean = 1 − BA_clean;
- per corruption: BE(c) = mean over severities of BE(c, s), and its increase over clean ΔBE(c) = BE(c) − BE_clean
  (in points: MedMNIST-C's relative balanced error before its division by AlexNet's own increase);
- mean over the set's corruptions: mBE = mean_c BE(c) and mΔBE = mean_c ΔBE(c); accuracy likewise.

MedMNIST-C divides BE(c) and ΔBE(c) by those of its AlexNet reference trained at 224 pixels; robustmed reports them
undivided, since that reference is not the model or the resolution measured here (multiply back by hand to
compare with a MedMNIST-C table). Intervals: a Wilson interval for the accuracy at one corruption and severity of
a deterministic model (robustmed's interval for an accuracy); every mean and balanced error, and every figure of
a randomized model, gets a 95% percentile bootstrap that resamples samples within each class (stratified: every
class keeps its count, so per-class recall stays defined), seeded, 2,000 replicates.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from robustmed.stats import wilson
from robustmed.tracks import corrupted

REPLICATES = 2000
LEVEL = 0.95


def _matrix(rows: pd.DataFrame) -> tuple:
    """(labels (N,), clean rate (N,), rates (N, K, S), corruption names, severities): samples in id order."""
    rate = rows.correct_draws / rows.draws
    clean_rate = (rows.clean_correct_draws / rows.draws).clip(upper=1.0)
    names = list(dict.fromkeys(rows.corruption))
    levels = sorted(int(s) for s in rows.severity.unique())
    table = rows.assign(rate=rate, severity=rows.severity.astype(int)).pivot_table(
        index="sample_id", columns=["corruption", "severity"], values="rate", aggfunc="first")
    table = table.reindex(columns=pd.MultiIndex.from_product([names, levels]))
    first = rows.assign(clean_rate=clean_rate).groupby("sample_id", sort=True).first()
    rates = table.sort_index().to_numpy(dtype=float).reshape(len(table), len(names), len(levels))
    return first.label.to_numpy(), first.clean_rate.to_numpy(dtype=float), rates, names, levels


def _recalls(labels, values: np.ndarray, rng, replicates: int) -> tuple:
    """Per-class recall of each column of ``values`` (N, M): the estimate (C, M), its stratified bootstrap
    replicates (R, C, M) and the class shares (C,)."""
    classes = np.unique(labels)
    point, reps, shares = [], [], []
    for c in classes:
        part = values[labels == c]
        weights = rng.multinomial(len(part), np.full(len(part), 1 / len(part)), size=replicates)
        point.append(part.mean(0))
        reps.append(weights @ part / len(part))
        shares.append(len(part) / len(labels))
    return np.array(point), np.stack(reps, 1), np.array(shares)


def _figures(recall: np.ndarray, shares: np.ndarray, k: int, s: int) -> dict:
    """Accuracy and balanced error of clean and every (corruption, severity), and the means, from per-class
    recalls (…, C, 1 + K·S); leading axes (bootstrap replicates) carry through."""
    accuracy = np.tensordot(recall, shares, axes=([-2], [0]))  # (…, 1 + K·S)
    error = 1 - recall.mean(-2)
    clean_error = error[..., 0]
    per_error = error[..., 1:].reshape(*error.shape[:-1], k, s).mean(-1)  # BE(c)
    per_accuracy = accuracy[..., 1:].reshape(*accuracy.shape[:-1], k, s)
    return {"clean_accuracy": accuracy[..., 0], "clean_error": clean_error,
            "accuracy": per_accuracy, "error": error[..., 1:].reshape(*error.shape[:-1], k, s),
            "mean_accuracy": per_accuracy.mean(-1), "be": per_error, "delta": per_error - clean_error[..., None],
            "m_accuracy": per_accuracy.mean((-1, -2)), "mbe": per_error.mean(-1),
            "mdelta": per_error.mean(-1) - clean_error}


def _ci(values: np.ndarray) -> list:
    tail = 100 * (1 - LEVEL) / 2
    return np.moveaxis(np.percentile(values, [tail, 100 - tail], axis=0), 0, -1).tolist()


def _wilson_or(rows_correct: np.ndarray, reps: np.ndarray, deterministic: bool) -> list:
    if not deterministic:
        return _ci(reps)
    n = rows_correct.shape[0]
    return [list(wilson(int(round(k)), n)) for k in rows_correct.sum(0)]


def summarize_corruptions(rows: pd.DataFrame, seed: int = 0) -> dict | None:
    """The corruption track's figures (None when the rows have no corruption rows); see the module docstring."""
    rows = corrupted(rows)
    if rows.empty:
        return None
    labels, clean, rates, names, levels = _matrix(rows)
    k, s = len(names), len(levels)
    values = np.concatenate([clean[:, None], rates.reshape(len(clean), k * s)], 1)
    recall, reps, shares = _recalls(labels, values, np.random.default_rng(seed), REPLICATES)
    point, boot = _figures(recall, shares, k, s), _figures(reps, shares, k, s)
    deterministic = bool((rows.draws <= 1).all())
    per_severity_ci = _wilson_or(values[:, 1:], boot["accuracy"].reshape(REPLICATES, k * s), deterministic)
    per = {}
    for i, name in enumerate(names):
        per[name] = {"accuracy": point["accuracy"][i].tolist(), "accuracy_ci": per_severity_ci[i * s:(i + 1) * s],
                     "balanced_error": point["error"][i].tolist(),
                     "mean_accuracy": float(point["mean_accuracy"][i]),
                     "mean_accuracy_ci": _ci(boot["mean_accuracy"][:, i]),
                     "mean_balanced_error": float(point["be"][i]), "mean_balanced_error_ci": _ci(boot["be"][:, i]),
                     "balanced_error_increase": float(point["delta"][i]),
                     "balanced_error_increase_ci": _ci(boot["delta"][:, i])}
    spec = json.loads(rows.spec.iloc[0])
    clean_ci = _wilson_or(values[:, :1], boot["clean_accuracy"][:, None], deterministic)[0]
    return {
        "n": len(clean), "draws": int(rows.draws.max()), "corruption_set": spec["extra"].get("corruption_set"),
        "severities": levels, "order": names, "time_s": float(rows.attack_time_s.iloc[0]),
        "clean": {"accuracy": float(point["clean_accuracy"]), "accuracy_ci": clean_ci,
                  "balanced_error": float(point["clean_error"]), "balanced_error_ci": _ci(boot["clean_error"])},
        "per_corruption": per,
        "mean": {"accuracy": float(point["m_accuracy"]), "accuracy_ci": _ci(boot["m_accuracy"]),
                 "balanced_error": float(point["mbe"]), "balanced_error_ci": _ci(boot["mbe"]),
                 "balanced_error_increase": float(point["mdelta"]),
                 "balanced_error_increase_ci": _ci(boot["mdelta"])},
    }
