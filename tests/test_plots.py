"""Robustness curves from per-sample rows, and the PNG/SVG files `robustmed plot` writes."""
import json

import pandas as pd
import pytest

from robustmed.cli import main
from robustmed.reports.plots import curve_eot, curve_eps, curve_steps, describe, plot


def _rows(first_steps, clean=None, eps=4 / 255, steps=100, eot=1):
    spec = json.dumps({"steps": steps, "eot": eot})
    clean = clean if clean is not None else [True] * len(first_steps)
    return pd.DataFrame({"sample_id": range(len(first_steps)), "first_success_step": first_steps,
                         "clean_correct": clean, "robust": [c and f < 0 for f, c in zip(first_steps, clean)],
                         "eps": eps, "spec": spec, "attack": "pgd100"})


def test_steps_curve_from_first_success():
    rows = _rows([-1, 3, 30, -1], clean=[True, True, True, False])
    curve = curve_steps(rows, [1, 5, 50, 100])
    assert curve.accuracy.tolist() == [0.75, 0.5, 0.25, 0.25]
    assert (curve.low <= curve.accuracy).all() and (curve.accuracy <= curve.high).all()


def test_steps_curve_ignores_rows_derived_from_a_sweep():
    long_run = _rows([-1, 3, 30, -1], clean=[True, True, True, False])
    derived = _rows([-1, 3, 30, -1], steps=10).assign(spec=json.dumps({"steps": 10, "derived_from": "pgd100#x"}))
    pd.testing.assert_frame_equal(curve_steps(pd.concat([long_run, derived]), [1, 5, 50]),
                                  curve_steps(long_run, [1, 5, 50]))


def test_eps_curve_is_per_sample_worst_case():
    a = _rows([-1, -1, 2], eps=0.01)
    b = _rows([-1, 4, 1], eps=0.02)
    c = _rows([3, -1, -1], eps=0.02).assign(attack="bim10")
    curve = curve_eps(pd.concat([a, b, c]))
    assert curve.x.tolist() == [0.01, 0.02] and curve.accuracy.round(4).tolist() == [0.6667, 0.0]


def test_eot_curve_groups_by_eot_samples():
    rows = pd.concat([_rows([-1, -1, 5], eot=1), _rows([-1, 2, 5], eot=20)])
    assert curve_eot(rows).accuracy.round(4).tolist() == [0.6667, 0.3333]


def test_title_names_what_was_measured_without_a_sweep_s_derived_rows():
    long_run = _rows([-1, 3, 30, -1]).assign(dataset="pneumoniamnist")
    derived = long_run.assign(attack="pgd10@pgd100", spec=json.dumps({"steps": 10, "derived_from": "pgd100#x"}))
    rows = pd.concat([long_run, derived])
    assert describe(rows, "steps") == "pneumoniamnist · pgd100 · ε = 4/255 · n = 4"
    assert describe(rows.assign(eps=0.01), "eps") == "pneumoniamnist · pgd100 · n = 4"


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_plot_writes_files(tmp_path, suffix, magic):
    out = tmp_path / f"curve{suffix}"
    plot({"none · pgd100": curve_steps(_rows([-1, 3, 30]))}, "steps", str(out))
    assert out.read_bytes()[:5].startswith(magic)


def test_plot_cli_on_committed_golden(tmp_path, capsys):
    from test_reports import GOLDEN

    out = tmp_path / "steps.svg"
    assert main(["plot", "--results", str(GOLDEN), "--kind", "steps", "--out", str(out)]) == 0
    assert b"<svg" in out.read_bytes()
    assert main(["plot", "--results", str(GOLDEN), "--out", str(tmp_path / "x.pdf")]) == 2
    assert "--out must end in .png or .svg" in capsys.readouterr().err


def test_curves_pair_protocols_and_skip_sweep_rows():
    from robustmed.reports.plots import curves

    adaptive = _rows([-1, 3, 30, 5]).assign(defense="rpan", model="m", dataset="d", protocol="adaptive",
                                           attack="pgd100:sweep=10+50")
    paper = _rows([-1, -1, 30, -1]).assign(defense="rpan", model="m", dataset="d", protocol="paper",
                                          attack="pgd100:sweep=10+50,protocol=paper")
    derived = adaptive.assign(attack="pgd10", spec=json.dumps({"steps": 10, "derived_from": "pgd100#x"}))
    out = curves(pd.concat([adaptive, paper, derived]), "steps")
    assert list(out) == ["rpan · adaptive", "rpan · paper"]
    assert out["rpan · paper"].accuracy.iloc[-1] == 0.75 and out["rpan · adaptive"].accuracy.iloc[-1] == 0.25
    assert out["rpan · paper"].attrs == {"defense": "rpan", "protocol": "paper"}


def test_a_paper_protocol_curve_is_dashed_in_its_defense_colour(tmp_path):
    """Fig. 6 with both protocols: a reader pairs each dashed paper-protocol curve with its solid adaptive one."""
    import matplotlib

    from robustmed.reports.plots import _colours

    def curve(defense, protocol):
        c = pd.DataFrame({"x": [10, 100], "accuracy": [0.5, 0.4], "low": [0.4, 0.3], "high": [0.6, 0.5]})
        c.attrs.update(defense=defense, protocol=protocol)
        return c

    series = {"rpan · adaptive": curve("rpan", "adaptive"), "rpan · paper": curve("rpan", "paper"),
              "none · adaptive": curve("none", "adaptive")}
    colours = _colours(series)
    assert colours["rpan"] != colours["none"]
    out = tmp_path / "f.svg"
    plot(series, "steps", str(out))
    assert "stroke-dasharray" in out.read_text()
    plot({k: v for k, v in series.items() if "paper" not in k}, "steps", str(out))
    assert "stroke-dasharray" not in out.read_text()  # solid curves and the grid draw no dashes
    matplotlib.pyplot.close("all")


def test_a_randomized_models_steps_curve_is_its_judged_sweep_rows():
    """B13: on a randomized model the first-success step records one draw's misclassification during the
    attack; the point at k steps comes from the R-draw judgements of the iterates up to k (the sweep's rows)."""
    from robustmed.reports.plots import curves

    extra = {"randomized": True}
    long_run = _rows([3, 3, 3, -1]).assign(robust=[True, True, False, True], defense="rpan", model="m", dataset="d",
                                           protocol="adaptive", attack="pgd100:sweep=10",
                                           spec=json.dumps({"steps": 100, "extra": extra}))
    at_10 = long_run.assign(robust=[True, True, True, True], attack="pgd10@pgd100:sweep=10",
                            spec=json.dumps({"steps": 10, "derived_from": "pgd100:sweep=10#x", "extra": extra}))
    at_50 = at_10.assign(robust=[False, True, True, True], attack="pgd50@pgd100:sweep=10",
                         spec=json.dumps({"steps": 50, "derived_from": "pgd100:sweep=10#x", "extra": extra}))
    out = curves(pd.concat([long_run, at_10, at_50]), "steps")
    assert list(out) == ["rpan"]
    # sample 0, broken by the judged 50-step iterate, stays broken although the kept 100-step one judges robust
    assert out["rpan"].x.tolist() == [10, 50, 100] and out["rpan"].accuracy.tolist() == [1.0, 0.75, 0.5]
    assert curve_steps(long_run.assign(spec=json.dumps({"steps": 100}))).accuracy.iloc[-1] == 0.25  # deterministic


def test_a_randomized_steps_curve_reads_each_iterates_draws_beside_runs_without_them():
    """Judged over draws (masks stored), the k-step point is the expected worst case over the iterates up to k,
    though ``curves`` names every iterate by its long run; a deterministic run read beside it carries no masks."""
    from robustmed.reports.plots import curves

    extra = {"randomized": True}
    judged = _rows([-1, -1]).assign(defense="rpan", model="m", dataset="d", protocol="adaptive", draws=2,
                                    clean_draw_mask=3)  # both samples right in both clean draws
    iterates = [judged.assign(attack=name, draw_mask=masks, spec=json.dumps({"steps": k, "extra": extra,
                                                                              **({"derived_from": "pgd100:sweep=10#x"} if k < 100 else {})}))
                for name, k, masks in (("pgd100:sweep=10", 100, [3, 1]), ("pgd10@pgd100:sweep=10", 10, [1, 3]))]
    plain = _rows([-1, 5]).assign(defense="none", model="m", dataset="d", protocol="adaptive", draws=1)
    out = curves(pd.concat([*iterates, plain]), "steps")
    # k = 10: sample 0 right in one of 2 draws → (0.5 + 1) / 2; k = 100 adds sample 1's 1 of 2 → (0.5 + 0.5) / 2
    assert out["rpan"].x.tolist() == [10, 100] and out["rpan"].accuracy.tolist() == [0.75, 0.5]
    assert out["none"].accuracy.iloc[-1] == 0.5
