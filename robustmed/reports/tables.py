"""Paper-style tables (the seed paper's Table 3 layout) rendered from stored evaluations.

Rows: defenses (randomized ones twice: the paper's single-draw, non-EOT attacks beside the adaptive
EOT attacks, both judged over the same R draws), per model when the evaluations hold several;
columns: dataset × attack (one per threat model for multi-input models, ``pgd20[image]``), the null
attack where a run has one, the per-sample worst case, and the worst case read from one draw as a
defense paper would. Cells: robust accuracy with its 95% interval (expected accuracy and a two-way
bootstrap on randomized models, Wilson otherwise); the best adaptive number per column in bold.
"""
from __future__ import annotations

from dataclasses import replace

from robustmed.reports.evidence import NORM_SUFFIXES, NULL, WORST, Evaluation, column_attack
from robustmed.tracks import NORM_SUBSCRIPTS, eps_label

PROTOCOL_LABEL = {"adaptive": "", "paper": " (paper protocol)"}


def _variants(evals: list[Evaluation], dataset: str, attack: str) -> list[str]:
    """The attack's evaluations on a data set: itself, or one per threat model (``attack[threat]``)."""
    names = dict.fromkeys(e.attack for e in evals if e.dataset == dataset and e.attack.startswith(f"{attack}["))
    return list(names) or [attack]


def _mark(attack: str) -> str:
    return next((m for m in NORM_SUFFIXES.values() if attack.endswith(m)), "")


def _columns(evals: list[Evaluation], attacks: list[str]) -> list[tuple[str, str]]:
    """Per data set the L∞ columns (attacks, null, worst case), then the L2 ones, then L1, each norm's apart."""
    datasets = sorted({e.dataset for e in evals})
    out = []
    for d in datasets:
        for mark in ("", *NORM_SUFFIXES.values()):
            names = [v for at in attacks if _mark(at) == mark for v in _variants(evals, d, at)]
            if not names and not any(e.dataset == d and e.attack == WORST + mark for e in evals):
                continue
            null = [NULL + mark] if any(e.attack == NULL + mark and e.dataset == d for e in evals) else []
            out += [(d, a) for a in [*names, *null, WORST + mark]]
    return out


def table_data(evals: list[Evaluation], defenses: list[str], attacks: list[str], eps: float,
               substitutes: dict | None = None):
    """(columns, rows): rows are (label, defense, protocol, {column: Evaluation}) in suite order; with
    several models, one row per model and defense, labelled ``defense · model``."""
    evals = [replace(e, attack=column_attack(e.attack, substitutes)) if not e.attack.startswith(WORST) else e
             for e in evals if abs(e.eps - eps) < 1e-9]
    columns = _columns(evals, attacks)
    models = sorted({e.model for e in evals})
    rows = []
    for defense in defenses:
        for model in models:
            for protocol in ("paper", "adaptive"):
                cells = {(e.dataset, e.attack): e for e in evals
                         if e.defense == defense and e.model == model and e.protocol == protocol}
                label = defense + (f" · {model}" if len(models) > 1 else "") + PROTOCOL_LABEL[protocol]
                if cells:
                    rows.append((label, defense, protocol, cells))
    return columns, rows


def _best(rows, column) -> float | None:
    values = [cells[column].robust_accuracy for _, _, protocol, cells in rows
              if protocol == "adaptive" and column in cells and not cells[column].stale]
    return max(values) if values else None


STALE = "‡"
NULL_LIKE = "≈"


def _cell(ev: Evaluation | None, bold: bool, fmt: str) -> str:
    if ev is None:
        return "–"
    low, high = ev.ci
    value = f"{100 * ev.robust_accuracy:.1f}"
    marks = (STALE if ev.stale else "") + (NULL_LIKE if ev.indistinguishable_from_null else "")
    if fmt == "latex":
        value = rf"\textbf{{{value}}}" if bold else value
        return rf"{value}\,{{\scriptsize[{100 * low:.1f}, {100 * high:.1f}]}}{marks}"
    value = f"**{value}**" if bold else value
    return f"{value} [{100 * low:.1f}, {100 * high:.1f}]{marks}"


def _one_draw(cells: dict, dataset: str) -> str:
    """The worst case read the way a defense paper reads it: clean and every attack on one draw."""
    ev = next((e for m in ("", *NORM_SUFFIXES.values()) if (e := cells.get((dataset, WORST + m)))), None)
    return f"{100 * ev.single_draw:.1f}" if ev is not None and ev.single_draw is not None else "–"


def _clean(cells: dict, dataset: str) -> str:
    ev = next((e for (d, _), e in cells.items() if d == dataset), None)
    return f"{100 * ev.clean_accuracy:.1f}" if ev else "–"


def _balanced(cells: dict, dataset: str) -> str:
    ev = next((e for (d, _), e in cells.items() if d == dataset), None)
    return f"{100 * ev.balanced_clean:.1f}" if ev is not None and ev.balanced_clean is not None else "–"


def _flags(cells: dict) -> str:
    fired = sorted({flag for e in cells.values() for flag in e.findings})
    return ", ".join(fired) if fired else ""


GAP = 0.05  # issue-level rule: adaptive more than 5 points below the paper protocol is marked
MARK = "†"
# Why the paper protocol overstates robustness, by the checks that fired on the adaptive run.
REASONS = {"A4": "randomized (A4): the paper protocol's attacks follow one draw's gradient; the adaptive ones average over draws (EOT)",
           "A6": "gradient blocked by a non-differentiable op (A6): the adaptive run attacks through it with BPDA"}


def overstatement(rows, defense: str, column) -> float | None:
    """Paper-protocol minus adaptive robust accuracy of a defense in one column (None: not both run)."""
    cells = {protocol: c.get(column) for _, d, protocol, c in rows if d == defense}
    paper, adaptive = cells.get("paper"), cells.get("adaptive")
    if paper is None or adaptive is None or paper.stale or adaptive.stale:  # unlike judgements: no comparison
        return None
    return paper.robust_accuracy - adaptive.robust_accuracy


def _note(gaps: list[float], cells: dict) -> str:
    """Why an adaptive row carries a †: the largest overstatement and the checks that explain it."""
    if not gaps:
        return ""
    fired = {flag for e in cells.values() for flag in e.findings}
    why = "; ".join(REASONS[f] for f in sorted(REASONS) if f in fired) or "the adaptive attacks are stronger"
    return f"{MARK} paper protocol overstates by up to {100 * max(gaps):.1f} pts: {why}"


def render(evals: list[Evaluation], defenses: list[str], attacks: list[str], eps: float, fmt: str = "md",
           title: str = "", substitutes: dict | None = None) -> str:
    columns, rows = table_data(evals, defenses, attacks, eps, substitutes)
    datasets = list(dict.fromkeys(d for d, _ in columns))
    randomized = any(e.randomized for _, _, _, cells in rows for e in cells.values())
    one_draw = [f"{d} worst, one draw" for d in datasets] if randomized else []
    header = ["defense", *[f"{d} {kind}" for d in datasets for kind in ("clean", "balanced clean")],
              *[f"{d} {a}" for d, a in columns], *one_draw, "flags", "note"]
    best = {c: _best(rows, c) for c in columns}
    body = []
    for label, defense, protocol, cells in rows:
        line = [label, *[cell for d in datasets for cell in (_clean(cells, d), _balanced(cells, d))]]
        gaps = {c: g for c in columns if protocol == "adaptive"
                and (g := overstatement(rows, defense, c)) is not None and g > GAP}  # the † cells
        for column in columns:
            ev = cells.get(column)
            bold = ev is not None and protocol == "adaptive" and best[column] is not None \
                and abs(ev.robust_accuracy - best[column]) < 1e-12
            line.append(_cell(ev, bold, fmt) + (MARK if column in gaps else ""))
        line += [_one_draw(cells, d) for d in datasets] if randomized else []
        body.append([*line, _flags(cells), _note(list(gaps.values()), cells)])
    whole = [norm for norm, mark in NORM_SUFFIXES.items() if any(a.endswith(mark) for _, a in columns)]
    caption = title or (f"Robust accuracy (%) at ε = {eps_label(eps)}" + (" (L∞)" if whole else "")
                        + "".join(f", {eps_label(eps, norm)} ({norm})" for norm in whole) + ", 95% Wilson intervals")
    for norm in whole:
        caption += (f"; ({norm}): an {norm} attack (‖δ‖{NORM_SUBSCRIPTS[norm]} ≤ ε over the whole image), its worst "
                    f"case over the {norm} attacks alone")
    caption += ("; balanced clean: mean per-class recall (a model answering one class scores chance there, and "
                "that class's share of the samples in the clean column)")
    if randomized:
        draws = max(e.draws for _, _, _, cells in rows for e in cells.values())
        caption += (f"; randomized defenses: expected accuracy (the mean over samples of the fraction of {draws} "
                    "fresh draws classifying each sample's candidate correctly, per-sample worst case over the attacks "
                    "and the clean image), 95% intervals from a bootstrap resampling samples and draws (one noise "
                    "draw may be shared by a batch); null: the clean image judged like a candidate; "
                    f"{NULL_LIKE}: not distinguishable from the null attack (C5); worst, one draw: clean and every "
                    "attack judged on a single draw, as the defense papers read it")
    if any(e.stale for _, _, _, cells in rows for e in cells.values()):
        caption += (f"; {STALE}: measured by the previous engine (a sample dropped on one set of draws and judged on "
                    "another; Square judged on the clean image), known to be biased; not yet re-measured")
    caption += "".join(f"; {orig} column: {sub} on randomized defenses (adaptive protocol)"
                       for orig, sub in (substitutes or {}).items())
    if any(protocol == "paper" for _, _, protocol, _ in rows):
        caption += (f"; {MARK}: adaptive more than {100 * GAP:.0f} points below the paper protocol's attacks, "
                    "both judged the same way")
    return _latex(header, body, caption) if fmt == "latex" else _markdown(header, body, caption)


def render_rows(header: list[str], body: list[list[str]], caption: str, fmt: str = "md") -> str:
    """Any table of text cells in the suite tables' Markdown or LaTeX layout."""
    return _latex(header, body, caption) if fmt == "latex" else _markdown(header, body, caption)


def _markdown(header, body, caption) -> str:
    lines = [f"{caption}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _latex(header, body, caption) -> str:
    escape = lambda text: text.replace("_", r"\_").replace("%", r"\%").replace("ε", r"$\epsilon$")  # noqa: E731
    spec = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}", r"\centering", rf"\caption{{{escape(caption)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(escape(c) if not c.startswith(("\\", "–")) and "\\" not in c else c for c in row) + r" \\"
              for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
