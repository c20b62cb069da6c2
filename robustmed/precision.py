"""Is mixed precision safe for this model? The same attack in fp32 and under AMP on the same seeded samples.

Underflowed gradients look like robustness: AMP that leaves more samples robust than fp32 is not a speed-up
but a weaker attack.
"""
from __future__ import annotations

import json
from dataclasses import replace

from robustmed.attacks import parse_attack
from robustmed.harness import attack_rows
from robustmed.seeds import select_subset

AMP_TOL = 0.01  # 1 point


def compare_amp(model, x, y, attack: str = "pgd20", eps: float = 4 / 255, *, n: int | None = 256, seed: int = 0,
                batch_size: int = 256, device="cpu", amp: str = "auto") -> dict:
    """Run ``attack`` in fp32 and under AMP on the same seeded subset; report both and FLAG a gap > 1 pt.

    >>> report = compare_amp(model, x, y, "pgd20", 4/255, n=128)  # doctest: +SKIP
    >>> report["flag"], report["difference"]  # doctest: +SKIP
    """
    ids = select_subset(len(y), n, seed)
    fp32 = parse_attack(attack)
    mixed = replace(fp32, name=f"{fp32.name}:amp={amp}", amp=amp)
    rows = attack_rows(model, x[ids], y[ids], ids, [fp32, mixed], [eps], seed=seed, batch_size=batch_size,
                       device=device)
    robust = rows.groupby("attack").robust.mean()
    flags = rows.pivot_table(index="sample_id", columns="attack", values="robust", aggfunc="first")
    difference = float(robust[mixed.name] - robust[fp32.name])
    precision = json.loads(rows[rows.attack == mixed.name].spec.iloc[0])["amp"]
    return {"n": len(ids), "eps": eps, "attack": fp32.name, "amp": precision,
            "fp32_robust_accuracy": float(robust[fp32.name]), "amp_robust_accuracy": float(robust[mixed.name]),
            "difference": difference, "disagreements": int((flags[fp32.name] != flags[mixed.name]).sum()),
            "flag": difference > AMP_TOL}
