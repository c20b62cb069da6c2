"""`bench` as an API: a validated config in, a stored run (rows + manifest) and a summary out."""
from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from robustmed import checkpoints, data as data_mod, store
from robustmed.attacks import parse_attack, parse_eps_list
from robustmed.checks import LEVELS, CheckContext, Finding, blocking, post_run, run_preflight, unreliable
from robustmed.checks.bpda import bpda
from robustmed.defenses import DEFENSES
from robustmed.errors import UserError
from robustmed.factory import from_checkpoint, shipped_checkpoint
from robustmed.harness import attack_rows, select_subset, summarize
from robustmed.models.zoo import DEFAULT_MODEL, MODELS
from robustmed.provenance import git_commit, machine, package_versions, resolve_device
from robustmed.usermodel import load_model_file

DEFAULT_EPS = "4/255"


def split_attacks(text: str) -> list[str]:
    """``pgd10:alpha=1/255,restarts=2,bim10`` → [``pgd10:alpha=1/255,restarts=2``, ``bim10``].

    Attacks and options share the comma, so a ``key=value`` token continues the attack before it.
    """
    attacks: list[str] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if "=" in token and ":" not in token and attacks:
            attacks[-1] += "," + token
        else:
            attacks.append(token)
    return attacks


@dataclass(frozen=True)
class BenchConfig:
    """Everything `robustmed bench` needs; validated before any work or write happens."""

    defense: str = "none"
    attack: str = "pgd100"
    model: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    checkpoint: str | None = None
    model_file: str | None = None
    eps: str = DEFAULT_EPS
    n: int | None = None
    seed: int = 0
    split: str = "test"
    batch_size: int = 256
    device: str = "auto"
    out: str | None = None
    progress: bool = True
    checks: str = "cheap"  # cheap: the always-on checks; full: also the costly re-attacks of a subset

    def specs(self):
        return [parse_attack(a) for a in split_attacks(self.attack)]

    def eps_values(self) -> tuple[float, ...]:
        return parse_eps_list(self.eps)


@dataclass
class BenchReport:
    config: BenchConfig
    run_dir: Path
    manifest: dict
    summary: list[dict]
    rows: object = field(repr=False)

    def to_json(self) -> dict:
        robust = {str(s["eps"]): s["robust_accuracy"] for s in self.summary}
        one = len(self.summary) == 1
        return {
            "run_id": self.manifest["run_id"],
            "defense": self.manifest["defense"], "attack": self.config.attack, "model": self.manifest["model"],
            "dataset": self.manifest["dataset"], "split": self.config.split, "n": self.summary[0]["n"],
            "eps": self.summary[0]["eps"] if one else [s["eps"] for s in self.summary],
            "clean_accuracy": self.summary[0]["clean_accuracy"],
            "robust_accuracy": self.summary[0]["robust_accuracy"] if one else robust,
            "robust_ci": self.summary[0]["robust_ci"] if one else {str(s["eps"]): s["robust_ci"] for s in self.summary},
            "per_attack": self.summary[0]["per_attack"] if one else {str(s["eps"]): s["per_attack"] for s in self.summary},
            "wall_time_s": self.manifest["wall_time_s"],
            "unreliable": self.manifest["unreliable"],
            "findings": [f for f in self.manifest["findings"] if f["fired"]],
            "results": str(self.run_dir / store.ROWS_FILE),
            "manifest": str(self.run_dir / store.MANIFEST_FILE),
        }


def portable_path(path) -> str:
    """Shipped checkpoints as ``zoo/<model>/<dataset>/<defense>.pt``; other paths as the user gave them."""
    resolved = Path(path).resolve()
    try:
        return "zoo/" + resolved.relative_to(checkpoints.ZOO.resolve()).as_posix()
    except ValueError:
        return str(path)


def _resolve_model(cfg: BenchConfig, device):
    """(model, dataset, provenance) for a shipped entry, a checkpoint file, or a user's model file."""
    if cfg.model_file:
        model, prov = load_model_file(cfg.model_file)
        dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
        return model.to(device), dataset, {"model": f"file:{Path(prov['model_file']).name}", "defense": "custom",
                                           "checkpoint": prov}
    if cfg.model:
        MODELS.get(cfg.model)
    DEFENSES.get(cfg.defense)
    path = cfg.checkpoint
    if path is None:
        dataset = data_mod.load(cfg.dataset or data_mod.DEFAULT_DATASET, cfg.data_root)
        path = shipped_checkpoint(cfg.defense, cfg.model, dataset.key)
        model, meta = from_checkpoint(path, device)
    else:
        model, meta = from_checkpoint(path, device)
        dataset = data_mod.load(cfg.dataset or meta.get("dataset", data_mod.DEFAULT_DATASET), cfg.data_root)
    prov = {"path": portable_path(path), "sha256": meta["sha256"], "val_accuracy": meta.get("val_accuracy"),
            "test_accuracy": meta.get("test_accuracy"), "trained_on": meta.get("dataset")}
    return model, dataset, {"model": meta["model"], "defense": meta["defense"], "checkpoint": prov}


def _check_classes(model, x, dataset, device) -> None:
    with torch.no_grad():
        width = model(x[:1].to(device)).shape[-1]
    if width != dataset.num_classes:
        raise UserError(f"the model predicts {width} classes but {dataset.key} has {dataset.num_classes}")


def check_context(cfg: BenchConfig, model, dataset, prov: dict, x, y, ids, total: int, device) -> CheckContext:
    """What the checks need to know about this run (A9 compares with the checkpoint's test accuracy)."""
    info = DEFENSES.get(prov["defense"]) if prov["defense"] in DEFENSES else None
    ckpt = prov["checkpoint"]
    same_data = cfg.split == "test" and ckpt.get("trained_on") == dataset.key
    return CheckContext(model, x, y, cfg.eps_values(), cfg.specs(), dataset.num_classes, task=dataset.task,
                        declared_randomized=bool(info and info.randomized),
                        nondiff_ops=tuple(info.nondiff_ops) if info else (),
                        registry_accuracy=ckpt.get("test_accuracy") if same_data else None,
                        full_split=len(ids) == total, device=device, seed=cfg.seed,
                        batch_size=cfg.batch_size, sample_ids=ids)


def refuse_on_errors(findings: list[Finding]) -> None:
    """ERROR findings refuse the run before anything is written."""
    errors = blocking(findings)
    if errors:
        raise UserError("; ".join(f"check {f.id} failed: {f.reason}" for f in errors) +
                        " (`robustmed check` prints every check)")


def run_id_for(cfg: BenchConfig, defense: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    tag = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:6]
    safe_attack = cfg.attack.replace(",", "+").replace(":", "_").replace("=", "").replace("/", "-")
    return f"{stamp}-{defense}-{safe_attack}-{tag}"


def _validate(cfg: BenchConfig):
    specs, eps_values = cfg.specs(), cfg.eps_values()  # parse first: bad input fails before any work
    if not specs:
        raise UserError("no attack given; e.g. --attack pgd100")
    if cfg.n is not None and cfg.n < 1:
        raise UserError(f"--n must be positive, got {cfg.n}")
    if cfg.checks not in LEVELS:
        raise UserError(f"--checks must be one of {', '.join(LEVELS)}, got {cfg.checks!r}")
    return specs, eps_values


def _prepare(cfg: BenchConfig):
    """(check context, dataset, provenance): the model loaded and the seeded subset drawn."""
    device = resolve_device(cfg.device)
    model, dataset, prov = _resolve_model(cfg, device)
    x_all, y_all = dataset.split(cfg.split)
    _check_classes(model, x_all, dataset, device)
    ids = select_subset(len(x_all), cfg.n, cfg.seed)
    return check_context(cfg, model, dataset, prov, x_all[ids], y_all[ids], ids, len(x_all), device), dataset, prov


def _attack_and_check(cfg: BenchConfig, ctx: CheckContext, refuse: bool):
    """Pre-flight, the attack (EOT for randomized models, BPDA over declared non-differentiable ops), checks.

    Returns (rows, findings, number of straight-through sites); with ``refuse`` an ERROR finding
    stops the run, before the attack when a pre-flight check fails.
    """
    preflight = run_preflight(ctx)
    if refuse:
        refuse_on_errors(preflight)
    with bpda(ctx.model) if ctx.nondiff_ops else nullcontext(0) as straight_through:
        rows = attack_rows(ctx.model, ctx.x, ctx.y, ctx.ids, ctx.specs, ctx.eps, seed=cfg.seed,
                           batch_size=cfg.batch_size, device=ctx.device, progress=cfg.progress,
                           randomized=ctx.randomized)
        findings = post_run(ctx, rows, preflight, cfg.checks)
    if refuse:
        refuse_on_errors(findings)
    return rows, findings, straight_through


def run_checks(cfg: BenchConfig) -> list[Finding]:
    """`robustmed check` as an API: every check on the configured run, nothing refused, nothing written."""
    _validate(cfg)
    ctx, _, _ = _prepare(cfg)
    return _attack_and_check(cfg, ctx, refuse=False)[1]


def run_bench(cfg: BenchConfig) -> BenchReport:
    specs, eps_values = _validate(cfg)
    ctx, dataset, prov = _prepare(cfg)
    ids, started = ctx.ids, time.perf_counter()
    rows, findings, straight_through = _attack_and_check(cfg, ctx, refuse=True)
    wall = time.perf_counter() - started
    run_id = run_id_for(cfg, prov["defense"])
    rows.insert(0, "run_id", run_id)
    for column in ("model", "defense", "dataset", "split"):
        rows.insert(1, column, {"model": prov["model"], "defense": prov["defense"], "dataset": dataset.key,
                                "split": cfg.split}[column])
    summary = summarize(rows)
    manifest = {
        "run_id": run_id, "created": datetime.now(timezone.utc).isoformat(), "config": {k: v for k, v in asdict(cfg).items() if k != "out"},
        "model": prov["model"], "defense": prov["defense"], "checkpoint": prov["checkpoint"],
        "dataset": dataset.key, "dataset_path": dataset.path.name, "dataset_sha256": dataset.sha256,
        "split": cfg.split, "sample_ids": [int(i) for i in ids],
        "sample_ids_sha256": hashlib.sha256(json.dumps([int(i) for i in ids]).encode()).hexdigest(),
        "attacks": {name: json.loads(spec) for name, spec in rows.groupby("attack").spec.first().items()},
        "eps": list(eps_values),
        "summary": summary, "wall_time_s": round(wall, 2),
        "checks": cfg.checks, "findings": [f.to_json() for f in findings], "unreliable": unreliable(findings),
        "bpda_sites": straight_through,
        "git_commit": git_commit(), "packages": package_versions(), "machine": machine(ctx.device),
    }
    run_dir = store.write_run(rows, manifest, cfg.out)
    return BenchReport(cfg, run_dir, manifest, summary, rows)
