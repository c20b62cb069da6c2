"""Leaderboard (RobustBench layout, check E6): one ranking per data set, threat model and sample set.

Entries are ranked by the per-sample worst case that Table 3 prints: a sample counts as robust only if it is
classified correctly clean and under every adaptive attack of that defense/model at ε; on randomized models
the per-sample minimum of expected correctness (:mod:`robustmed.expected`). The minimum of the attacks'
accuracies would overstate robustness whenever two attacks break different samples. A per-sample worst case
needs every combined run to hold the same samples, and accuracies on different data sets or sample sets are
not comparable, so each (data set, threat model, sample set) gets its own table.
"""
from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from robustmed import expected, passes
from robustmed.balance import class_balance
from robustmed.reports import corruption_board
from robustmed.reports.evidence import fired_flags, stale
from robustmed.stats import wilson
from robustmed.tracks import L1, L2, LINF, WHOLE_IMAGE, adversarial, eps_label, norm_label, norms

STALE_FLAG = "previous engine"
AA_ATTACKS = ("aa", "aa-rand")
RANDOMIZED_MARK = "*"
L2_EPS = 0.5  # the L2 boards' default budget (RobustBench's CIFAR-10 L2 board), in [0, 1] pixel units
L1_EPS = 3.0  # the L1 boards': AutoAttack's CIFAR-10 L1 budget (12 over 3,072 values) at 28×28's 784 values


@dataclass(frozen=True)
class Entry:
    defense: str
    model: str
    n: int
    clean_accuracy: float
    balanced_accuracy: float | None
    robust_accuracy: float  # per-sample worst case over the entry's adaptive attacks
    ci: tuple[float, float]
    aa_accuracy: float | None
    randomized: bool
    flags: tuple[str, ...]
    forward_passes: int | None  # the defense's forward passes per inference (its registry entry), not the attacks'
    family: str
    attack_time_s: float | None = None  # the combined attacks' time at this ε; None where a run did not store it
    attack_passes: dict | None = None  # their forward and backward passes per sample (:func:`robustmed.passes.total`)


@dataclass(frozen=True)
class Board:
    """One ranking: a data set under one threat model at one ε, on one set of samples."""

    dataset: str
    norm: str
    eps: float
    samples: str  # SHA-256 of the sample ids, as a bench run stores it
    entries: tuple[Entry, ...]
    sample_sets: int = 1  # how many sample sets this data set and threat model have in the store

    @property
    def n(self) -> int:
        return max((e.n for e in self.entries), default=0)


def _defense_facts(name: str) -> tuple[int | None, str]:
    from robustmed.defenses import DEFENSES

    if name in DEFENSES:
        info = DEFENSES.get(name)
        return info.forward_passes, info.family
    return None, "custom"


def _sample_set(rows: pd.DataFrame, manifest: dict) -> str:
    """The run's sample-id digest; recomputed the bench run's way for runs stored without it."""
    if "sample_ids_sha256" in manifest:
        return manifest["sample_ids_sha256"]
    ids = manifest.get("sample_ids") or sorted(int(i) for i in rows.sample_id.unique())
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def _slices(runs: list[tuple[pd.DataFrame, dict]], eps: float, l2_eps: float = L2_EPS,
            l1_eps: float = L1_EPS) -> dict[tuple, list]:
    """Each run's adaptive rows at its norm's ε (L∞ at ``eps``, L2 at ``l2_eps``, L1 at ``l1_eps``), split by the rows' norm (L∞
    for rows stored before it was recorded) and keyed by (data set, norm, sample set, defense, model); runs stay
    oldest first within a key."""
    out: dict[tuple, list] = {}
    for rows, manifest in runs:
        if "protocol" in rows and (rows.protocol == "paper").any():
            continue  # a paper-protocol run: its null baseline is a copy of the adaptive run's, its flags its own
        rows = adversarial(rows)  # the corruption track has its own boards (robustmed.reports.corruption_board)
        specs = manifest.get("attacks", {})  # rows stored without the norm column: their specs' norm, else L∞
        kinds = norms(rows) if "norm" in rows else rows.attack.map(lambda a: specs.get(a, {}).get("norm", LINF))
        rows = rows[(rows.eps - kinds.map({L2: l2_eps, L1: l1_eps}).fillna(eps)).abs() < 1e-9]
        if rows.empty:
            continue
        samples = _sample_set(rows, manifest)
        for norm, part in rows.groupby(kinds[rows.index]):
            key = (manifest["dataset"], norm, samples, manifest["defense"], manifest["model"])
            out.setdefault(key, []).append((part, manifest))
    return out


def _judged_alike(parts: list) -> list:
    """The (rows, manifest) per attack that enter one worst case. On a randomized model only runs with
    per-draw verdicts count, since a previous engine's one-draw verdicts are a different judgement; a rerun
    of an attack replaces the earlier one, as in :func:`robustmed.reports.evidence.evaluations`."""
    with_draws = [(rows, m) for rows, m in parts if expected.has_draws(rows)]
    latest: dict[str, tuple] = {}
    for rows, manifest in with_draws or parts:
        for attack, part in rows.groupby("attack"):
            latest[attack] = (part, manifest)
    return list(latest.values())


def _is_aa(attack: str) -> bool:
    return attack.split(":")[0].split("[")[0] in AA_ATTACKS


def _deterministic(rows: pd.DataFrame) -> dict:
    """Per-sample worst case over booleans: correct clean and under every attack; Wilson interval."""
    clean = rows.groupby("sample_id").clean_correct.first().astype(bool)
    robust = rows.groupby("sample_id").robust.all() & clean
    aa = rows[rows.attack.map(_is_aa)]
    aa_robust = (aa.groupby("sample_id").robust.all() & clean[aa.sample_id.unique()]) if len(aa) else None
    k, n = int(robust.sum()), len(robust)
    return {"clean": clean.astype(float).to_numpy(), "robust": k / n, "ci": wilson(k, n), "randomized": False,
            "aa": None if aa_robust is None else float(aa_robust.mean())}


def _randomized(rows: pd.DataFrame) -> dict:
    """Per-sample worst case of expected correctness over the attacks and the clean image, with the same
    two-way bootstrap interval Table 3 prints (:func:`robustmed.expected.worst_case`)."""
    verdicts = expected.judgements(rows)
    attacks = [a for a in verdicts if a != expected.CLEAN]
    robust, ci = expected.worst_case(verdicts, attacks)
    rates = expected.rates_of(verdicts)
    aa = [a for a in attacks if _is_aa(a)]
    return {"clean": rates[expected.CLEAN], "robust": robust, "ci": ci, "randomized": True,
            "aa": float(expected.folded(rates, aa).mean()) if aa else None}


def _balanced(rows: pd.DataFrame, clean: np.ndarray) -> float | None:
    """Balanced clean accuracy (:mod:`robustmed.balance`); samples are in sorted id order, as ``clean`` is."""
    if "label" not in rows:
        return None
    return class_balance(rows.groupby("sample_id").label.first().to_numpy(), clean)["balanced_accuracy"]


def _flags(picked: list) -> tuple[str, ...]:
    """Checks fired on the combined runs, and whether a combined column is one this engine would change."""
    fired = sorted({flag for _, manifest in picked for flag in fired_flags(manifest)})
    old = any(stale(manifest, part.attack.iloc[0]) for part, manifest in picked)
    return tuple(fired) + ((STALE_FLAG,) if old else ())


def _entry(defense: str, model: str, parts: list) -> Entry:
    picked = _judged_alike(parts)
    rows = pd.concat([part for part, _ in picked], ignore_index=True)
    fig = _randomized(rows) if expected.has_draws(rows) else _deterministic(rows)
    inference, family = _defense_facts(defense)
    return Entry(defense, model, len(fig["clean"]), float(np.mean(fig["clean"])), _balanced(rows, fig["clean"]),
                 fig["robust"], fig["ci"], fig["aa"], fig["randomized"], _flags(picked), inference, family,
                 passes.total_time(rows), passes.total(rows))


def boards(runs: list[tuple[pd.DataFrame, dict]], eps: float, l2_eps: float = L2_EPS,
           l1_eps: float = L1_EPS) -> list[Board]:
    """Rankings over stored (rows, manifest) runs (oldest first), L∞ at ε and L2 at ``l2_eps``: per data set and
    threat model (never one ranking over two norms), one table per sample set, largest first; within a table by
    robust, then clean accuracy."""
    grouped: dict[tuple, dict[str, list[Entry]]] = {}
    for (dataset, norm, samples, defense, model), parts in _slices(runs, eps, l2_eps, l1_eps).items():
        grouped.setdefault((dataset, norm), {}).setdefault(samples, []).append(_entry(defense, model, parts))
    out = []
    for (dataset, norm), sets in sorted(grouped.items(), key=lambda kv: (kv[0][1] != LINF, kv[0])):
        for samples, items in sorted(sets.items(), key=lambda kv: (-max(e.n for e in kv[1]), kv[0])):
            ranked = sorted(items, key=lambda e: (-e.robust_accuracy, -e.clean_accuracy, e.defense, e.model))
            budget = {L2: l2_eps, L1: l1_eps}.get(norm, eps)
            out.append(Board(dataset, norm, budget, samples, tuple(ranked), len(sets)))
    return out


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _title_eps(items: list[Board], eps: float) -> str:
    """The budgets of the boards shown: each norm's own (an L2 ε is not an L∞ one)."""
    others = [(e, norm) for norm in WHOLE_IMAGE for e in sorted({b.eps for b in items if b.norm == norm})]
    return eps_label(eps) + (" (L∞)" if others else "") + "".join(f", {eps_label(e, norm)} ({norm})"
                                                                  for e, norm in others)


def heading(board: Board) -> str:
    return (f"{board.dataset} · {norm_label(board.norm)}, ε = {eps_label(board.eps, board.norm)} · "
            f"n = {board.n}, samples {board.samples[:8]}")


def note(board: Board) -> str:
    """Why a data set's runs are spread over several tables ('' when they are not)."""
    if board.sample_sets < 2:
        return ""
    return (f"{board.dataset} has runs on {board.sample_sets} different sample sets; a per-sample worst case and "
            "a fair ranking need the same samples, so each set is ranked in its own table.")


def _row(rank: int, e: Entry) -> list[str]:
    low, high = e.ci
    robust = f"{_pct(e.robust_accuracy)} [{_pct(low)}, {_pct(high)}]" + (RANDOMIZED_MARK if e.randomized else "")
    unreliable = ("yes: " + ", ".join(e.flags)) if e.flags else "no"
    return [str(rank), e.defense, e.model, str(e.n), _pct(e.clean_accuracy), _pct(e.balanced_accuracy), robust,
            _pct(e.aa_accuracy), unreliable, "–" if e.forward_passes is None else str(e.forward_passes), e.family,
            "–" if e.attack_time_s is None else f"{e.attack_time_s:.1f} s", passes.text(e.attack_passes)]


HEADER = ["rank", "defense", "model", "n", "clean acc", "balanced clean acc", "robust acc [95% CI]",
          "AutoAttack robust acc", "potentially unreliable", "forward passes per inference", "family", "attack time",
          "attack passes/sample fwd / bwd"]
CAPTION = ("accuracies in %; robust acc: per-sample worst case over every adaptive attack at this ε (a sample counts "
           "only if correct clean and under each attack), 95% Wilson interval; " + RANDOMIZED_MARK + ": randomized "
           "model, expected accuracy over fresh draws with a bootstrap interval over samples and draws; balanced "
           "clean acc: mean per-class recall; forward passes per inference: the defense's own; attack time and "
           "attack passes/sample: what the combined attacks spent at this ε, the passes (model forward / backward "
           "passes per sample) the same on every machine, – where a run did not record them")


def render_markdown(items: list[Board], eps: float, corruption: list | tuple = ()) -> str:
    """The L∞ boards, the L2 ones, then the corruption boards (``corruption``) as their own section: never one ranking."""
    lines = [f"Leaderboard at ε = {_title_eps(items, eps)}, one ranking per data set, threat model and sample set ({CAPTION})"]
    for board in items:
        lines += ["", f"## {heading(board)}", ""] + ([note(board), ""] if note(board) else [])
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_row(i + 1, e)) + " |" for i, e in enumerate(board.entries)]
    parts = ["\n".join(lines) + "\n"] if items else []
    if corruption:
        parts.append(corruption_board.render_markdown(list(corruption)))
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem;color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:0 0 .3rem}h2{font-size:1.05rem;margin:1.2rem 0 .3rem}
p{margin:.2rem 0 .6rem;color:#57606a;font-size:.9rem}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{padding:.45rem .6rem;border-bottom:1px solid #d0d7de;text-align:right;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}td:nth-child(2),th:nth-child(2),td:nth-child(3),th:nth-child(3),
td:nth-child(9),th:nth-child(9),td:nth-child(11),th:nth-child(11){text-align:left}
tr.flagged td:nth-child(9){color:#9a6700;font-weight:600}
td:nth-child(2),th:nth-child(2){position:sticky;left:0;background:#fff;font-weight:600;z-index:1}
th:nth-child(2){background:#f6f8fa;z-index:2}
@media (max-width:600px){body{padding:.5rem}table{font-size:.8rem}th,td{padding:.35rem .4rem}}
"""


def _html_board(board: Board) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = "".join(f'<tr class="{"flagged" if e.flags else ""}">'
                   + "".join(f"<td>{html.escape(c)}</td>" for c in _row(i + 1, e)) + "</tr>"
                   for i, e in enumerate(board.entries))
    why = f"<p>{html.escape(note(board))}</p>" if note(board) else ""
    return (f"<h2>{html.escape(heading(board))}</h2>{why}"
            f"<div class=\"wrap\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def render_html(items: list[Board], eps: float, corruption: list | tuple = ()) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>robustmed leaderboard</title><style>{_CSS}</style></head><body>"
        f"<h1>robustmed leaderboard</h1><p>ε = {_title_eps(items, eps)}; one ranking per data set, threat model and sample set. "
        f"{html.escape(CAPTION[0].upper() + CAPTION[1:])}. “Potentially unreliable” lists the fired checks.</p>"
        + "".join(_html_board(b) for b in items) + corruption_board.render_html(list(corruption))
        + "</body></html>\n"
    )
