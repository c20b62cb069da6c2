"""Fixed glibc malloc thresholds for processes that run attacks.

Every attack step frees and allocates again the same large tensors (activations, gradients).
glibc's defaults hand freed memory at the top of the heap back to the kernel past a threshold
that moves with the sizes seen, so the next pass faults the same pages in again, depending on
what the process did before. A loop that keeps a buffer alive across passes (EOT's gradient
sum) can pay it on every pass: an EOT-20 run of 50 steps on a tiny randomized model took
130,000–280,000 page faults and 7–25% more time than its 1,000 forward+backward passes run
bare, which took almost none. With fixed thresholds neither faults. The price: a process keeps
up to :data:`TRIM_THRESHOLD` of memory it freed, instead of giving it back.

Applied by the ``robustmed`` command, its Ray workers and the benchmarks (so they time what the
command runs), never on import: a library does not change its host's allocator unasked. Call
:func:`tune_malloc` from your own script to get the same. Left alone off glibc, under an
allocator preloaded in glibc's place (jemalloc, tcmalloc: mallopt would not reach it), when
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` are set, or with ``ROBUSTMED_MALLOC=default``.
"""
from __future__ import annotations

import ctypes
import os
import platform

MMAP_THRESHOLD = 512 << 20  # allocations below this size come from the reusable heap
FALLBACK_MMAP_THRESHOLD = 32 << 20  # the most older glibc versions accept on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2 << 30  # freed memory at the heap top is kept up to this much
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_applied: dict | None = None


def tune_malloc() -> dict:
    """Set the thresholds once per process; returns what was done (``{"malloc": "default"}`` with a
    ``why`` where nothing was), for a run's provenance."""
    global _applied
    if _applied is None:
        _applied = _tune()
    return dict(_applied)


def malloc_state() -> dict:
    """What :func:`tune_malloc` did in this process, for provenance (not called: glibc's defaults)."""
    return dict(_applied) if _applied is not None else {"malloc": "default", "why": "not tuned"}


def _tune() -> dict:
    why = _reason_to_leave_alone()
    if why:
        return {"malloc": "default", "why": why}
    libc = ctypes.CDLL(None)
    mmap = next((size for size in (MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)
                 if libc.mallopt(_M_MMAP_THRESHOLD, size) == 1), None)
    if mmap is None or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return {"malloc": "default", "why": "mallopt refused the thresholds"}
    return {"malloc": "fixed", "mmap_threshold": mmap, "trim_threshold": TRIM_THRESHOLD}


def _reason_to_leave_alone() -> str:
    if os.environ.get("ROBUSTMED_MALLOC", "").lower() == "default":
        return "ROBUSTMED_MALLOC=default"
    if any(name in os.environ for name in _USER_SETTINGS):
        return "MALLOC_*_THRESHOLD_ set by the user"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "another allocator preloaded"
    return ""
