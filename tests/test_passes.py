"""Pass accounting: every row carries the model passes its attack spent per sample, and the summary, --json and
the leaderboard show them beside time, so an evaluation's cost compares across machines (issue: pass accounting)."""
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from rich.console import Console

from robustmed import passes, store
from robustmed.attacks import parse_attack
from robustmed.cli import main
from robustmed.harness import attack_rows
from robustmed.outcomes import expected_passes
from robustmed.report import deterministic_table
from robustmed.reports.leaderboard import boards, render_markdown
from robustmed.resolve import resolve_spec
from robustmed.summary import summarize

EPS = 4 / 255


class Unbreakable(torch.nn.Module):
    """Class 0 whatever the input, with a gradient path: every attack spends its whole budget on every sample."""

    def forward(self, x):
        return torch.stack([torch.full((len(x),), 5.0), torch.zeros(len(x))], 1) + 0 * x.flatten(1)[:, :1]


class Threshold(torch.nn.Module):
    """Class 0 while the image's mean brightness is above 0.5: a sample breaks once ε exceeds its margin."""

    def forward(self, x):
        return torch.stack([(x.flatten(1).mean(1) - 0.5) * 100, torch.zeros(len(x))], 1)


def _unbreakable_rows(attack: str, eps=(EPS,), n: int = 8) -> pd.DataFrame:
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return attack_rows(Unbreakable(), x, torch.zeros(n, dtype=torch.long), list(range(n)), [parse_attack(attack)],
                       list(eps))


def _pairs(rows: pd.DataFrame) -> set:
    return set(zip(rows.forward_passes, rows.backward_passes))


@pytest.mark.parametrize("attack,forward,backward", [
    ("pgd5:eot=3,early_stop=false", 18, 15),  # (k + 1)·EOT forward, k·EOT backward
    ("pgd5", 6, 5),  # early exit on: no sample leaves an attack that cannot break it
    ("pgd4:restarts=2", 10, 8),  # a restart attacks every sample the first left robust
    ("square10", 12, 0),  # one query per step, its initial and final scoring; no gradient
])
def test_an_attack_that_cannot_break_spends_exactly_its_budget(attack, forward, backward):
    rows = _unbreakable_rows(attack)
    assert _pairs(rows) == {(forward, backward)}
    assert expected_passes(resolve_spec(parse_attack(attack), randomized=False, num_classes=2)) == forward


def test_the_null_attack_scores_the_clean_image_once_and_is_not_rerun_at_a_larger_eps():
    rows = _unbreakable_rows("null", eps=(2 / 255, EPS))
    assert _pairs(rows[rows.eps == 2 / 255]) == {(1, 0)} and _pairs(rows[rows.eps == EPS]) == {(0, 0)}


def _threshold_rows(batch_size: int) -> pd.DataFrame:
    """Margins of 1/255, 5/255 and 20/255 above the boundary, and one clean error, attacked at 2/255 and 8/255."""
    margins = torch.tensor([1, 5, 20, -25]) / 255
    x = (0.5 + margins).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).contiguous()
    return attack_rows(Threshold(), x, torch.zeros(4, dtype=torch.long), range(4), [parse_attack("pgd5")],
                       [2 / 255, 8 / 255], batch_size=batch_size)


def test_an_eps_by_eps_sweep_charges_each_eps_only_the_samples_it_attacks():
    rows = _threshold_rows(batch_size=3)  # one ε per loop: three attacked samples fill the batch
    small, large = (rows[rows.eps == eps].set_index("sample_id") for eps in (2 / 255, 8 / 255))
    assert small.success.tolist() == [True, False, False, True] and large.success.tolist() == [True, True, False, True]
    for part, attacked in ((small, [0, 1, 2]), (large, [1, 2])):
        # a sample leaves the step it breaks, whose forward pass and backward pass have both run (none after step 5)
        calls = (part.first_success_step[attacked] + 1).where(part.success[attacked], 6)
        assert _pairs(part.loc[attacked]) == {(calls.mean(), calls.clip(upper=5).mean())}  # the chunk's mean
        assert _pairs(part.drop(index=attacked)) == {(0, 0)}  # a clean error, or a row carried from a smaller ε


def test_eps_attacked_together_share_their_passes_evenly_as_their_time():
    rows = _threshold_rows(batch_size=256)  # both ε in one loop
    attacked = rows[rows.sample_id < 3]
    # one row per (sample, ε), each leaving when it breaks or a smaller ε's row of its sample does: forward calls
    # 2 + 2 (sample 0 breaks at step 1 at 2/255), 6 + 3 (sample 1 at step 2 at 8/255), 6 + 6; backward ≤ 5 each
    assert _pairs(attacked) == {(25 / 6, 22 / 6)} and _pairs(rows[rows.sample_id == 3]) == {(0, 0)}
    assert len(set(rows.attack_time_s)) == 1


def test_iteration_sweep_rows_carry_their_long_run_and_the_summary_counts_it_once():
    rows = _unbreakable_rows("pgd6:sweep=2+4")
    assert sorted(rows.attack.unique()) == ["pgd2@pgd6:sweep=2+4", "pgd4@pgd6:sweep=2+4", "pgd6:sweep=2+4"]
    assert _pairs(rows) == {(7, 6)}
    (summary,) = summarize(rows)
    assert summary["passes_per_sample"] == {"forward": 7, "backward": 6}
    assert set(map(json.dumps, summary["per_attack_passes"].values())) == {'{"forward": 7.0, "backward": 6.0}'}
    assert summary["attack_time_s"] == rows[rows.attack == "pgd6:sweep=2+4"].attack_time_s.iloc[0]


def test_the_counter_counts_sample_passes_and_only_backward_passes_that_run():
    counter = passes.PassCounter()
    weight = torch.ones(3, 2, requires_grad=True)
    forward = counter.wrap(lambda inputs: inputs["image"] @ weight)
    x = {"image": torch.ones(5, 3), "note": torch.zeros(5, 1)}
    forward(x)  # a graph, but no backward through it
    torch.autograd.grad(forward(x).sum(), weight)
    with torch.no_grad():
        forward(x)
    assert (counter.forward, counter.backward) == (15, 5)
    assert counter.per_sample(5) == (3.0, 1.0)


def test_rows_stored_before_passes_were_counted_show_a_dash():
    rows = pd.DataFrame({"sample_id": [0, 1], "clean_correct": True, "robust": [True, False], "eps": EPS,
                         "attack": "pgd20", "attack_time_s": 2.0})
    (summary,) = summarize(rows)
    assert summary["passes_per_sample"] == {"forward": None, "backward": None}
    report = SimpleNamespace(summary=[summary], manifest={"defense": "none", "model": "m", "dataset": "d"},
                             config=SimpleNamespace(split="test", attack="pgd20"))
    console = Console(record=True, width=200)
    console.print(deterministic_table(report))
    (line,) = [line for line in console.export_text().splitlines() if "pgd20" in line]
    assert [cell.strip() for cell in line.split("│")[-3:-1]] == ["2.0 s", "–"]


def test_bench_json_and_table_show_passes_per_sample_beside_time(tmp_path, data_root, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the table unwrapped
    model = tmp_path / "constant.py"
    model.write_text("import torch\nclass Constant(torch.nn.Module):\n"
                     "    def __init__(self):\n        super().__init__()\n"
                     "        self.scale = torch.nn.Parameter(torch.zeros(1))\n"
                     "    def forward(self, x):\n"
                     "        return torch.tensor([0.0, 1.0]).expand(len(x), 2) + self.scale * x.flatten(1)[:, :1]\n"
                     "def make():\n    return Constant()\n")
    args = ["bench", "--model-file", f"{model}:make", "--attack", "pgd3:early_stop=false", "--n", "16",
            "--checks", "cheap", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    clean = report["clean_accuracy"]  # only clean-correct samples are attacked: 4 forward, 3 backward each
    assert 0 < clean < 1 and report["passes_per_sample"] == {"forward": 4 * clean, "backward": 3 * clean}
    assert report["per_attack_passes"] == {"pgd3:early_stop=false": report["passes_per_sample"]}
    assert report["attack_time_s"] > 0
    manifest = json.loads(open(report["manifest"]).read())
    assert manifest["summary"][0]["passes_per_sample"] == report["passes_per_sample"]
    assert main(args) == 0  # read back: the table from the stored summary
    assert f"{4 * clean:.4g} / {3 * clean:.4g}" in capsys.readouterr().out


def test_leaderboard_shows_attack_passes_beside_time_and_a_dash_for_runs_without(tmp_path):
    for run_id, defense, extra in (("r1", "none", {"attack_time_s": 3.0, "forward_passes": [21.0, 6.0],
                                                   "backward_passes": [20.0, 5.0]}),
                                   ("r2", "pgd-at", {})):
        rows = pd.DataFrame({"sample_id": [0, 1], "clean_correct": True, "robust": [True, False], "eps": EPS,
                             "attack": "pgd20", "protocol": "adaptive", "draws": 1, **extra})
        store.write_run(rows, {"run_id": run_id, "created": run_id, "defense": defense, "model": "m",
                               "dataset": "pneumoniamnist", "attacks": {"pgd20": {"norm": "Linf"}}}, tmp_path)
    (board,) = boards(store.load_runs(tmp_path), EPS)
    markdown = render_markdown([board], EPS)
    assert "| attack time | attack passes/sample fwd / bwd |" in markdown
    lines = {line.split(" | ")[1]: line for line in markdown.splitlines() if line.startswith("| 1 ") or
             line.startswith("| 2 ")}
    assert lines["none"].endswith("| 3.0 s | 13.5 / 12.5 |") and lines["pgd-at"].endswith("| – | – |")
