"""How many CPU threads an attack may use: ``--threads N``, else a share of the cores others leave idle.

PyTorch starts one thread per core. On a machine where other CPU-bound jobs already hold the cores,
those threads wait on each other at every parallel region, and a run slows far beyond its fair share;
one thread per idle core avoids that, and on an idle machine is every core.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from robustmed.errors import UserError

SAMPLES, SAMPLE_GAP_S = 5, 0.02
USER_SETTING = "OMP_NUM_THREADS"  # a thread count the user fixed for every OpenMP program wins


def cores() -> int:
    """The cores this process may run on (its affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _running_now() -> float | None:
    """Runnable threads other than this one, the mean of a few reads of /proc/loadavg's running count
    (the one-minute load average would still count a run that has just finished)."""
    counts = []
    for _ in range(SAMPLES):
        try:
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        counts.append(running - 1)  # the reading thread is running
        time.sleep(SAMPLE_GAP_S)
    return sum(counts) / len(counts)


def idle_cores() -> int:
    """Cores minus the threads already running on them, at least one."""
    busy = _running_now()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):
            busy = 0.0
    return max(1, min(cores(), round(cores() - busy)))


def default_threads() -> int:
    setting = os.environ.get(USER_SETTING, "")
    return int(setting) if setting.isdigit() and int(setting) > 0 else idle_cores()


def apply_threads(requested: int | None) -> int:
    """Set PyTorch's intra-op threads (``requested``, else :func:`default_threads`); returns the count."""
    if requested is not None and requested < 1:
        raise UserError(f"--threads must be at least 1, got {requested}")
    count = requested or default_threads()
    torch.set_num_threads(count)
    return count
