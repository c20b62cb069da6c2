"""Failures explain themselves: Ctrl-C, an unwritable results folder, a closed pipe and a check that cannot
run on a model each end as one line (or none) and a documented status, never a traceback."""
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from robustmed import store
from robustmed.run import work as units
from robustmed.checks import CHECKS, unreliable
from robustmed.checks.registry import NOT_RUN, ran
from robustmed.cli import main
from robustmed.errors import Interrupted, exit_status
from robustmed.judging import InvariantError
from robustmed.report import findings_table

# 12 samples in batches of 4: three work units of pgd2
BENCH = ["bench", "--attack", "pgd2", "--n", "12", "--batch-size", "4", "--no-progress", "--json"]
RESUME = "rerun the same command to resume"
COMPUTE = units.compute


def _interrupt_at(monkeypatch, index: int) -> list[int]:
    """Ctrl-C as the unit ``index`` starts computing; returns the indices computed before it."""
    compute, computed = units.compute, []

    def compute_or_interrupt(unit, device):
        if unit.index == index:
            raise KeyboardInterrupt
        computed.append(unit.index)
        return compute(unit, device)

    monkeypatch.setattr(units, "compute", compute_or_interrupt)
    return computed


# --- Ctrl-C ---------------------------------------------------------------------------------------

def test_ctrl_c_in_bench_says_how_many_units_are_saved_and_exits_130(tmp_path, data_root, monkeypatch, capsys):
    out = tmp_path / "runs"
    computed = _interrupt_at(monkeypatch, 2)
    assert main([*BENCH, "--out", str(out)]) == 130
    captured = capsys.readouterr()
    assert captured.err == f"interrupted: 2 of 3 units saved; {RESUME}\n" and captured.out == ""
    assert computed == [0, 1] and store.list_runs(out) == []  # no manifest: the run is not complete
    monkeypatch.setattr(units, "compute", COMPUTE)
    resumed = _interrupt_at(monkeypatch, -1)
    assert main([*BENCH, "--out", str(out)]) == 0
    assert resumed == [2]  # the rerun computes only the unit the interrupt stopped
    assert json.loads(capsys.readouterr().out)["n"] == 12


def test_real_sigint_in_bench_leaves_no_traceback(tmp_path, data_root):
    """A real SIGINT in a real process: one line on stderr, nothing on stdout, status 130."""
    script = textwrap.dedent("""
        import os, signal, sys
        from robustmed.run import work as units
        from robustmed.cli import main

        # a process started with SIGINT ignored (as a background job is) never sees Ctrl-C: this one must
        signal.signal(signal.SIGINT, signal.default_int_handler)

        compute = units.compute

        def compute_or_sigint(unit, device):
            if unit.index == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return compute(unit, device)

        units.compute = compute_or_sigint
        raise SystemExit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, *BENCH, "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, f"interrupted: 1 of 3 units saved; {RESUME}\n", "")


def test_ctrl_c_outside_a_run_is_a_plain_line(monkeypatch, capsys):
    def interrupted(what):
        raise KeyboardInterrupt

    monkeypatch.setattr("robustmed.report.registry_listing", interrupted)
    assert main(["list", "defenses"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_interrupted_is_a_keyboard_interrupt_with_the_counts():
    exc = Interrupted(4, 9)
    assert isinstance(exc, KeyboardInterrupt) and (exc.saved, exc.total) == (4, 9)
    assert str(exc) == f"interrupted: 4 of 9 units saved; {RESUME}"


def test_ctrl_c_under_ray_stops_the_session_it_started(tmp_path, data_root, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    from robustmed.run.bench import BenchConfig, run_bench

    init, wait, calls = ray.init, ray.wait, []
    monkeypatch.setattr(ray, "init", lambda **kw: init(num_cpus=1, **kw))  # one actor: units run in order

    def wait_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the first unit came back; Ctrl-C while the second runs
            raise KeyboardInterrupt
        return wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait_then_interrupt)
    cfg = BenchConfig(attack="pgd2", n=12, batch_size=4, out=str(tmp_path / "runs"), progress=False,
                      device="cpu", executor="ray")
    with pytest.raises(Interrupted) as info:
        run_bench(cfg)
    assert info.value.total == 3 and 1 <= info.value.saved <= 2  # the second unit may land before the count
    assert not ray.is_initialized()  # the executor's own Ray session is shut down, its actors with it


# --- an unwritable results folder -----------------------------------------------------------------

@pytest.fixture
def no_attack_work(monkeypatch):
    """Fails the test if the pre-flight checks (the first work after loading) start."""
    def started(ctx):
        raise AssertionError("work started despite an unwritable results folder")

    monkeypatch.setattr("robustmed.run.bench.run_preflight", started)


def test_results_folder_below_a_file_is_one_line_exit_2(tmp_path, data_root, no_attack_work, capsys):
    blocker = (tmp_path / "notes.txt").resolve()
    blocker.write_text("not a folder")
    out = blocker / "runs"
    assert main([*BENCH, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"robustmed: error: results folder {out} cannot be created: {blocker} is a "
                                       "file, not a folder; pass --out with a folder you can write to\n")
    assert blocker.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [blocker]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_results_folder_is_one_line_exit_2(tmp_path, data_root, no_attack_work, capsys):
    locked = (tmp_path / "locked").resolve()
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main([*BENCH, "--out", str(locked / "runs")]) == 2
        assert capsys.readouterr().err == (f"robustmed: error: results folder {locked / 'runs'} cannot be written: "
                                           f"{locked} is read-only for this user; pass --out with a folder you can "
                                           "write to, or make it writable\n")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_writable_accepts_a_folder_still_to_be_created(tmp_path):
    assert store.writable(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()  # the check writes nothing


def test_disk_full_while_writing_a_unit_is_one_line_and_leaves_no_partial_unit(tmp_path, data_root, monkeypatch,
                                                                             capsys):
    replace = os.replace

    def disk_full_for_units(src, dst):
        if os.path.basename(os.path.dirname(dst)) == store.UNITS_DIR:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(src, dst)

    monkeypatch.setattr(store.os, "replace", disk_full_for_units)
    out = tmp_path / "runs"
    assert main([*BENCH, "--out", str(out)]) == 2
    (run_dir,) = out.resolve().iterdir()
    assert capsys.readouterr().err == (f"robustmed: error: cannot write results in {run_dir}: "
                                       f"{os.strerror(errno.ENOSPC)}; free space there or pass --out with a folder "
                                       "you can write to\n")
    assert list((run_dir / store.UNITS_DIR).iterdir()) == []  # the staged unit was removed


# --- a closed pipe ----------------------------------------------------------------------------------

def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "robustmed", *args]


def test_output_into_a_closed_pipe_is_quiet_with_status_141():
    """The reader is gone before robustmed writes (it has not imported yet): every write meets a closed pipe."""
    proc = subprocess.Popen(_cli("list", "defenses", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""
    proc.stderr.close()


def test_piped_into_head_prints_no_broken_pipe():
    proc = subprocess.run(["sh", "-c", " ".join(_cli("list", "defenses")) + " | head -1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "" and proc.stdout.count("\n") == 1


def test_exit_status_of_a_broken_pipe(capsys):  # capsys: a stdout without a file descriptor to point elsewhere
    def writes_into_a_closed_pipe():
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    assert exit_status("robustmed", writes_into_a_closed_pipe) == 141


# --- a check that cannot run on a user's model ------------------------------------------------------

HOSTILE_MODEL = '''
import torch
from torch import nn


class Hostile(nn.Module):
    """head(features) + a (N, 2) term from the features: B16's identity in place of the head breaks the sum."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        features = self.features(x)
        return self.head(features) + 0.1 * features[:, :2]


def make():
    return Hostile()
'''


def test_a_check_that_cannot_run_is_reported_and_the_others_run(tmp_path, data_root, capsys):
    model_file = tmp_path / "hostile.py"
    model_file.write_text(HOSTILE_MODEL)
    status = main(["check", "--model-file", f"{model_file}:make", "--n", "8", "--attack", "pgd2", "--json"])
    report = json.loads(capsys.readouterr().out)
    findings = {f["id"]: f for f in report["findings"]}
    b16 = findings["B16"]
    assert b16["severity"] == "INFO" and b16["fired"] is False
    assert b16["reason"].startswith(f"{NOT_RUN}RuntimeError: The size of tensor a (32) must match")
    assert [i for i, f in findings.items() if not ran(f)] == ["B16"]  # every other check ran
    assert {"B6", "B9", "B15", "A9"} <= set(findings) and status in (0, 1)


def test_not_run_findings_print_as_not_run_and_are_not_unreliable():
    finding = CHECKS.get("B16").not_run(RuntimeError("shapes [16, 32] and [16, 2]"))
    assert (finding.severity, finding.fired, finding.details) == ("INFO", False, {"error": "RuntimeError"})
    assert finding.reason == "could not run: RuntimeError: shapes [16, 32] and [16, 2]"
    assert not unreliable([finding])
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(findings_table([finding.to_json()], fired_only=True))  # shown even among fired findings
    line = next(line for line in console.export_text().splitlines() if "B16" in line)
    assert "not run" in line and "[16, 32]" in line


def test_guard_turns_an_exception_into_the_finding_but_lets_invariant_errors_through():
    b16 = CHECKS.get("B16")

    @b16.guard
    def breaks(shape_error: bool):
        if shape_error:
            torch.zeros(2, 3) + torch.zeros(2, 2)
        raise InvariantError("B1: ‖δ‖∞ exceeds ε")

    assert breaks(True).reason.startswith("could not run: RuntimeError: The size of tensor a (3)")
    with pytest.raises(InvariantError, match="B1"):
        breaks(False)
