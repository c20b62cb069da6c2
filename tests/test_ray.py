"""The Ray executor on a local 2-CPU cluster gives the local executor's per-sample rows, exactly."""
import time

import pandas as pd
import pytest

from conftest import untrained_checkpoint
from robustmed.kernels import process_fingerprint
from robustmed.run.bench import BenchConfig, run_benches
from robustmed.suites import load_suite, run_suite

ray = pytest.importorskip("ray")

SUITE = """
name = "tiny"
results = "runs"
defenses = ["none"]
datasets = ["pneumoniamnist"]
attacks = ["pgd3", "bim3"]
n = 48
batch_size = 16
seed = 3
"""


@pytest.fixture
def pni_checkpoint(tmp_path):
    """An untrained randomized model (PNI): EOT, R-draw judgement and per-chunk reseeding cross processes."""
    return untrained_checkpoint(tmp_path, "pni")


@pytest.fixture
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _cpus_released(total: int, wait_s: float = 10.0) -> bool:
    """Killed actors give their CPUs back asynchronously."""
    deadline = time.monotonic() + wait_s
    while ray.available_resources().get("CPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("CPU", 0) >= total


def _suite(root, executor):
    suite = load_suite(_write(root / "suite.toml", SUITE))
    return run_suite(suite, device="cpu", progress=False, executor=executor)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _randomized(out, checkpoint, executor):
    cfg = BenchConfig(checkpoint=str(checkpoint), attack="pgd1", n=8, batch_size=4, out=str(out), progress=False,
                      device="cpu", executor=executor)
    return run_benches([cfg])


def test_ray_and_local_executors_give_identical_rows(tmp_path, data_root, pni_checkpoint, ray_cluster,
                                                     batch_invariant_kernels):
    local = _suite(tmp_path / "local", "local") + _randomized(tmp_path / "local" / "pni", pni_checkpoint, "local")
    remote = _suite(tmp_path / "ray", "ray") + _randomized(tmp_path / "ray" / "pni", pni_checkpoint, "ray")
    assert [r.manifest["executor"] for r in remote] == ["ray", "ray"]
    assert [len(r.manifest["units"]) for r in remote] == [6, 4]  # randomized: pgd1 and the null attack, 2 shards
    assert remote[1].manifest["attacks"]["pgd1"]["draws"] == 10  # the randomized path really ran
    for mine, theirs in zip(local, remote):
        assert mine.run_dir.name == theirs.run_dir.name
        pd.testing.assert_frame_equal(mine.rows.drop(columns="attack_time_s"),
                                      theirs.rows.drop(columns="attack_time_s"))
    assert _cpus_released(2)  # the worker actors were stopped with the runs


def test_each_unit_computed_on_a_worker_records_that_workers_kernels(tmp_path, data_root, ray_cluster):
    """Check E2 across machines: the manifest's machine is the finishing one, each unit names its own kernels."""
    (report,) = run_benches([BenchConfig(defense="none", attack="pgd1,bim1", n=8, out=str(tmp_path), progress=False,
                                         device="cpu", executor="ray")])
    worker = ray.get(ray.remote(num_cpus=1)(process_fingerprint).remote("cpu"))
    assert len(report.manifest["units"]) == 2
    assert {unit["kernels"] for unit in report.manifest["units"]} == {worker}
