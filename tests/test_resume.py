"""SIGKILL a `robustmed bench` run at several points; rerunning the same command completes it exactly."""
import json
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from robustmed import store
from robustmed.cli import main

BENCH = ["bench", "--attack", "pgd2,bim2", "--n", "48", "--batch-size", "16", "--no-progress", "--json"]
KEY = ["attack", "eps", "sample_id"]

# Runs `robustmed bench` and SIGKILLs itself at the k-th file rename (every store write ends in one:
# 1 plan, 2-7 the six units, 8 the run's rows, 9 its manifest) or when a unit's computation starts.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from robustmed.run import work as units
    from robustmed.cli import main

    kill_at_rename, kill_at_unit = int(sys.argv[1]), int(sys.argv[2])
    renames, rename, compute = [0], os.replace, units.compute

    def counted_rename(*args):
        renames[0] += 1
        if renames[0] == kill_at_rename:
            os.kill(os.getpid(), signal.SIGKILL)
        return rename(*args)

    def compute_or_die(unit, device):
        if unit.index == kill_at_unit:
            os.kill(os.getpid(), signal.SIGKILL)
        return compute(unit, device)

    os.replace, units.compute = counted_rename, compute_or_die
    main(sys.argv[3:])
""")

KILLS = {
    "writing the second unit": [(3, -1)],
    "computing the fifth unit": [(-1, 4)],
    "writing the run's rows": [(8, -1)],
    # the resumed run renames units 3-6 (1-4), its rows (5) and its manifest (6)
    "twice: writing the third unit, then the resumed run's manifest": [(4, -1), (6, -1)],
}


def _killed_bench(out, kill_at_rename: int, kill_at_unit: int) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER, str(kill_at_rename), str(kill_at_unit),
                           *BENCH, "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("reference")  # module scope: before the per-test environment is set
    assert main([*BENCH, "--out", str(out), "--data-root", str(data_root)]) == 0
    (run,) = store.load_runs(out)
    return run


@pytest.mark.parametrize("kills", KILLS.values(), ids=KILLS.keys())
def test_rerun_after_sigkill_equals_an_uninterrupted_run(kills, uninterrupted, tmp_path, capsys):
    reference_rows, reference_manifest = uninterrupted
    out = tmp_path / "runs"
    for kill_at_rename, kill_at_unit in kills:
        _killed_bench(out, kill_at_rename, kill_at_unit)
        assert store.load_runs(out) == []  # a killed run is never read as a run
    assert main([*BENCH, "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_id"] == reference_manifest["run_id"]
    (run_dir,) = store.list_runs(out)
    rows, manifest = store.read_run(run_dir)
    assert len(rows) == 96 and not rows.duplicated(KEY).any()
    pd.testing.assert_frame_equal(rows.drop(columns="attack_time_s"),
                                  reference_rows.drop(columns="attack_time_s"))
    assert [u["unit_id"] for u in manifest["units"]] == [u["unit_id"] for u in reference_manifest["units"]]
    assert manifest["summary"][0]["robust_accuracy"] == reference_manifest["summary"][0]["robust_accuracy"]
    assert list(run_dir.rglob(".tmp-*")) == []  # killed writers' staging files are cleaned up
