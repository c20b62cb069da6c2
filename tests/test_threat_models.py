"""The L2 threat model through the command line, the config and every view: `--norm l2` reaches every attack,
its budgets may exceed 1, and no worst case, table column, board or check mixes L2 with L∞."""
import json

import pandas as pd
import pytest

from robustmed.checks.context import CheckContext
from robustmed.checks.preflight import budget_sanity
from robustmed.cli import main
from robustmed.errors import UserError
from robustmed.reports.evidence import evaluations
from robustmed.reports.leaderboard import boards
from robustmed.reports.tables import table_data
from robustmed.run.config import BenchConfig, identity
from robustmed.suites import load_suite
from robustmed.summary import summarize

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_norm_option_reaches_every_attack_and_keeps_linf_run_ids():
    assert "norm" not in identity(BenchConfig())  # L∞ runs keep the ids they had before --norm existed
    cfg = BenchConfig(attack="pgd20,aa:canonical,square100:norm=linf,corruptions", norm="l2", eps="1.5")
    assert cfg.attack_names() == ["pgd20:norm=l2", "aa:canonical,norm=l2", "square100:norm=linf", "corruptions"]
    assert [s.norm for s in cfg.specs()] == ["L2", "L2", "Linf", "Linf"]
    with pytest.raises(UserError, match="bad ε list"):  # an L∞ attack in the run: ε beyond 1 is the box
        cfg.eps_values()
    assert BenchConfig(attack="pgd20,aa", norm="l2", eps="0.5,1.5").eps_values() == (0.5, 1.5)
    assert identity(BenchConfig(norm="l2"))["norm"] == "l2"


@pytest.mark.parametrize("args,needle", [
    (["--attack", "mim20", "--norm", "l2"], "mim attacks in Linf only"),
    (["--attack", "pgd20", "--eps", "1.5"], "bad ε list '1.5'"),
    (["--attack", "pgd20", "--norm", "l3"], "invalid choice"),
])
def test_norm_errors_are_one_line_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(["bench", *args, "--out", str(tmp_path / "out")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_bench_norm_l2_end_to_end(tmp_path, capsys):
    """Every row in the L2 ball; AutoAttack at least as strong as PGD-20 on every sample; no check fires."""
    assert main(["bench", "--defense", "none", "--attack", "pgd20,aa", "--norm", "l2", "--eps", "0.25", "--n", "8",
                 "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["norm"] == "L2" and report["per_attack"] == {"aa:norm=l2": 0.25, "pgd20:norm=l2": 0.375}
    assert not report["unreliable"]
    rows = pd.read_parquet(report["results"])
    assert (rows.norm == "L2").all() and (rows.l2 <= 0.25 * (1 + 1e-6)).all()
    flags = rows.pivot(index="sample_id", columns="attack", values="robust")
    assert not (flags["aa:norm=l2"] & ~flags["pgd20:norm=l2"]).any()
    manifest = json.loads(open(report["manifest"]).read())
    assert manifest["config"]["norm"] == "l2"


def _rows(norm: str, attack: str, robust: list[bool], eps: float) -> pd.DataFrame:
    n = len(robust)
    return pd.DataFrame({"sample_id": range(n), "label": [0, 1] * (n // 2), "clean_correct": True,
                         "clean_pred": [0, 1] * (n // 2), "adv_pred": 0, "success": [not r for r in robust],
                         "robust": robust, "eps": eps, "norm": norm, "attack": attack, "linf": 0.0, "l2": 0.0,
                         "draws": 1, "protocol": "adaptive", "attack_time_s": 1.0, "first_success_step": -1,
                         "spec": json.dumps({"norm": norm})})


MIXED = pd.concat([_rows("Linf", "pgd20", [True, True, False, False], 0.5),
                   _rows("L2", "pgd20:norm=l2", [False, True, True, True], 0.5),
                   _rows("L2", "aa:norm=l2", [True, False, True, True], 0.5)], ignore_index=True)


def test_summary_takes_each_worst_case_within_one_norm():
    summary = summarize(MIXED)
    assert [(s["norm"], s["robust_accuracy"]) for s in summary] == [("Linf", 0.5), ("L2", 0.5)]
    legacy = MIXED[MIXED.norm == "Linf"].drop(columns="norm")  # stored before the norm column: L∞
    assert [s["norm"] for s in summarize(legacy)] == ["Linf"]


def test_table_and_leaderboard_keep_l2_apart():
    manifest = {"defense": "none", "model": "m", "dataset": "d", "run_id": "r", "engine": 99, "findings": []}
    evals = evaluations([(MIXED, manifest)])
    worst = {e.attack: e.robust_accuracy for e in evals if e.attack.startswith("worst case")}
    assert worst == {"worst case": 0.5, "worst case (L2)": 0.5}
    columns, _ = table_data(evals, ["none"], ["pgd20", "pgd20 (L2)", "aa (L2)"], 0.5)
    assert [a for _, a in columns] == ["pgd20", "worst case", "pgd20 (L2)", "aa (L2)", "worst case (L2)"]
    items = boards([(MIXED, manifest)], eps=0.5, l2_eps=0.5)
    assert [(b.norm, b.entries[0].robust_accuracy) for b in items] == [("Linf", 0.5), ("L2", 0.5)]
    assert boards([(MIXED, manifest)], eps=0.5, l2_eps=1.0)[0].norm == "Linf"  # L2 rows only at their own ε


def test_budget_sanity_in_the_runs_norm():
    import torch

    from robustmed.attacks import parse_attack

    ctx = CheckContext(None, torch.zeros(2, 1, 28, 28), torch.zeros(2), [0.5], [parse_attack("pgd20:norm=l2")], 2)
    assert not budget_sanity(ctx).fired  # 16/255·√784 ≈ 1.76 bounds a small L2 budget on 28×28 images
    ctx.eps = [2.0]
    assert budget_sanity(ctx).fired


def test_threats_suite_plans_l2_and_corruptions_for_every_defense():
    suite = load_suite(REPO / "benchmarks" / "threats.toml")
    table3 = load_suite(REPO / "benchmarks" / "table3.toml")
    plan = suite.configs(randomized={"rpan", "pni"})
    assert {(c.defense, c.dataset) for _, c in plan} == {(d, s) for d in table3.defenses for s in table3.datasets}
    assert {p for p, _ in plan} == {"adaptive"} and all(c.eps_values() == (0.25, 0.5) for _, c in plan)
    plain = next(c for _, c in plan if c.defense == "none")
    assert [(s.name, s.norm) for s in plain.specs()] == [("pgd20:norm=l2", "L2"), ("aa:norm=l2", "L2"),
                                                          ("corruptions", "Linf")]
    randomized = next(c for _, c in plan if c.defense == "rpan")
    assert randomized.attack.split(",")[1] == "aa-rand:norm=l2" and randomized.n == 200
