"""MMCAF-Net and IIMGF-Net building blocks: KAN splines, the selective scan, shape features, forward/backward."""
import math

import numpy as np
import pytest
import torch

from robustmed import multimodal_data, tabular
from robustmed.factory import build
from robustmed.models.iimgf import IIMGFConfig, IIMGFNet
from robustmed.models.kan import KANLayer, bspline_basis
from robustmed.models.mmcaf import MMCAFConfig, MMCAFNet
from robustmed.models.ssm import SS2D, selective_scan
from robustmed.models.zoo import MODELS

TINY_MMCAF = MMCAFConfig(stem_width=4, widths=(4, 8, 16), embed=8)
TINY_IIMGF = IIMGFConfig(stem_width=8, mlp_ratio=1.0)


def test_bspline_basis_is_a_partition_of_unity_inside_the_grid():
    layer = KANLayer(2, 3)
    x = torch.linspace(-2.99, 2.99, 50, dtype=torch.float64)[:, None].expand(-1, 2)
    basis = bspline_basis(x, layer.grid.double(), layer.order)
    assert basis.shape == (50, 2, 5 + 3)
    assert torch.allclose(basis.sum(-1), torch.ones(50, 2, dtype=torch.float64), atol=1e-12)
    assert (basis >= 0).all()


def test_selective_scan_equals_the_closed_form():
    """y_t = Σ_{s≤t} C_t · exp(Σ_{r=s+1..t} Δ_r A) · Δ_s B_s u_s + D u_t, written out term by term."""
    gen = torch.Generator().manual_seed(0)
    b, g, d, n, length = 2, 3, 4, 2, 6
    u, dt = torch.randn(b, g, d, length, generator=gen).double(), torch.rand(b, g, d, length, generator=gen).double()
    A, D = -torch.rand(g, d, n, generator=gen).double(), torch.randn(g, d, generator=gen).double()
    B, C = torch.randn(b, g, n, length, generator=gen).double(), torch.randn(b, g, n, length, generator=gen).double()
    y = selective_scan(u, dt, A, B, C, D, softplus=False)
    expected = torch.zeros_like(y)
    for t in range(length):
        for s in range(t + 1):
            decay = torch.exp(dt[..., s + 1:t + 1].sum(-1)[..., None] * A)  # (b, g, d, n)
            expected[..., t] += (C[..., :, t][:, :, None] * decay * (dt[..., s] * u[..., s])[..., None]
                                 * B[..., :, s][:, :, None]).sum(-1)
    expected += D[..., None] * u
    assert torch.allclose(y, expected, atol=1e-12)


def test_cross_scan_merge_restores_each_position_once_per_direction():
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(SS2D.cross_merge(SS2D.cross_scan(x), 4, 5), 4 * x)


def test_shape_features_of_boxes_and_components():
    volumes = np.zeros((2, 10, 10, 10), np.uint8)
    volumes[0, 1:4, 2:6, 3:8] = 255  # a 3 × 4 × 5 box
    volumes[1, 0:2, 0:2, 0:2] = volumes[1, 5:7, 5:7, 5:7] = 1  # two 2³ cubes, not 26-connected
    raw = tabular.primitives(volumes)
    axes = sorted((4 * math.sqrt((k * k - 1) / 12) for k in (3, 4, 5)), reverse=True)  # discrete uniform variances
    assert raw[0, :5].tolist() == [60, 2 * (12 + 15 + 20), 3, 4, 5] and raw[0, 8] == 1
    assert np.allclose(raw[0, 5:8], axes)
    assert raw[1, [0, 1, 8]].tolist() == [16, 48, 2]
    derived = tabular.derive(torch.from_numpy(raw)).numpy()
    assert derived[0].tolist() == pytest.approx([(36 * math.pi * 3600) ** (1 / 3) / 94, 94 / 60, axes[1] / axes[0],
                                                axes[2] / axes[0], 1.0])


def test_real_shape_features_standardised_on_the_training_split(data_root):
    data = multimodal_data.load(MODELS.get("mmcaf-net"), None, data_root)
    x, y = data.split("train")
    z = x["shape"].double()
    assert z.shape == (1188, 9) and torch.allclose(z.mean(0), torch.zeros(9, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(9, dtype=torch.float64), atol=1e-6)
    raw = z * torch.from_numpy(data.statistics.std) + torch.from_numpy(data.statistics.mean)
    integers = [i for i, f in enumerate(tabular.PRIMITIVES) if f.kind != "real"]
    assert torch.allclose(raw[:, integers], raw[:, integers].round(), atol=1e-3)
    assert x["volume"].shape == (1188, 1, 28, 28, 28) and set(x["volume"].unique().tolist()) == {0.0, 1.0}
    assert y.bincount().tolist() == [929, 259]


def test_shape_layer_appends_consistent_derived_features(data_root):
    data = multimodal_data.load(MODELS.get("mmcaf-net"), None, data_root)
    layer = tabular.ShapeFeatureLayer()
    layer.set_statistics(data.statistics, 28)
    z = data.split("test")[0]["shape"][:8]
    out = layer(z)
    raw = z.double() * layer.std + layer.mean
    assert torch.equal(out[:, :9], z)
    derived = (tabular.derive(raw) - layer.derived_mean) / layer.derived_std
    assert torch.allclose(out[:, 9:].double(), derived, atol=1e-5)


def _parameters_without_gradient(model, x) -> list[str]:
    model.train()
    model(x).sum().backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]


def test_mmcaf_forward_backward_on_real_volumes(data_root):
    data = multimodal_data.load(MODELS.get("mmcaf-net"), None, data_root)
    x = {k: v[:4] for k, v in data.split("test")[0].items()}
    torch.manual_seed(0)
    net = MMCAFNet(TINY_MMCAF)
    net.features.set_statistics(data.statistics, 28)
    assert net.eval()(x).shape == (4, 1)
    # one token per modality (as in the authors' code): attention over a single key ignores W_q and W_k
    dead = {f"fusion.attend.{i}.{w}.{p}" for i in range(3) for w in "qk" for p in ("weight", "bias")}
    assert set(_parameters_without_gradient(net, x)) == dead


def test_iimgf_forward_backward_on_real_paired_images(data_root):
    data = multimodal_data.load(MODELS.get("iimgf-net"), None, data_root)
    x = {k: v[:4] for k, v in data.split("test")[0].items()}
    torch.manual_seed(0)
    net = IIMGFNet(TINY_IIMGF)
    assert net.eval()(x).shape == (4, 2)
    # MGC keeps each CMM's first output only (as the authors' code): the other scan's Δ and norm are unused
    dead = {f"mgc.{stage}.{i}.{part}.1.{p}" for stage in ("c2f", "f2c") for i in range(2)
            for part in ("dt_proj", "out_norm") for p in ("weight", "bias")}
    assert set(_parameters_without_gradient(net, x)) == dead


@pytest.mark.parametrize("name, labels, low, high", [("mmcaf-net", 1, 0.10e6, 0.14e6), ("iimgf-net", 2, 0.38e6, 0.42e6),
                                                     ("mmcaf-net-paper", 1, 85e6, 95e6),
                                                     ("iimgf-net-paper", 2, 27e6, 30e6)])
def test_registered_presets_build_at_their_sizes(name, labels, low, high):
    model = build(name, "none", (labels,), config={"labels": [f"l{i}" for i in range(labels)]})
    count = sum(p.numel() for p in model.parameters())
    assert low < count < high and model.input_names == tuple(m.name for m in MODELS.get(name).modalities)
