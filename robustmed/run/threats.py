"""What an attack may change and what counts as a success, per run: threat models over a multi-input model's
named inputs (``--threat``, check F4) and a multi-label model's success criterion (``--criterion``, A8/F2).

Threats name which inputs an attack may change: ``joint`` (all), a modality kind (``image``, ``tabular``:
every input of that kind) or one input by name (``xray``); several are separated by commas. Each input
has its own L∞ ε: images the run's ε (pixels in [0, 1]); tabular features ε × 6 standardised units
(a standardised feature's ±3 SD span plays the part of [0, 1], so ε is the same fraction of the range)
under the features' constraints. ``NAME:INPUT=EPS`` sets an input's ε, e.g. ``joint:shape=0.25``.
"""
from __future__ import annotations

import json
from typing import Mapping

import torch
from torch import nn

from robustmed import multilabel
from robustmed.attacks.base import parse_number
from robustmed.attacks.threat import InputThreat, Packing, ThreatModel
from robustmed.errors import UserError
from robustmed.ordinal import parse_grade
from robustmed.run.config import split_attacks


TABULAR_SCALE = 6.0  # ε of a standardised feature = 6 × the run's ε (the ±3 SD span as the unit range)



def _attacked(name: str, model) -> set[str]:
    """``joint``: every input; an input's name: that input; a kind (``image``, ``tabular``): its inputs."""
    kinds = {m.name: m.kind for m in model.modalities}
    if name == "joint":
        return set(kinds)
    chosen = {name} if name in kinds else {n for n, k in kinds.items() if k == name}
    if not chosen:
        options = ["joint", *sorted(set(kinds.values())), *kinds]
        raise UserError(f"threat {name!r} attacks no input of this model; choices: {', '.join(options)}")
    return chosen



def threat_models(model, text: str | None) -> list[ThreatModel]:
    """The ``--threat`` entries as threat models over the model's inputs (default ``joint``)."""
    constraints = model.input_constraints()
    kinds = {m.name: m.kind for m in model.modalities}
    out = []
    for entry in split_attacks(text or "joint"):  # the same rule: a key=value token continues the entry
        name, _, options = entry.partition(":")
        attacked = _attacked(name.strip(), model)
        given = {}
        for option in filter(None, options.split(",")):
            key, _, value = option.partition("=")
            if key not in attacked or not value:
                raise UserError(f"threat {entry!r}: {option!r} must set the ε of an attacked input "
                                f"({', '.join(sorted(attacked))}), e.g. {sorted(attacked)[0]}=0.25")
            given[key] = parse_number(value)
        inputs = {n: InputThreat(attackable=n in attacked, eps=given.get(n),
                                 scale=TABULAR_SCALE if kinds[n] == "tabular" else 1.0, **constraints.get(n, {}))
                  for n in model.input_names}
        out.append(ThreatModel(inputs, entry.strip()))
    return out



def bench_threats(model, config: Mapping) -> list[ThreatModel] | None:
    """Threat models of a unit's run, or None for single-input models."""
    if not getattr(model, "modalities", ()):
        return None
    return threat_models(model, config.get("threat"))



class PackedView(nn.Module):
    """The model over one flat (N, 1, D) tensor per batch, each element scaled to [0, 1] by its input's valid range.

    The single-tensor pre-flight checks read it (A2's "inside [0, 1]" is then "inside the declared
    bounds"); its logits are the model's. ``pack`` maps a mapping of inputs to the flat view; its one
    channel keeps per-channel check details to one number.
    """

    def __init__(self, model: nn.Module, sample: Mapping[str, torch.Tensor]):
        super().__init__()
        self.model = model
        self.packing = Packing(sample, threat_models(model, "joint")[0], 1.0)
        self.register_buffer("low", self.packing.low.clone())
        self.register_buffer("span", (self.packing.high - self.packing.low).clone())

    def pack(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return ((self.packing.pack(x) - self.low) / self.span).unsqueeze(1)

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        return self.model(self.packing.unpack(self.low + flat.flatten(1) * self.span))



def declare_criterion(model, dataset, text: str | None) -> None:
    """A multi-label model answers through ``text``'s criterion (``any``, ``label:NAME``) and the data set's
    labels become its classes; an ordinal task takes ``grade:K``; ``--criterion`` on any other task is refused."""
    if hasattr(model, "set_criterion"):
        model.set_criterion(text)
        dataset.criterion = model.criterion
    elif text and dataset.task.startswith("ordinal"):
        dataset.criterion = parse_grade(text, dataset.num_classes)
        if dataset.criterion is None:
            raise UserError(f"bad success criterion {text!r} for the ordinal task {dataset.key}: use grade:K "
                            "(the prediction moves at least K grades from the label)")
    elif text:
        raise UserError(f"--criterion applies to multi-label tasks (any, label:NAME) and ordinal ones (grade:K); "
                        f"{dataset.key} is {dataset.task!r}: leave it out")



def for_checks(ctx):
    """The check context of a multi-label model: the declared criterion (A8) and its label facts (F2); of a
    multi-input one also the packed view."""
    model = ctx.model
    if hasattr(model, "criterion"):
        ctx.extras["success_criterion"] = model.criterion.description
        ctx.extras["labels"] = {"criterion": model.criterion.name, "labels": list(model.labels),
                                "thresholds": [float(t) for t in model.thresholds]}
    if not isinstance(ctx.x, Mapping):
        return ctx
    view = PackedView(model, {k: v[:1] for k, v in ctx.x.items()})
    ctx.model, ctx.x = view, view.pack(ctx.x)
    ctx.extras["multimodal"] = ctx.extras["labels"]
    return ctx



def run_extras(ctx, rows) -> dict:
    """Manifest additions of a multi-input run: inputs' threat models, criterion, per-label flip rates (F2)."""
    facts = ctx.extras.get("labels")
    if not facts:
        return {}
    criterion = multilabel.parse_criterion(facts["criterion"], tuple(facts["labels"]))
    record, flips = {**facts, "criterion_description": criterion.description}, multilabel.label_flips(rows, criterion)
    if "multimodal" not in ctx.extras:
        return {"multilabel": {**record, "per_label": flips}}
    threats = {t: rows[rows.threat == t].spec.iloc[0] for t in rows.threat.unique()} if "threat" in rows else {}
    return {"multimodal": {**record, "threats": {t: json.loads(s)["extra"]["threat"] for t, s in threats.items()},
                           "per_label": flips}}
