"""A fingerprint of how this machine's kernels round fp32 arithmetic, recorded with every run (check E2).

The same code on the same inputs can differ in the last bits of a convolution from one machine to another: the
kernel library picks its kernels by instruction set, and some of them round a sample differently by batch size.
On a randomized model those bits can move a draw's verdict on a sample near the boundary, so a stored run is
expected to regenerate sample for sample only where its fingerprint matches (docs/results.md).
"""
from __future__ import annotations

import hashlib
from functools import lru_cache

import torch
from torch import nn

PROBE_BATCH = 16


def _probe_network(generator: torch.Generator) -> nn.Module:
    """The layer kinds the shipped models are built from: a dense 3×3 stem, depthwise 3×3 and 5×5, grouped and
    pointwise 1×1 convolutions, batch norm in eval mode and a linear head, with seeded weights."""
    net = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32), nn.Conv2d(32, 32, 5, padding=2, groups=32),
        nn.Conv2d(32, 64, 1, groups=4), nn.BatchNorm2d(64), nn.ReLU(), nn.Conv2d(64, 64, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if tensor.is_floating_point():
                low = 0.5 if name.endswith("running_var") else -0.5
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + low)
    return net.eval()


def kernel_fingerprint(device: torch.device | str = "cpu") -> str:
    """A digest of the probe's logits and input gradient for a batch and for its first sample alone, computed as
    an attack computes them (fp32, this process's thread count)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng(devices=[]):  # building layers draws initial weights: leave the caller's stream alone
        net = _probe_network(generator).to(device)
    images = torch.rand(PROBE_BATCH, 1, 28, 28, generator=generator).to(device)
    digest = hashlib.sha256()
    # on a GPU, deterministic kernels: a fingerprint that changed from call to call would match nothing
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for batch in (images, images[:1]):
            batch = batch.clone().requires_grad_()
            logits = net(batch)
            (gradient,) = torch.autograd.grad(logits[:, 1].sum() - logits[:, 0].sum(), batch)
            for tensor in (logits, gradient):
                digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=8)
def _cached(device: str, threads: int) -> str:
    return kernel_fingerprint(device)


def process_fingerprint(device: torch.device | str = "cpu") -> str:
    """This process's fingerprint, computed once per device and thread count: every unit a worker computes records
    it, so a run whose units ran on several machines says which kernels made which rows."""
    return _cached(str(torch.device(device)), torch.get_num_threads())


def run_fingerprints(manifest: dict) -> set[str | None]:
    """The kernels a stored run's rows were made on: each unit's own record where units kept one, else the
    finishing machine's (None where the run predates the record)."""
    recorded = manifest.get("machine", {}).get("kernels")
    return {unit.get("kernels", recorded) for unit in manifest.get("units", [])} or {recorded}
