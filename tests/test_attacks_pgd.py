"""PGD, BIM and MIM: conformance with torchattacks 3.5.1 and the loop's invariants (checks B1, B13)."""
import pytest
import torch
import torchattacks

from conftest import TinyCNN
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import pgd, run_pgd

EPS = 8 / 255


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(11)
    return torch.rand(8, 1, 28, 28, generator=gen), torch.randint(0, 2, (8,), generator=gen)


def _last_iterate(spec: str):
    """The spec with best-iterate tracking and early exit off: torchattacks returns the last iterate."""
    from dataclasses import replace

    return replace(parse_attack(spec), keep_best=False, early_stop=False, eot=1)


def test_pgd_matches_torchattacks_given_the_same_start(tiny_model, batch):
    x, y = batch
    torch.manual_seed(5)
    reference = torchattacks.PGD(tiny_model, eps=EPS, alpha=2 / 255, steps=10, random_start=True)(x, y)
    torch.manual_seed(5)
    start = torch.empty_like(x).uniform_(-EPS, EPS)  # the tensor torchattacks drew
    spec = _last_iterate("pgd10:alpha=2/255")
    ours = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=start).x_adv
    assert (ours - reference).abs().max().item() <= 1e-6
    assert (ours - x).abs().max().item() > EPS / 2  # the attack moved: the comparison is not vacuous


def test_bim_matches_torchattacks(tiny_model, batch):
    x, y = batch
    spec = _last_iterate("bim10")
    reference = torchattacks.BIM(tiny_model, eps=EPS, alpha=spec.step_size(EPS), steps=10)(x, y)
    ours = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=torch.zeros_like(x)).x_adv
    assert spec.step_size(EPS) == pytest.approx(1.25 * EPS / 10)
    assert (ours - reference).abs().max().item() <= 1e-6


def test_mim_matches_torchattacks_mifgsm(tiny_model, batch):
    x, y = batch
    spec = _last_iterate("mim10")
    reference = torchattacks.MIFGSM(tiny_model, eps=EPS, alpha=spec.step_size(EPS), steps=10, decay=1.0)(x, y)
    ours = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=torch.zeros_like(x)).x_adv
    assert spec.momentum == 1.0 and spec.random_start is False
    assert (ours - reference).abs().max().item() <= 1e-6


@pytest.mark.parametrize("name", ["pgd20", "bim20", "mim20"])
def test_budget_and_box_respected(tiny_model, batch, name):
    x, y = batch
    x = x.clamp(0.02, 0.98)
    x[0] = 0.0  # pixels on the box edge must stay in [0, 1]
    spec = parse_attack(name)
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(1))
    result = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=start)
    assert (result.x_adv - x).abs().max().item() <= EPS + 1e-7
    assert result.x_adv.min().item() >= 0 and result.x_adv.max().item() <= 1


def test_best_iterate_loss_never_below_last_iterate(batch):
    x, y = batch
    model = TinyCNN(classes=2, seed=3).eval()
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(2))
    kwargs = dict(eps=EPS, steps=15, step_size=EPS / 2, start=start, early_stop=False)  # big steps oscillate
    best = pgd(model, x, y, keep_best=True, **kwargs)
    last = pgd(model, x, y, keep_best=False, **kwargs)
    broke_last = last.success
    assert (best.success >= broke_last).all()
    same_class = best.success == broke_last
    assert (best.loss[same_class] >= last.loss[same_class]).all()
    assert (best.loss > last.loss).any()  # best-iterate tracking mattered on this seed (B13)


def test_early_exit_never_raises_robust_accuracy(batch):
    x, y = batch
    x = torch.cat([x, x.flip(0)])
    y = torch.cat([y, 1 - y])
    model = TinyCNN(classes=2, seed=4).eval()
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(3))
    kwargs = dict(eps=EPS, steps=10, step_size=2.5 * EPS / 10, start=start, keep_best=True)
    early = pgd(model, x, y, early_stop=True, **kwargs)
    full = pgd(model, x, y, early_stop=False, **kwargs)
    assert torch.equal(early.first_success, full.first_success)  # identical trajectories until each break
    assert early.success.sum() >= full.success.sum() and early.forward_backward < full.forward_backward
    with torch.no_grad():
        assert torch.equal(model(early.x_adv).argmax(1), early.adv_pred)


def test_restarts_only_help(tiny_model, batch):
    x, y = batch
    spec = parse_attack("pgd3:restarts=3,alpha=1/255")
    starts = torch.empty((3, *x.shape)).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(4))
    one = run_pgd(tiny_model, x, y, spec=parse_attack("pgd3:alpha=1/255"), eps=EPS, start=starts[0])
    three = run_pgd(tiny_model, x, y, spec=spec, eps=EPS, start=starts)
    assert (three.success >= one.success).all()
    assert (three.loss[~one.success] >= one.loss[~one.success]).all()


def test_unknown_options_and_losses_are_refused():
    from robustmed.errors import UserError

    with pytest.raises(UserError, match="bad value"):
        parse_attack("pgd10:loss=dlr")
    with pytest.raises(UserError, match="bad value"):
        parse_attack("pgd10:protocol=fast")
    spec = parse_attack("pgd10:protocol=paper")
    assert (spec.eot, spec.draws, spec.protocol) == (1, 0, "paper")  # draws: R, resolved per model


def test_restarts_without_random_starts_are_refused():
    from robustmed.errors import UserError

    for text in ("bim10:restarts=2", "pgd10:restarts=2,random_start=0", "aa:restarts=2"):
        with pytest.raises(UserError, match="restarts"):
            parse_attack(text)
    assert parse_attack("mim10:restarts=2,random_start=1").restarts == 2


def test_harness_draws_one_seeded_start_per_restart(tiny_model, batch):
    import json

    from robustmed.harness import benchmark
    from robustmed.seeds import starts

    x, y = batch
    spec = parse_attack("pgd2:restarts=3")
    drawn = starts(spec, x, list(range(8)), EPS, 0, "digest")
    assert drawn.shape == (3, *x.shape) and drawn.abs().max() <= EPS
    assert not torch.equal(drawn[0], drawn[1])
    assert torch.equal(drawn[0], starts(parse_attack("pgd2"), x, list(range(8)), EPS, 0, "digest"))
    rows = benchmark(tiny_model, x, y, attack="pgd2:restarts=3", eps=EPS, seed=0)
    assert json.loads(rows.spec.iloc[0])["restarts"] == 3 and (rows.linf <= EPS + 1e-6).all()


def test_batch_buckets_are_few_and_pad_at_most_a_quarter_or_an_eighth():
    from robustmed.attacks.pgd import batch_bucket

    for bits, most, per_octave in ((3, 1.25, 4), (4, 1.125, 8)):
        sizes = [batch_bucket(n, bits) for n in range(1, 257)]
        assert all(n <= b <= max(n, most * n) for n, b in zip(range(1, 257), sizes))
        assert len(set(sizes[15:64])) == 1 + 2 * per_octave  # 16 … 64: a few sizes per octave, not 49
    assert [batch_bucket(n, 3) for n in (8, 9, 15, 16, 17, 33, 64, 65)] == [8, 10, 16, 16, 20, 40, 64, 80]
    assert [batch_bucket(n, 4) for n in (15, 16, 17, 33, 64, 65, 129, 241)] == [15, 16, 18, 36, 64, 72, 144, 256]


def test_randomized_runs_keep_the_three_bit_grid_their_committed_rows_were_made_with():
    from robustmed.attacks.pgd import padding_bits
    from robustmed.resolve import resolve_spec

    paper = parse_attack("pgd10:protocol=paper")  # the only randomized runs that pad: early exit is on
    assert padding_bits(resolve_spec(paper, randomized=True, num_classes=2)) == 3
    assert padding_bits(resolve_spec(paper, randomized=False, num_classes=2)) == 4
    assert padding_bits(parse_attack("pgd10")) == 4


def test_a_deterministic_models_rows_do_not_depend_on_the_padding_grid():
    model = TinyCNN(classes=2, seed=4).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(96, 1, 28, 28, generator=gen), torch.randint(0, 2, (96,), generator=gen)
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(3))
    calls = {}

    def run(bits):
        calls[bits] = []
        forward = lambda z: calls[bits].append(len(z)) or model(z)
        return pgd(forward, x, y, eps=EPS, steps=10, step_size=2.5 * EPS / 10, start=start, bucket_bits=bits)
    runs = [run(bits) for bits in (3, 4, 30)]  # 30 bits: no padding at all
    assert [c[1] for c in (calls[3], calls[4], calls[30])] == [48, 44, 41]  # 41 samples left after step 0
    for other in runs[1:]:
        for field in ("x_adv", "success", "first_success", "loss", "adv_pred"):
            assert torch.equal(getattr(runs[0], field), getattr(other, field)), field
    assert 0 < runs[0].success.sum() < 96


def test_shrinking_batch_runs_on_bucket_sizes_and_padding_changes_no_row(batch):
    from robustmed.attacks.pgd import batch_bucket

    x, y = batch
    x, y = torch.cat([x, x.flip(0), x]), torch.cat([y, 1 - y, y])
    model = TinyCNN(classes=2, seed=4).eval()
    calls = []

    def forward(z):
        calls.append(len(z))
        return model(z)
    start = torch.empty_like(x).uniform_(-EPS, EPS, generator=torch.Generator().manual_seed(3))
    kwargs = dict(eps=EPS, steps=10, step_size=2.5 * EPS / 10, start=start)
    early = pgd(forward, x, y, early_stop=True, **kwargs)
    assert set(calls) <= {len(x)} | {batch_bucket(n) for n in range(1, len(x))} and len(set(calls)) > 1
    full = pgd(model, x, y, early_stop=False, **kwargs)
    assert torch.equal(early.first_success, full.first_success)  # the padding rows changed no trajectory
    broke = early.success & full.success
    assert torch.equal(early.x_adv[~full.success], full.x_adv[~full.success]) and broke.any()


def test_several_eps_in_one_batch_follow_each_eps_alone(batch):
    """EpsRows: a row's trajectory is its ε's own run; a broken row retires its sample's larger-ε rows."""
    from robustmed.attacks.pgd import EpsRows

    x, y = batch
    model = TinyCNN(classes=2, seed=3).eval()
    eps_list = (1 / 255, 4 / 255, 16 / 255)
    starts = [torch.empty_like(x).uniform_(-e, e, generator=torch.Generator().manual_seed(i))
              for i, e in enumerate(eps_list)]
    spec = parse_attack("pgd8")
    alone = [run_pgd(model, x, y, spec=spec, eps=e, start=s) for e, s in zip(eps_list, starts)]
    level = torch.arange(3).repeat_interleave(len(x))
    group = torch.arange(len(x)).repeat(3)
    rows = run_pgd(model, x[group], y[group], spec=spec, eps=EpsRows(eps_list, level, group), start=torch.cat(starts))
    broke = rows.success.view(3, len(x))
    for j, own in enumerate(alone):
        part = slice(j * len(x), (j + 1) * len(x))
        retired = broke[:j].any(0) if j else torch.zeros(len(x), dtype=torch.bool)
        ran = ~retired
        assert torch.equal(rows.x_adv[part][ran], own.x_adv[ran]) and torch.equal(rows.loss[part][ran], own.loss[ran])
        assert torch.equal(rows.success[part][ran], own.success[ran])
        assert (rows.x_adv[part] - x).abs().max() <= eps_list[j] + 1e-7
    assert broke[0].sum() < broke[2].sum() and broke[:2].any(0).any()  # some rows were retired
