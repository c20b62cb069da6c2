"""Mixed precision for attacks (evaluation spec §7 item 9): opt-in (``amp=true``), never the default.

The attack's forward and backward passes run under autocast (bfloat16 on the CPU, float16 on
CUDA unless ``amp=bf16``); the harness judges every returned example in float32, the deployed
precision. Underflowed gradients look like robustness, so :func:`compare_amp` runs a subset in
both precisions and FLAGs AMP robust accuracy above fp32 by more than 1 point.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import torch

from robustmed.attacks.base import AttackSpec, parse_attack

AMP_TOL = 0.01  # 1 point
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextmanager
def strict_fp32():
    """fp32 means fp32: PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa) on Ampere and
    later GPUs by default, which would make every "fp32" attack a reduced-precision one. Off for the
    duration of an evaluation, restored afterwards; autocast (``amp=``) is unaffected."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def resolve_amp(spec: AttackSpec, device) -> AttackSpec:
    """``amp=auto`` → bf16 on the CPU, fp16 on CUDA; the resolved precision is stored in the spec."""
    if spec.amp != "auto":
        return spec
    return replace(spec, amp="fp16" if torch.device(device).type == "cuda" else "bf16")


def autocast_forward(model: Callable, amp: str, device) -> Callable:
    """``model`` under autocast returning float32 logits; ``model`` itself when ``amp`` is empty."""
    if not amp:
        return model
    device_type, dtype = torch.device(device).type, _DTYPES[amp]

    def forward(x):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return model(x).float()
    return forward


def compare_amp(model, x, y, attack: str = "pgd20", eps: float = 4 / 255, *, n: int | None = 256, seed: int = 0,
                batch_size: int = 256, device="cpu", amp: str = "auto") -> dict:
    """Run ``attack`` in fp32 and under AMP on the same seeded subset; report both and FLAG a gap > 1 pt.

    >>> report = compare_amp(model, x, y, "pgd20", 4/255, n=128)  # doctest: +SKIP
    >>> report["flag"], report["difference"]  # doctest: +SKIP
    """
    from robustmed.harness import attack_rows, select_subset

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
