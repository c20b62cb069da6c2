"""Suite files: parsing, expansion into runs (paper protocol beside adaptive for randomized defenses)."""
import pytest

from robustmed.errors import UserError
from robustmed.suites import load_suite

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_table3_suite_expands_both_protocols_for_randomized_defenses():
    suite = load_suite(REPO / "benchmarks" / "table3.toml")
    plan = suite.configs(randomized={"rpan", "pni"})
    protocols = {(cfg.defense, protocol) for protocol, cfg in plan}
    assert ("rpan", "paper") in protocols and ("rpan", "adaptive") in protocols
    assert ("none", "paper") not in protocols
    paper = next(cfg for protocol, cfg in plan if protocol == "paper" and cfg.defense == "rpan")
    released = paper.specs()[0]  # the paper's released evaluation: PGD-10, α = ε/4, no random start, one draw;
    assert (released.steps, released.alpha, released.random_start, released.eot, released.draws) == \
        (10, 1 / 255, False, 1, 0)  # its candidate judged over the same R draws as the adaptive attack's
    assert len(paper.specs()) == 6 and all(s.protocol == "paper" for s in paper.specs())
    assert "aa:protocol=paper" in paper.attack
    adaptive = next(cfg for protocol, cfg in plan if protocol == "adaptive" and cfg.defense == "rpan")
    assert "aa-rand" in adaptive.attack.split(",")  # the rand version on randomized models (C1)
    plain = next(cfg for protocol, cfg in plan if cfg.defense == "none")
    assert "aa" in plain.attack.split(",")
    assert suite.results == (REPO / "results" / "table3").resolve() and paper.n == 200
    assert {cfg.dataset for _, cfg in plan} == {"pneumoniamnist", "breastmnist"}


def test_suite_runs_can_be_restricted_to_defenses_and_data_sets():
    suite = load_suite(REPO / "benchmarks" / "table3.toml")
    plan = suite.configs(randomized={"rpan"}, defenses=("rpan",), datasets=("breastmnist",))
    assert sorted((p, c.defense, c.dataset) for p, c in plan) == [
        ("adaptive", "rpan", "breastmnist"), ("paper", "rpan", "breastmnist")]


def test_restricting_a_suite_to_nothing_is_a_user_error():
    from robustmed.cli import main

    assert main(["bench", "--suite", str(REPO / "benchmarks" / "ci.toml"), "--defense", "rpan"]) == 2


def test_bad_suites_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_suite(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("name = 'x'\ndefenses = [")
    with pytest.raises(UserError, match="not valid TOML"):
        load_suite(broken)
    partial = tmp_path / "partial.toml"
    partial.write_text("name = 'x'\n")
    with pytest.raises(UserError, match="lacks defenses, datasets, attacks"):
        load_suite(partial)
