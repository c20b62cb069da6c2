"""Attack speed on the shipped default model and PneumoniaMNIST test data, as ratios.

One run measures: PGD's per-step cost against one forward+backward over the samples still
attacked; robustmed PGD-100 against torchattacks' and Foolbox's PGD-100 (ε = 4/255 and 8/255, the
same random start: time and robust accuracy); the iteration sweep {10, 20, 50, 100} against one
PGD-100; a 6-value ε sweep (two grids) against its costliest single ε and against 6 independent
runs; EOT-20's per-step cost on a tiny randomized model and on the shipped PNI model; robustmed's AA
cascade against pyautoattack's on the 10-class conformance model.

Every timed case runs once untimed (warm-up: kernel set-up, caches), then ``--repeats`` times with
the compared sides interleaved, and keeps each side's fastest run; an early-exit attack's floor (one
forward+backward per step over the samples still attacked, in the attack's order: :func:`replay`) is
timed in those same rounds. ``--clock cpu`` times process CPU time instead of wall time: steadier when
other jobs share the cores (run with one thread).
Run: ``OMP_NUM_THREADS=1 python benchmarks/attack_speed.py``. Timings belong here, never in unit tests.
"""
from __future__ import annotations

import argparse
import logging
import os
import time

# The floors run each of a run's ~90 exact batch sizes (:func:`replay`, :class:`StepPasses`), about
# 18,000 oneDNN primitives: in the cache robustmed asks for (16,384) they would evict the attack's own
# kernels between rounds, and the attack's next run would pay their set-up again, which no user's run
# does. Set before the first convolution (robustmed's own default is a setdefault too); a value you set
# wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "65536")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import robustmed
from robustmed import data as data_mod
from robustmed.allocator import malloc_state, tune_malloc
from robustmed.attacks import parse_attack
from robustmed.attacks.autoattack import run_autoattack
from robustmed.attacks.pgd import padded_size, padding_bits, run_pgd
from robustmed.errors import exit_status
from robustmed.harness import attack_rows
from robustmed.randomness import InputNoise

# The seed paper's Fig. 6 grid (benchmarks/fig6_eps.toml), and a finer one around the default ε.
EPS_GRIDS = {"Fig. 6 grid 0.01–0.1": (0.01, 0.02, 0.04, 0.06, 0.08, 0.1),
             "grid 1–8/255": (1 / 255, 2 / 255, 3 / 255, 4 / 255, 6 / 255, 8 / 255)}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
REPEATS = 3
NOW = CLOCKS["wall"]


def clock(fn):
    started = NOW()
    out = fn()
    return NOW() - started, out


def fastest(*fns, repeats: int | None = None, warmed: tuple[int, ...] = ()) -> list[tuple[float, object]]:
    """Each ``fn``'s fastest of ``repeats`` runs (and its output), after one untimed warm-up round;
    the functions alternate within every round, so slow spells of a shared machine hit all sides.
    ``warmed``: the indices of functions the caller has just run untimed (they skip the warm-up)."""
    repeats = REPEATS if repeats is None else repeats
    outputs = [None if i in warmed else fn() for i, fn in enumerate(fns)]
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            seconds, outputs[i] = clock(fn)
            best[i] = min(best[i], seconds)
    return list(zip(best, outputs))


def forward_backward(model, x, y) -> None:
    """One forward+backward to the input, as a plain attack step does it: the unit every floor counts."""
    x_grad = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x_grad), y, reduction="sum"), x_grad)


def replay(model, x, y, sizes: list[int]):
    """The floor of an early-exit attack: one forward+backward per gradient step over the samples still
    attacked, in the order the attack runs them, and nothing else.

    Each pass follows a pass at another size, as in any run that shrinks its batch: the memory a
    smaller pass gave back is mapped again by the next larger one, on the floor as on the attack.
    """
    def run() -> None:
        for n in sizes:
            forward_backward(model, x[:n], y[:n])
    return run


class StepPasses:
    """A lower bound under :func:`replay`: the same passes, each batch size timed on its own right after
    an untimed pass of that very size, which no run that changes its batch size every few steps gets.

    Calling it times every size once and keeps each size's fastest; pass it to :func:`fastest` beside
    the attack, so both are timed in the same rounds and a machine's drift between cases hits both.
    """

    def __init__(self, model, x, y, sizes: list[int]):
        self.model, self.x, self.y, self.sizes = model, x, y, sizes
        self.best = dict.fromkeys(sizes, float("inf"))

    def _pass(self, n: int) -> None:
        forward_backward(self.model, self.x[:n], self.y[:n])

    def __call__(self) -> None:
        for n in self.best:
            self._pass(n)
            seconds, _ = clock(lambda: self._pass(n))
            self.best[n] = min(self.best[n], seconds)

    @property
    def seconds(self) -> float:
        return sum(self.best[n] for n in self.sizes)


def active_per_step(first_success: torch.Tensor, steps: int) -> list[int]:
    """Samples in the batch at each gradient step: those not broken at an earlier step (early exit)."""
    first = first_success.tolist()
    counts = [sum(1 for f in first if f < 0 or f >= t) for t in range(steps)]
    return [c for c in counts if c]


def per_step_cost(model, x, y, eps: float) -> dict:
    """PGD-100's time over its :func:`replay` floor, and the two parts of the excess: the same passes at
    the padded batch sizes the attack runs (:func:`padded_size`) over the exact ones is the padding;
    the attack over its padded passes is the rest (bookkeeping, the final iterate's forward pass).
    ``isolated``: the attack over :class:`StepPasses`, each size warm on its own."""
    spec = parse_attack("pgd100")

    def attack():
        return run_pgd(model, x, y, spec=spec, eps=eps, seed=0)
    sizes = active_per_step(attack().first_success, 100)
    padded_sizes = [padded_size(m, len(x), padding_bits(spec)) for m in sizes]
    isolated = StepPasses(model, x, y, sizes)
    (seconds, result), (exact, _), (padded, _), _ = fastest(
        attack, replay(model, x, y, sizes), replay(model, x, y, padded_sizes), isolated, warmed=(0,))
    return {"ratio": seconds / exact, "seconds": seconds, "reference": exact, "padding": padded / exact,
            "rest": seconds / padded, "isolated": seconds / isolated.seconds, "steps": len(sizes),
            "passes": result.forward_backward, "padded_rows": sum(padded_sizes)}


def foolbox_pgd(model, eps: float, steps: int, start: torch.Tensor):
    """Foolbox's LinfPGD with robustmed's step size, handed the given random start (Foolbox draws its own
    otherwise): from the same start it returns torchattacks' last iterate exactly.

    Foolbox's step backpropagates into every parameter that requires a gradient (``loss.backward()``);
    on the shipped model that took 1.9× an input-only forward+backward. The parameters are frozen while
    it runs, Foolbox's best case (its result is the same)."""
    import eagerpy as ep
    import foolbox

    class FromStart(foolbox.attacks.LinfPGD):
        def get_random_start(self, x0, epsilon):
            return x0 + ep.astensor(start)

    attack, fmodel = FromStart(abs_stepsize=2.5 * eps / steps, steps=steps), foolbox.PyTorchModel(model, bounds=(0, 1))

    def run(x, y):
        trainable = [p for p in model.parameters() if p.requires_grad]
        for p in trainable:
            p.requires_grad_(False)
        try:
            return attack(fmodel, x, y, epsilons=eps)[1]
        finally:
            for p in trainable:
                p.requires_grad_(True)
    return run


def versus_references(model, x, y, eps: float, seed: int = 0) -> dict:
    """robustmed PGD-100 against torchattacks' and Foolbox's, all three from torchattacks' own random start
    (drawn after ``torch.manual_seed(seed)``, and handed to Foolbox): the trajectories agree until a sample
    breaks, so robustmed's best-iterate, early-exit result is never more robust than their last iterates.
    Per reference: its time ``s``, robustmed's time over it (``ratio``) and the floor's, its robust accuracy, and
    ``per_step``: its time over 100 forward+backward passes of the whole batch (what it runs)."""
    import torchattacks

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    torch.manual_seed(seed)
    start = torch.empty_like(x).uniform_(-eps, eps)  # what torchattacks draws after the same seed
    ta = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 100, steps=100, random_start=True)
    fb = foolbox_pgd(model, eps, 100, start)

    def torchattacks_pgd():
        torch.manual_seed(seed)
        return ta(x, y)
    def ours():
        return run_pgd(model, x, y, spec=parse_attack("pgd100"), eps=eps, start=start)
    floor = replay(model, x, y, active_per_step(ours().first_success, 100))
    (ours_s, result), (ta_s, ta_adv), (fb_s, fb_adv), (floor_s, _), (pass_s, _) = fastest(
        ours, torchattacks_pgd, lambda: fb(x, y), floor, lambda: forward_backward(model, x, y), warmed=(0,))

    def reference(seconds, x_adv):
        with torch.no_grad():
            robust = (correct & (model(x_adv).argmax(1) == y)).float().mean().item()
        return {"s": seconds, "ratio": ours_s / seconds, "floor": floor_s / seconds, "robust": robust,
                "per_step": seconds / (100 * pass_s)}
    return {"robustmed_s": ours_s, "robustmed_robust": (correct & ~result.success).float().mean().item(),
            "references": {"torchattacks": reference(ta_s, ta_adv), "Foolbox": reference(fb_s, fb_adv)}}


def harness_run(model, x, y, attack: str, eps_list):
    ids = np.arange(len(y))
    return lambda: attack_rows(model, x, y, ids, [parse_attack(attack)], list(eps_list), seed=0)


def iteration_sweep(model, x, y, eps: float) -> dict:
    """One PGD-100 with snapshots at 10/20/50 vs the plain PGD-100, same start (identical trajectories)."""
    start = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
    (one_s, single), (sweep_s, swept) = fastest(
        lambda: run_pgd(model, x, y, spec=parse_attack("pgd100"), eps=eps, start=start),
        lambda: run_pgd(model, x, y, spec=parse_attack("pgd100:sweep=10+20+50"), eps=eps, start=start))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    robust = {f"pgd{k}": (correct & ~r.success).float().mean().item() for k, r in swept.snapshots.items()}
    return {"ratio": sweep_s / one_s, "sweep_s": sweep_s, "one_s": one_s, "robust": robust,
            "pgd100_robust": (correct & ~single.success).float().mean().item()}


def sample_passes(rows, steps: int) -> int:
    """Forward+backward sample passes of a one-ε PGD run with early exit, read from its rows."""
    attacked = rows[rows.clean_correct]
    first = attacked.first_success_step.to_numpy()
    return int(np.where(first < 0, steps, np.minimum(first + 1, steps)).sum())


def eps_sweep(model, x, y, grid: tuple[float, ...], attack: str = "pgd20", steps: int = 20) -> dict:
    """A 6-value ε sweep against its costliest single ε and against 6 independent runs.

    "One ε" is the sweep's costliest member (found from the independent runs' rows, untimed): a sweep
    whose robust accuracy never exceeds the independent runs' attacks each sample still robust at an
    ε for all ``steps`` there, as the single run at that ε does, so it cannot cost less than its
    costliest member. ``floor``: the sample passes of those still-robust samples over all ε, over the
    costliest single ε's passes (early exit) — what no such sweep can go below.
    """
    independent = harness_run(model, x, y, f"{attack}:eps_mode=independent", grid)
    warm_by_eps = independent().groupby("eps")  # the untimed run: which single ε costs most
    costliest_eps = max(warm_by_eps.groups, key=lambda eps: sample_passes(warm_by_eps.get_group(eps), steps))
    (sweep_s, sweep), (indep_s, indep), (one_s, one) = fastest(
        harness_run(model, x, y, attack, grid), independent, harness_run(model, x, y, attack, [costliest_eps]),
        warmed=(1,))
    indep_by_eps = indep.groupby("eps")
    sweep_robust, indep_robust = sweep.groupby("eps").robust.mean(), indep_by_eps.robust.mean()
    floor = int(indep_by_eps.robust.sum().sum()) * steps
    one_passes = sample_passes(one, steps)
    return {"ratio_one": sweep_s / one_s, "ratio_independent": sweep_s / indep_s, "sweep_s": sweep_s,
            "independent_s": indep_s, "one_s": one_s, "one_eps": costliest_eps,
            "sweep_robust": sweep_robust.tolist(), "independent_robust": indep_robust.tolist(),
            "never_above": bool((sweep_robust <= indep_robust).all()),
            "floor": floor / one_passes, "floor_passes": floor, "one_passes": one_passes}


def tiny_cnn(classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))


def eot_cost(model, x, y, eps: float, steps: tuple[int, int] = (10, 50)) -> dict:
    """EOT-20 PGD's cost per step over 20 forward+backward passes of the same randomized model over
    the same samples, run back to back (on the tiny model the passes take milliseconds: timed as blocks).

    ``ratio`` is per step: the extra time of ``steps[1]`` over ``steps[0]`` steps against as many
    extra passes, so the one-off work (the final iterate's 20 scoring passes, the start) cancels;
    ``whole`` is the ``steps[0]``-step run against its ``steps[0]`` × 20 passes, one-off work included.
    """

    def attack(k):
        spec = parse_attack(f"pgd{k}:eot=20,early_stop=0")
        return lambda: run_pgd(model, x, y, spec=spec, eps=eps, seed=0)

    def passes(k):
        def run():
            for _ in range(k * 20):
                forward_backward(model, x, y)
        return run
    short, long = steps
    (short_s, result), (long_s, _), (short_ref, _), (long_ref, _) = fastest(
        attack(short), attack(long), passes(short), passes(long))
    return {"ratio": (long_s - short_s) / (long_ref - short_ref), "whole": short_s / short_ref, "seconds": short_s,
            "passes": result.forward_backward, "steps": steps}


def versus_pyautoattack(n: int, eps: float = 0.03, seed: int = 123) -> dict:
    """robustmed's standard cascade (aa:canonical: the same kernels) vs pyautoattack.AutoAttack(version='standard') on
    the conformance model: the cascade's own overhead. The fast aa is benchmarks/attack_strength.py's."""
    from pyautoattack import AutoAttack

    model = tiny_cnn(classes=10)
    with torch.no_grad():
        model[-1].weight.mul_(20)
        model[-1].bias.zero_()
    model.eval()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    (ours_s, ours), (ref_s, (_, y_adv)) = fastest(
        lambda: run_autoattack(model, x, y, spec=parse_attack("aa:canonical"), eps=eps, seed=seed),
        lambda: AutoAttack(model, eps=eps, seed=seed, version="standard").run_standard_evaluation(
            x, y, batch_size=250))
    return {"ratio": ours_s / ref_s, "robustmed_s": ours_s, "pyautoattack_s": ref_s,
            "robustmed_robust": (~ours.success).float().mean().item(),
            "pyautoattack_robust": (y_adv == y).float().mean().item(),
            "same_flags": bool(torch.equal(ours.success, y_adv != y))}


def sweep_lines(model, x, y) -> list[tuple[str, float, str]]:
    lines = []
    it = iteration_sweep(model, x, y, 4 / 255)
    lines.append(("iteration sweep {10,20,50,100} / one PGD-100 (same start)", it["ratio"],
                  f"{it['sweep_s']:.1f} s vs {it['one_s']:.1f} s; robust " +
                  ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(it["robust"].items(), key=lambda kv: int(
                      kv[0][3:]))) + f"; plain pgd100 {100 * it['pgd100_robust']:.1f}%"))
    for name, grid in EPS_GRIDS.items():
        sw = eps_sweep(model, x, y, grid)
        one = f"{255 * sw['one_eps']:.2f}/255"
        lines.append((f"ε sweep, {name} (PGD-20) / costliest single ε", sw["ratio_one"],
                      f"{sw['sweep_s']:.1f} s vs {sw['one_s']:.1f} s at ε = {one}; floor {sw['floor']:.2f} "
                      f"({sw['floor_passes']} sample passes on the still-robust samples vs {sw['one_passes']})"))
        lines.append((f"ε sweep, {name} / 6 independent runs", sw["ratio_independent"],
                      f"{sw['sweep_s']:.1f} s vs {sw['independent_s']:.1f} s; robust sweep " +
                      "/".join(f"{100 * v:.1f}" for v in sw["sweep_robust"]) + "% vs independent " +
                      "/".join(f"{100 * v:.1f}" for v in sw["independent_robust"]) +
                      f"% (never above: {sw['never_above']})"))
    return lines


def pgd_lines(model, x, y) -> list[tuple[str, float, str]]:
    step = per_step_cost(model, x, y, 4 / 255)
    lines = [("PGD-100 step / one fwd+bwd over still-attacked samples", step["ratio"],
              f"{step['seconds']:.1f} s vs {step['reference']:.1f} s over {step['steps']} steps, "
              f"{step['passes']} sample passes ({step['padded_rows']} rows after padding): padding "
              f"{step['padding']:.3f} × the rest {step['rest']:.3f}; over each size warm on its own "
              f"{step['isolated']:.3f}")]
    for eps in (4 / 255, 8 / 255):
        ours = versus_references(model, x, y, eps)
        for name, ref in ours["references"].items():
            lines.append((f"PGD-100 robustmed / {name}, ε={255 * eps:.0f}/255", ref["ratio"],
                          f"{ours['robustmed_s']:.1f} s vs {ref['s']:.1f} s; robust "
                          f"{100 * ours['robustmed_robust']:.1f}% vs {100 * ref['robust']:.1f}%; "
                          f"floor {ref['floor']:.3f} (one fwd+bwd per step over the samples still attacked); "
                          f"{name} per step: {ref['per_step']:.3f} × one fwd+bwd of the batch"))
    return lines


def eot_lines(x, y) -> list[tuple[str, float, str]]:
    """Two randomized models: a tiny one, whose millisecond passes expose the per-pass bookkeeping (the
    worst case), and the shipped PNI checkpoint, the kind of model EOT runs on in a suite (16 images)."""
    tiny = nn.Sequential(InputNoise((1, 28, 28)), tiny_cnn()).eval()
    cases = (("tiny randomized model", eot_cost(tiny, x, y, 4 / 255)),
             ("shipped pni, 16 images", eot_cost(robustmed.load_model("pni").eval(), x[:16], y[:16], 4 / 255,
                                                  steps=(2, 12))))
    return [(f"EOT-20 step / 20 fwd+bwd ({name})", eot["ratio"],
             f"extra time of {eot['steps'][1]} over {eot['steps'][0]} steps; the whole {eot['steps'][0]}-step "
             f"run, final iterate's scoring included: {eot['whole']:.3f} ({eot['seconds']:.1f} s)")
            for name, eot in cases]


def aa_lines(n: int) -> list[tuple[str, float, str]]:
    aa = versus_pyautoattack(n)
    return [("aa:canonical robustmed / pyautoattack (10-class conformance model)", aa["ratio"],
             f"{aa['robustmed_s']:.1f} s vs {aa['pyautoattack_s']:.1f} s; robust "
             f"{100 * aa['robustmed_robust']:.1f}% vs {100 * aa['pyautoattack_robust']:.1f}%; "
             f"same flags: {aa['same_flags']}")]


CASES = ("pgd", "sweeps", "eot", "aa")


def report(args) -> list[tuple[str, float, str]]:
    x_all, y_all = data_mod.load("pneumoniamnist").split("test")
    ids = np.sort(np.random.default_rng(0).permutation(len(x_all))[:args.n])
    x, y = x_all[ids], y_all[ids]
    model = robustmed.load_model("none").eval()
    cases = CASES if args.only == "all" else (args.only,)
    builders = {"pgd": lambda: pgd_lines(model, x, y), "sweeps": lambda: sweep_lines(model, x, y),
                "eot": lambda: eot_lines(x, y), "aa": lambda: aa_lines(args.aa_n)}
    return [line for case in cases for line in builders[case]()]


def main() -> None:
    global NOW, REPEATS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256,
                        help="PneumoniaMNIST test samples (seeded subset), attacked as one batch; 256 is one batch "
                             "at robustmed bench's default --batch-size")
    parser.add_argument("--aa-n", type=int, default=32, help="samples of the 10-class conformance model")
    parser.add_argument("--only", choices=("all",) + CASES, default="all", help="one case alone (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed runs per side (fastest kept)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="cpu: process CPU time, steadier on a shared machine")
    parser.add_argument("--malloc", choices=("tuned", "default"), default="tuned",
                        help="tuned: the allocator thresholds the robustmed command sets (robustmed.allocator); "
                             "default: glibc's own")
    args = parser.parse_args()
    NOW, REPEATS = CLOCKS[args.clock], args.repeats
    malloc = tune_malloc() if args.malloc == "tuned" else malloc_state()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = report(args)
    load = max(load, os.getloadavg()[0]) if hasattr(os, "getloadavg") else load
    print(f"n={args.n} (aa: {args.aa_n}) threads={torch.get_num_threads()} torch={torch.__version__} "
          f"clock={args.clock} repeats={args.repeats} malloc={malloc['malloc']} cpus={os.cpu_count()} "
          f"load average≤{load:.1f} (1 min, sampled at start and end)")
    print(f"{'measurement':58s} {'ratio':>7s}  details")
    for name, ratio, details in lines:
        print(f"{name:58s} {ratio:7.3f}  {details}")


if __name__ == "__main__":
    raise SystemExit(exit_status("attack_speed", main))
