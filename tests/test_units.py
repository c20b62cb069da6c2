"""Work units: planning, deterministic run ids, verified unit files, skip-if-done, sharding and --resume."""
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from robustmed import passes, store
from robustmed.cli import main
from robustmed.errors import UserError
from robustmed.run import plan as planning, target, work as units
from robustmed.run.bench import BenchConfig, run_bench
from robustmed.run.executors import get_executor

TIMING = ["attack_time_s"]  # wall-clock seconds: the one column that may differ between two computations


def per_sample(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.drop(columns=TIMING).reset_index(drop=True)


@pytest.fixture
def cfg(tmp_path):
    return BenchConfig(attack="pgd2,bim2", n=48, batch_size=16, out=str(tmp_path / "runs"), progress=False)


@pytest.fixture
def computed(monkeypatch):
    """The units actually computed (not read back from the store), in order."""
    done = []
    compute = units.compute

    def counting(unit, device):
        done.append(unit.index)
        return compute(unit, device)

    monkeypatch.setattr(units, "compute", counting)
    return done


def test_plan_is_attack_major_with_aligned_shards():
    plan = planning.plan("r", "/d", ["pgd2", "bim2"], range(40), 16, {"config": {"eps": "4/255"}})
    assert [(u.index, u.attack, u.sample_ids[0], len(u.sample_ids)) for u in plan] == [
        (0, "pgd2", 0, 16), (1, "pgd2", 16, 16), (2, "pgd2", 32, 8),
        (3, "bim2", 0, 16), (4, "bim2", 16, 16), (5, "bim2", 32, 8)]
    assert len({u.unit_id for u in plan}) == 6
    assert [u.unit_id for u in plan] == [u.unit_id for u in planning.plan("r", "/d", ["pgd2", "bim2"], range(40), 16,
                                                                       {"config": {"eps": "4/255"}})]


def test_unit_files_verify_their_digest(tmp_path):
    rows = pd.DataFrame({"sample_id": [3, 5], "robust": [True, False]})
    store.write_unit(tmp_path, "0000-abc", rows, {"attack": "pgd2"})
    loaded, meta = store.read_unit(tmp_path, "0000-abc")
    pd.testing.assert_frame_equal(loaded, rows)
    assert meta["rows"] == 2 and meta["attack"] == "pgd2"
    (tmp_path / "units" / "0000-abc" / store.ROWS_FILE).write_bytes(b"truncated")
    assert store.read_unit(tmp_path, "0000-abc") is None
    store.write_unit(tmp_path, "0000-abc", rows, {"attack": "pgd2"})  # a bad unit is replaced
    assert store.read_unit(tmp_path, "0000-abc")[1]["rows"] == 2
    assert store.read_unit(tmp_path, "9999-missing") is None


def test_run_id_is_a_hash_of_what_decides_the_rows(cfg, tmp_path, data_root, computed):
    first = run_bench(cfg)
    assert first.run_dir.name.startswith("none-pgd2+bim2-") and len(computed) == 6
    assert [u["unit_id"] for u in first.manifest["units"]] == sorted(p.name for p in (first.run_dir / "units").iterdir())
    again = run_bench(replace(cfg, device="cpu", progress=True))  # execution fields: same run, nothing recomputed
    assert again.run_dir == first.run_dir and len(computed) == 6
    pd.testing.assert_frame_equal(again.rows, first.rows)
    other = run_bench(replace(cfg, attack="pgd2"))
    assert other.run_dir != first.run_dir
    assert [p.name for p in store.list_runs(cfg.out)] == sorted([first.run_dir.name, other.run_dir.name])


def test_shards_change_no_per_sample_result(cfg, data_root):
    """Shards of 16 vs one shard of 48 (same batch size): identical rows, in the same order."""
    sharded = run_bench(cfg)
    whole = run_bench(replace(cfg, shard_size=48))
    assert len(sharded.manifest["units"]) == 6 and len(whole.manifest["units"]) == 2
    assert whole.run_dir != sharded.run_dir
    batched = ["run_id", *passes.COLUMNS]  # a batch's passes, shared over its samples: other shards, other batches
    pd.testing.assert_frame_equal(per_sample(sharded.rows).drop(columns=batched),
                                  per_sample(whole.rows).drop(columns=batched))
    assert sharded.summary[0]["robust_accuracy"] == whole.summary[0]["robust_accuracy"]


def test_local_units_reuse_the_loaded_model_and_a9s_clean_pass(cfg, data_root, monkeypatch):
    """The local executor's units take the planning process's model and check A9's clean pass: one checkpoint
    load and one clean pass for the run, and the same rows as units that load and pass for themselves."""
    from robustmed import judging
    from robustmed.checks import preflight

    calls = {"load": 0, "clean": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(target, "from_checkpoint", counted("load", target.from_checkpoint))
    # every clean pass, A9's (preflight → judging.clean_draws) and the harness's own, goes through this one
    monkeypatch.setattr(judging, "clean_draws_masked", counted("clean", judging.clean_draws_masked))
    shared = run_bench(cfg)
    assert calls == {"load": 1, "clean": 1} and len(shared.manifest["units"]) == 6
    monkeypatch.setattr(units, "share", lambda *args, **kwargs: None)
    calls.update(load=0, clean=0)
    alone = run_bench(replace(cfg, out=cfg.out + "-alone"))
    assert calls == {"load": 2, "clean": 1 + 6}
    pd.testing.assert_frame_equal(per_sample(alone.rows), per_sample(shared.rows))
    assert alone.manifest["findings"] == shared.manifest["findings"]


class PreloadingExecutor:
    """A remote worker, played in this process: it loads what :meth:`start` announces (before the pre-flight
    checks), never the planning process's model, then computes the units."""

    name = "preloading"

    def __init__(self, events):
        self.events = events

    def start(self, count, load=None):
        units.preload(load)

    def run(self, pending, progress=True):
        self.events.append("units")
        for unit in pending:
            units.run(unit)

    def close(self):
        pass


def test_a_worker_preloads_the_model_its_units_use(cfg, data_root, monkeypatch):
    """The load spec a run announces before its pre-flight checks names the model its units look up: the
    worker loads the checkpoint once, before the first unit, and the rows are the local executor's."""
    from collections import OrderedDict

    from robustmed.run.bench import run_benches

    local = run_bench(replace(cfg, out=cfg.out + "-local"))
    events = []
    monkeypatch.setattr(units, "_LOADED", OrderedDict())
    monkeypatch.setattr(units, "_CLEAN", {})
    load = target.from_checkpoint
    monkeypatch.setattr(target, "from_checkpoint", lambda *args: events.append("load") or load(*args))
    (remote,) = run_benches([cfg], PreloadingExecutor(events))
    assert events == ["load", "load", "units"]  # the planning process's load, the worker's preload, 6 units
    pd.testing.assert_frame_equal(per_sample(remote.rows), per_sample(local.rows))


def test_missing_or_corrupt_units_are_recomputed_alone(cfg, data_root, computed):
    full = run_bench(cfg)
    unit_ids = [u["unit_id"] for u in full.manifest["units"]]
    (full.run_dir / store.MANIFEST_FILE).unlink()  # as if killed before the manifest
    (full.run_dir / "units" / unit_ids[1] / store.ROWS_FILE).write_bytes(b"garbage")
    shutil.rmtree(full.run_dir / "units" / unit_ids[4])
    computed.clear()
    resumed = run_bench(cfg)
    assert computed == [1, 4]
    pd.testing.assert_frame_equal(per_sample(resumed.rows), per_sample(full.rows))


def test_resume_by_run_id_uses_the_stored_config(cfg, data_root, computed, monkeypatch, capsys):
    compute = units.compute

    def dies_after_two(unit, device):
        if unit.index == 2:
            raise KeyboardInterrupt
        return compute(unit, device)

    monkeypatch.setattr(units, "compute", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg)
    (run_dir,) = [p for p in Path(cfg.out).iterdir()]
    assert not (run_dir / store.MANIFEST_FILE).exists() and store.list_runs(cfg.out) == []
    monkeypatch.setattr(units, "compute", compute)
    with pytest.raises(UserError, match="started with attack='pgd2,bim2', not 'pgd7'"):
        run_bench(BenchConfig(out=cfg.out, resume=run_dir.name, attack="pgd7"))
    with pytest.raises(UserError, match="no run of that name"):
        run_bench(BenchConfig(out=cfg.out, resume="none-nothing-000000000000"))
    assert main(["bench", "--resume", run_dir.name, "--out", cfg.out, "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["run_id"] == run_dir.name and report["n"] == 48 and report["attack"] == "pgd2,bim2"
    rows, manifest = store.read_run(run_dir)
    assert len(rows) == 96 and not rows.duplicated(["attack", "eps", "sample_id"]).any()
    assert manifest["config"]["batch_size"] == 16 and len(manifest["units"]) == 6


def test_bad_scale_out_options_are_user_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="multiple of --batch-size"):
        run_bench(BenchConfig(batch_size=16, shard_size=24, out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="unknown executor 'dask'"):
        get_executor("dask")
    with pytest.raises(UserError, match="--address needs --executor ray"):
        get_executor("local", "auto")
    assert main(["bench", "--suite", "benchmarks/ci.toml", "--resume", "x"]) == 2
    assert "rerun the same --suite command" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unit_progress_moves_with_the_attack_steps(pneumonia):
    """A unit's bar advances per attack pass within a batch, never backwards, and ends at the whole unit."""
    from conftest import TinyCNN
    from robustmed.attacks import parse_attack
    from robustmed.harness import attack_rows
    from robustmed.progress import listening

    x, y = pneumonia.split("test")
    seen = []
    with listening(seen.append):
        attack_rows(TinyCNN().eval(), x[:32], y[:32], list(range(32)), [parse_attack("pgd10")], [4 / 255])
    assert len(seen) >= 11 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 0.2


def _progress_on_an_unbreakable_model(attack: str, n: int) -> list[float]:
    """The shares of work a unit's bar reports while ``attack`` runs on a model with a constant answer."""
    import torch

    from robustmed.attacks import parse_attack
    from robustmed.harness import attack_rows
    from robustmed.progress import listening

    class Unbreakable(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.full((len(x),), 5.0), torch.zeros(len(x))], 1) + 0 * x.flatten(1)[:, :1]

    seen = []
    with listening(seen.append):
        attack_rows(Unbreakable(), torch.rand(n, 1, 28, 28), torch.zeros(n, dtype=torch.long), list(range(n)),
                    [parse_attack(attack)], [4 / 255])
    return seen


def test_square_progress_moves_with_its_queries():
    """Square's bar advances per query on a model it cannot break, and its pass count is exactly the expected one."""
    from robustmed.attacks import parse_attack
    from robustmed.outcomes import expected_passes
    from robustmed.resolve import resolve_spec

    seen = _progress_on_an_unbreakable_model("square10", 8)
    assert expected_passes(resolve_spec(parse_attack("square10"), randomized=False, num_classes=2)) == 12
    assert len(seen) >= 12 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 0.2


def test_autoattack_progress_moves_per_stage():
    """AutoAttack's bar moves as each stage of its cascade finishes, on a model none of them can break."""
    seen = _progress_on_an_unbreakable_model("aa5", 4)
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 1
