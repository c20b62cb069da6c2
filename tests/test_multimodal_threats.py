"""Per-input threat models of the multi-input presets (check F4): frozen inputs come back bit-identical,
constrained tabular features stay valid (integers on their grid, categorical frozen, within ε and bounds)."""
import pytest
import torch

from robustmed import multimodal_data
from robustmed.attacks import parse_attack
from robustmed.attacks.pgd import run_pgd
from robustmed.attacks.threat import InputThreat, Packing, ThreatModel
from robustmed.checks import CheckContext
from robustmed.checks.invariants import budget
from robustmed.errors import UserError
from robustmed.factory import build
from robustmed.harness import benchmark
from robustmed.models.zoo import MODELS
from robustmed.run.threats import TABULAR_SCALE, threat_models

EPS = 4 / 255


@pytest.fixture(scope="module")
def adrenal(data_root):
    data = multimodal_data.load(MODELS.get("mmcaf-net"), None, data_root)
    torch.manual_seed(0)
    tiny = {"stem_width": 4, "widths": (4, 8, 16), "embed": 8}  # the CPU preset's layout, narrower
    model = build("mmcaf-net", "none", (1,), config={"labels": list(data.labels), **tiny})
    model.network.features.set_statistics(data.statistics, 28)
    x, y = data.split("test")
    return model.eval(), {k: v[:16] for k, v in x.items()}, y[:16], data.statistics


@pytest.fixture(scope="module")
def paired(data_root):
    data = multimodal_data.load(MODELS.get("iimgf-net"), None, data_root)
    torch.manual_seed(0)
    model = build("iimgf-net", "none", (2,), config={"labels": list(data.labels), "stem_width": 8}).eval()
    x, y = data.split("test")
    return model, {k: v[:8] for k, v in x.items()}, y[:8]


def _attack(model, x, y, threat_text, steps=5):
    threat = threat_models(model, threat_text)[0]
    return run_pgd(model, x, y, spec=parse_attack(f"pgd{steps}:early_stop=0"), eps=EPS, threat=threat), threat


def test_image_only_leaves_the_tabular_record_bit_identical(adrenal):
    model, x, y, _ = adrenal
    result, _ = _attack(model, x, y, "image")
    assert torch.equal(result.x_adv["shape"], x["shape"])
    delta = (result.x_adv["volume"] - x["volume"]).abs()
    assert 0 < delta.max() <= EPS + 1e-7 and result.x_adv["volume"].min() >= 0 and result.x_adv["volume"].max() <= 1


def test_tabular_only_keeps_every_feature_valid(adrenal):
    model, x, y, stats = adrenal
    result, threat = _attack(model, x, y, "tabular:shape=0.5")
    assert torch.equal(result.x_adv["volume"], x["volume"])
    z, z0 = result.x_adv["shape"].double(), x["shape"].double()
    raw = z * torch.from_numpy(stats.std) + torch.from_numpy(stats.mean)
    integers = [0, 1, 2, 3, 4]  # volume, surface area, extents: whole voxels and faces
    assert torch.allclose(raw[:, integers], raw[:, integers].round(), atol=1e-3)
    assert torch.equal(result.x_adv["shape"][:, 8], x["shape"][:, 8])  # components: categorical, frozen
    assert ((z - z0).abs() <= 0.5 + 1e-6).all()
    bounds = torch.tensor(threat.inputs["shape"].element_bounds, dtype=torch.float64)
    assert ((z >= bounds[:, 0] - 1e-6) & (z <= bounds[:, 1] + 1e-6)).all()
    moved = ((z - z0).abs() > 1e-6).sum(0).tolist()
    assert all(m > 0 for m in moved[:8]) and moved[8] == 0  # every perturbable feature moved somewhere


def test_joint_attack_gives_each_input_its_own_budget(adrenal):
    model, x, y, _ = adrenal
    result, threat = _attack(model, x, y, "joint")
    assert threat.budgets(EPS) == {"volume": EPS, "shape": TABULAR_SCALE * EPS}
    assert 0 < (result.x_adv["volume"] - x["volume"]).abs().max() <= EPS + 1e-7
    assert 0 < (result.x_adv["shape"] - x["shape"]).abs().max() <= TABULAR_SCALE * EPS + 1e-6


@pytest.mark.parametrize("attacked, frozen", [("xray", "ultrasound"), ("ultrasound", "xray")])
def test_each_image_alone_leaves_the_other_bit_identical(paired, attacked, frozen):
    model, x, y = paired
    result, _ = _attack(model, x, y, attacked, steps=3)
    assert torch.equal(result.x_adv[frozen], x[frozen])
    assert 0 < (result.x_adv[attacked] - x[attacked]).abs().max() <= EPS + 1e-7


def test_harness_rows_per_threat_pass_the_per_input_budget_check(adrenal):
    model, x, y, _ = adrenal
    rows = benchmark(model, x, y, attack="pgd3", eps=EPS, threat=threat_models(model, "image,tabular,joint"))
    assert sorted(rows.threat.unique()) == ["image", "joint", "tabular"]
    assert (rows[rows.threat == "image"].linf_shape == 0).all()
    assert (rows[rows.threat == "tabular"].linf_volume == 0).all()
    assert (rows.eps_shape[rows.threat != "image"] == TABULAR_SCALE * EPS).all()
    finding = budget(CheckContext(model, x, y, [EPS], [], 2), rows)
    assert not finding.fired and finding.details["max_ratio"] <= 1 + 1e-6
    assert (rows.linf > EPS).any()  # the tabular budget exceeds the image one: B1 must read per-input columns


def test_constrain_truncates_grid_steps_toward_zero_within_bounds():
    threat = ThreatModel({"t": InputThreat(eps=0.6, element_grid=(0.5, 0.0, 0.5), element_scale=(1.0, 1.0, 0.0),
                                           element_bounds=((-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0)), bounds=(-1.0, 1.0))})
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    packing = Packing({"t": x}, threat, 1.0)
    x_adv = torch.tensor([[0.59, 0.25, 0.0], [1.1, -0.5, 0.0], [-0.74, 0.0, 0.4]])
    out = packing.constrain(x_adv, x)  # grid of 0.5: toward zero, then the bound 1; the third element frozen
    assert out.tolist() == [[0.5, 0.25, 0.0], [1.0, -0.5, 0.0], [-0.5, 0.0, 0.0]]


def test_threat_names_and_refusals(adrenal, paired):
    mmcaf, iimgf = adrenal[0], paired[0]
    attacked = lambda model, text: {t.name: sorted(n for n, i in t.inputs.items() if i.attackable)  # noqa: E731
                                    for t in threat_models(model, text)}
    assert attacked(mmcaf, "image,tabular,joint") == {"image": ["volume"], "tabular": ["shape"],
                                                     "joint": ["shape", "volume"]}
    assert attacked(iimgf, "image,xray") == {"image": ["ultrasound", "xray"], "xray": ["xray"]}
    with pytest.raises(UserError, match="attacks no input of this model; choices: joint, image, xray, ultrasound"):
        threat_models(iimgf, "tabular")
    with pytest.raises(UserError, match="must set the ε of an attacked input"):
        threat_models(mmcaf, "image:shape=0.5")
