"""Where declared non-differentiable ops block or bend the gradient (check A6 per site).

A defense that declares non-differentiable ops (``DefenseInfo.nondiff_ops``, e.g. RPAN's clips)
exposes each one as a straight-through switch (:mod:`robustmed.checks.bpda`); a
:class:`~robustmed.attacks.bpda.BPDA` wrapper is such a declaration too. A backward hook on every
switch compares the gradient arriving at the op's output with the one it hands to its input. For an
op the attack can follow, the two agree (straight-through would pass the first on unchanged);
entries that arrive non-zero and leave as zero are *blocked* (a clip's saturated entries: spec
the released Robust-MAIL code: "clipping gives exactly zero input-gradient"), and a low cosine between the two
means the op *shatters* the gradient. Either is obfuscation that a plain gradient attack cannot
see through, which is why such defenses are attacked with BPDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustmed.checks.bpda import bpda, switches
from robustmed.randomness import frozen

SITE_PROBE = 16  # samples: a fraction over every element of every site needs few


@dataclass
class SiteGradients:
    """Gradient statistics of one kind of site (``Parent.attribute``), summed over its instances."""

    sites: int = 0
    live: int = 0  # entries whose incoming gradient is non-zero
    blocked: int = 0  # of those, entries the op passes back as zero
    dot: float = 0.0  # ⟨grad_in, grad_out⟩ and the squared norms, for the cosine
    norm_in: float = 0.0
    norm_out: float = 0.0

    @property
    def blocked_fraction(self) -> float:
        return self.blocked / self.live if self.live else 0.0

    @property
    def cosine(self) -> float:
        """1 when the op hands back what arrived (or nothing arrived to compare), 0 when it hands back nothing."""
        if not self.norm_out:
            return 1.0
        return self.dot / (self.norm_in * self.norm_out) ** 0.5 if self.norm_in else 0.0

    def to_json(self) -> dict:
        return {"sites": self.sites, "blocked": round(self.blocked_fraction, 4), "cosine": round(self.cosine, 4)}


def site_kinds(model: nn.Module) -> dict[int, str]:
    """``id(switch)`` → ``Owner.attribute`` (e.g. ``CodeEMCAM.fused_man``): the op's place, one kind per declared op.

    The owner is the nearest enclosing module that is not a container, and list indices are dropped,
    so every instance of one op in every block shares its kind.
    """
    modules = dict(model.named_modules())
    containers = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
    sites, kinds = {id(m) for m in switches(model)}, {}
    for name, module in modules.items():
        if id(module) not in sites or not name:
            continue
        parts = name.split(".")
        owner, attribute = type(model).__name__, parts
        for cut in range(len(parts) - 1, 0, -1):
            parent = modules[".".join(parts[:cut])]
            if not isinstance(parent, containers):
                owner, attribute = type(parent).__name__, parts[cut:]
                break
        kind = ".".join([owner, *(p for p in attribute if not p.isdigit())])
        kinds[id(module)] = kind if not attribute[-1].isdigit() else f"{kind}[{type(module).__name__}]"
    for module in switches(model):  # the model itself may be the switch
        kinds.setdefault(id(module), type(module).__name__)
    return kinds


def _accumulate(stats: SiteGradients, grad_in: torch.Tensor | None, grad_out: torch.Tensor) -> None:
    live = grad_out != 0
    stats.live += int(live.sum())
    if grad_in is None:  # nothing flows to the op's input: every live entry is blocked
        stats.blocked += int(live.sum())
        stats.norm_out += float(grad_out.double().pow(2).sum())
        return
    stats.blocked += int((live & (grad_in == 0)).sum())
    if grad_in.shape == grad_out.shape:
        stats.dot += float((grad_in.double() * grad_out.double()).sum())
        stats.norm_in += float(grad_in.double().pow(2).sum())
        stats.norm_out += float(grad_out.double().pow(2).sum())


def measure_sites(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, SiteGradients]:
    """Per kind of declared site: how much of the CE gradient it blocks, with the straight-through switch off.

    One frozen realization of the model's randomness and one global seed, so the numbers do not
    depend on a lucky draw of noise; the switches and the RNG are restored afterwards.
    """
    kinds = site_kinds(model)
    stats = {kind: SiteGradients() for kind in kinds.values()}
    for module in switches(model):
        stats[kinds[id(module)]].sites += 1

    def hook(module, grad_input, grad_output):
        _accumulate(stats[kinds[id(module)]], grad_input[0] if grad_input else None, grad_output[0])

    handles = [m.register_full_backward_hook(hook) for m in switches(model)]
    x = x[:SITE_PROBE].detach().clone().requires_grad_(True)
    try:
        with torch.random.fork_rng(devices=[]), frozen(model), bpda(model, False), torch.enable_grad():
            torch.manual_seed(0)
            torch.autograd.grad(F.cross_entropy(model(x), y[:SITE_PROBE], reduction="sum"), x)
    finally:
        for handle in handles:
            handle.remove()
    return stats
