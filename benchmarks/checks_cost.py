"""Cost of the always-on checks relative to the PGD-100 attack on the default data (target: ≤ 10%).

Run: ``python benchmarks/checks_cost.py [--n N]``. Prints one JSON object with both timings and
their ratio; the checks are the pre-flight (A1–A10) plus the row checks run after every attack.
"""
from __future__ import annotations

import argparse
import json
import time

from robustmed.allocator import tune_malloc
from robustmed.checks import post_run, run_preflight
from robustmed.errors import exit_status
from robustmed.harness import attack_rows
from robustmed.run.bench import BenchConfig, validate
from robustmed.run.target import prepare


def measure(n: int | None) -> dict:
    cfg = BenchConfig(defense="none", attack="pgd100", n=n, progress=False)
    validate(cfg)
    ctx, _ = prepare(cfg)
    started = time.perf_counter()
    preflight = run_preflight(ctx)
    preflight_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = attack_rows(ctx.model, ctx.x, ctx.y, ctx.ids, ctx.specs, ctx.eps, seed=cfg.seed,
                       batch_size=cfg.batch_size, device=ctx.device, randomized=ctx.randomized)
    attack_s = time.perf_counter() - started
    started = time.perf_counter()
    findings = post_run(ctx, rows, preflight, "cheap")
    rows_s = time.perf_counter() - started
    checks_s = preflight_s + rows_s
    return {"n": len(ctx.x), "attack": "pgd100", "attack_s": round(attack_s, 2), "preflight_s": round(preflight_s, 3),
            "row_checks_s": round(rows_s, 3), "checks": len(findings), "ratio": round(checks_s / attack_s, 4)}


def main() -> None:
    tune_malloc()  # as the robustmed command runs
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="seeded subset (default: the whole test split)")
    print(json.dumps(measure(parser.parse_args().n)))


if __name__ == "__main__":
    raise SystemExit(exit_status("checks_cost", main))
