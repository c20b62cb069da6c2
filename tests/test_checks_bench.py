"""Checks wired into `bench` and `check`: findings in the manifest, ERRORs refuse, rpan-code gets EOT + BPDA."""
import json

import pytest

from conftest import untrained_checkpoint
from robustmed import store
from robustmed.cli import main
from robustmed.defenses.rpan import MANNoise
from robustmed.errors import UserError
from robustmed.factory import build
from robustmed.run.bench import BenchConfig, run_bench

BROKEN = "tests/broken_models.py"


def test_bench_none_stores_findings_and_no_flag(data_root, tmp_path):
    report = run_bench(BenchConfig(defense="none", attack="pgd3", n=24, out=str(tmp_path), progress=False))
    _, manifest = store.read_run(report.run_dir)
    assert manifest["unreliable"] is False and manifest["checks"] == "cheap"
    ids = [f["id"] for f in manifest["findings"]]
    assert ids[:3] == ["A1", "A2", "A3"] and "B13" in ids and "D4" in ids
    assert [f["id"] for f in manifest["findings"] if f["fired"] and f["severity"] != "INFO"] == []
    assert report.to_json()["unreliable"] is False


def test_error_finding_refuses_before_anything_is_written(data_root, tmp_path):
    out = tmp_path / "out"
    cfg = BenchConfig(model_file=f"{BROKEN}:make_batchnorm_in_train", attack="pgd2", n=16, out=str(out),
                      progress=False)
    with pytest.raises(UserError, match="check A1 failed"):
        run_bench(cfg)
    assert not out.exists()


def test_attacking_a_surrogate_is_refused_before_the_attack(data_root, tmp_path):
    out = tmp_path / "out"
    cfg = BenchConfig(model_file=f"{BROKEN}:make_attacks_a_surrogate", attack="pgd2", n=16, out=str(out),
                      progress=False)
    with pytest.raises(UserError, match="check D2 failed"):
        run_bench(cfg)
    assert not out.exists()


def test_check_command_json_on_a_user_model(data_root, capsys):
    code = main(["check", "--model-file", f"{BROKEN}:make_softmax", "--n", "16", "--attack", "pgd2",
                 "--checks", "cheap", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["unreliable"] is True
    a3 = next(f for f in result["findings"] if f["id"] == "A3")
    assert a3 == {"id": "A3", "severity": "FLAG", "fired": True, "reason": a3["reason"]} and "probabilities" in a3["reason"]


def test_check_command_exit_1_on_error(data_root, capsys):
    assert main(["check", "--model-file", f"{BROKEN}:make_batchnorm_in_train", "--n", "16", "--attack", "pgd2",
                 "--checks", "cheap", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["findings"][0]["fired"] is True


@pytest.fixture
def rpan_code_checkpoint(tmp_path):
    return untrained_checkpoint(tmp_path, "rpan-code")


def test_bench_rpan_code_uses_eot_and_bpda(data_root, tmp_path, rpan_code_checkpoint):
    report = run_bench(BenchConfig(checkpoint=str(rpan_code_checkpoint), attack="pgd1", n=4, out=str(tmp_path),
                                   progress=False))
    _, manifest = store.read_run(report.run_dir)
    fired = {f["id"] for f in manifest["findings"] if f["fired"]}
    assert {"A1", "A4", "A6", "C4"} <= fired and manifest["unreliable"] is True
    spec = manifest["attacks"]["pgd1"]
    assert spec["eot"] == 20 and spec["draws"] == 10
    sites = sum(isinstance(m, MANNoise) for m in build("mail-rn18-mini", "rpan-code", (2,)).modules())
    assert manifest["bpda_sites"] == spec["extra"]["bpda_sites"] == sites == 36  # every clip ran straight-through
    a6 = next(f for f in manifest["findings"] if f["id"] == "A6")
    assert "zero-gradient" in a6["reason"]  # per declared clip: the share of the gradient it blocks
    assert set(a6["details"]["sites"]) == {"CodeChannelAttention.noise", "CodeEMILA.spatial_noise",
                                           "CodeEMCAM.fused_man"}
    assert sum(s["sites"] for s in a6["details"]["sites"].values()) == 36
    assert max(s["blocked"] for s in a6["details"]["sites"].values()) > 0.01
