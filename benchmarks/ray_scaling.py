"""Ray executor scaling (1 vs 2 workers; target ≥ 1.7×) and overhead vs the local executor on one worker (≤ 10%).

Run: ``python benchmarks/ray_scaling.py [--n 256] [--attack pgd20] [--batch-size 32] [--repeats 1]`` (needs
``pip install 'robustmed[ray]'`` and two free cores). The same run is computed into fresh folders by
the local executor (one torch thread), a 1-CPU Ray cluster and a 2-CPU Ray cluster, ``--repeats``
times in that order; each figure is the median over repeats. Ray's start-up is timed apart (a cluster
is usually running already). Timed per run: the units phase (first unit sent to last unit stored)
and the whole run (loading, pre-flight checks, units, post-run checks, assembly). Ray's workers
start while the pre-flight checks run, as in ``robustmed bench``. Prints the two ratios and the load
average (the cores may be shared), then one JSON object with every figure, including each
executor's median unit time (per-unit cost apart from start-up), on one worker the units phase
not spent inside units (dispatch, waiting for a worker still starting), and the units phase's CPU
seconds over the whole process tree (Ray's daemons and workers included), which shared cores do
not stretch as they stretch wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from robustmed.executors import get_executor
from robustmed.runner import BenchConfig, run_benches


def tree_cpu_s() -> float:
    """CPU seconds used so far by this process and its live descendants (a local Ray's daemons and workers).

    Shared cores stretch wall time but not CPU time: the units phase's CPU seconds compare the
    executors' work when the machine is loaded.
    """
    parents, cpu = {}, {}
    for entry in os.scandir("/proc"):
        try:
            text = Path(entry.path, "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if text:
            fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, …
            parents[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    tree, frontier = set(), {os.getpid()}
    while frontier:
        tree |= frontier
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid not in tree}
    return sum(cpu.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


class TimedExecutor:
    """The executor a run names, with its units phase timed (wall, and CPU of the process tree)."""

    def __init__(self, name: str):
        self.inner, self.name, self.units_s, self.units_cpu_s = get_executor(name), name, None, None

    def start(self, units: int) -> None:
        self.inner.start(units)

    def run(self, units, progress: bool = True) -> None:
        started, cpu_started = time.perf_counter(), tree_cpu_s()
        self.inner.run(units, progress)
        self.units_s, self.units_cpu_s = time.perf_counter() - started, tree_cpu_s() - cpu_started

    def close(self) -> None:
        self.inner.close()


def timed_run(cfg: BenchConfig) -> dict:
    """Seconds of one fresh run: units phase, whole run, and its units' own wall times (median and sum).

    With one worker, units phase minus the units' sum is what the executor spends outside units:
    dispatch, and waiting for a worker that is still starting.
    """
    executor = TimedExecutor(cfg.executor)
    started = time.perf_counter()
    (report,) = run_benches([cfg], executor)
    unit_times = [u["wall_time_s"] for u in report.manifest["units"]]
    return {"units_s": executor.units_s, "total_s": time.perf_counter() - started,
            "units_cpu_s": executor.units_cpu_s, "unit_median_s": statistics.median(unit_times),
            "unit_sum_s": sum(unit_times), "units": len(unit_times)}


def on_ray(cfg: BenchConfig, workers: int) -> dict:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        return {**timed_run(cfg), "ray_init_s": init_s}
    finally:
        ray.shutdown()


def medians(runs: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def measure(n: int, attack: str, batch_size: int, repeats: int) -> dict:
    torch.set_num_threads(1)  # the local executor gets one worker's worth of CPU, as each Ray worker does
    load_before = os.getloadavg()
    runs = {"local": [], "ray_1_worker": [], "ray_2_workers": []}
    with tempfile.TemporaryDirectory() as scratch:
        def config(name: str, executor: str) -> BenchConfig:
            return BenchConfig(attack=attack, n=n, batch_size=batch_size, device="cpu", progress=False,
                               out=os.path.join(scratch, name), executor=executor)

        for repeat in range(repeats):
            runs["local"].append(timed_run(config(f"local{repeat}", "local")))
            runs["ray_1_worker"].append(on_ray(config(f"ray1-{repeat}", "ray"), 1))
            runs["ray_2_workers"].append(on_ray(config(f"ray2-{repeat}", "ray"), 2))
    local, one, two = (medians(runs[k]) for k in runs)
    samples = n * len(BenchConfig(attack=attack).specs())
    return {
        "n": n, "attack": attack, "batch_size": batch_size, "units": local["units"], "repeats": repeats,
        "local": local, "ray_1_worker": one, "ray_2_workers": two,
        "throughput_samples_per_s": {k: round(samples / r["units_s"], 2)
                                     for k, r in (("local", local), ("ray_1", one), ("ray_2", two))},
        "speedup_2_vs_1_units": round(one["units_s"] / two["units_s"], 3),
        "speedup_2_vs_1_total": round(one["total_s"] / two["total_s"], 3),
        "ray_overhead_1_worker_units": round(one["units_s"] / local["units_s"] - 1, 4),
        "ray_overhead_1_worker_total": round(one["total_s"] / local["total_s"] - 1, 4),
        "ray_overhead_1_worker_units_cpu": round(one["units_cpu_s"] / local["units_cpu_s"] - 1, 4),
        "ray_overhead_1_worker_unit_median": round(one["unit_median_s"] / local["unit_median_s"] - 1, 4),
        "outside_units_s": {"local": round(local["units_s"] - local["unit_sum_s"], 3),
                            "ray_1": round(one["units_s"] - one["unit_sum_s"], 3)},
        "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def headline(result: dict) -> str:
    return (f"2 vs 1 Ray workers: {result['speedup_2_vs_1_units']:.2f}x over the units, "
            f"{result['speedup_2_vs_1_total']:.2f}x end to end (target >= 1.7x)\n"
            f"Ray vs local executor, one worker: overhead {result['ray_overhead_1_worker_units']:.1%} over the units, "
            f"{result['ray_overhead_1_worker_total']:.1%} end to end (target <= 10%); "
            f"CPU seconds over the units {result['ray_overhead_1_worker_units_cpu']:+.1%}\n"
            f"load average before/after (1, 5, 15 min): {result['load_average_before']} / "
            f"{result['load_average_after']} on {result['cores']} cores")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="seeded subset of the PneumoniaMNIST test split")
    parser.add_argument("--attack", default="pgd20")
    parser.add_argument("--batch-size", type=int, default=32, help="also the unit size: n / batch units per attack")
    parser.add_argument("--repeats", type=int, default=1, help="runs per executor; figures are medians")
    args = parser.parse_args()
    result = measure(args.n, args.attack, args.batch_size, args.repeats)
    print(headline(result))
    print(json.dumps(result))
