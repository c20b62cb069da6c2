"""A small bench on a busy machine: its time beside CPU-bound jobs over its time alone (target: ≤ 3×).

Run: ``python benchmarks/busy_machine.py [--n 64] [--jobs 2]`` on an otherwise idle machine. It times
``robustmed bench --attack pgd10`` as a user would run it (a fresh process each time) alone, then with
``--jobs`` busy processes beside it (one thread each, as many as the cores on a 2-core machine), once
with robustmed's default thread count and once forced to one thread per core (PyTorch's own default).
Prints one JSON object; the ratios are what to compare across machines.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

from robustmed.errors import exit_status
from robustmed.threads import cores


def _spin(stop) -> None:
    """A CPU-bound neighbour: one thread of arithmetic until told to stop."""
    value = 0
    while not stop.is_set():
        for i in range(100_000):
            value += i * i


def _bench_seconds(n: int, threads: int | None) -> float:
    """Wall time of one `robustmed bench` process; its results go to a throwaway folder."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "robustmed.cli", "bench", "--attack", "pgd10", "--n", str(n),
                   "--no-progress", "--out", out, *(["--threads", str(threads)] if threads else [])]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # robustmed's own choice
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        return time.perf_counter() - started


def measure(n: int, jobs: int) -> dict:
    alone = min(_bench_seconds(n, None) for _ in range(2))
    stop = multiprocessing.Event()
    neighbours = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(jobs)]
    for process in neighbours:
        process.start()
    try:
        time.sleep(1.0)  # the neighbours are running before the bench starts
        busy_default = _bench_seconds(n, None)
        busy_all_cores = _bench_seconds(n, cores())
    finally:
        stop.set()
        for process in neighbours:
            process.join()
    return {"n": n, "cores": cores(), "neighbours": jobs, "alone_s": round(alone, 2),
            "busy_default_threads_s": round(busy_default, 2), "busy_one_thread_per_core_s": round(busy_all_cores, 2),
            "ratio_default": round(busy_default / alone, 2),
            "ratio_one_thread_per_core": round(busy_all_cores / alone, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(measure(args.n, args.jobs)))


if __name__ == "__main__":
    raise SystemExit(exit_status("busy_machine", main))
