"""`robustmed.evaluate`: the Python API takes the CLI's path (pre-flight checks, randomness found and attacked
with EOT, invariants, post-run checks, optional store)."""
import json

import pytest

import robustmed
from robustmed.data import load
from robustmed.errors import UserError
from robustmed.seeds import select_subset


@pytest.fixture(scope="module")
def pneumonia(data_root):
    return load("pneumoniamnist", data_root).split("test")


def test_a_randomized_defense_is_attacked_with_eot_and_judged_over_draws_without_being_told(pneumonia):
    x, y = pneumonia
    result = robustmed.evaluate(robustmed.load_model(defense="pni"), x[:8], y[:8], attack="pgd5")
    assert result.randomized
    spec = json.loads(result.rows[result.rows.attack == "pgd5"].spec.iloc[0])
    assert spec["eot"] == 20 and spec["draws"] == 10
    assert set(result.rows.attack) == {"pgd5", "null"}  # the null baseline beside the attack (C5)
    first = result.summary[0]
    assert first["n"] == 8 and result.headline == first["expected_robust_accuracy"]
    assert "A4" in {f.id for f in result.fired}


def test_a_data_set_name_gives_the_seeded_subset_bench_uses_and_out_stores_a_run(tmp_path, data_root):
    model = robustmed.load_model()
    result = robustmed.evaluate(model, "pneumoniamnist", attack="pgd2", n=16, out=str(tmp_path))
    assert not result.randomized and result.summary[0]["n"] == 16
    assert sorted(result.rows.sample_id.unique()) == sorted(select_subset(624, 16, 0))
    stored = json.loads((result.run_dir / "manifest.json").read_text())
    assert stored["summary"][0]["robust_accuracy"] == result.summary[0]["robust_accuracy"]
    assert "robust accuracy" in str(result)


def test_bad_inputs_are_refused_in_one_line(pneumonia):
    x, y = pneumonia
    with pytest.raises(UserError, match=r"robustmed attacks images in \[0, 1\]"):
        robustmed.evaluate(robustmed.load_model(), x[:4] * 255, y[:4], attack="pgd2")
    with pytest.raises(UserError, match="give the labels y"):
        robustmed.evaluate(robustmed.load_model(), x[:4], attack="pgd2")


def test_benchmark_is_the_rows_of_evaluate(pneumonia):
    x, y = pneumonia
    rows = robustmed.benchmark(robustmed.load_model(), x[:8], y[:8], attack="pgd2")
    again = robustmed.evaluate(robustmed.load_model(), x[:8], y[:8], attack="pgd2").rows
    assert rows.robust.tolist() == again.robust.tolist()
