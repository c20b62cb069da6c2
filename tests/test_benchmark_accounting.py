"""The pass counts behind attack_speed.py's floors: a wrong count would make a target look unreachable or met."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import REPO


def _load_attack_speed():
    spec = importlib.util.spec_from_file_location("attack_speed", REPO / "benchmarks" / "attack_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ATTACK_SPEED = _load_attack_speed()


def test_a_sample_is_in_the_batch_until_the_step_it_breaks():
    # -1: never broke (every step); 0: broke at its start (scored at step 0 only); 2 and 5: broke at those steps
    counts = ATTACK_SPEED.active_per_step(torch.tensor([-1, 0, 2, 5]), steps=4)
    assert counts == [4, 3, 3, 2]


def test_sample_passes_count_only_clean_correct_rows_and_stop_at_the_break():
    rows = pd.DataFrame({"clean_correct": [True, True, True, False], "first_success_step": [-1, 0, 3, 0]})
    # robust: all 20 steps; broke at its start: 1 pass; broke at step 3: 4 passes; clean error: never attacked
    assert ATTACK_SPEED.sample_passes(rows, steps=20) == 20 + 1 + 4


def test_the_floor_counts_a_batch_size_once_per_step_that_runs_it():
    model = ATTACK_SPEED.tiny_cnn()
    x, y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    floor = ATTACK_SPEED.StepPasses(model, x, y, sizes=[4, 4, 3, 1])
    floor()
    assert sorted(floor.best) == [1, 3, 4] and all(0 < s < float("inf") for s in floor.best.values())
    assert floor.seconds == 2 * floor.best[4] + floor.best[3] + floor.best[1]


def test_the_replayed_floor_runs_the_attacks_passes_in_its_order_and_nothing_else():
    model, sizes = ATTACK_SPEED.tiny_cnn(), []
    recording = lambda z: sizes.append(len(z)) or model(z)
    x, y = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 0, 1])
    ATTACK_SPEED.replay(recording, x, y, [4, 4, 3, 1])()
    assert sizes == [4, 4, 3, 1]


def test_a_function_the_caller_warmed_is_not_run_again_before_the_timed_rounds():
    calls = {"warmed": 0, "cold": 0}

    def run(name):
        def fn():
            calls[name] += 1
            return name
        return fn
    out = ATTACK_SPEED.fastest(run("warmed"), run("cold"), repeats=2, warmed=(0,))
    assert calls == {"warmed": 2, "cold": 3} and [o for _, o in out] == ["warmed", "cold"]


def test_a_benchmark_without_its_data_says_so_in_one_line_and_exits_2(tmp_path):
    # engineering standard: bad input is one line and status 2, from the benchmarks as from the CLI
    env = {**os.environ, "ROBUSTMED_DATA": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attack_speed.py"), "--only", "eot"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("attack_speed: error: dataset 'pneumoniamnist'")


@pytest.mark.filterwarnings("ignore:Please import `gaussian_filter`:DeprecationWarning")  # Foolbox's own import
def test_foolbox_from_the_handed_start_is_torchattacks_last_iterate_exactly():
    # the PGD-100 comparison times all three libraries on one trajectory: a different start would compare luck
    import torchattacks

    torch.manual_seed(0)
    model = ATTACK_SPEED.tiny_cnn(classes=3).eval()
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 3
    eps = 8 / 255
    torch.manual_seed(1)
    start = torch.empty_like(x).uniform_(-eps, eps)
    torch.manual_seed(1)
    expected = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True)(x, y)
    assert torch.equal(ATTACK_SPEED.foolbox_pgd(model, eps, 10, start)(x, y), expected)
    assert all(p.requires_grad for p in model.parameters())  # frozen only while Foolbox runs
