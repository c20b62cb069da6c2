"""Leaderboard (RobustBench layout, check E6): ranked by best-known robust accuracy.

Best-known = the minimum over every adaptive evaluation of that defense/model/dataset at ε,
so one strong attack is enough to lower an entry; "potentially unreliable" lists fired checks, and
columns an earlier engine measured that this one would change. Randomized models enter with their
expected accuracy (:mod:`robustmed.expected`).
"""
from __future__ import annotations

import html
from dataclasses import dataclass

from robustmed.evidence import Evaluation


@dataclass(frozen=True)
class Entry:
    defense: str
    model: str
    dataset: str
    clean_accuracy: float
    aa_accuracy: float | None
    best_known: float
    best_attack: str
    flags: tuple[str, ...]
    forward_passes: int | None
    family: str


def _defense_facts(name: str) -> tuple[int | None, str]:
    from robustmed.defenses import DEFENSES

    if name in DEFENSES:
        info = DEFENSES.get(name)
        return info.forward_passes, info.family
    return None, "custom"


def entries(evals: list[Evaluation], eps: float) -> list[Entry]:
    groups: dict[tuple, list[Evaluation]] = {}
    for ev in evals:
        if abs(ev.eps - eps) < 1e-9 and ev.protocol == "adaptive":
            groups.setdefault((ev.defense, ev.model, ev.dataset), []).append(ev)
    out = []
    for (defense, model, dataset), group in groups.items():
        weakest = min(group, key=lambda e: e.robust_accuracy)
        aa = [e for e in group if e.attack.split(":")[0] in ("aa", "aa-rand")]
        passes, family = _defense_facts(defense)
        out.append(Entry(defense, model, dataset, max(e.clean_accuracy for e in group),
                         min(e.robust_accuracy for e in aa) if aa else None, weakest.robust_accuracy,
                         weakest.attack, _flags(group), passes, family))
    return sorted(out, key=lambda e: (-e.best_known, -e.clean_accuracy, e.defense))


STALE_FLAG = "previous engine"


def _flags(group: list[Evaluation]) -> tuple[str, ...]:
    stale = (STALE_FLAG,) if any(e.stale for e in group) else ()
    return tuple(sorted({f for e in group for f in e.findings})) + stale


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _row(rank: int, e: Entry) -> list[str]:
    unreliable = ("yes: " + ", ".join(e.flags)) if e.flags else "no"
    return [str(rank), e.defense, e.model, e.dataset, _pct(e.clean_accuracy), _pct(e.aa_accuracy),
            f"{_pct(e.best_known)} ({e.best_attack})", unreliable, "–" if e.forward_passes is None else
            str(e.forward_passes), e.family]


HEADER = ["rank", "defense", "model", "dataset", "clean acc", "AutoAttack robust acc", "best-known robust acc",
          "potentially unreliable", "forward passes", "family"]


def render_markdown(items: list[Entry], eps: float) -> str:
    lines = [f"Leaderboard at ε = {eps * 255:.3g}/255 (accuracies in %)", "", "| " + " | ".join(HEADER) + " |",
             "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(i + 1, e)) + " |" for i, e in enumerate(items)]
    return "\n".join(lines) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:1rem;color:#1b1f24;background:#fff}
h1{font-size:1.3rem;margin:0 0 .3rem}p{margin:.2rem 0 1rem;color:#57606a;font-size:.9rem}
.wrap{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{padding:.45rem .6rem;border-bottom:1px solid #d0d7de;text-align:right;white-space:nowrap}
th{background:#f6f8fa;position:sticky;top:0}td:nth-child(2),th:nth-child(2),td:nth-child(3),th:nth-child(3),
td:nth-child(4),th:nth-child(4),td:nth-child(8),th:nth-child(8),td:nth-child(10),th:nth-child(10){text-align:left}
tr.flagged td:nth-child(8){color:#9a6700;font-weight:600}
td:nth-child(2),th:nth-child(2){position:sticky;left:0;background:#fff;font-weight:600;z-index:1}
th:nth-child(2){background:#f6f8fa;z-index:2}
@media (max-width:600px){body{padding:.5rem}table{font-size:.8rem}th,td{padding:.35rem .4rem}}
"""


def render_html(items: list[Entry], eps: float) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADER)
    body = []
    for i, e in enumerate(items):
        cells = "".join(f"<td>{html.escape(c)}</td>" for c in _row(i + 1, e))
        body.append(f'<tr class="{"flagged" if e.flags else ""}">{cells}</tr>')
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>robustmed leaderboard</title><style>{_CSS}</style></head><body>"
        f"<h1>robustmed leaderboard</h1><p>L∞, ε = {eps * 255:.3g}/255. Ranked by best-known robust accuracy: the "
        "minimum over every adaptive evaluation. Accuracies in %. “Potentially unreliable” lists the checks that "
        "fired.</p>"
        f"<div class=\"wrap\"><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
        "</body></html>\n"
    )
