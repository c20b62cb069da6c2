"""AutoAttack cascade over pyautoattack kernels: conformance with pyautoattack.AutoAttack and
class-count adaptation (checks A7, B4)."""
import json

import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from conftest import TinyCNN
from robustmed.attacks import FAMILIES, autoattack, parse_attack
from robustmed.attacks.autoattack import run_autoattack
from robustmed.errors import UserError
from robustmed.harness import benchmark

EPS, SEED = 0.03, 123


def _ten_class_batch(n: int):
    """A seeded 10-class model with varied predictions; labels = clean predictions (all attackable)."""
    model = TinyCNN(classes=10, seed=0).eval()
    with torch.no_grad():
        model.net[-1].weight.mul_(20)
        model.net[-1].bias.zero_()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _reference(model, x, y, *, n_iter: int, queries: int, eps: float = EPS, norm: str = "Linf"):
    """pyautoattack's own cascade (version='standard') in ``norm``, its kernels rebuilt at the given budgets."""
    aa = AutoAttack(model, norm=norm, eps=eps, seed=SEED, version="standard")
    if n_iter != 100 or queries != 5000:
        aa.apgd = APGDAttack(model, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm, eot_iter=1, rho=.75,
                             seed=SEED, device="cpu", logger=aa.logger)
        aa.apgd_targeted = APGDAttack_targeted(model, n_restarts=1, n_iter=n_iter, eps=eps, norm=norm,
                                               eot_iter=1, rho=.75, seed=SEED, device="cpu", logger=aa.logger)
        aa.fab = FABAttack_PT(model, n_restarts=1, n_iter=n_iter, eps=eps, seed=SEED, norm=norm, device="cpu",
                              n_target_classes=9)
        aa.square = SquareAttack(model, p_init=.8, n_queries=queries, eps=eps, norm=norm, n_restarts=1,
                                 seed=SEED, device="cpu", resc_schedule=False)
    return aa.run_standard_evaluation(x, y, batch_size=250)


def _assert_same(model, x, y, steps: int, eps: float = EPS):
    x_ref, y_ref = _reference(model, x, y, n_iter=steps, queries=autoattack.SQUARE_QUERIES, eps=eps)
    ours = run_autoattack(model, x, y, spec=parse_attack(f"aa{steps}:canonical"), eps=eps, seed=SEED)
    assert torch.equal(ours.success, y_ref != y)
    assert torch.equal(ours.x_adv[ours.success], x_ref[ours.success])
    survivors = ours.x_adv[~ours.success]  # pyautoattack hands back the clean image; robustmed its best candidate
    assert not torch.equal(survivors, x[~ours.success]) or not len(survivors)
    assert (survivors - x[~ours.success]).abs().max() <= eps + 1e-6 and survivors.min() >= 0 and survivors.max() <= 1
    return ours


@pytest.mark.parametrize("eps, stages", [(0.01, [-1, -1, 0, -1, -1, 0, -1, -1, -1, -1, -1, 2]),
                                         (0.02, [-1, 1, 0, 1, 0, 0, -1, -1, -1, 1, -1, 0])])
def test_cascade_matches_pyautoattack_at_small_budgets(monkeypatch, eps, stages):
    """Flags identical, and x_adv where broken; the seeded stages show APGD-CE, APGD-T and FAB-T each breaking points
    and survivors reaching Square."""
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", 200)
    model, x, y = _ten_class_batch(12)
    ours = _assert_same(model, x, y, steps=10, eps=eps)
    assert ours.first_success.tolist() == stages


@pytest.mark.slow
def test_cascade_matches_pyautoattack_standard():
    model, x, y = _ten_class_batch(16)
    _assert_same(model, x, y, steps=100)


@pytest.mark.parametrize("classes, cascade, targets", [
    (10, ["apgd-ce", "apgd-t", "fab-t", "square"], 9),
    (5, ["apgd-ce", "apgd-t", "fab-t", "square"], 4),
    (3, ["apgd-ce", "apgd-dlr", "apgd-t-margin", "fab-t", "square"], 2),
    (2, ["apgd-ce", "fab-t", "square"], 1),
])
def test_class_count_adaptation(classes, cascade, targets):
    """Below four classes the targeted budget goes to APGD-CE restarts (five in all), stored in the spec."""
    spec = FAMILIES.get("aa").adapt(parse_attack("aa:canonical"), classes)
    assert spec.extra["cascade"] == cascade and spec.extra["n_target_classes"] == targets
    assert spec.extra.get("restarts", {}).get("apgd-ce", 1) == (1 if classes >= 4 else 5)
    assert (spec.extra["square_queries"], spec.extra["square_q"]) == (5000, 1)


def test_aa_rand_uses_eot_20_and_no_dlr_on_two_classes():
    """Both forms: the early-exit cascade (the bare name from spec version 3) and pyautoattack's (``:canonical``,
    and the bare name as stored runs read it), with the same budget: two APGD-CE runs on C = 2, CE then DLR above."""
    family = FAMILIES.get("aa-rand")
    for spec, binary_cascade in ((parse_attack("aa-rand:canonical"), ["apgd-ce"]),
                                 (parse_attack("aa-rand"), ["apgd-ce", "apgd-ce@random"])):
        assert spec.eot == 20 and spec.steps == 100
        binary = family.adapt(spec, 2).extra
        assert binary["cascade"] == binary_cascade  # a margin stage would retrace CE
        assert binary.get("restarts", {"apgd-ce": 2}) == {"apgd-ce": 2}
        assert family.adapt(spec, 7).extra["cascade"] == ["apgd-ce", "apgd-dlr"]
    assert parse_attack("aa-rand", "2") == parse_attack("aa-rand:canonical").__class__(
        **{**parse_attack("aa-rand:canonical").__dict__, "name": "aa-rand"})
    assert family.adapt(parse_attack("aa-rand"), 2).extra["kernels"] == "robustmed apgd"


def test_binary_cascade_runs_in_the_harness_and_stores_its_configuration(monkeypatch):
    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", 100)
    model = TinyCNN(classes=2, seed=1).eval()
    with torch.no_grad():
        model.net[-1].weight.mul_(20)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    rows = benchmark(model, x, y, attack="aa5:canonical", eps=EPS, seed=2)
    spec = json.loads(rows.spec.iloc[0])
    assert spec["extra"]["cascade"] == ["apgd-ce", "fab-t", "square"]
    assert spec["extra"]["num_classes"] == 2 and spec["extra"]["kernels"] == "pyautoattack==0.2.0"
    assert (rows.linf <= EPS + 1e-6).all() and rows.success.any()
    again = benchmark(model, x, y, attack="aa5:canonical", eps=EPS, seed=2)
    assert again.success.tolist() == rows.success.tolist()  # seeded kernels reproduce


def test_bench_runs_aa_on_the_binary_default_data(tmp_path, monkeypatch, data_root):
    from robustmed.run.bench import BenchConfig, run_bench

    monkeypatch.setattr(autoattack, "SQUARE_QUERIES", 50)
    model_file = tmp_path / "tiny.py"
    model_file.write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),\n"
        "                         nn.Linear(16, 2)).eval()\n")
    report = run_bench(BenchConfig(model_file=f"{model_file}:build", attack="aa5:canonical", n=8, progress=False,
                                   data_root=str(data_root), out=str(tmp_path / "runs")))
    assert report.manifest["attacks"]["aa5:canonical"]["extra"]["cascade"] == ["apgd-ce", "fab-t", "square"]
    assert len(report.rows) == 8 and (report.rows.robust <= report.rows.clean_correct).all()


@pytest.mark.slow
def test_aa_is_at_least_as_strong_as_apgd_ce_with_five_restarts_on_the_default_model(data_root):
    """Issue bar on the shipped default model (128 seeded PneumoniaMNIST test images, ε = 4/255): every sample
    pyautoattack's APGD-CE with 5 random restarts breaks, `aa` breaks too (its first stage is that kernel,
    restart for restart, with the harness's seed for the batch)."""
    from robustmed.data import load_dataset
    from robustmed.factory import load_model
    from robustmed.resolve import resolve_spec
    from robustmed.seeds import sample_seed, seed_digest, select_subset

    model = load_model("none")
    x_all, y_all = load_dataset("pneumoniamnist", "test", root=data_root)
    ids = select_subset(len(y_all), 128, 0)
    x, y = x_all[ids], y_all[ids]
    rows = benchmark(model, x, y, attack="aa", eps=4 / 255, sample_ids=ids, seed=0)
    robust = torch.tensor(rows.sort_values("sample_id").robust.to_numpy())
    attacked = torch.tensor(rows.sort_values("sample_id").clean_correct.to_numpy())
    spec = resolve_spec(parse_attack("aa"), randomized=False, num_classes=2)
    seed = sample_seed(0, int(ids[attacked.numpy()][0]), seed_digest(spec, 4 / 255))
    reference = APGDAttack(model, n_restarts=5, n_iter=100, eps=4 / 255, norm="Linf", seed=seed, device="cpu", rho=.75)
    with torch.no_grad():
        broken = torch.zeros(len(y), dtype=torch.bool)
        broken[attacked] = model(reference.perturb(x[attacked], y[attacked])).argmax(1) != y[attacked]
    assert broken.any() and not (robust & broken).any()


def test_aa_names_the_fast_cascade_and_aa_canonical_the_standard_one():
    """From spec version 3 the bare name is the early-exit cascade; ``aa:canonical`` (and ``aa`` read as of
    version 2, as stored runs are) is the standard cascade with the digest it always had."""
    fast, canonical, stored = parse_attack("aa"), parse_attack("aa:canonical"), parse_attack("aa", "2")
    assert (fast.variant, fast.version) == ("fast", "3") and (canonical.variant, canonical.version) == ("", "2")
    assert stored.name == "aa" and stored.digest(EPS) != fast.digest(EPS)
    assert stored.to_json(EPS) == canonical.to_json(EPS).replace('"aa:canonical"', '"aa"')
    assert FAMILIES.get("aa").adapt(fast, 2).extra["cascade"] == [
        "apgd-ce", "apgd-ce@starts", "square"]
    assert "apgd-t" in FAMILIES.get("aa").adapt(fast, 10).extra["cascade"]
    with pytest.raises(Exception, match="canonical"):
        parse_attack("aa:quick")


def test_a_stored_run_reruns_as_the_spec_version_it_was_made_with():
    """Committed Table 3 runs stored ``aa`` at version 2: `regress` reruns them as the canonical cascade."""
    from robustmed.reports.regress import stored_spec_version
    from robustmed.run.config import BenchConfig, run_id_for

    stored = {"attacks": {"pgd10": {"family": "pgd", "version": "2"}, "aa": {"family": "aa", "version": "2"}}}
    assert stored_spec_version(stored) == "2"
    randomized = {"attacks": {"pgd20": {"family": "pgd", "version": "2"}, "aa-rand": {"family": "aa-rand",
                                                                                      "version": "2"}}}
    assert stored_spec_version(randomized) == "2"  # the randomized rows' aa-rand reruns as pyautoattack's cascade
    mixed = {"run_id": "r", "attacks": {"aa": {"family": "aa", "version": "3"},
                                        "aa-rand": {"family": "aa-rand", "version": "2"}}}
    with pytest.raises(UserError, match="different spec versions"):  # one grammar cannot reread both
        stored_spec_version(mixed)
    assert stored_spec_version({"attacks": {"aa": {"family": "aa", "version": "3"}}}) is None
    assert stored_spec_version({"attacks": {"pgd10": {"family": "pgd", "version": "2"}}}) is None
    now, then = BenchConfig(attack="pgd10,aa"), BenchConfig(attack="pgd10,aa", spec_version="2")
    assert [s.variant for s in then.specs()] == ["", ""] and now.specs()[1].variant == "fast"
    assert run_id_for(now, "none", None, "d") != run_id_for(then, "none", None, "d")
    assert run_id_for(BenchConfig(attack="pgd10"), "none", None, "d") == run_id_for(
        BenchConfig(attack="pgd10", spec_version=None), "none", None, "d")


def test_fast_cascade_is_as_strong_as_pyautoattacks_standard_cascade_at_small_budgets(monkeypatch):
    """Same budgets (10 APGD steps, 100 Square queries): every sample pyautoattack's AutoAttack breaks on the
    10-class conformance batch, the fast cascade breaks too, spending fewer model passes in all."""
    from robustmed.attacks import aa_fast
    from robustmed.passes import PassCounter

    monkeypatch.setattr(aa_fast, "FAST_SQUARE_QUERIES", 100)
    model, x, y = _ten_class_batch(24)
    reference, counter = PassCounter(), PassCounter()
    x_ref, y_ref = _reference(reference.wrap(model), x, y, n_iter=10, queries=100, eps=0.02)
    spec = FAMILIES.get("aa").adapt(parse_attack("aa10"), 10)
    assert spec.extra["square_queries"] == 100
    ours = run_autoattack(counter.wrap(model), x, y, spec=spec, eps=0.02, seed=SEED)
    theirs = y_ref != y
    assert 0 < theirs.sum() < len(y) and not (theirs & ~ours.success).any()
    assert (ours.x_adv - x).abs().max() <= 0.02 + 1e-6
    assert counter.forward + counter.backward < reference.forward + reference.backward


def test_a_revised_variant_never_reads_back_a_run_its_earlier_form_stored(monkeypatch):
    """Bumping a variant's revision moves the id of every run that names it, and only those."""
    from robustmed.run.config import BenchConfig, run_id_for

    def ids():
        return [run_id_for(BenchConfig(attack=a), "none", None, "d") for a in ("pgd10,aa", "aa:canonical", "pgd10")]

    before = ids()
    monkeypatch.setitem(FAMILIES.get("aa").revisions, "fast", FAMILIES.get("aa").revisions["fast"] + 1)
    after = ids()
    assert after[0] != before[0] and after[1:] == before[1:]
