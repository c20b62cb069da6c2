"""Every shipped checkpoint: verified, ≥ 10 points above the majority rate, and bench reproduces its
recorded clean accuracy (exactly for deterministic models; the mean over draws within 1.5 points for
randomized ones, check C4)."""
import pytest

from robustmed import checkpoints
from robustmed.factory import from_checkpoint
from robustmed.harness import clean_draws
from robustmed.randomness import is_randomized, seed_model

MAJORITY_RATE = 0.625
SHIPPED = sorted(checkpoints.ZOO.glob("mail-rn18-mini/pneumoniamnist/*.pt"))


def test_every_registered_defense_is_shipped_and_a_missing_one_fails_cleanly(tmp_path, capsys):
    """Every registered defense has a checkpoint; without one, bench says so in one line, exit 2."""
    from robustmed.cli import main
    from robustmed.defenses import DEFENSES

    assert {p.stem for p in SHIPPED} == set(DEFENSES.names())
    assert main(["bench", "--defense", "pni", "--dataset", "breastmnist", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no shipped checkpoint for defense 'pni'" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_accuracy_is_what_bench_measures(path, pneumonia):
    model, meta = from_checkpoint(path)
    assert meta["defense"] == path.stem and meta["dataset"] == "pneumoniamnist"
    assert path.stat().st_size < 5 * 2**20
    x, y = pneumonia.split("test")
    draws = 10 if is_randomized(model) else 1
    assert meta.get("test_accuracy_draws", 1) == draws
    seed_model(model, 0)
    _, _, hits = clean_draws(model, x, y, 256, "cpu", draws)
    measured = (hits.float() / draws).mean().item()
    assert meta["test_accuracy"] >= MAJORITY_RATE + 0.10
    if draws == 1:
        assert measured == pytest.approx(meta["test_accuracy"], abs=1e-6)
    else:
        assert measured == pytest.approx(meta["test_accuracy"], abs=0.015)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_randomness_matches_the_registry(path):
    from robustmed.defenses import DEFENSES

    model, _ = from_checkpoint(path)
    assert is_randomized(model) == DEFENSES.get(path.stem).randomized
