"""The allocator thresholds the robustmed command sets: applied once, recorded, left alone when asked,
and doing their job (no page faults in EOT's passes) where glibc's defaults fault on every pass."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from robustmed import allocator
from robustmed.provenance import machine

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")

# 20 EOT passes of a tiny randomized model over 256 images, five times after one untimed round: the
# gradient sum lives across passes, the pattern that makes glibc hand memory back and fault it in again.
FAULT_PROBE = """
import resource, sys
import torch
from torch import nn
from robustmed.allocator import tune_malloc
from robustmed.attacks.eot import LOSSES, eot_loss_grad
from robustmed.randomness import InputNoise
tune_malloc()
torch.set_num_threads(1)
torch.manual_seed(0)
model = nn.Sequential(InputNoise((1, 28, 28)), nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                      nn.ReLU(), nn.Flatten(), nn.Linear(784, 2)).eval()
x, y = torch.rand(256, 1, 28, 28), torch.zeros(256, dtype=torch.long)
eot_loss_grad(model, x, y, loss=LOSSES["ce"], samples=20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    eot_loss_grad(model, x, y, loss=LOSSES["ce"], samples=20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _without_malloc_settings() -> dict[str, str]:
    """This environment less anything that would make tune_malloc leave the allocator alone."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "ROBUSTMED_MALLOC"}


def _page_faults(**env: str) -> int:
    proc = subprocess.run([sys.executable, "-c", FAULT_PROBE], capture_output=True, text=True, check=True,
                          env={**_without_malloc_settings(), **env})
    return int(proc.stdout.split()[-1])


@needs_glibc
def test_tuned_thresholds_stop_the_faults_glibc_defaults_take_on_every_eot_pass():
    tuned, default = _page_faults(), _page_faults(ROBUSTMED_MALLOC="default")
    # measured: ~200-400 tuned, ~86,000-91,000 with glibc's defaults (100 passes, ~900 per pass)
    assert tuned < 2_000
    assert default > 10 * tuned  # the broken fixture: without the thresholds the faults come back


@pytest.mark.parametrize("env, why", [({"ROBUSTMED_MALLOC": "default"}, "ROBUSTMED_MALLOC=default"),
                                      ({"MALLOC_TRIM_THRESHOLD_": "131072"}, "MALLOC_*_THRESHOLD_ set by the user"),
                                      ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "another allocator preloaded")])
def test_left_alone_when_the_user_chose_otherwise(monkeypatch, env, why):
    for name in ("ROBUSTMED_MALLOC", "LD_PRELOAD", *allocator._USER_SETTINGS):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = why if GLIBC or "LD_PRELOAD" not in env else "not glibc"  # the preload is looked at after the libc
    assert allocator._tune() == {"malloc": "default", "why": expected}


@needs_glibc
def test_the_command_tunes_once_and_its_runs_record_it():
    probe = ("from robustmed.allocator import malloc_state\nfrom robustmed.provenance import machine\n"
             "before = malloc_state()['malloc']\nfrom robustmed.cli import main\nmain(['list', 'defenses'])\n"
             "print(before, machine()['malloc'])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env=_without_malloc_settings())
    assert out.stdout.split()[-2:] == ["default", "fixed"]  # importing robustmed changes nothing; the command does
    assert allocator.tune_malloc() == allocator.tune_malloc()  # idempotent
    assert machine()["malloc"] == allocator.tune_malloc()["malloc"]  # provenance reports what was done
