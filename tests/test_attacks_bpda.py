"""BPDA straight-through gradients (check D1)."""
import doctest

import pytest
import torch
from torch import nn

from conftest import TinyCNN
from robustmed.attacks import bpda
from robustmed.attacks.bpda import BPDA, set_bpda, straight_through
from robustmed.attacks.pgd import pgd


def quantize(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t * 8) / 8


def test_forward_is_the_op_and_backward_the_identity():
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = straight_through(quantize, x)
    assert torch.equal(out, quantize(x.detach()))
    weights = torch.arange(15.0).view(3, 5)
    assert torch.equal(torch.autograd.grad((out * weights).sum(), x)[0], weights)
    plain = torch.autograd.grad((quantize(x) * weights).sum(), x)[0]
    assert torch.count_nonzero(plain) == 0  # what BPDA is for: the op masks the gradient


def test_shape_changing_ops_are_refused():
    with pytest.raises(ValueError, match="shape-preserving"):
        straight_through(lambda t: t.sum(1), torch.rand(2, 3, requires_grad=True))


def test_bpda_lets_pgd_through_a_quantizer():
    body = TinyCNN(classes=2, seed=0)
    with torch.no_grad():
        body.net[-1].weight.mul_(20)  # spread the logits so that the budget can flip decisions
        body.net[-1].bias.zero_()
    model = nn.Sequential(BPDA(lambda t: torch.round(t * 255) / 255, enabled=False), body).eval()  # fra31#44
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    kwargs = dict(eps=16 / 255, steps=10, step_size=4 / 255, random_start=False)
    masked = pgd(model, x, y, **kwargs)
    assert set_bpda(model, True) == 1
    adaptive = pgd(model, x, y, **kwargs)
    assert masked.success.sum().item() == 0  # zero gradients: sign(0) never moves the input
    assert adaptive.success.sum().item() > 0
    assert (adaptive.loss >= masked.loss).all()


def test_module_doctest():
    assert doctest.testmod(bpda).failed == 0
