"""Mixed precision for attacks: opt-in (``amp=true``), never the default.

The attack's forward and backward passes run under autocast (bfloat16 on the CPU, float16 on
CUDA unless ``amp=bf16``); the harness judges every returned example in float32, the deployed
precision. Underflowed gradients look like robustness, so :func:`robustmed.precision.compare_amp` runs
a subset in both precisions and FLAGs AMP robust accuracy above fp32 by more than 1 point.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable

import torch

from robustmed.attacks.base import AttackSpec

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
