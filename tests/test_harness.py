"""Harness rows, per-sample worst case, the results store and its atomicity (checks B1, B3, B4, E1–E3)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from robustmed import store
from robustmed.harness import benchmark
from robustmed.judging import check_budget, InvariantError
from robustmed.seeds import select_subset
from robustmed.summary import summarize
from robustmed.stats import wilson

ROW_COLUMNS = {"sample_id", "label", "clean_pred", "clean_correct", "adv_pred", "success", "robust",
               "first_success_step", "final_loss", "linf", "eps", "attack", "spec", "spec_hash", "seed"}


@pytest.fixture
def batch(pneumonia):
    x, y = pneumonia.split("test")
    return x[:48], y[:48]


def test_rows_schema_and_expanded_spec(tiny_model, batch):
    x, y = batch
    rows = benchmark(tiny_model, x, y, attack="pgd5", eps=[2 / 255, 4 / 255], seed=3)
    assert ROW_COLUMNS <= set(rows.columns)
    assert len(rows) == 2 * len(x)
    spec = json.loads(rows.spec.iloc[0])
    assert spec["family"] == "pgd" and spec["steps"] == 5 and spec["norm"] == "Linf"
    assert spec["alpha"] == pytest.approx(2.5 * spec["eps"] / 5) and spec["random_start"] is True
    assert rows.groupby("eps").spec_hash.nunique().tolist() == [1, 1]
    assert (rows.linf <= rows.eps + 1e-6).all()


def test_clean_errors_count_as_non_robust(tiny_model, batch):
    x, y = batch
    rows = benchmark(tiny_model, x, y, attack="pgd3", eps=4 / 255)
    wrong = rows[~rows.clean_correct]
    assert len(wrong) > 0  # the untrained tiny model makes clean errors
    assert (~wrong.robust).all() and (wrong.first_success_step == 0).all() and wrong.success.all()
    assert (rows.robust <= rows.clean_correct).all()  # B3


def test_seeded_rows_are_reproducible(tiny_model, batch):
    x, y = batch
    a = benchmark(tiny_model, x, y, attack="pgd4", eps=8 / 255, seed=7)
    b = benchmark(tiny_model, x, y, attack="pgd4", eps=8 / 255, seed=7)
    pd.testing.assert_frame_equal(a.drop(columns="attack_time_s"), b.drop(columns="attack_time_s"))


def test_worst_case_is_per_sample_not_per_attack():
    """fra31#45: averaging per-attack accuracies overstates robustness; B4 takes the per-sample minimum."""
    base = {"clean_correct": True, "eps": 0.1, "attack_time_s": 0.0}
    rows = pd.DataFrame([
        {**base, "sample_id": 0, "attack": "a", "robust": False}, {**base, "sample_id": 0, "attack": "b", "robust": True},
        {**base, "sample_id": 1, "attack": "a", "robust": True}, {**base, "sample_id": 1, "attack": "b", "robust": False},
    ])
    (summary,) = summarize(rows)
    assert summary["per_attack"] == {"a": 0.5, "b": 0.5}
    assert summary["robust_accuracy"] == 0.0


def test_budget_check_refuses_violations():
    x = torch.full((2, 1, 4, 4), 0.5)
    assert check_budget(x + 4 / 255, x, 4 / 255) == pytest.approx(4 / 255)
    with pytest.raises(InvariantError, match="B1"):
        check_budget(x + 5 / 255, x, 4 / 255)
    with pytest.raises(InvariantError, match="B1"):
        check_budget(torch.full_like(x, 1.2), torch.ones_like(x), 0.5)
    with pytest.raises(InvariantError, match="NaN"):
        check_budget(torch.full_like(x, float("nan")), x, 0.1)


def test_subsets_are_seeded_and_sorted():
    a, b = select_subset(624, 100, 1), select_subset(624, 100, 1)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(a) == 100
    assert not np.array_equal(a, select_subset(624, 100, 2))
    assert np.array_equal(select_subset(10, None, 0), np.arange(10))


def test_wilson_interval_known_values():
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_store_writes_complete_runs_only(tmp_path):
    rows = pd.DataFrame({"sample_id": [0, 1], "robust": [True, False]})
    run = store.write_run(rows, {"run_id": "r1"}, tmp_path)
    loaded, manifest = store.read_run(run)
    assert loaded.equals(rows) and manifest["rows"] == 2 and manifest["schema_version"] == store.SCHEMA_VERSION
    with pytest.raises(FileExistsError):
        store.write_run(rows, {"run_id": "r1"}, tmp_path)

    class Boom:
        def __str__(self):
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        store.write_run(rows, {"run_id": "r2", "bad": Boom()}, tmp_path)
    assert [p.name for p in store.list_runs(tmp_path)] == ["r1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]
