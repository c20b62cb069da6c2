"""Leaderboard like RobustBench's: one ranking per data set, threat model and sample set, ranked by the
per-sample worst case Table 3 prints, with n and an interval (issue: reports)."""
import hashlib
import json

import pandas as pd
import pytest

from robustmed import store
from robustmed.cli import main
from robustmed.reports.evidence import WORST, evaluations
from robustmed.reports.leaderboard import STALE_FLAG, boards, render_html, render_markdown
from robustmed.provenance import ENGINE
from robustmed.stats import wilson

EPS = 4 / 255


def _frame(attack, ids, robust, clean=None, labels=None, **extra):
    """Stored rows of one attack, in the order of ``ids`` (runs need not store samples sorted)."""
    clean = clean if clean is not None else [True] * len(ids)
    labels = labels if labels is not None else [0] * len(ids)
    return pd.DataFrame({"sample_id": ids, "label": labels, "clean_correct": [bool(c) for c in clean],
                         "robust": [bool(r) for r in robust], "eps": EPS, "attack": attack,
                         "protocol": "adaptive", "draws": 1, **extra})


def _store(root, run_id, defense, frames, dataset="pneumoniamnist", norm="Linf", engine=ENGINE, findings=()):
    """A run written with the store's own helper, its manifest naming the sample set as a bench run does."""
    rows = pd.concat(frames, ignore_index=True)
    ids = sorted(int(i) for i in rows.sample_id.unique())
    manifest = {"run_id": run_id, "created": run_id, "defense": defense, "model": "m", "dataset": dataset,
                "sample_ids": ids, "sample_ids_sha256": hashlib.sha256(json.dumps(ids).encode()).hexdigest(),
                "attacks": {a: {"norm": norm} for a in rows.attack.unique()},
                "findings": [{"id": f, "severity": "FLAG", "fired": True} for f in findings]}
    store.write_run(rows, manifest if engine is None else {**manifest, "engine": engine}, root)


def _section(markdown, title):
    """The lines of the table under the heading that starts with ``title``."""
    return markdown.split(f"## {title}")[1].split("## ")[0]


def test_two_data_sets_never_share_a_table(tmp_path):
    _store(tmp_path, "r1", "none", [_frame("pgd20", [0, 1, 2, 3], [1, 0, 0, 0])])
    _store(tmp_path, "r2", "pgd-at", [_frame("pgd20", [0, 1, 2, 3], [1, 1, 0, 0])], dataset="breastmnist")
    tables = boards(store.load_runs(tmp_path), EPS)
    assert [(b.dataset, [e.defense for e in b.entries]) for b in tables] == [("breastmnist", ["pgd-at"]),
                                                                              ("pneumoniamnist", ["none"])]
    markdown = render_markdown(tables, EPS)
    breast, pneumonia = _section(markdown, "breastmnist"), _section(markdown, "pneumoniamnist")
    assert "| pgd-at |" in breast and "| none |" not in breast
    assert "| none |" in pneumonia and "| pgd-at |" not in pneumonia
    assert "has runs on" not in markdown  # one sample set per data set: no note


def test_two_sample_sets_never_share_a_table_and_the_note_says_why(tmp_path):
    _store(tmp_path, "r1", "none", [_frame("pgd20", [0, 1, 2, 3, 4], [1, 0, 0, 0, 0])])
    _store(tmp_path, "r2", "pgd-at", [_frame("pgd20", [0, 1, 2, 3, 4], [1, 1, 0, 0, 0])])
    _store(tmp_path, "r3", "cap", [_frame("pgd20", [10, 11, 12, 13], [1, 1, 1, 0])])
    tables = boards(store.load_runs(tmp_path), EPS)
    assert [(b.n, [e.defense for e in b.entries]) for b in tables] == [(5, ["pgd-at", "none"]), (4, ["cap"])]
    short = hashlib.sha256(json.dumps([10, 11, 12, 13]).encode()).hexdigest()[:8]
    markdown = render_markdown(tables, EPS)
    assert f"## pneumoniamnist · L∞, ε = 4/255 · n = 4, samples {short}" in markdown
    assert markdown.count("pneumoniamnist has runs on 2 different sample sets") == 2
    assert "| cap |" not in _section(markdown, "pneumoniamnist · L∞, ε = 4/255 · n = 5")
    page = render_html(tables, EPS)
    assert page.count("<h2>") == 2 and page.count("<table>") == 2 and "has runs on 2 different sample sets" in page


def test_another_norm_is_another_table(tmp_path):
    _store(tmp_path, "r1", "none", [_frame("pgd20", [0, 1], [1, 0])])
    _store(tmp_path, "r2", "none", [_frame("pgd20-l2", [0, 1], [0, 0])], norm="L2")
    assert [(b.norm, b.entries[0].robust_accuracy) for b in boards(store.load_runs(tmp_path), EPS, EPS)] == [
        ("Linf", 0.5), ("L2", 0.0)]


@pytest.fixture
def split_attacks(tmp_path):
    """Two runs on the same five samples: each attack alone leaves 60% robust, but they break different
    samples, so only 40% survive both; the second run stores its rows in another order."""
    ids, clean, labels = [0, 1, 2, 3, 4], [1, 1, 1, 1, 0], [0, 0, 1, 1, 1]
    _store(tmp_path, "r1", "none", [_frame("pgd10", ids, [1, 1, 0, 1, 0], clean, labels)])
    _store(tmp_path, "r2", "none", [_frame("aa", ids[::-1], [0, 1, 1, 1, 0][::-1], clean[::-1], labels[::-1])])
    return tmp_path


def test_robust_column_is_the_per_sample_worst_case_not_the_weakest_attack(split_attacks):
    (board,) = boards(store.load_runs(split_attacks), EPS)
    (entry,) = board.entries
    assert (entry.n, entry.clean_accuracy, entry.aa_accuracy) == (5, 0.8, 0.6)
    assert entry.balanced_accuracy == pytest.approx((1 + 2 / 3) / 2)  # class 0: 2 of 2; class 1: 2 of 3
    assert entry.robust_accuracy == 0.4 and entry.ci == wilson(2, 5)  # min over attacks would say 0.6
    assert not entry.randomized and entry.flags == ()


def test_cli_prints_n_and_the_interval(split_attacks, capsys):
    assert main(["leaderboard", "--results", str(split_attacks)]) == 0
    out = capsys.readouterr().out
    assert "| 1 | none | m | 5 | 80.0 | 83.3 | 40.0 [11.8, 76.9] | 60.0 | no | 1 | control |" in out
    assert "| n |" in out and "robust acc [95% CI]" in out
    assert main(["leaderboard", "--results", str(split_attacks), "--format", "html"]) == 0
    assert "<td>40.0 [11.8, 76.9]</td>" in capsys.readouterr().out


def _drawn(attack, masks, clean_masks, draws=2):
    """Rows of a randomized model: per-draw verdict masks (bit d set: draw d correct)."""
    full = (1 << draws) - 1
    return _frame(attack, list(range(len(masks))), [m == full for m in masks], [c == full for c in clean_masks],
                  draws=draws, draw_mask=masks, clean_draw_mask=clean_masks)


def test_randomized_entry_is_the_expected_worst_case_with_table3s_interval(tmp_path):
    """Expected correctness per sample (clean 1, 1, 1, ½; aa-rand 1, ½, 0, 1; pgd20 ½, 1, 1, 1) has worst case
    ½, ½, 0, ½ = 0.375, below either attack's 0.5 and 0.75; a previous engine's one-draw run of the same model
    is a different judgement and stays out (its AutoAttack broke every sample)."""
    _store(tmp_path, "r0", "rpan", [_frame("aa", [0, 1, 2, 3], [0, 0, 0, 0])], engine=None)
    clean = [3, 3, 3, 1]
    _store(tmp_path, "r1", "rpan", [_drawn("aa-rand", [3, 1, 0, 3], clean), _drawn("pgd20", [1, 3, 3, 3], clean)],
           findings=["A4"])
    runs = store.load_runs(tmp_path)
    (board,) = boards(runs, EPS)
    (entry,) = board.entries
    table3 = next(e for e in evaluations(runs[1:]) if e.attack == WORST)
    assert entry.randomized and entry.robust_accuracy == 0.375 == table3.robust_accuracy
    assert entry.ci == table3.ci and entry.ci[0] < 0.375 < entry.ci[1]
    assert (entry.clean_accuracy, entry.aa_accuracy, entry.flags) == (0.875, 0.5, ("A4",))
    assert STALE_FLAG not in entry.flags
    low, high = entry.ci
    assert f"| 37.5 [{100 * low:.1f}, {100 * high:.1f}]* |" in render_markdown([board], EPS)
