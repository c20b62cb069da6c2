"""What a run records about the code and machine that made it (check E2): the commit its code came from, and how
the machine's kernels round fp32 arithmetic, so a regeneration knows whether exact rows are to be expected
(tests/test_committed_results.py)."""
import subprocess
import sys

import torch

from robustmed import store
from robustmed.kernels import kernel_fingerprint, run_fingerprints
from robustmed.provenance import machine
from robustmed.run import bench, work


def test_the_fingerprint_is_stable_and_leaves_the_callers_random_stream_alone():
    torch.manual_seed(3)
    state = torch.random.get_rng_state()
    first = kernel_fingerprint()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == kernel_fingerprint() and len(first) == 16 and int(first, 16) >= 0


def test_every_run_and_checkpoint_records_it_with_the_cpu():
    info = machine()
    assert info["kernels"] == kernel_fingerprint() and info["cpu"] and info["cpu_capability"]


def test_another_process_with_the_same_settings_gets_the_same_fingerprint():
    probe = "import torch; torch.set_num_threads(1); from robustmed.kernels import kernel_fingerprint as k; print(k())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert out == kernel_fingerprint()
    finally:
        torch.set_num_threads(threads)


def test_a_run_names_the_commit_its_code_came_from_not_the_one_checked_out_when_it_ends(data_root, tmp_path,
                                                                                          monkeypatch):
    commits = iter(["commit-at-start", "commit-at-finish"])
    monkeypatch.setattr(work, "git_commit", lambda: next(commits))
    work.source_commit.cache_clear()
    try:
        report = bench.run_bench(bench.BenchConfig(defense="none", attack="pgd2", n=8, out=str(tmp_path),
                                                   progress=False))
    finally:
        work.source_commit.cache_clear()
    _, manifest = store.read_run(report.run_dir)
    assert manifest["git_commit"] == "commit-at-start" and manifest["machine"]["kernels"] == kernel_fingerprint()
    units = [store.read_unit(report.run_dir, unit["unit_id"])[1] for unit in manifest["units"]]
    assert units and {unit["git_commit"] for unit in units} == {"commit-at-start"}  # its units name the same


def test_every_unit_records_the_kernels_of_the_process_that_computed_it(data_root, tmp_path):
    report = bench.run_bench(bench.BenchConfig(defense="none", attack="pgd2,bim2", n=8, out=str(tmp_path),
                                               progress=False))
    _, manifest = store.read_run(report.run_dir)
    assert len(manifest["units"]) == 2
    assert {unit["kernels"] for unit in manifest["units"]} == {kernel_fingerprint()}
    assert run_fingerprints(manifest) == {kernel_fingerprint()}


def test_a_run_older_than_the_unit_record_is_judged_by_its_finishing_machine():
    assert run_fingerprints({"machine": {"kernels": "aaaa"}, "units": [{}, {}]}) == {"aaaa"}
    assert run_fingerprints({"machine": {}}) == {None}
