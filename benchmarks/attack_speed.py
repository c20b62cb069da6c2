"""Attack speed: robustmed vs torchattacks vs Foolbox vs pyautoattack on one model and one batch.

Same seeded CNN, same PneumoniaMNIST test images, same ε, steps and step size; prints seconds
and ratios to robustmed. Run: ``python benchmarks/attack_speed.py --n 256 --steps 20``.
Timings belong here, never in unit tests.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch
from torch import nn

from robustmed import data as data_mod
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import run_pgd


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, 1, 1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 7 * 7, 2)).eval()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - started) / repeats


def candidates(model, x, y, eps: float, steps: int):
    alpha = 2.5 * eps / steps
    start = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(0))
    spec = parse_attack(f"pgd{steps}:alpha={alpha}")
    last = parse_attack(f"pgd{steps}:alpha={alpha},keep_best=0,early_stop=0")
    out = {
        "robustmed pgd (best iterate, early exit)": lambda: run_pgd(model, x, y, spec=spec, eps=eps, start=start),
        "robustmed pgd (last iterate, no exit)": lambda: run_pgd(model, x, y, spec=last, eps=eps, start=start),
    }
    import torchattacks

    out["torchattacks PGD"] = lambda: torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps)(x, y)
    try:
        import foolbox as fb

        fmodel = fb.PyTorchModel(model, bounds=(0, 1))
        attack = fb.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
        out["foolbox LinfPGD"] = lambda: attack(fmodel, x, y, epsilons=eps)
    except ImportError as exc:  # foolbox needs eagerpy; report rather than fail
        print(f"foolbox unavailable: {exc}")
    from pyautoattack.autopgd_base import APGDAttack

    apgd = APGDAttack(model, n_restarts=1, n_iter=steps, eps=eps, norm="Linf", seed=0, device=x.device,
                      logger=logging.getLogger("auto-attack"))
    out["pyautoattack APGD-CE"] = lambda: apgd.perturb(x, y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=4 / 255)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = data_mod.load("pneumoniamnist").split("test")
    x, y = x[:args.n], y[:args.n]
    model = small_cnn()
    results = {name: timed(fn, args.repeats) for name, fn in candidates(model, x, y, args.eps, args.steps).items()}
    reference = results["robustmed pgd (last iterate, no exit)"]
    print(f"n={args.n} steps={args.steps} eps={args.eps:.4g} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    for name, seconds in results.items():
        print(f"{name:42s} {seconds:8.3f} s   ×{seconds / reference:5.2f} vs robustmed last-iterate")


if __name__ == "__main__":
    main()
