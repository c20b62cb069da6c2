"""Strength against cost for every attack family, on the shipped default model and the 10-class conformance model.

For each attack: robust accuracy, how many samples it leaves robust that some attack in the run broke (the
per-sample best known result, AttackBench's reference), its time and its model passes per sample. References
run beside robustmed's attacks on the same samples: pyautoattack's APGD-CE with 5 restarts on the default
model, and pyautoattack's standard AutoAttack on the conformance model. The issue's targets are printed as
ratios measured in this one run: ``aa`` at most 2× PGD-100's time and at least as strong, sample for sample,
as ``aa:canonical`` and APGD-CE ×5; on the conformance model at least as strong as pyautoattack's AA in at
most 0.25× its time. On a shipped randomized defense, ``aa-rand`` (early exit) runs beside ``aa-rand:canonical``
(pyautoattack's kernels), compared in expected accuracy over fresh draws.

Run: ``OMP_NUM_THREADS=1 python benchmarks/attack_strength.py --clock cpu``. Timings belong here, never in tests.
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

import robustmed
from robustmed import data as data_mod
from robustmed.attacks import parse_attack
from robustmed.errors import exit_status
from robustmed.harness import attack_rows
from robustmed.passes import PassCounter
from robustmed.run.config import split_attacks

# aa-rand is left out here: its EOT-20 default is for randomized models (``--only randomized`` measures it on one).
DEFAULT_ATTACKS = ("pgd100", "bim100", "mim100", "square1000", "aa", "aa:canonical", "null")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def robustmed_case(model, x, y, attack: str, eps: float, clock) -> dict:
    """One robustmed attack through the harness (seeded starts, judgement): its flags, time and passes."""
    started = clock()
    rows = attack_rows(model, x, y, np.arange(len(y)), [parse_attack(attack)], [eps], seed=0, batch_size=256,
                       device="cpu", progress=False).sort_values("sample_id")
    seconds = clock() - started
    attacked = rows.clean_correct.to_numpy(bool)
    return {"robust": torch.tensor(rows.robust.to_numpy(bool)), "seconds": seconds,
            "forward": float(rows.forward_passes[attacked].mean()), "backward": float(rows.backward_passes[attacked].mean())}


def reference_case(model, x, y, run, clock) -> dict:
    """A reference library's attack on the samples the model gets right: ``run(forward, x, y)`` → examples."""
    counter = PassCounter()
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    started = clock()
    x_adv = run(counter.wrap(model), x[correct], y[correct])
    seconds = clock() - started
    robust = torch.zeros(len(y), dtype=torch.bool)
    with torch.no_grad():
        robust[correct] = model(x_adv).argmax(1) == y[correct]
    attacked = max(1, int(correct.sum()))
    return {"robust": robust, "seconds": seconds, "forward": counter.forward / attacked,
            "backward": counter.backward / attacked}


def apgd_ce_restarts(eps: float, restarts: int = 5):
    from pyautoattack.autopgd_base import APGDAttack

    def run(forward, x, y):
        return APGDAttack(forward, n_restarts=restarts, n_iter=100, eps=eps, norm="Linf", seed=0, device="cpu",
                          rho=.75, verbose=False).perturb(x, y)
    return run


def pyautoattack_standard(eps: float):
    from pyautoattack import AutoAttack

    def run(forward, x, y):
        x_adv, _ = AutoAttack(forward, eps=eps, seed=0, version="standard").run_standard_evaluation(x, y, batch_size=250)
        return x_adv
    return run


def table(cases: dict[str, dict]) -> list[str]:
    """Per attack: robust %, samples left robust that another attack broke, time, passes per attacked sample."""
    broken_by_some = torch.stack([~c["robust"] for c in cases.values()]).any(0)
    lines = [f"{'attack':24s} {'robust':>7s} {'gap':>4s} {'time s':>7s} {'fwd/sample':>10s} {'bwd/sample':>10s}"]
    for name, c in cases.items():
        gap = int((c["robust"] & broken_by_some).sum())
        lines.append(f"{name:24s} {100 * c['robust'].float().mean():6.2f}% {gap:4d} {c['seconds']:7.1f} "
                     f"{c['forward']:10.1f} {c['backward']:10.1f}")
    return lines


def at_least_as_strong(ours: dict, reference: dict) -> str:
    missed = int((ours["robust"] & ~reference["robust"]).sum())
    return "yes" if missed == 0 else f"no: {missed} sample(s) the reference breaks stay robust"


def seeded_subset(defense: str, n: int) -> tuple[torch.Tensor, torch.Tensor, nn.Module]:
    """The seeded n-image PneumoniaMNIST test subset every case here runs on, and the shipped model of ``defense``."""
    x_all, y_all = data_mod.load("pneumoniamnist").split("test")
    ids = np.sort(np.random.default_rng(0).permutation(len(x_all))[:n])
    return x_all[ids], y_all[ids], robustmed.load_model(defense).eval()


def retime(cases: dict[str, dict], again: Callable[[str], dict], repeats: int) -> None:
    """Time the target's pair (PGD-100, ``aa``) ``repeats`` times in all, alternating, and keep each one's fastest:
    on a shared machine one run of the same attack has taken from 25 to 36 CPU seconds. The flags must not move."""
    for _ in range(repeats - 1):
        for name in ("pgd100", "aa"):
            rerun = again(name)
            assert torch.equal(rerun["robust"], cases[name]["robust"]), f"{name}: flags changed between repeats"
            cases[name]["seconds"] = min(cases[name]["seconds"], rerun["seconds"])


def default_model_report(n: int, eps: float, clock, attacks: tuple[str, ...] = DEFAULT_ATTACKS,
                         repeats: int = 1) -> list[str]:
    x, y, model = seeded_subset("none", n)
    cases = {a: robustmed_case(model, x, y, a, eps, clock) for a in dict.fromkeys(("pgd100", "aa", *attacks))}
    retime(cases, lambda a: robustmed_case(model, x, y, a, eps, clock), repeats)
    cases["pyautoattack APGD-CE x5"] = reference_case(model, x, y, apgd_ce_restarts(eps), clock)
    aa, pgd = cases["aa"], cases["pgd100"]
    fastest = f", each the fastest of {repeats}" if repeats > 1 else ""
    return [f"default model (none), PneumoniaMNIST test, n = {n} seeded, ε = {255 * eps:.3g}/255", *table(cases),
            f"target: aa time / pgd100 time = {aa['seconds'] / pgd['seconds']:.2f} (≤ 2{fastest})",
            *([f"target: aa at least as strong as aa:canonical: {at_least_as_strong(aa, cases['aa:canonical'])}"]
              if "aa:canonical" in cases else []),
            f"target: aa at least as strong as APGD-CE x5: {at_least_as_strong(aa, cases['pyautoattack APGD-CE x5'])}"]


RANDOMIZED_ATTACKS = ("aa-rand", "aa-rand:canonical", "null")


def randomized_case(model, x, y, attack: str, eps: float, clock) -> dict:
    """One attack on a randomized model: per-sample expected correctness over the judgement's fresh draws (folded
    with the clean image's, which an attacker can always present), its time and passes."""
    started = clock()
    rows = attack_rows(model, x, y, np.arange(len(y)), [parse_attack(attack)], [eps], seed=0, batch_size=256,
                       device="cpu", progress=False, randomized=True).sort_values("sample_id")
    seconds = clock() - started
    rows = rows[rows.attack == attack]
    expected = np.minimum(rows.clean_correct_draws, rows.correct_draws).to_numpy() / rows.draws.to_numpy()
    attacked = rows.clean_correct_draws.to_numpy() > 0
    return {"expected": expected, "seconds": seconds, "forward": float(rows.forward_passes[attacked].mean()),
            "backward": float(rows.backward_passes[attacked].mean())}


def randomized_report(defense: str, n: int, eps: float, clock) -> list[str]:
    """``aa-rand`` (early exit) against ``aa-rand:canonical`` and the null attack on a shipped randomized defense:
    expected robust accuracy, its excess over the per-sample best of the run (in points), time and passes."""
    x, y, model = seeded_subset(defense, n)
    cases = {a: randomized_case(model, x, y, a, eps, clock) for a in RANDOMIZED_ATTACKS}
    best = np.min([c["expected"] for c in cases.values()], axis=0)
    lines = [f"randomized defense {defense}, PneumoniaMNIST test, n = {n} seeded, ε = {255 * eps:.3g}/255, "
             "expected accuracy over 10 fresh draws per candidate",
             f"{'attack':24s} {'expected':>8s} {'excess':>6s} {'time s':>7s} {'fwd/sample':>10s} {'bwd/sample':>10s}"]
    for name, c in cases.items():
        lines.append(f"{name:24s} {100 * c['expected'].mean():7.2f}% {100 * (c['expected'] - best).mean():6.2f} "
                     f"{c['seconds']:7.1f} {c['forward']:10.1f} {c['backward']:10.1f}")
    fast, canonical = cases["aa-rand"], cases["aa-rand:canonical"]
    return [*lines, f"aa-rand time / aa-rand:canonical time = {fast['seconds'] / canonical['seconds']:.2f}, "
                    f"expected accuracy {100 * fast['expected'].mean():.2f}% against "
                    f"{100 * canonical['expected'].mean():.2f}%"]


def conformance_model(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))
    with torch.no_grad():
        model[-1].weight.mul_(20)
        model[-1].bias.zero_()
    return model.eval()


def conformance_report(n: int, eps: float, clock) -> list[str]:
    model = conformance_model()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    cases = {a: robustmed_case(model, x, y, a, eps, clock) for a in ("pgd100", "aa", "aa:canonical")}
    cases["pyautoattack AutoAttack"] = reference_case(model, x, y, pyautoattack_standard(eps), clock)
    aa, ref = cases["aa"], cases["pyautoattack AutoAttack"]
    return [f"10-class conformance model, n = {n}, ε = {eps}", *table(cases),
            f"target: aa time / pyautoattack AutoAttack time = {aa['seconds'] / ref['seconds']:.2f} (≤ 0.25)",
            f"target: aa at least as strong as pyautoattack AutoAttack: {at_least_as_strong(aa, ref)}"]


def square_copies_report(n: int, clock) -> list[str]:
    """The fast cascade's Square stage split into copies (attacks/aa_fast.py), alone on the default model: a
    sample's copies share its 250 queries, so they finish sooner on few rows; what that costs in strength."""
    from robustmed.attacks.square import best_candidates, square_kernel
    from robustmed.attacks.eot import margin_loss

    x, y, model = seeded_subset("none", n)
    lines = [f"Square-250 as copies, default model, PneumoniaMNIST test, n = {n} seeded"]
    for eps in (4 / 255, 8 / 255):
        for copies in (1, 2, 4):
            kernel = square_kernel(model, eps, queries=-(-250 // copies), seed=0, q=1, device="cpu")
            started = clock()
            with torch.random.fork_rng():
                found = best_candidates(kernel, x.repeat(copies, 1, 1, 1), y.repeat(copies))
            seconds = clock() - started
            with torch.no_grad():
                broken = int((margin_loss(model(found), y.repeat(copies)).view(copies, -1).amax(0) > 0).sum())
            lines.append(f"  ε = {255 * eps:.0f}/255, {copies} × {-(-250 // copies)} queries: broken {broken}/{n}, "
                         f"{seconds:.1f} s")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=128, help="PneumoniaMNIST test samples (seeded subset)")
    parser.add_argument("--conformance-n", type=int, default=64, help="samples of the 10-class conformance model")
    parser.add_argument("--only", choices=("all", "default", "conformance", "randomized", "square-copies"), default="all")
    parser.add_argument("--randomized", default="rpan", help="the shipped randomized defense aa-rand is measured on")
    parser.add_argument("--randomized-n", type=int, default=32, help="its PneumoniaMNIST test samples (seeded)")
    parser.add_argument("--attacks", default=",".join(DEFAULT_ATTACKS),
                        help="robustmed attacks on the default model (pgd100 and aa always run: the targets need them)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time PGD-100 and aa this many times each, alternating, and keep the fastest")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="cpu: process CPU time (steadier on a shared machine); wall: elapsed time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = CLOCKS[args.clock]
    lines = []
    if args.only in ("all", "default"):
        lines += default_model_report(args.n, 4 / 255, clock, tuple(split_attacks(args.attacks)), args.repeats)
    if args.only in ("all", "conformance"):
        lines += conformance_report(args.conformance_n, 0.03, clock)
    if args.only in ("all", "randomized"):
        lines += randomized_report(args.randomized, args.randomized_n, 4 / 255, clock)
    if args.only == "square-copies":
        lines += square_copies_report(64, clock)
    print(f"torch={torch.__version__} threads={torch.get_num_threads()} clock={args.clock}")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(exit_status("attack_strength", main))
