"""Ray executor scaling (1 vs 2 workers; target ≥ 1.7×) and overhead vs the local executor on one worker (≤ 10%).

Run: ``python benchmarks/ray_scaling.py [--attack pgd50,bim50,mim50] [--n 512] [--batch-size 256] [--repeats 1]``
(needs ``pip install 'robustmed[ray]'`` and two free cores). The default run is sized like a suite's run:
three attacks on 512 images, one batch of 128 per unit, so 12 units of 5–9 s of attack work each on one
core (about 75 s in all; about 3.5 minutes a repeat). A suite has many units (Table 3: over a hundred);
with only 6, one worker sitting idle while the other finishes the last unit is a large share of the
run, and the figure measured that tail more than the executor (``--batch-size 256`` gives 6 units).
The same run is computed into fresh folders by the local executor (one torch thread), a 1-CPU Ray
cluster and a 2-CPU Ray cluster, ``--repeats`` times in that order; each figure is the median over repeats.

The ratios are of whole-run wall time (loading, pre-flight checks, units, post-run checks, assembly),
as ``robustmed bench`` takes it; starting a local Ray instance is timed apart (a cluster is usually
running already) and shown added as well. Ray's workers start, import robustmed and load the run's
model and data while the pre-flight checks run, as in ``robustmed bench``. Prints the ratios and the
load (the cores may be shared), then one JSON object with every figure: per executor the units phase
(first unit sent to last unit stored), the median unit, the worker seconds of the units phase spent
outside units (start-up wait, dispatch, the last unit running alone), the units phase's CPU seconds
over the whole process tree (Ray's daemons and workers included), and ``others_cores``: the cores
that processes outside this benchmark kept busy during the units phase, on average (from
``/proc/stat``; 2 workers need it near 0 on 2 cores); ``runs`` holds every repeat's figures.
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

from robustmed.allocator import tune_malloc
from robustmed.errors import exit_status
from robustmed.run.executors import get_executor
from robustmed.run.bench import BenchConfig, run_benches


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (every process, every core) since boot."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


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
    """The executor a run names, with its units phase timed: wall, CPU of the process tree, and the cores
    that other processes kept busy meanwhile (taken before :meth:`close`, while Ray's workers still count
    as this tree's)."""

    def __init__(self, name: str):
        self.inner, self.name = get_executor(name), name
        self.units_s = self.units_cpu_s = self.others_cores = None

    def start(self, units: int, load: dict | None = None) -> None:
        self.inner.start(units, load)

    def run(self, units, progress: bool = True) -> None:
        started, cpu_started, busy_started = time.perf_counter(), tree_cpu_s(), busy_cpu_s()
        self.inner.run(units, progress)
        self.units_s, self.units_cpu_s = time.perf_counter() - started, tree_cpu_s() - cpu_started
        self.others_cores = max(0.0, (busy_cpu_s() - busy_started - self.units_cpu_s) / self.units_s)

    def close(self) -> None:
        self.inner.close()


def timed_run(cfg: BenchConfig, workers: int = 1) -> dict:
    """Seconds of one fresh run: units phase, whole run, and its units' own wall times (median and sum).

    ``idle_worker_s``: worker seconds of the units phase spent outside units (workers × units phase −
    the units' sum): waiting for a worker that is still starting, dispatch, and at the end the workers
    that have no unit left while another finishes its last.
    """
    executor = TimedExecutor(cfg.executor)
    started = time.perf_counter()
    (report,) = run_benches([cfg], executor)
    total_s = time.perf_counter() - started
    unit_times = [u["wall_time_s"] for u in report.manifest["units"]]
    return {"units_s": executor.units_s, "total_s": total_s, "units_cpu_s": executor.units_cpu_s,
            "unit_median_s": statistics.median(unit_times), "unit_min_s": min(unit_times),
            "unit_max_s": max(unit_times), "unit_sum_s": sum(unit_times),
            "idle_worker_s": workers * executor.units_s - sum(unit_times), "others_cores": executor.others_cores}


def on_ray(cfg: BenchConfig, workers: int) -> dict:
    import ray

    started = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        return {**timed_run(cfg, workers), "ray_init_s": init_s}
    finally:
        ray.shutdown()


def medians(runs: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def measure(n: int, attack: str, batch_size: int, repeats: int, shard_size: int | None = None) -> dict:
    torch.set_num_threads(1)  # the local executor gets one worker's worth of CPU, as each Ray worker does
    load_before = os.getloadavg()
    runs = {"local": [], "ray_1_worker": [], "ray_2_workers": []}
    with tempfile.TemporaryDirectory() as scratch:
        def config(name: str, executor: str) -> BenchConfig:
            return BenchConfig(attack=attack, n=n, batch_size=batch_size, shard_size=shard_size, device="cpu",
                               progress=False, out=os.path.join(scratch, name), executor=executor)

        for repeat in range(repeats):
            runs["local"].append(timed_run(config(f"local{repeat}", "local")))
            runs["ray_1_worker"].append(on_ray(config(f"ray1-{repeat}", "ray"), 1))
            runs["ray_2_workers"].append(on_ray(config(f"ray2-{repeat}", "ray"), 2))
    local, one, two = (medians(runs[k]) for k in runs)
    specs = BenchConfig(attack=attack).specs()
    samples, shard = n * len(specs), shard_size or batch_size
    return {
        "n": n, "attack": attack, "batch_size": batch_size, "shard_size": shard,
        "units": len(specs) * -(-n // shard), "repeats": repeats,
        "local": local, "ray_1_worker": one, "ray_2_workers": two,
        "throughput_samples_per_s": {k: round(samples / r["total_s"], 2)
                                     for k, r in (("local", local), ("ray_1", one), ("ray_2", two))},
        "speedup_2_vs_1_total": round(one["total_s"] / two["total_s"], 3),
        "speedup_2_vs_1_units": round(one["units_s"] / two["units_s"], 3),
        "ray_overhead_1_worker_total": round(one["total_s"] / local["total_s"] - 1, 4),
        "ray_overhead_1_worker_total_with_ray_start": round((one["total_s"] + one["ray_init_s"]) / local["total_s"]
                                                            - 1, 4),
        "ray_overhead_1_worker_units": round(one["units_s"] / local["units_s"] - 1, 4),
        "ray_overhead_1_worker_units_cpu": round(one["units_cpu_s"] / local["units_cpu_s"] - 1, 4),
        "ray_overhead_1_worker_unit_median": round(one["unit_median_s"] / local["unit_median_s"] - 1, 4),
        "others_cores_max": round(max(r["others_cores"] for rs in runs.values() for r in rs), 3),
        "cores": os.cpu_count(), "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": {k: [{key: round(v, 3) for key, v in r.items()} for r in rs] for k, rs in runs.items()},
    }


def headline(result: dict) -> str:
    local, one, two = result["local"], result["ray_1_worker"], result["ray_2_workers"]
    return (f"{result['units']} units of {result['attack']} ({result['n']} samples, units of {result['shard_size']}); "
            f"whole run: local {local['total_s']:.1f} s, Ray 1 worker {one['total_s']:.1f} s, "
            f"2 workers {two['total_s']:.1f} s (+ {one['ray_init_s']:.1f} s to start a local Ray instance)\n"
            f"2 vs 1 Ray workers: {result['speedup_2_vs_1_total']:.2f}x end to end, "
            f"{result['speedup_2_vs_1_units']:.2f}x over the units (target >= 1.7x)\n"
            f"Ray vs local executor, one worker: overhead {result['ray_overhead_1_worker_total']:+.1%} end to end "
            f"({result['ray_overhead_1_worker_total_with_ray_start']:+.1%} with Ray's start), "
            f"{result['ray_overhead_1_worker_units']:+.1%} over the units (target <= 10%); "
            f"CPU seconds over the units {result['ray_overhead_1_worker_units_cpu']:+.1%}\n"
            f"worker seconds outside units (start-up wait, dispatch, last unit alone): local "
            f"{local['idle_worker_s']:.1f}, Ray 1 worker {one['idle_worker_s']:.1f}, 2 workers {two['idle_worker_s']:.1f}; "
            f"median unit: {local['unit_median_s']:.2f} / {one['unit_median_s']:.2f} / {two['unit_median_s']:.2f} s\n"
            f"other processes' load: up to {result['others_cores_max']:.2f} cores busy on average during a units "
            f"phase; "
            f"load average before/after (1, 5, 15 min): {result['load_average_before']} / "
            f"{result['load_average_after']} on {result['cores']} cores")


def main() -> None:
    tune_malloc()  # as the robustmed command runs (its Ray workers tune their own)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=512, help="seeded subset of the PneumoniaMNIST test split")
    parser.add_argument("--attack", default="pgd50,bim50,mim50", help="attacks of the run (one or more units each)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--shard-size", type=int, default=None,
                        help="samples per unit, a multiple of --batch-size (default: one batch)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per executor; figures are medians")
    args = parser.parse_args()
    result = measure(args.n, args.attack, args.batch_size, args.repeats, args.shard_size)
    print(headline(result))
    print(json.dumps(result))


if __name__ == "__main__":
    raise SystemExit(exit_status("ray_scaling", main))
