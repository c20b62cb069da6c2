"""Ray executor scaling (1 vs 2 workers; target ≥ 1.7×) and overhead vs the local executor on one worker (≤ 10%).

Run: ``python benchmarks/ray_scaling.py [--n 256] [--attack pgd20] [--batch-size 32]`` (needs
``pip install 'robustmed[ray]'`` and two free cores). The same run is computed three times into
fresh folders: local executor (one torch thread), a 1-CPU Ray cluster, a 2-CPU Ray cluster; Ray's
start-up is timed apart. Prints one JSON object: the units phase (what executors do) and the
whole run (plus the serial pre-flight, post-run checks and assembly) for each, their ratios, and
the machine's load average, since the cores may be shared.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from robustmed.executors import get_executor
from robustmed.runner import BenchConfig, _finish, _start


def timed_run(cfg: BenchConfig) -> dict:
    """(units phase, whole run) seconds of one fresh run."""
    started = time.perf_counter()
    run = _start(cfg)
    units_started = time.perf_counter()
    get_executor(cfg.executor).run(run.units, progress=False)
    units_s = time.perf_counter() - units_started
    _finish(run)
    return {"units_s": round(units_s, 2), "total_s": round(time.perf_counter() - started, 2), "units": len(run.units)}


def on_ray(cfg: BenchConfig, workers: int) -> dict:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        return {**timed_run(cfg), "ray_init_s": round(init_s, 2)}
    finally:
        ray.shutdown()


def measure(n: int, attack: str, batch_size: int) -> dict:
    torch.set_num_threads(1)  # the local executor gets one worker's worth of CPU, as each Ray task does
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        def config(name: str, executor: str) -> BenchConfig:
            return BenchConfig(attack=attack, n=n, batch_size=batch_size, device="cpu", progress=False,
                               out=os.path.join(scratch, name), executor=executor)

        local = timed_run(config("local", "local"))
        one = on_ray(config("ray1", "ray"), 1)
        two = on_ray(config("ray2", "ray"), 2)
    samples = n * len(BenchConfig(attack=attack).specs())
    return {
        "n": n, "attack": attack, "batch_size": batch_size, "units": local["units"],
        "local": local, "ray_1_worker": one, "ray_2_workers": two,
        "throughput_samples_per_s": {k: round(samples / r["units_s"], 2)
                                     for k, r in (("local", local), ("ray_1", one), ("ray_2", two))},
        "speedup_2_vs_1_units": round(one["units_s"] / two["units_s"], 3),
        "speedup_2_vs_1_total": round(one["total_s"] / two["total_s"], 3),
        "ray_overhead_1_worker_units": round(one["units_s"] / local["units_s"] - 1, 4),
        "ray_overhead_1_worker_total": round(one["total_s"] / local["total_s"] - 1, 4),
        "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="seeded subset of the PneumoniaMNIST test split")
    parser.add_argument("--attack", default="pgd20")
    parser.add_argument("--batch-size", type=int, default=32, help="also the unit size: n / batch units per attack")
    args = parser.parse_args()
    print(json.dumps(measure(args.n, args.attack, args.batch_size)))
