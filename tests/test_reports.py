"""Views over stored rows: Table-3 layout, leaderboard, regression gate, kill-safe store (issue: reports)."""
import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from robustmed import store
from robustmed.cli import main
from robustmed.reports.evidence import WORST, evaluations
from robustmed.reports.leaderboard import STALE_FLAG, boards, render_html, render_markdown
from robustmed.provenance import ENGINE
from robustmed.reports.regress import compare, kernel_notes, mcnemar_exact, verdict
from robustmed.reports.tables import render

EPS = 4 / 255


def _rows(defense, attack, robust, protocol="adaptive", clean=None):
    clean = clean if clean is not None else [True] * len(robust)
    return pd.DataFrame({"sample_id": range(len(robust)), "robust": robust, "clean_correct": clean, "eps": EPS,
                         "attack": attack, "protocol": protocol, "defense": defense, "model": "m",
                         "dataset": "pneumoniamnist"})


def _run(defense, frames, run_id, findings=()):
    rows = pd.concat(frames, ignore_index=True)
    manifest = {"run_id": run_id, "created": run_id, "defense": defense, "model": "m", "dataset": "pneumoniamnist",
                "engine": ENGINE,
                "findings": [{"id": f, "severity": "FLAG", "fired": True, "reason": "x"} for f in findings]}
    return rows, manifest


@pytest.fixture
def runs():
    return [
        _run("none", [_rows("none", "pgd10", [1, 0, 0, 0]), _rows("none", "aa", [0, 0, 0, 0])], "r1"),
        _run("rpan", [_rows("rpan", "pgd10", [1, 1, 1, 0]), _rows("rpan", "aa", [1, 1, 0, 0])], "r2", ["A4", "A6"]),
        _run("rpan", [_rows("rpan", "pgd10", [1, 1, 1, 1], protocol="paper"),
                      _rows("rpan", "aa", [1, 1, 1, 1], protocol="paper")], "r3"),
    ]


def test_evaluations_include_the_per_sample_worst_case(runs):
    evals = {(e.defense, e.protocol, e.attack): e for e in evaluations(runs)}
    assert evals[("rpan", "adaptive", "pgd10")].robust_accuracy == 0.75
    assert evals[("rpan", "adaptive", WORST)].robust_accuracy == 0.5  # sample 2 falls to AA only
    assert evals[("rpan", "adaptive", "aa")].findings == ("A4", "A6")


def test_table3_layout_bold_best_and_both_protocols(runs):
    text = render(evaluations(runs), ["none", "rpan"], ["pgd10", "aa"], EPS, "md")
    lines = text.splitlines()
    header = lines[2]
    assert "pneumoniamnist pgd10" in header and "pneumoniamnist worst case" in header
    labels = [line.split("|")[1].strip() for line in lines[4:]]
    assert labels == ["none", "rpan (paper protocol)", "rpan"]
    rpan = lines[6]
    assert "**75.0** [30.1, 95.4]" in rpan and "A4, A6" in rpan
    assert "**" not in lines[5]  # the paper protocol never takes the bold
    latex = render(evaluations(runs), ["none", "rpan"], ["pgd10", "aa"], EPS, "latex")
    assert r"\textbf{75.0}" in latex and r"\begin{tabular}" in latex and r"\scriptsize" in latex


def test_leaderboard_ranks_by_the_per_sample_worst_case(runs):
    (board,) = boards(runs, EPS)  # the paper-protocol run of rpan is not ranked
    items = board.entries
    assert [e.defense for e in items] == ["rpan", "none"]
    assert items[0].robust_accuracy == 0.5 and items[0].aa_accuracy == 0.5 and items[0].flags == ("A4", "A6")
    markdown = render_markdown([board], EPS)
    assert "yes: A4, A6" in markdown and "| 1 | rpan | m | 4 |" in markdown
    old = [(rows, {k: v for k, v in manifest.items() if k != "engine"}) for rows, manifest in runs]
    assert STALE_FLAG in boards(old, EPS)[0].entries[0].flags  # AutoAttack columns of the previous engine
    page = render_html([board], EPS)
    assert page.startswith("<!doctype html>") and 'name="viewport"' in page
    assert "http" not in page and "<script" not in page  # static and self-contained


def test_mcnemar_exact_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    assert mcnemar_exact(3, 3) == 1.0


def test_regress_logic_names_flipped_samples(runs):
    baseline = runs[:2]
    worse = [(rows.assign(robust=rows.robust & (rows.sample_id != 0)), m) for rows, m in baseline]
    comparisons, missing = compare(baseline, worse)
    assert not missing
    dropped = {c.group[4]: c.flipped_down for c in comparisons}
    assert dropped["pgd10"] == [0]
    assert verdict(comparisons, missing, tolerance=0.02, alpha=0.05)  # a 25-point drop fails
    assert verdict(*compare(baseline, baseline), tolerance=0.0, alpha=0.05) == []


def test_regress_notes_a_golden_run_made_on_kernels_that_round_differently():
    def run(run_id, kernels):
        return None, {"run_id": run_id, "machine": {"kernels": kernels} if kernels else {}}

    here = [run("candidate", "aaaa")]
    assert kernel_notes([run("same", "aaaa")], here) == []
    (other,) = kernel_notes([run("other", "bbbb")], here)
    (unrecorded,) = kernel_notes([run("old", None)], here)
    assert other.startswith("other was made on kernels bbbb, the candidate on aaaa")
    assert unrecorded.startswith("old was made on kernels it did not record")


def test_regress_reads_the_kernels_each_unit_ran_on_when_a_run_was_spread_over_machines():
    def run(run_id, finishing, *per_unit):
        return None, {"run_id": run_id, "machine": {"kernels": finishing},
                      "units": [{"kernels": k} if k else {} for k in per_unit]}

    here = [run("candidate", "aaaa", "aaaa", "cccc")]
    assert kernel_notes([run("spread", "aaaa", "cccc", "aaaa")], here) == []
    (partly,) = kernel_notes([run("partly", "aaaa", "aaaa", "bbbb")], here)
    (resumed,) = kernel_notes([run("resumed", None, "aaaa", None)], here)
    assert partly.startswith("partly was made on kernels aaaa, bbbb, the candidate on aaaa, cccc")
    assert resumed.startswith("resumed was made on kernels aaaa and kernels it did not record")


GOLDEN = store.Path(__file__).resolve().parent.parent / "results" / "golden" / "ci"


def test_regress_cli_fails_on_a_perturbed_golden_and_passes_unchanged(tmp_path, data_root, capsys):
    """Raise robust flags in a golden copy: the rerun now looks like a drop and must fail, naming samples."""
    golden = tmp_path / "golden"
    shutil.copytree(GOLDEN, golden)
    assert main(["regress", "--baseline", str(golden), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True and [n.split(" was made on ")[1][:29] for n in report["notes"]] == [
        "kernels it did not record, th"]  # the golden run predates the record
    (run_dir,) = [p for p in golden.iterdir() if p.is_dir()]
    rows = pd.read_parquet(run_dir / store.ROWS_FILE)
    flip = rows[(rows.attack == "pgd10") & rows.clean_correct & ~rows.robust].sample_id.head(8).tolist()
    rows.loc[(rows.attack == "pgd10") & rows.sample_id.isin(flip), "robust"] = True
    rows.to_parquet(run_dir / store.ROWS_FILE, index=False)
    assert main(["regress", "--baseline", str(golden), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    pgd = next(g for g in report["groups"] if "pgd10" in g["group"])
    assert report["passed"] is False and sorted(pgd["flipped_down"]) == sorted(flip)


def test_table_cli_on_committed_golden(capsys):
    suite = store.Path(__file__).resolve().parent.parent / "benchmarks" / "ci.toml"
    assert main(["table", "--suite", str(suite), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "| none |" in out and "pneumoniamnist worst case" in out


def test_killed_write_is_never_read_as_a_run(tmp_path):
    """SIGKILL between writing the files and renaming the run into place leaves only a hidden staging dir."""
    script = textwrap.dedent(f"""
        import os, signal
        import pandas as pd
        from robustmed import store
        os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        store.write_run(pd.DataFrame({{"sample_id": range(1000)}}), {{"run_id": "killed"}}, {str(tmp_path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    assert store.list_runs(tmp_path) == [] and store.load_runs(tmp_path) == []


def test_a_run_whose_rows_were_edited_after_sealing_is_refused(tmp_path, capsys):
    """The manifest seals the assembled rows with their SHA-256: a rows file edited (or swapped) after the
    run finished is refused by every query, with a one-line error and exit status 2, never read as evidence."""
    rows = _rows("none", "pgd10", [True, False, False, True])
    run_dir = store.write_run(rows, {"run_id": "sealed", "created": "sealed", "defense": "none"}, tmp_path)
    manifest = json.loads((run_dir / store.MANIFEST_FILE).read_text())
    assert manifest["rows_sha256"] == store.sha256_bytes(run_dir / store.ROWS_FILE) and manifest["rows"] == 4
    assert store.read_run(run_dir)[0].robust.tolist() == [True, False, False, True]
    rows.assign(robust=True).to_parquet(run_dir / store.ROWS_FILE, index=False)
    with pytest.raises(store.UserError, match="SHA-256 differs"):
        store.load_runs(tmp_path)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 2
    assert "SHA-256 differs from its manifest" in capsys.readouterr().err


def test_table_maps_stored_attack_names_to_columns_and_marks_an_overstating_paper_protocol():
    """Stored names carry options (``pgd10:protocol=paper``) and suites substitute aa-rand for aa on
    randomized defenses; both land in the plain column. rpan's paper protocol says 100% where the
    adaptive worst case is 25%: its adaptive row is marked, with the reason from the checks (A4)."""
    runs = [
        _run("none", [_rows("none", "pgd10", [1, 0, 0, 0]), _rows("none", "aa", [0, 0, 0, 0])], "r1"),
        _run("rpan", [_rows("rpan", "pgd10", [1, 1, 0, 0]), _rows("rpan", "aa-rand", [1, 0, 0, 0])], "r2", ["A4"]),
        _run("rpan", [_rows("rpan", "pgd10:protocol=paper", [1, 1, 1, 1], protocol="paper"),
                      _rows("rpan", "aa:protocol=paper", [1, 1, 1, 1], protocol="paper")], "r3"),
    ]
    lines = render(evaluations(runs), ["none", "rpan"], ["pgd10", "aa"], EPS, "md",
                   substitutes={"aa": "aa-rand"}).splitlines()
    assert "aa column: aa-rand on randomized defenses" in lines[0]
    paper, adaptive = lines[5], lines[6]
    assert "100.0 [51.0, 100.0]" in paper and "†" not in paper
    assert "**50.0** [15.0, 85.0]†" in adaptive and "**25.0** [4.6, 69.9]†" in adaptive
    assert "paper protocol overstates by up to 75.0 pts: randomized (A4)" in adaptive
    assert "†" not in lines[4]  # no paper-protocol row for a deterministic defense: nothing to compare


def test_eps_curves_of_a_randomized_defense_with_both_protocols():
    """The paper-protocol run carries its own copy of the null baseline; the curves leave the baseline out
    and draw the adaptive and paper curves from their own runs (committed re-measured rpan PneumoniaMNIST runs)."""
    from pathlib import Path

    import pandas as pd

    from robustmed.reports.plots import curves
    from robustmed.store import read_run

    root = Path(__file__).resolve().parent.parent / "results" / "fig6-eps"
    runs = [read_run(d) for d in sorted(root.glob("rpan-pgd20*"))]
    runs = [(rows, m) for rows, m in runs if m.get("engine") == 2 and m["dataset"] == "pneumoniamnist"]
    if len(runs) < 2:
        pytest.skip("the re-measured rpan ε runs are not committed")
    rows = pd.concat([r.assign(defense=m["defense"], model=m["model"], dataset=m["dataset"]) for r, m in runs])
    series = curves(rows, "eps")
    assert sorted(c.attrs["protocol"] for c in series.values()) == ["adaptive", "paper"]
    adaptive = next(c for c in series.values() if c.attrs["protocol"] == "adaptive")
    assert list(adaptive.iloc[:, 1].round(3))[:2] == [0.706, 0.527]
