"""robustmed's own APGD loop (attacks/apgd.py): the paper's schedule, a shrinking batch that changes no
sample's trajectory, the budget, and strength against pyautoattack's kernel from the same start."""
import torch
from pyautoattack.autopgd_base import APGDAttack

from conftest import TinyCNN
from robustmed.attacks.apgd import apgd, checkpoints

EPS = 0.03


def _batch(n: int = 48, classes: int = 10, dtype=torch.float64):
    model = TinyCNN(classes=classes, seed=0).to(dtype).eval()
    with torch.no_grad():
        model.net[-1].weight.mul_(20)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_checkpoints_follow_the_papers_schedule():
    """p₁ = 0.22 and windows shrinking by 0.03 down to 0.06 of the steps: pyautoattack's 100-step schedule."""
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == list(range(2, 11))


def test_leaving_the_batch_changes_no_samples_trajectory():
    """Per-sample step sizes: a sample's first adversarial step and point are the same with early exit or without."""
    model, x, y = _batch()
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype) * 2 - 1) * EPS
    shrinking = apgd(model, x, y, eps=EPS, steps=30, start=start, early_stop=True)
    full = apgd(model, x, y, eps=EPS, steps=30, start=start, early_stop=False)
    assert 0 < shrinking.success.sum() < len(y)
    assert torch.equal(shrinking.success, full.success) and torch.equal(shrinking.first, full.first)
    assert torch.allclose(shrinking.x_adv[shrinking.success], full.x_adv[full.success])
    assert shrinking.passes < full.passes == 31 * len(y)


def test_candidates_stay_in_the_ball_and_the_box_and_break_what_they_claim():
    model, x, y = _batch()
    result = apgd(model, x, y, eps=EPS, steps=20, loss="dlr")
    assert (result.x_adv - x).abs().max() <= EPS + 1e-12 and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        assert torch.equal(model(result.x_adv).argmax(1) != y, result.success)


def test_as_strong_as_pyautoattacks_kernel_from_the_same_start():
    """Same model, budget and start (the kernel's seeded start, drawn the way it draws it): robustmed's loop
    breaks every sample the kernel breaks."""
    model, x, y = _batch(64, dtype=torch.float32)
    kernel = APGDAttack(model, n_restarts=1, n_iter=50, eps=EPS, norm="Linf", seed=0, device="cpu", verbose=False)
    reference = kernel.perturb(x, y)
    with torch.no_grad():
        theirs = model(reference).argmax(1) != y
    torch.manual_seed(0)
    t = 2 * torch.rand(x.shape) - 1
    start = EPS * t / t.abs().flatten(1).amax(1).view(-1, 1, 1, 1)
    ours = apgd(model, x, y, eps=EPS, steps=50, start=start).success
    assert theirs.sum() > 0 and bool((ours | ~theirs).all()), (ours.sum(), theirs.sum())


def test_a_sample_run_from_several_starts_at_once_leaves_with_its_first_broken_row():
    """``group``: rows of one sample retire together, so later rows spend nothing once a start has broken it."""
    model, x, y = _batch(24)
    starts = torch.cat([torch.zeros_like(x), (torch.rand(x.shape, generator=torch.Generator().manual_seed(2),
                                                         dtype=x.dtype) * 2 - 1) * EPS])
    group = torch.arange(len(y)).repeat(2)
    together = apgd(model, x.repeat(2, 1, 1, 1), y.repeat(2), eps=EPS, steps=30, start=starts, group=group)
    apart = apgd(model, x.repeat(2, 1, 1, 1), y.repeat(2), eps=EPS, steps=30, start=starts)
    broken = together.success.view(2, -1).any(0)
    assert torch.equal(broken, apart.success.view(2, -1).any(0)) and 0 < broken.sum() < len(y)
    both = apart.success.view(2, -1).all(0)
    steps = apart.first.view(2, -1)
    later = both & (steps[0] != steps[1])  # broken from both starts, one start sooner
    assert later.any() and not together.success.view(2, -1).all(0)[later].any()  # the slower row stopped
    assert together.passes <= apart.passes
