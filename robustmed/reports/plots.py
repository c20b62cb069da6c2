"""Robustness curves from stored rows (the seed paper's Fig. 6 and the EOT curve), with 95% bands.

Every curve is computed from per-sample rows: vs ε from one run per ε value, vs steps from the
first-success step of a single fixed-α run (the first k iterates of a T-step run *are* the k-step
attack with that α), vs EOT samples from runs that differ only in ``eot``. Randomized models are
drawn as expected accuracy with bands resampling samples and draws (:mod:`robustmed.expected`);
others as accuracy with Wilson bands.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from robustmed import expected
from robustmed.corruption_summary import summarize_corruptions
from robustmed.stats import wilson
from robustmed.tracks import WHOLE_IMAGE, eps_label

KINDS = ("eps", "steps", "eot", "severity")


def _point(x, robust: pd.Series) -> dict:
    low, high = wilson(int(robust.sum()), len(robust))
    return {"x": x, "accuracy": robust.mean(), "low": low, "high": high, "n": len(robust)}


def _expected_point(x, verdicts: dict, attacks: list[str]) -> dict:
    """Expected accuracy, per-sample worst case over ``attacks`` and the clean image, with its interval."""
    value, (low, high) = expected.worst_case(verdicts, attacks)
    return {"x": x, "accuracy": value, "low": low, "high": high, "n": len(verdicts[expected.CLEAN])}


def spec_field(rows: pd.DataFrame, field: str, default=None) -> pd.Series:
    """One field of each row's stored attack spec, each distinct spec parsed once (a run has a few)."""
    parsed = {s: json.loads(s) for s in rows.spec.unique()}
    return rows.spec.map(lambda s: parsed[s].get(field, default))


def without_derived(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows an attack produced itself: an iteration sweep's derived rows (``derived_from`` in their spec)
    are points of their long run, whose first-success steps already hold them."""
    return rows[spec_field(rows, "derived_from", "") == ""] if "spec" in rows else rows


def curve_eps(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-sample worst case over the attacks at each ε."""
    points = []
    for eps, group in rows.groupby("eps"):
        verdicts = expected.judgements(group)
        points.append(_point(eps, group.groupby("sample_id").robust.all()) if verdicts is None else
                      _expected_point(eps, verdicts, [a for a in verdicts if a != expected.CLEAN]))
    return pd.DataFrame(points)


def curve_steps(rows: pd.DataFrame, steps: list[int] | None = None) -> pd.DataFrame:
    """Robust at k steps ⟺ clean-correct and not broken within the first k steps of the same run.

    Rows an iteration sweep derived from a longer run are left out (:func:`without_derived`), except on
    a randomized model (:func:`curve_judged_steps`).
    """
    if spec_field(rows, "extra", {}).map(lambda extra: extra.get("randomized", False)).any():
        return curve_judged_steps(rows)
    rows = without_derived(rows)
    total = int(spec_field(rows, "steps").max())
    steps = steps or sorted({k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500) if k <= total} | {total})
    first = rows.first_success_step
    return pd.DataFrame([_point(k, rows.clean_correct & ((first < 0) | (first > k))) for k in steps])


def curve_judged_steps(rows: pd.DataFrame) -> pd.DataFrame:
    """A randomized model's k-step point comes from the judgements of its iterates (the sweep's rows), never
    from its first-success step: that step records one draw's misclassification during the attack, which
    the model's next draws may not repeat (check B13).

    The k-step point is the per-sample worst case over every judged iterate up to k (an attacker with k
    steps may return any earlier iterate): expected accuracy where the rows hold per-draw verdicts, else
    robust in every draw of every iterate up to k."""
    steps = spec_field(rows, "steps").astype(int)
    verdicts = expected.judgements(rows.assign(attack=steps.map(str)))  # one judgement per iterate, keyed by k
    if verdicts is not None:
        ks = sorted(steps.unique())
        return pd.DataFrame([_expected_point(k, verdicts, [str(j) for j in ks if j <= k]) for k in ks])
    robust = rows.assign(k=steps).pivot_table(index="sample_id", columns="k", values="robust", aggfunc="min")
    cumulative = robust.astype(int).cummin(axis=1).astype(bool)
    return pd.DataFrame([_point(k, cumulative[k]) for k in cumulative.columns])


def curve_eot(rows: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([_point(k, g.robust) for k, g in rows.groupby(spec_field(rows, "eot", 1))])


CURVES = {"eps": curve_eps, "steps": curve_steps, "eot": curve_eot}


def _long_run_names(rows: pd.DataFrame) -> pd.Series:
    """Each row's attack, or for an iteration sweep's row the long run it was read from."""
    if "spec" not in rows:
        return rows.attack
    source = spec_field(rows, "derived_from", "").str.split("#").str[0]
    return source.where(source != "", rows.attack)


def curves(rows: pd.DataFrame, kind: str) -> dict[str, pd.DataFrame]:
    """One curve per defense × model × data set × protocol × attack, labelled by the defense and
    whichever of the others differ between curves. Attacks are named without their options, so
    a suite's paper-protocol run (``pgd20:protocol=paper``) pairs with its adaptive one, and an
    iteration sweep's rows (``pgd10@pgd100:…``) join their long run's curve."""
    from robustmed.reports.evidence import column_attack

    rows = rows.assign(attack=_long_run_names(rows).map(column_attack),
                       protocol=rows.protocol if "protocol" in rows else "adaptive")
    rows = rows[~rows.attack.str.startswith("null")]  # the baseline, not a curve: its figure stands in the tables (check C5)
    keys = ["defense", "model", "dataset", "protocol", "attack"]
    varying = [k for k in keys[1:] if rows[k].nunique() > 1]
    out = {}
    for values, group in rows.groupby(keys, sort=False):
        named = dict(zip(keys, values))
        curve = CURVES[kind](group)
        curve.attrs.update(defense=named["defense"], protocol=named["protocol"])  # for plot's line styles
        out[" · ".join([named["defense"], *(named[k] for k in varying)])] = curve
    return out


def severity_curves(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Accuracy against severity, one curve per corruption (severity 0: the clean image), plus the mean over the
    corruptions, per defense × model × data set (the latest run of each); bands: the summary's 95% intervals."""
    keys = ["defense", "model", "dataset"]
    varying = [k for k in keys if rows[k].nunique() > 1]
    out = {}
    for values, group in rows.groupby(keys, sort=False):
        if "run_id" in group:
            group = group[group.run_id == group.run_id.iloc[-1]]
        f, named = summarize_corruptions(group), dict(zip(keys, values))
        prefix = "".join(f"{named[k]} · " for k in varying)
        clean = {"x": 0, "accuracy": f["clean"]["accuracy"], "low": f["clean"]["accuracy_ci"][0],
                 "high": f["clean"]["accuracy_ci"][1], "n": f["n"]}
        series = {name: (f["per_corruption"][name]["accuracy"], f["per_corruption"][name]["accuracy_ci"])
                  for name in f["order"]}
        mean = np.mean([acc for acc, _ in series.values()], axis=0)
        series["mean over corruptions"] = (mean, [(np.nan, np.nan)] * len(mean))
        for name, (accuracy, ci) in series.items():
            curve = pd.DataFrame([clean] + [{"x": s, "accuracy": a, "low": lo, "high": hi, "n": f["n"]}
                                            for s, a, (lo, hi) in zip(f["severities"], accuracy, ci)])
            curve.attrs.update(defense=prefix + name, protocol="adaptive", mean=name == "mean over corruptions")
            out[prefix + name] = curve
    return out


def describe(rows: pd.DataFrame, kind: str) -> str:
    """A title that says what was measured: data set(s), attack(s), ε where it is fixed, sample count."""
    from robustmed.reports.evidence import column_attack

    rows = without_derived(rows)
    parts = [", ".join(sorted(rows.dataset.unique())) if "dataset" in rows else "",
             ", ".join(sorted(rows.attack.map(column_attack).unique()))]
    if kind not in ("eps", "severity") and rows.eps.nunique() == 1:
        whole = next((n for n in WHOLE_IMAGE if "norm" in rows and (rows["norm"] == n).all()), None)
        parts.append(f"{whole + ' ' if whole else ''}ε = {eps_label(rows.eps.iloc[0], whole)}")
    parts.append(f"n = {rows.sample_id.nunique()}")
    return " · ".join(p for p in parts if p)


def _colours(series: dict[str, pd.DataFrame]) -> dict[str, str]:
    """One colour per defense, so a randomized defense's paper-protocol curve (dashed) sits in the colour
    of its adaptive one."""
    import matplotlib

    defenses = list(dict.fromkeys(c.attrs.get("defense", label) for label, c in series.items()))
    palette = matplotlib.colormaps["tab10" if len(defenses) <= 10 else "tab20"]
    return {d: matplotlib.colors.to_hex(palette(i % palette.N)) for i, d in enumerate(defenses)}


XLABEL = {"eps": "ε (L∞, [0,1] pixel units)", "steps": "attack steps", "eot": "EOT gradient samples per step",
          "severity": "corruption severity (0: clean)"}


def plot(series: dict[str, pd.DataFrame], kind: str, path: str, title: str = "", norm: str = "linf") -> None:
    """One line per label with its 95% Wilson band; the file type follows the suffix (.png, .svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crowded = len(series) > 8
    colours = _colours(series)
    fig, ax = plt.subplots(figsize=(8.5 if crowded else 6, 4.5 if crowded else 4), dpi=150)
    for label, curve in series.items():
        x = np.asarray(curve.x, dtype=float)
        paper, mean = curve.attrs.get("protocol") == "paper", curve.attrs.get("mean", False)
        line, = ax.plot(x, 100 * curve.accuracy, marker="o", ms=3, label=label, linestyle="--" if paper else "-",
                        color="black" if mean else colours[curve.attrs.get("defense", label)], lw=2.2 if mean else 1.5)
        ax.fill_between(x, 100 * curve.low, 100 * curve.high, alpha=0.1 if paper or (crowded and kind == "severity") else 0.2,
                        color=line.get_color())
    if kind == "steps":
        ax.set_xscale("log")
    whole = kind == "eps" and norm in ("l2", "l1")
    ax.set_xlabel(f"ε ({norm.upper()} over the whole image, [0,1] pixel units)" if whole else XLABEL[kind])
    ax.set_ylabel("accuracy under corruption (%)" if kind == "severity" else "robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"accuracy vs {kind}", fontsize=10)
    if crowded:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.endswith(".svg") else None)
    plt.close(fig)
