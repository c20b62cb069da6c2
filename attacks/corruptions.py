"""The corruption track: MedMNIST-C's corruptions of a data set at severities 1–5, as the family ``corruptions``.

Not an attack: no model is consulted while corrupting, so the harness runs this family on its own track
(:mod:`robustmed.corruption_track`), one row per sample × corruption × severity, judged on every sample (clean
errors included, as MedMNIST-C counts them), never pooled with the L∞ attacks. ``corruptionsK`` runs severities
1 to K (default 5). The operations are :mod:`robustmed.attacks.corruption_ops`, the per-data-set parameters
:mod:`robustmed.attacks.corruption_sets`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch

from robustmed.attacks.base import FAMILIES, AttackFamily, AttackSpec, parse_attack
from robustmed.attacks.corruption_ops import OPERATIONS, to_grey
from robustmed.attacks.corruption_sets import (OPERATION, REFERENCE_SIDE, SEVERITIES, SOURCE, SPATIAL,
                                               corruption_set)
from robustmed.errors import UserError

FAMILY = "corruptions"


def corrupt(x: torch.Tensor, corruption: str, parameter, seeds: Sequence[int]) -> torch.Tensor:
    """``x`` (N, C, H, W) in [0, 1] corrupted image by image, each from its own seeded generator.

    Images are rounded to 8 bits (MedMNIST's own grid), corrupted as RGB (greyscale ones as three equal
    channels, converted back by luma) and returned in [0, 1] on the same grid."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise UserError(f"corruptions take 2D greyscale or RGB images (N, 1|3, H, W), got shape {tuple(x.shape)}")
    operation = OPERATION[corruption]
    scale = x.shape[-1] / REFERENCE_SIDE if operation in SPATIAL else 1.0
    images = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grey = x.shape[1] == 1
    out = []
    for image, seed in zip(images, seeds):
        rgb = np.repeat(image, 3, axis=2) if grey else image
        done = OPERATIONS[operation](np.ascontiguousarray(rgb), parameter, np.random.default_rng(int(seed)), scale)
        out.append(to_grey(done)[..., None] if grey else done)
    stacked = np.stack(out) if out else np.zeros(images.shape, dtype=np.uint8)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).float().div(255).to(x.device)


def resolve(spec: AttackSpec, dataset: str | None, side: int) -> AttackSpec:
    """The spec as run: the data set's corruption set and its parameters for severities 1 to ``steps``, the
    image side and the blur scale stored in ``extra`` (check E1: every row says what was applied); its norm is
    "none", since a corruption has no norm-ball budget."""
    check_spec(spec)
    name, table = corruption_set(dataset)
    parameters = {c: [list(p) if isinstance(p, tuple) else p for p in values[:spec.steps]]
                  for c, values in table.items()}
    return replace(spec, norm="none", extra={**spec.extra, "corruption_set": name, "corruptions": parameters,
                                "image_side": int(side), "reference_side": REFERENCE_SIDE,
                                "blur_scale": side / REFERENCE_SIDE, "source": SOURCE})


def check_spec(spec: AttackSpec) -> None:
    """``corruptionsK`` with 1 ≤ K ≤ 5 and no attack options but ``draws``: nothing else applies to it."""
    if spec.steps > SEVERITIES:
        raise UserError(f"attack {spec.name!r}: corruptions have severities 1 to {SEVERITIES}; "
                        f"use corruptions (all five) or corruptionsK with K ≤ {SEVERITIES}")
    plain = parse_attack(FAMILY)
    keep = ("name", "steps", "draws", "eot", "early_stop", "extra")
    if replace(spec, **{k: getattr(plain, k) for k in keep}) != plain:
        raise UserError(f"attack {spec.name!r}: corruptions take no attack options but draws=; "
                        "e.g. corruptions or corruptions3")


def severities(spec: AttackSpec) -> range:
    return range(1, spec.steps + 1)


def _not_an_attack(forward, x, y, *, spec, eps, start=None, seed: int = 0):
    raise UserError("corruptions run on the harness's corruption track (robustmed.corruption_track), "
                    "not as an attack")


FAMILIES.register(FAMILY, AttackFamily(
    name=FAMILY,
    description="MedMNIST-C corruptions of the data set at severities 1–K (default 5): a separate track, "
                "one row per sample × corruption × severity",
    run=_not_an_attack,
    default_steps=SEVERITIES,
    alpha=lambda eps, steps: 0.0,
    alpha_rule="none",
    amp=False,
    uses_eps=False,
))
