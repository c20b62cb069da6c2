"""The corruption track's leaderboard and suite table: its own threat model, never ranked with the L∞ attacks.

One board per data set, corruption set, severities and sample set (like RobustBench's separate corruptions
board); entries are ranked by MedMNIST-C's mean balanced error over the set's corruptions (lower first, then
higher mean accuracy), every figure recomputed from the stored rows (:mod:`robustmed.corruption_summary`).
"""
from __future__ import annotations

import hashlib
import html
import json
from dataclasses import dataclass

import pandas as pd

from robustmed.corruption_summary import summarize_corruptions
from robustmed.reports.evidence import fired_flags
from robustmed.tracks import corrupted

RANDOMIZED_MARK = "*"


@dataclass(frozen=True)
class CorruptionEntry:
    defense: str
    model: str
    figures: dict  # summarize_corruptions of the entry's rows
    flags: tuple[str, ...]


@dataclass(frozen=True)
class CorruptionBoard:
    dataset: str
    corruption_set: str
    severities: tuple[int, ...]
    samples: str
    entries: tuple[CorruptionEntry, ...]

    @property
    def n(self) -> int:
        return max((e.figures["n"] for e in self.entries), default=0)


def _samples(rows: pd.DataFrame, manifest: dict) -> str:
    if "sample_ids_sha256" in manifest:
        return manifest["sample_ids_sha256"]
    ids = sorted(int(i) for i in rows.sample_id.unique())
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def latest_corruption_runs(runs: list[tuple[pd.DataFrame, dict]]) -> dict[tuple, tuple]:
    """Per (data set, corruption set, severities, sample set, defense, model): the corruption rows of the latest
    run (runs come oldest first) and its manifest."""
    out = {}
    for rows, manifest in runs:
        part = corrupted(rows)
        if part.empty:
            continue
        spec = json.loads(part.spec.iloc[0])
        levels = tuple(sorted(int(s) for s in part.severity.unique()))
        key = (manifest["dataset"], spec["extra"].get("corruption_set", ""), levels, _samples(rows, manifest),
               manifest["defense"], manifest["model"])
        out[key] = (part, manifest)
    return out


def corruption_boards(runs: list[tuple[pd.DataFrame, dict]]) -> list[CorruptionBoard]:
    """One ranking per data set, corruption set, severities and sample set, by mean balanced error."""
    grouped: dict[tuple, list[CorruptionEntry]] = {}
    for (dataset, name, levels, samples, defense, model), (part, manifest) in latest_corruption_runs(runs).items():
        entry = CorruptionEntry(defense, model, summarize_corruptions(part), fired_flags(manifest))
        grouped.setdefault((dataset, name, levels, samples), []).append(entry)
    boards = []
    for (dataset, name, levels, samples), entries in sorted(grouped.items()):
        ranked = sorted(entries, key=lambda e: (e.figures["mean"]["balanced_error"], -e.figures["mean"]["accuracy"],
                                                e.defense, e.model))
        boards.append(CorruptionBoard(dataset, name, levels, samples, tuple(ranked)))
    return boards


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _with_ci(value: float, ci, signed: bool = False) -> str:
    text = f"{100 * value:+.1f}" if signed else _pct(value)
    return f"{text} [{_pct(ci[0])}, {_pct(ci[1])}]"


def _worst(figures: dict) -> str:
    """The corruption whose balanced error rises most over clean, with that rise in points."""
    name, f = max(figures["per_corruption"].items(), key=lambda kv: kv[1]["balanced_error_increase"])
    return f"{name} ({100 * f['balanced_error_increase']:+.1f})"


HEADER = ["rank", "defense", "model", "n", "clean acc", "clean BE", "corrupted acc [95% CI]", "BE [95% CI]",
          "ΔBE [95% CI]", "largest ΔBE", "potentially unreliable"]
CAPTION = ("accuracies and balanced errors in %; corrupted acc: mean over the set's corruptions and severities; BE: "
           "balanced error (1 − mean per-class recall) averaged over severities, then over corruptions; ΔBE: its "
           "increase over clean BE in points (MedMNIST-C's metrics, not divided by its AlexNet reference); ranked "
           "by BE, lowest first; 95% intervals: bootstrap resampling samples within each class; " + RANDOMIZED_MARK
           + ": randomized model, expected accuracy over fresh draws")


def heading(board: CorruptionBoard) -> str:
    levels = f"{board.severities[0]}–{board.severities[-1]}" if len(board.severities) > 1 else str(board.severities[0])
    return (f"{board.dataset} · corruptions (MedMNIST-C, {board.corruption_set} set, severities {levels}) · "
            f"n = {board.n}, samples {board.samples[:8]}")


def _row(rank: int, e: CorruptionEntry) -> list[str]:
    f, mark = e.figures, RANDOMIZED_MARK if e.figures["draws"] > 1 else ""
    mean = f["mean"]
    return [str(rank), e.defense, e.model, str(f["n"]), _pct(f["clean"]["accuracy"]),
            _pct(f["clean"]["balanced_error"]), _with_ci(mean["accuracy"], mean["accuracy_ci"]) + mark,
            _with_ci(mean["balanced_error"], mean["balanced_error_ci"]),
            _with_ci(mean["balanced_error_increase"], mean["balanced_error_increase_ci"], signed=True), _worst(f),
            ("yes: " + ", ".join(e.flags)) if e.flags else "no"]


def render_markdown(boards: list[CorruptionBoard]) -> str:
    lines = [f"Corruption boards, one ranking per data set, corruption set and sample set ({CAPTION})"]
    for board in boards:
        lines += ["", f"## {heading(board)}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        lines += ["| " + " | ".join(_row(i + 1, e)) + " |" for i, e in enumerate(board.entries)]
    return "\n".join(lines) + "\n"


def render_html(boards: list[CorruptionBoard]) -> str:
    """The boards as HTML sections, for the leaderboard page (its stylesheet applies)."""
    parts = [f"<h1>Corruptions</h1><p>{html.escape(CAPTION[0].upper() + CAPTION[1:])}.</p>"] if boards else []
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    for board in boards:
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _row(i + 1, e)) + "</tr>"
                       for i, e in enumerate(board.entries))
        parts.append(f"<h2>{html.escape(heading(board))}</h2><div class=\"wrap\"><table><thead><tr>{head}</tr>"
                     f"</thead><tbody>{body}</tbody></table></div>")
    return "".join(parts)


def table_data(runs: list[tuple[pd.DataFrame, dict]], defenses: list[str]) -> tuple[list[str], list[list[str]]]:
    """A suite's corruption table: one row per defense (and model, when several), per data set the clean
    accuracy, each corruption's accuracy over severities, their mean with its interval, BE and ΔBE."""
    latest = latest_corruption_runs(runs)
    datasets = sorted({key[0] for key in latest})
    names: dict[str, list[str]] = {}
    for key, (part, _) in latest.items():
        names.setdefault(key[0], list(dict.fromkeys(part.corruption)))
    header = ["defense", *[f"{d} {c}" for d in datasets
                           for c in ("clean", *names[d], "mean [95% CI]", "BE", "ΔBE [95% CI]")]]
    models = sorted({key[5] for key in latest})
    body = []
    for defense in defenses:
        for model in models:
            cells = {k[0]: summarize_corruptions(p) for k, (p, _) in latest.items() if k[4:] == (defense, model)}
            if cells:
                label = defense + (f" · {model}" if len(models) > 1 else "")
                body.append([label, *[c for d in datasets for c in _table_cells(cells.get(d), names[d])]])
    return header, body


def _table_cells(f: dict | None, names: list[str]) -> list[str]:
    if f is None:
        return ["–"] * (len(names) + 4)
    per, mean = f["per_corruption"], f["mean"]
    return [_pct(f["clean"]["accuracy"]), *(_pct(per[n]["mean_accuracy"]) if n in per else "–" for n in names),
            _with_ci(mean["accuracy"], mean["accuracy_ci"]), _pct(mean["balanced_error"]),
            _with_ci(mean["balanced_error_increase"], mean["balanced_error_increase_ci"], signed=True)]


TABLE_CAPTION = ("Corruptions (MedMNIST-C): accuracy (%) under each corruption, averaged over its severities; mean: "
                 "over corruptions and severities; BE: balanced error averaged over severities and corruptions; ΔBE: "
                 "its increase over clean, in points; 95% intervals: bootstrap resampling samples within each class; "
                 "a separate threat model, never part of the L∞ worst case")
