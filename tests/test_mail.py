"""MAIL: shapes, parameter count, building blocks and a gradient check through EMCAM."""
import pytest
import torch

from robustmed.factory import build
from robustmed.models.layers import channel_shuffle, dct_channels
from robustmed.models.mail import EMCAM, MAIL, MAILConfig
from robustmed.models.zoo import MODELS

TINY = MAILConfig(num_classes=(3,), widths=(16, 32), depths=(1, 1), stem_kernel=3, stem_stride=1, stem_pool=False)


def test_paper_size_parameter_count_within_3_percent():
    net = MAIL(MAILConfig(num_classes=(5, 7)))  # the authors' two heads (SiPaKMeD 5, HAM10000 7)
    count = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert abs(count - 11.4e6) / 11.4e6 < 0.03, count


def test_paper_size_forward_shapes():
    model = build("mail-rn18", "none", (2,))
    out = model(torch.rand(2, 1, 28, 28))  # native 28 px greyscale → replicated, resized to 128
    assert out.shape == (2, 2)


def test_mini_preset_shapes_and_size():
    model = build("mail-rn18-mini", "none", (2,)).eval()
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 2)
    assert model(torch.rand(4, 3, 64, 64)).shape == (4, 2)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_paired_mode_two_heads():
    model = build("mail-rn18-mini", "none", (2, 4), mode="paired", input_names=("a", "b"))
    model.head = None
    out = model({"a": torch.rand(3, 1, 28, 28), "b": torch.rand(3, 3, 28, 28)})
    assert [o.shape for o in out] == [(3, 2), (3, 4)]


def test_dct_is_orthonormal_along_channels():
    x = torch.randn(2, 16, 3, 3, dtype=torch.float64)
    d = dct_channels(x.float()).double()
    torch.testing.assert_close(d.pow(2).sum(1), x.pow(2).sum(1), rtol=1e-4, atol=1e-4)


def test_channel_shuffle_is_a_permutation():
    x = torch.arange(32.0).view(1, 32, 1, 1)
    y = channel_shuffle(x, 16)
    assert sorted(y.flatten().tolist()) == x.flatten().tolist()
    assert y.flatten()[:3].tolist() == [0.0, 2.0, 4.0]


def test_gradcheck_through_emcam():
    torch.manual_seed(0)
    emcam = EMCAM(16, 2, MAILConfig()).double()
    xs = [torch.randn(2, 16, 4, 4, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    # break ties in max/min pooling so the function is differentiable at the test point
    assert torch.autograd.gradcheck(lambda a, b: torch.cat(emcam([a, b]), 1), xs, eps=1e-6, atol=1e-5)


def test_code_and_paper_emsca_pairing_differ():
    torch.manual_seed(0)
    xs = [torch.randn(2, 16, 4, 4) for _ in range(2)]
    code = EMCAM(16, 2, MAILConfig(code_faithful_m2=True))
    paper = EMCAM(16, 2, MAILConfig(code_faithful_m2=False))
    paper.load_state_dict(code.state_dict())
    assert not torch.allclose(code.spatial_attention(xs), paper.spatial_attention(xs))


def test_eval_is_deterministic_and_inference_dropout_flag_is_not():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 28, 28)
    plain = MAIL(TINY).eval()
    assert torch.equal(plain([x, x]), plain([x, x]))
    mc = MAIL(MAILConfig(**{**TINY.__dict__, "inference_dropout": True, "dropout": 0.5})).eval()
    assert not torch.equal(mc([x, x]), mc([x, x]))


def test_every_parameter_gets_a_gradient():
    model = build("mail-rn18-mini", "none", (2,))
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@pytest.mark.parametrize("name", MODELS.names())
def test_registered_presets_build(name):
    assert build(name, "none", (2,)) is not None
