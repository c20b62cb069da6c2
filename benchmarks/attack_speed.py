"""Attack speed on the shipped default model and PneumoniaMNIST test data, as ratios.

One run measures: PGD's per-step cost against one forward+backward over the samples still
attacked; robustmed PGD-100 against torchattacks PGD-100 (ε = 4/255 and 8/255: time and robust
accuracy); the iteration sweep {10, 20, 50, 100} against one PGD-100; a 6-value ε sweep against one
ε; EOT-20's per-step cost on a tiny randomized model; robustmed's AA cascade against pyautoattack's
on the 10-class conformance model. Run: ``python benchmarks/attack_speed.py --n 64``.
Timings belong here, never in unit tests.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import robustmed
from robustmed import data as data_mod
from robustmed.attacks import parse_attack
from robustmed.attacks.autoattack import run_autoattack
from robustmed.attacks.pgd import run_pgd
from robustmed.harness import attack_rows
from robustmed.randomness import InputNoise

EPS_SWEEP = (1 / 255, 2 / 255, 3 / 255, 4 / 255, 6 / 255, 8 / 255)


def clock(fn):
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def forward_backward_seconds(model, x, y, repeats: int = 3) -> float:
    """Seconds of one forward+backward over ``x`` (best of ``repeats``, after a warm-up)."""
    def once():
        x_grad = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(x_grad), y, reduction="sum"), x_grad)
    once()
    return min(clock(once)[0] for _ in range(repeats))


def per_step_cost(model, x, y, eps: float) -> dict:
    """PGD-100 wall time over (sample-level forward+backward passes spent × one pass's cost per sample)."""
    per_sample = forward_backward_seconds(model, x, y) / len(x)
    seconds, result = clock(lambda: run_pgd(model, x, y, spec=parse_attack("pgd100"), eps=eps, seed=0))
    return {"ratio": seconds / (result.forward_backward * per_sample), "seconds": seconds,
            "passes": result.forward_backward}


def versus_torchattacks(model, x, y, eps: float) -> dict:
    import torchattacks

    with torch.no_grad():
        correct = model(x).argmax(1) == y
    ours_s, ours = clock(lambda: run_pgd(model, x, y, spec=parse_attack("pgd100"), eps=eps, seed=0))
    ta = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / 100, steps=100, random_start=True)
    ta_s, x_adv = clock(lambda: ta(x, y))
    with torch.no_grad():
        ta_robust = (correct & (model(x_adv).argmax(1) == y)).float().mean().item()
    return {"ratio": ours_s / ta_s, "robustmed_s": ours_s, "torchattacks_s": ta_s,
            "robustmed_robust": (correct & ~ours.success).float().mean().item(), "torchattacks_robust": ta_robust}


def harness_seconds(model, x, y, attacks, eps_list) -> tuple[float, object]:
    ids = np.arange(len(y))
    return clock(lambda: attack_rows(model, x, y, ids, [parse_attack(a) for a in attacks], eps_list, seed=0))


def iteration_sweep(model, x, y, eps: float) -> dict:
    """One PGD-100 with snapshots at 10/20/50 vs the plain PGD-100, same start (identical trajectories)."""
    start = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
    one_s, single = clock(lambda: run_pgd(model, x, y, spec=parse_attack("pgd100"), eps=eps, start=start))
    sweep_s, swept = clock(lambda: run_pgd(model, x, y, spec=parse_attack("pgd100:sweep=10+20+50"), eps=eps,
                                           start=start))
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    robust = {f"pgd{k}": (correct & ~r.success).float().mean().item() for k, r in swept.snapshots.items()}
    return {"ratio": sweep_s / one_s, "sweep_s": sweep_s, "one_s": one_s, "robust": robust,
            "pgd100_robust": (correct & ~single.success).float().mean().item()}


def eps_sweep(model, x, y, attack: str = "pgd20") -> dict:
    sweep_s, sweep = harness_seconds(model, x, y, [attack], list(EPS_SWEEP))
    indep_s, indep = harness_seconds(model, x, y, [f"{attack}:eps_mode=independent"], list(EPS_SWEEP))
    one_s, _ = harness_seconds(model, x, y, [attack], [4 / 255])
    return {"ratio_one": sweep_s / one_s, "ratio_independent": sweep_s / indep_s, "sweep_s": sweep_s,
            "independent_s": indep_s, "one_s": one_s, "sweep_robust": sweep.groupby("eps").robust.mean().tolist(),
            "independent_robust": indep.groupby("eps").robust.mean().tolist()}


def tiny_cnn(classes: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, classes))


def eot_cost(x, y, eps: float, steps: int = 10) -> dict:
    """EOT-20 PGD step cost over 20 forward+backward passes of the same (tiny randomized) model."""
    model = nn.Sequential(InputNoise((1, 28, 28)), tiny_cnn()).eval()
    per_pass = forward_backward_seconds(model, x, y)
    spec = parse_attack(f"pgd{steps}:eot=20,early_stop=0")
    seconds, result = clock(lambda: run_pgd(model, x, y, spec=spec, eps=eps, seed=0))
    return {"ratio": seconds / (steps * 20 * per_pass), "seconds": seconds, "passes": result.forward_backward}


def versus_pyautoattack(n: int, eps: float = 0.03, seed: int = 123) -> dict:
    """robustmed's AA cascade vs pyautoattack.AutoAttack(version='standard') on the conformance model."""
    from pyautoattack import AutoAttack

    model = tiny_cnn(classes=10)
    with torch.no_grad():
        model[-1].weight.mul_(20)
        model[-1].bias.zero_()
    model.eval()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    ours_s, ours = clock(lambda: run_autoattack(model, x, y, spec=parse_attack("aa"), eps=eps, seed=seed))
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    reference = AutoAttack(model, eps=eps, seed=seed, version="standard")
    ref_s, (_, y_adv) = clock(lambda: reference.run_standard_evaluation(x, y, batch_size=250))
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
    sw = eps_sweep(model, x, y)
    lines.append(("ε sweep (6 values, PGD-20) / one ε", sw["ratio_one"],
                  f"{sw['sweep_s']:.1f} s vs {sw['one_s']:.1f} s"))
    lines.append(("ε sweep (6 values) / 6 independent runs", sw["ratio_independent"],
                  f"{sw['sweep_s']:.1f} s vs {sw['independent_s']:.1f} s; robust sweep " +
                  "/".join(f"{100 * v:.1f}" for v in sw["sweep_robust"]) + "% vs independent " +
                  "/".join(f"{100 * v:.1f}" for v in sw["independent_robust"]) + "%"))
    return lines


def report(args) -> list[tuple[str, float, str]]:
    x_all, y_all = data_mod.load("pneumoniamnist").split("test")
    ids = np.sort(np.random.default_rng(0).permutation(len(x_all))[:args.n])
    x, y = x_all[ids], y_all[ids]
    model = robustmed.load_model("none").eval()
    lines = []
    if args.only == "sweeps":
        return sweep_lines(model, x, y)
    step = per_step_cost(model, x, y, 4 / 255)
    lines.append(("PGD-100 step / one fwd+bwd over still-attacked samples", step["ratio"],
                  f"{step['seconds']:.1f} s, {step['passes']} sample passes"))
    for eps in (4 / 255, 8 / 255):
        ta = versus_torchattacks(model, x, y, eps)
        lines.append((f"PGD-100 robustmed / torchattacks, ε={255 * eps:.0f}/255", ta["ratio"],
                      f"{ta['robustmed_s']:.1f} s vs {ta['torchattacks_s']:.1f} s; robust "
                      f"{100 * ta['robustmed_robust']:.1f}% vs {100 * ta['torchattacks_robust']:.1f}%"))
    lines += sweep_lines(model, x, y)
    eot = eot_cost(x, y, 4 / 255)
    lines.append(("EOT-20 step / 20 fwd+bwd (tiny randomized model)", eot["ratio"], f"{eot['seconds']:.1f} s"))
    aa = versus_pyautoattack(args.aa_n)
    lines.append(("AA robustmed / pyautoattack (10-class conformance model)", aa["ratio"],
                  f"{aa['robustmed_s']:.1f} s vs {aa['pyautoattack_s']:.1f} s; robust "
                  f"{100 * aa['robustmed_robust']:.1f}% vs {100 * aa['pyautoattack_robust']:.1f}%; "
                  f"same flags: {aa['same_flags']}"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="PneumoniaMNIST test samples (seeded subset)")
    parser.add_argument("--aa-n", type=int, default=32, help="samples of the 10-class conformance model")
    parser.add_argument("--only", choices=("all", "sweeps"), default="all", help="sweeps: the two sweeps only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = report(args)
    print(f"n={args.n} (aa: {args.aa_n}) threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'measurement':58s} {'ratio':>7s}  details")
    for name, ratio, details in lines:
        print(f"{name:58s} {ratio:7.3f}  {details}")


if __name__ == "__main__":
    main()
