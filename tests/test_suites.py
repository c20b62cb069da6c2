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
    assert paper.attack.split(",")[0] == "pgd20:protocol=paper" and len(paper.specs()) == 5
    assert all(s.protocol == "paper" for s in paper.specs())
    assert suite.results == (REPO / "results" / "table3").resolve() and paper.n == 200


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
