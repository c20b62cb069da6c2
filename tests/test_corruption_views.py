"""The corruption track end to end through the command line, and the views that show it beside the L∞ attacks
without ever pooling the two: bench's summary, the leaderboard, the suite table and the plots."""
import json

import pandas as pd
import pytest

from robustmed import store
from robustmed.cli import main
from robustmed.reports.corruption_board import corruption_boards
from robustmed.reports.leaderboard import boards
from robustmed.stats import wilson

EPS = 4 / 255
N = 16


@pytest.fixture(scope="module")
def mixed_runs(tmp_path_factory, data_root):
    """Two shipped defenses, each benchmarked with PGD-2 and the corruption track (severity 1) in one run."""
    out = tmp_path_factory.mktemp("runs")
    for defense in ("none", "pgd-at"):
        assert main(["bench", "--defense", defense, "--attack", "pgd2,corruptions1", "--n", str(N), "--out", str(out),
                     "--no-progress", "--data-root", str(data_root)]) == 0
    return out


def test_bench_corruptions_end_to_end(tmp_path, data_root, capsys, monkeypatch):
    """`robustmed bench --defense none --attack corruptions --n 16`: per-corruption and mean figures, one row
    per sample × corruption × severity, no L∞ figure."""
    assert main(["bench", "--defense", "none", "--attack", "corruptions", "--n", "16", "--out", str(tmp_path),
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    c = report["corruptions"]
    assert c["corruption_set"] == "pneumoniamnist" and c["severities"] == [1, 2, 3, 4, 5] and c["n"] == 16
    assert len(c["per_corruption"]) == 13 and "robust_accuracy" not in report
    assert report["clean_accuracy"] == c["clean"]["accuracy"]
    rows = pd.read_parquet(report["results"])
    assert len(rows) == 16 * 13 * 5 and (rows.eps == 0).all() and set(rows.attack) == {"corruptions"}
    for name, f in c["per_corruption"].items():
        part = rows[rows.corruption == name]
        assert f["accuracy"] == pytest.approx(part.groupby("severity").robust.mean().tolist())
    monkeypatch.setenv("COLUMNS", "160")  # the table unwrapped
    assert main(["bench", "--defense", "none", "--attack", "corruptions", "--n", "16", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "corruptions (pneumoniamnist set, n = 16)" in text and "brightness_down" in text and "mean" in text


def test_the_attacks_worst_case_leaves_the_corruptions_out(mixed_runs):
    out = mixed_runs
    for rows, manifest in store.load_runs(out):
        pgd = rows[rows.attack == "pgd2"]
        (summary,) = manifest["summary"]
        assert list(summary["per_attack"]) == ["pgd2"]  # the corruption rows are no attack column
        assert summary["robust_accuracy"] == pytest.approx(pgd.robust.mean())
        assert summary["n"] == N and manifest["corruption_summary"]["n"] == N
        assert {f["id"] for f in manifest["findings"]} >= {"B1", "B4", "B18"}


def test_leaderboard_gives_the_corruptions_their_own_boards(mixed_runs, capsys):
    out = mixed_runs
    runs = store.load_runs(out)
    (board,) = boards(runs, EPS)
    for entry in board.entries:  # the L∞ ranking's figure is PGD-2's alone
        rows = next(r for r, m in runs if m["defense"] == entry.defense)
        k = int(rows[rows.attack == "pgd2"].robust.sum())
        assert entry.robust_accuracy == pytest.approx(k / N) and entry.ci == pytest.approx(wilson(k, N))
    (corruption,) = corruption_boards(runs)
    errors = [e.figures["mean"]["balanced_error"] for e in corruption.entries]
    assert errors == sorted(errors) and {e.defense for e in corruption.entries} == {"none", "pgd-at"}
    assert main(["leaderboard", "--results", str(out), "--format", "md"]) == 0
    text = capsys.readouterr().out
    linf, _, corrupted = text.partition("Corruption boards")
    assert "L∞, ε = 4/255" in linf and "corruptions (MedMNIST-C" not in linf
    assert "## pneumoniamnist · corruptions (MedMNIST-C, pneumoniamnist set, severities 1)" in corrupted
    assert "L∞" not in corrupted


def test_suite_table_puts_the_corruptions_in_their_own_table(mixed_runs, tmp_path, capsys):
    out = mixed_runs
    suite = tmp_path / "s.toml"
    suite.write_text(f'name = "s"\nresults = "{out}"\ndefenses = ["none", "pgd-at"]\n'
                     'datasets = ["pneumoniamnist"]\nattacks = ["pgd2", "corruptions1"]\n')
    assert main(["table", "--suite", str(suite)]) == 0
    linf, _, corrupted = capsys.readouterr().out.partition("Corruptions (MedMNIST-C)")
    assert "pneumoniamnist pgd2" in linf and "corruptions" not in linf.split("\n")[2]
    assert "pneumoniamnist brightness_down" in corrupted and "pneumoniamnist ΔBE [95% CI]" in corrupted


def test_plots_read_one_track_each(mixed_runs, tmp_path, capsys):
    out = mixed_runs
    assert main(["plot", "--results", str(out), "--kind", "severity", "--defense", "none",
                 "--out", str(tmp_path / "severity.svg")]) == 0
    svg = (tmp_path / "severity.svg").read_text()
    assert "gamma_corr_down" in svg and "mean over corruptions" in svg and "pgd2" not in svg
    assert main(["plot", "--results", str(out), "--kind", "eps", "--out", str(tmp_path / "eps.svg")]) == 0
    assert "brightness" not in (tmp_path / "eps.svg").read_text()
